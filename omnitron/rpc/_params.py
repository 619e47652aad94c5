"""Named-parameter schemas, derived from a handler's keyword-only signature.

A handler declares its params as keyword-only arguments with annotations::

    async def stop_app(call: Call, *, name: Name, timeout: Annotated[float, Range(ge=0)] = 10.0):
        ...

At registration the annotations are compiled into strict validators. Validation is
exact-type (``True`` is not an integer, ``"5"`` is not a number), bounded (every
string, binary, array and map has a cap: plain ``str`` is free text of at most
``TEXT_MAX`` characters), rejects unknown params, and reports every problem with
its path: ``params.timeout: expected a number >= 0, got -1``.

Supported annotations: ``str``, ``bytes``, ``bool``, ``int``, ``float`` (accepts
integers, never NaN or infinity), ``None``, unions, ``list[T]``, ``dict[K, V]``,
``Literal[...]``, ``enum.Enum`` subclasses (by value), ``object`` (any decoded
value; the codec already bounded its size and depth), each optionally wrapped in
``Annotated[T, Len(...), Range(...), Match(...)]``.
"""

from __future__ import annotations

import difflib
import enum
import functools
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal

import attrs

from ._errors import InvalidParams
from ._wire import NAME_MAX, TEXT_MAX, describe

__all__ = [
    "Len",
    "Range",
    "Match",
    "Name",
    "Text",
    "NAME_PATTERN",
    "ParamInfo",
    "ParamSchema",
    "schema_for",
]

NAME_PATTERN: Final = r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
"""App, process, service and stream names (the config's rule, CF-04)."""

DEFAULT_CONTAINER_MAX: Final = 1000
"""Default cap on the items of a ``list``/``dict`` param without a ``Len``."""

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1


@attrs.frozen
class Len:
    """Bounds on the length of a string, binary, array or map param."""

    min: int = 0
    max: int | None = None


@attrs.frozen(kw_only=True)
class Range:
    """Bounds on a number param (inclusive ``ge``/``le``, exclusive ``gt``/``lt``)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def check(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def describe(self) -> str:
        parts = [
            f"{op} {bound:g}"
            for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if bound is not None
        ]
        return " and ".join(parts)


@attrs.frozen
class Match:
    """The whole string must match ``pattern``; ``description`` is shown on mismatch."""

    pattern: str
    description: str


Name = Annotated[
    str,
    Len(1, NAME_MAX),
    Match(NAME_PATTERN, "a name (letters, digits, '_', '.', '-'; at most 64 characters)"),
]
"""An app/process/service name: ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``, no ``..``."""

Text = Annotated[str, Len(0, TEXT_MAX)]
"""Free text of at most ``TEXT_MAX`` (4 KiB) characters: the default for ``str``."""


class _Invalid(Exception):
    """One validation failure, raised inside a validator and collected by the schema."""

    def __init__(
        self, path: str, expected: str, value: object, *, problem: str | None = None
    ) -> None:
        super().__init__(path)
        self.path = path
        self.text = problem or f"expected {expected}, got {describe(value)}"


_Validator = Callable[[object, str], object]


@attrs.frozen(kw_only=True)
class ParamInfo:
    """One declared param: its name, whether it is required, and what it accepts."""

    name: str
    required: bool
    expects: str
    default: object = None


@attrs.frozen(kw_only=True)
class ParamSchema:
    """The params of one method; :meth:`validate` turns a raw map into handler kwargs."""

    method: str
    params: tuple[ParamInfo, ...]
    _validators: Mapping[str, _Validator] = attrs.field(alias="validators", repr=False)
    # Per param, worked out once: (name, required, validator, path); and the names.
    _plan: tuple[tuple[str, bool, _Validator, str], ...] = attrs.field(
        init=False, repr=False, eq=False
    )
    _declared: frozenset[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        plan = tuple(
            (p.name, p.required, self._validators[p.name], f"params.{p.name}") for p in self.params
        )
        object.__setattr__(self, "_plan", plan)
        object.__setattr__(self, "_declared", frozenset(p.name for p in self.params))

    def validate(self, raw: Mapping[str, object]) -> dict[str, object]:
        """Check and convert the named arguments of a request.

        Raises:
            InvalidParams: With every problem, each prefixed by its path;
                ``data["param"]`` names the first offending param.
        """
        problems: list[tuple[str, str]] = []
        declared = self._declared
        for key in raw:
            if key not in declared:
                problems.append((_key_text(key), self._unknown(key)))
        kwargs: dict[str, object] = {}
        for name, required, validator, path in self._plan:
            if name not in raw:
                if required:
                    expects = next(p.expects for p in self.params if p.name == name)
                    problems.append((name, f"{path}: missing (expected {expects})"))
                continue
            try:
                kwargs[name] = validator(raw[name], path)
            except _Invalid as invalid:
                problems.append((name, f"{invalid.path}: {invalid.text}"))
        if problems:
            raise InvalidParams(
                "; ".join(text for _, text in problems), data={"param": problems[0][0]}
            )
        return kwargs

    def _unknown(self, key: object) -> str:
        names = [p.name for p in self.params]
        if type(key) is not str:
            return f"params: keys must be strings, got {describe(key)}"
        text = f"params.{_key_text(key)}: unknown parameter"
        close = difflib.get_close_matches(key, names, n=1) if len(key) <= NAME_MAX else []
        if close:
            return f"{text}; did you mean {close[0]!r}?"
        if names:
            return f"{text} ({self.method} takes: {', '.join(names)})"
        return f"{text} ({self.method} takes no parameters)"


def _key_text(key: object) -> str:
    if type(key) is str and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
        return key
    return f"[{describe(key)}]"


# --------------------------------------------------------------------------- compiling


def schema_for(method: str, handler: Callable[..., object]) -> ParamSchema:
    """Compile the keyword-only params of ``handler`` into a :class:`ParamSchema`.

    Raises:
        TypeError: The signature is not ``(call, /, *, name: T = default, ...)``, a
            param lacks an annotation, or an annotation is not supported.
    """
    target: Any = handler
    while isinstance(target, functools.partial):
        target = target.func
    if not inspect.isfunction(target) and not inspect.ismethod(target):
        target = type(target).__call__
    signature = inspect.signature(handler)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception as exc:
        raise TypeError(f"{method}: cannot resolve the handler's annotations: {exc}") from exc
    parameters = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not parameters or parameters[0].kind not in positional:
        raise TypeError(f"{method}: a handler takes the Call as its first positional parameter")
    params: list[ParamInfo] = []
    validators: dict[str, _Validator] = {}
    for parameter in parameters[1:]:
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(
                f"{method}: parameter {parameter.name!r} must be keyword-only "
                "(declare params after `*`); *args and **kwargs are not allowed"
            )
        if parameter.name not in hints:
            raise TypeError(f"{method}: parameter {parameter.name!r} has no type annotation")
        where = f"{method}: parameter {parameter.name!r}"
        validator, expects = _compile(hints[parameter.name], where)
        required = parameter.default is inspect.Parameter.empty
        params.append(
            ParamInfo(
                name=parameter.name,
                required=required,
                expects=expects,
                default=None if required else parameter.default,
            )
        )
        validators[parameter.name] = validator
    return ParamSchema(method=method, params=tuple(params), validators=validators)


def _compile(annotation: object, where: str) -> tuple[_Validator, str]:
    markers: tuple[object, ...] = ()
    if typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        markers = tuple(extra)
    length = next((m for m in markers if isinstance(m, Len)), None)
    bounds = next((m for m in markers if isinstance(m, Range)), None)
    match = next((m for m in markers if isinstance(m, Match)), None)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)

    if annotation is str or annotation is bytes:
        return _sized(annotation, length or Len(0, TEXT_MAX), match)
    if (length is not None or match is not None) and origin not in (list, dict):
        raise TypeError(f"{where}: Len/Match apply to str, bytes, list and dict only")
    if bounds is not None and annotation not in (int, float):
        raise TypeError(f"{where}: Range applies to int and float only")
    if annotation is bool:
        return _exact(bool, "a boolean")
    if annotation is int:
        return _integer(bounds)
    if annotation is float:
        return _number(bounds)
    if annotation is None or annotation is type(None):
        return _exact(type(None), "nil")
    if annotation is object:
        return (lambda value, path: value), "any value"
    if origin is Literal:
        return _literal(args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _enum(annotation)
    if origin is list:
        (item_type,) = args or (object,)
        return _list(_compile(item_type, where), length)
    if origin is dict:
        key_type, value_type = args or (str, object)
        return _dict(_compile(key_type, where), _compile(value_type, where), length)
    if origin is typing.Union or origin is types.UnionType:
        return _union([_compile(arg, where) for arg in args])
    raise TypeError(f"{where}: unsupported annotation {annotation!r}")


def _exact(kind: type, expects: str) -> tuple[_Validator, str]:
    def validate(value: object, path: str) -> object:
        if type(value) is not kind:
            raise _Invalid(path, expects, value)
        return value

    return validate, expects


def _sized(kind: type, length: Len, match: Match | None) -> tuple[_Validator, str]:
    noun = "a string" if kind is str else "binary"
    unit = "characters" if kind is str else "bytes"
    lo = length.min
    hi = TEXT_MAX if length.max is None else length.max
    expects = match.description if match else f"{noun} of at most {hi} {unit}"
    if lo and not match:
        expects = f"{noun} of {lo} to {hi} {unit}"
    pattern = re.compile(match.pattern) if match else None

    def validate(value: object, path: str) -> object:
        if type(value) is not kind:
            raise _Invalid(path, expects, value)
        assert isinstance(value, str | bytes)
        if not lo <= len(value) <= hi:
            raise _Invalid(path, expects, value)
        if pattern is not None:
            assert isinstance(value, str)
            if not pattern.fullmatch(value):
                raise _Invalid(path, expects, value)
        return value

    return validate, expects


def _integer(bounds: Range | None) -> tuple[_Validator, str]:
    expects = "an integer" + (f" {bounds.describe()}" if bounds else "")

    def validate(value: object, path: str) -> object:
        if type(value) is not int:
            raise _Invalid(path, expects, value)
        assert isinstance(value, int)
        if not _INT_MIN <= value <= _INT_MAX or (bounds is not None and not bounds.check(value)):
            raise _Invalid(path, expects, value)
        return value

    return validate, expects


def _number(bounds: Range | None) -> tuple[_Validator, str]:
    expects = "a number" + (f" {bounds.describe()}" if bounds else "")

    def validate(value: object, path: str) -> object:
        if type(value) is not float and type(value) is not int:
            raise _Invalid(path, expects, value)
        assert isinstance(value, int | float)
        number = float(value)
        if not math.isfinite(number) or (bounds is not None and not bounds.check(number)):
            raise _Invalid(path, expects, value)
        return number

    return validate, expects


def _literal(choices: tuple[object, ...]) -> tuple[_Validator, str]:
    expects = "one of " + ", ".join(repr(c) for c in choices)

    def validate(value: object, path: str) -> object:
        for choice in choices:
            if type(value) is type(choice) and value == choice:
                return value
        raise _Invalid(path, expects, value)

    return validate, expects


def _enum(kind: type[enum.Enum]) -> tuple[_Validator, str]:
    members = {(type(m.value), m.value): m for m in kind}
    expects = "one of " + ", ".join(repr(m.value) for m in kind)

    def validate(value: object, path: str) -> object:
        try:
            return members[(type(value), value)]
        except (KeyError, TypeError):
            raise _Invalid(path, expects, value) from None

    return validate, expects


def _list(item: tuple[_Validator, str], length: Len | None) -> tuple[_Validator, str]:
    item_validate, item_expects = item
    lo = length.min if length else 0
    hi = length.max if length and length.max is not None else DEFAULT_CONTAINER_MAX
    expects = f"an array of at most {hi} items ({item_expects})"

    def validate(value: object, path: str) -> object:
        if type(value) is not list:
            raise _Invalid(path, expects, value)
        assert isinstance(value, list)
        if not lo <= len(value) <= hi:
            raise _Invalid(path, expects, value)
        return [item_validate(element, f"{path}[{index}]") for index, element in enumerate(value)]

    return validate, expects


def _dict(
    key: tuple[_Validator, str], item: tuple[_Validator, str], length: Len | None
) -> tuple[_Validator, str]:
    key_validate, _ = key
    item_validate, item_expects = item
    lo = length.min if length else 0
    hi = length.max if length and length.max is not None else DEFAULT_CONTAINER_MAX
    expects = f"a map of at most {hi} entries ({item_expects})"

    def validate(value: object, path: str) -> object:
        if type(value) is not dict:
            raise _Invalid(path, expects, value)
        assert isinstance(value, dict)
        if not lo <= len(value) <= hi:
            raise _Invalid(path, expects, value)
        result: dict[object, object] = {}
        for k, v in value.items():
            checked = key_validate(k, f"{path} key")
            result[checked] = item_validate(v, f"{path}.{_key_text(k)}")
        return result

    return validate, expects


def _union(options: list[tuple[_Validator, str]]) -> tuple[_Validator, str]:
    expects = " or ".join(expects for _, expects in options)

    def validate(value: object, path: str) -> object:
        deepest: _Invalid | None = None
        for option, _ in options:
            try:
                return option(value, path)
            except _Invalid as invalid:
                if invalid.path != path and (
                    deepest is None or len(invalid.path) > len(deepest.path)
                ):
                    deepest = invalid
        if deepest is not None:
            raise deepest
        raise _Invalid(path, expects, value)

    return validate, expects
