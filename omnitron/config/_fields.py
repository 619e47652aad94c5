"""Reading raw values: the field readers, messages and the problem collector.

Each ``p_*`` reader takes one raw value and returns it typed or raises
:class:`Invalid`; :func:`read` attaches the field path and records the problem so
that validation goes on and reports everything at once.
"""

from __future__ import annotations

import datetime
import enum
import math
import os
import re
import signal
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ._errors import ConfigError, ConfigIssue
from ._locate import TomlLocator
from ._units import parse_duration, parse_size

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
Path_ = tuple[str | int, ...]

MAX_ISSUES = 200
MAX_INSTANCES = 1024
MAX_DURATION = 365 * 86400.0
MAX_ARG = 128 * 1024  # Linux MAX_ARG_STRLEN: longer single arguments cannot be exec'd
MAX_ENV_VARS = 4096
MAX_PATH = 4096
MAX_URL = 2048
MIN_LOG_SIZE = 1024

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
NO_STRINGS: tuple[str, ...] = ()
SECRET_PREFIX = "secret:"
"""An env value ``secret:NAME`` is a reference to a secret, resolved when the app starts."""

# --------------------------------------------------------------------------- messages


class Invalid(Exception):
    """A value is wrong; the message says why (the caller adds the path)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def describe(value: object) -> str:
    """``"an integer (3)"``, ``"a table"``: the TOML name of a value's type."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({number(value)})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"a string ({short(value)})"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time"
    return f"a {type(value).__name__}"


def number(value: int) -> str:
    """An int for a message; a Python config can pass one too large for ``str()``."""
    return str(value) if abs(value) < 10**18 else "a very large number"


def short(text: str, limit: int = 40) -> str:
    """``repr`` of ``text``, cut to about ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    if len(word) > 64:
        return ""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def render_path(path: Sequence[str | int]) -> str:
    """``("apps", 1, "env", "A B")`` -> ``apps[1].env['A B']`` (cattrs style)."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif (
            len(part) <= 64
            and part.isascii()
            and part.replace("_", "a").replace("-", "a").isalnum()
        ):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{short(part)}]")
    return "".join(out)


# --------------------------------------------------------------------------- context


@attrs.define
class BuildContext:
    """Where the data came from, and the problems found so far.

    Attributes:
        file: Reported in every issue.
        base_dir: Relative paths resolve against it.
        environ: ``${VAR}`` references in ``env`` values expand from it.
        locator: Finds the line of a field path in a TOML file.
        default_line: The line used when there is no locator (the
            ``define_ecosystem(...)`` call of a Python config).
    """

    file: Path | None
    base_dir: Path
    environ: Mapping[str, str]
    locator: TomlLocator | None = None
    default_line: int | None = None
    errors: list[ConfigIssue] = attrs.field(factory=list)
    warnings: list[ConfigIssue] = attrs.field(factory=list)
    inert: list[ConfigIssue] = attrs.field(factory=list)
    dropped: int = 0

    def line_of(self, path: Path_) -> int | None:
        if self.locator is not None:
            return self.locator.line_of(path)
        return self.default_line

    def issue(self, path: Path_, message: str) -> ConfigIssue:
        return ConfigIssue(
            file=self.file, path=render_path(path), message=message, line=self.line_of(path)
        )

    def error(self, path: Path_, message: str) -> None:
        if len(self.errors) >= MAX_ISSUES:
            self.dropped += 1
        else:
            self.errors.append(self.issue(path, message))

    def warn(self, path: Path_, message: str) -> None:
        if len(self.warnings) < MAX_ISSUES:
            self.warnings.append(self.issue(path, message))

    def note_inert(self, path: Path_, reason: str, *, yet: bool = True) -> None:
        """A key that is accepted but not acted on yet (see :func:`key`), or, with
        ``yet=False``, not in this configuration (``reason`` says why)."""
        if len(self.inert) < MAX_ISSUES:
            message = f"has no effect yet: {reason}" if yet else f"has no effect {reason}"
            self.inert.append(self.issue(path, message))

    def raise_if_errors(self) -> None:
        if not self.errors:
            return
        # In file order where lines are known; otherwise in the order found.
        issues = sorted(self.errors, key=lambda issue: issue.line or 0)
        if self.dropped:
            issues.append(
                ConfigIssue(
                    file=self.file, path="", message=f"... and {self.dropped} more problems"
                )
            )
        raise ConfigError(issues)


# --------------------------------------------------------------------------- field readers


def read_table(
    ctx: BuildContext, path: Path_, value: object, allowed: Collection[str]
) -> Mapping[str, Any]:
    """``value`` as a table whose keys are all in ``allowed``; ``{}`` if it is not a table.

    Keys whose value is ``None`` (possible from Python) count as absent.
    """
    if not isinstance(value, Mapping):
        ctx.error(path, f"expected a table, got {describe(value)}")
        return {}
    for key in value:
        if not isinstance(key, str):
            ctx.error(path, f"keys must be strings, got {describe(key)}")
        elif key not in allowed:
            hint = did_you_mean(key, allowed) or f" (allowed: {', '.join(allowed)})"
            ctx.error((*path, key), f"unknown key{hint}")
    return value


def read(
    ctx: BuildContext,
    table: Mapping[str, Any],
    path: Path_,
    key: str,
    parse: Callable[[Any], T],
    default: T,
) -> T:
    """``parse(table[key])``, or ``default`` when absent or invalid (the problem is recorded)."""
    value = table.get(key)
    if value is None:
        return default
    try:
        return parse(value)
    except Invalid as exc:
        ctx.error((*path, key), exc.message)
        return default


def p_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {describe(value)}")
    return value


def p_int(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {describe(value)}")
        if value < low:
            raise Invalid(f"must be >= {low}, got {number(value)}")
        if value > high:
            raise Invalid(f"must be <= {high}, got {number(value)}")
        return value

    return parse


def p_duration(*, positive: bool) -> Callable[[object], float]:
    def parse(value: object) -> float:
        try:
            seconds = parse_duration(value)
        except (TypeError, ValueError) as exc:
            raise Invalid(str(exc)) from None
        if positive and seconds == 0:
            raise Invalid("must be > 0")
        if seconds > MAX_DURATION:
            raise Invalid("must be at most 365d")
        return seconds

    return parse


def p_size(value: object) -> int:
    try:
        size = parse_size(value)
    except (TypeError, ValueError) as exc:
        raise Invalid(str(exc)) from None
    if size < MIN_LOG_SIZE:
        raise Invalid(f"must be at least 1KiB, got {size} bytes")
    return size


def p_enum(kind: type[E]) -> Callable[[object], E]:
    choices = [member.value for member in kind]

    def parse(value: object) -> E:
        if not isinstance(value, str):
            raise Invalid(f"expected one of {', '.join(choices)}; got {describe(value)}")
        if value not in choices:
            hint = did_you_mean(value, choices) or f" (expected one of {', '.join(choices)})"
            raise Invalid(f"unknown value {short(value)}{hint}")
        member: E = kind(value)
        return member

    return parse


def p_factor(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a number, got {describe(value)}")
    if not 1 <= value <= 100:  # also rejects NaN
        shown = number(value) if isinstance(value, int) else repr(value)
        raise Invalid(f"must be a number within 1..100, got {shown}")
    return float(value)


def p_text(value: object, *, limit: int = MAX_PATH) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    if not value:
        raise Invalid("must not be empty")
    if len(value) > limit:
        raise Invalid(f"too long ({len(value)} > {limit} characters)")
    if "\0" in value:
        raise Invalid("must not contain a NUL byte")
    return value


def p_strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise Invalid(f"expected an array of strings, got {describe(value)}")
    out = []
    for index, item in enumerate(value):
        try:
            out.append(p_text(item, limit=1024))
        except Invalid as exc:
            raise Invalid(f"item {index}: {exc.message}") from None
    return tuple(out)


def p_signal(value: object) -> signal.Signals:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(f"expected a signal name like 'SIGTERM', got {describe(value)}")
    if isinstance(value, int):
        try:
            return signal.Signals(value)
        except ValueError:
            raise Invalid(f"unknown signal number {number(value)}") from None
    name = value.upper() if len(value) <= 16 else value
    name = name if name.startswith("SIG") else "SIG" + name
    names = [member.name for member in signal.Signals if not member.name.startswith("SIG_")]
    if name not in names:
        raise Invalid(f"unknown signal {short(value)}{did_you_mean(name, names)}")
    return signal.Signals[name]


def p_port(value: object) -> int:
    return p_int(1, 65535)(value)


def p_url(value: object) -> str:
    text = p_text(value, limit=MAX_URL)
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise Invalid("must not contain spaces or control characters")
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise Invalid(f"invalid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"must be an http:// or https:// URL with a host, got {short(text)}")
    if port == 0:
        raise Invalid("port out of range 1-65535")
    return text


def check_name(value: object, what: str) -> str:
    """A project, app or stack name: ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``, no ``..``."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    if len(value) > 64 or not _NAME.fullmatch(value) or ".." in value:
        raise Invalid(f"invalid {what} name {short(value)}: {NAME_RULE}")
    return value


# --------------------------------------------------------------------------- paths and env


def resolve(ctx: BuildContext, value: object) -> Path:
    """A path string resolved lexically against the config directory."""
    text = p_text(value)
    return Path(os.path.normpath(ctx.base_dir / text))


def inside_project(ctx: BuildContext, path: Path) -> bool:
    """Realpath containment: symlinks cannot lead out of the project directory."""
    real = Path(os.path.realpath(path))
    return real.is_relative_to(os.path.realpath(ctx.base_dir))


def p_interpreter(ctx: BuildContext) -> Callable[[object], str]:
    """A Python interpreter: a bare name looked up on ``PATH`` when used
    (``python3.12``), or a path resolved against the config directory without
    following symbolic links (a virtualenv's ``bin/python`` is one)."""

    def parse(value: object) -> str:
        text = p_text(value)
        if "/" not in text:
            return text
        path = resolve(ctx, text)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise Invalid(f"not an executable file: {path}")
        return str(path)

    return parse


def p_directory(ctx: BuildContext) -> Callable[[object], Path]:
    def parse(value: object) -> Path:
        path = resolve(ctx, value)
        if not path.is_dir():
            raise Invalid(f"not an existing directory: {path}")
        return path

    return parse


def expand(text: str, environ: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``.

    A ``$`` followed by anything else is kept as is. One left-to-right scan.
    """
    out: list[str] = []
    position = 0
    while True:
        dollar = text.find("$", position)
        if dollar < 0:
            out.append(text[position:])
            return "".join(out)
        out.append(text[position:dollar])
        follower = text[dollar + 1 : dollar + 2]
        if follower == "$":
            out.append("$")
            position = dollar + 2
        elif follower == "{":
            close = text.find("}", dollar + 2)
            if close < 0:
                raise Invalid("unterminated '${' (write '$$' for a literal '$')")
            name, has_default, default = text[dollar + 2 : close].partition(":-")
            if not (name.isascii() and name.isidentifier()):
                raise Invalid(f"invalid variable name {short(name)} in '${{...}}'")
            value = environ.get(name)
            if has_default and not value:
                value = default
            if value is None:
                raise Invalid(f"undefined variable {name if len(name) <= 64 else short(name)}")
            out.append(value)
            position = close + 1
        else:
            out.append("$")
            position = dollar + 1


def env_value(value: object, environ: Mapping[str, str]) -> str:
    """The explicit rule for env values: strings are expanded, booleans become
    ``"true"``/``"false"``, integers their decimal form, floats their shortest
    ``repr``; anything else is rejected. Messages never echo the value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) >= 10**64:
            raise Invalid("integer too large; write it as a string")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid("must be a finite number")
        return repr(value)
    if isinstance(value, str):
        if "\0" in value:
            raise Invalid(f"contains a NUL byte (at offset {value.index(chr(0))})")
        if len(value) > MAX_ARG:
            raise Invalid(f"too long ({len(value)} > {MAX_ARG} characters)")
        expanded = expand(value, environ)
        if len(expanded) > MAX_ARG:
            raise Invalid(f"too long ({len(expanded)} > {MAX_ARG} characters)")
        if secret_reference(expanded) == "":
            raise Invalid(
                f"invalid secret reference: the name after {SECRET_PREFIX!r} must be a "
                f"secret name ({NAME_RULE})"
            )
        return expanded
    if isinstance(value, Mapping):
        raise Invalid("nested tables are not allowed; values must be strings, numbers or booleans")
    if isinstance(value, list | tuple):
        raise Invalid("arrays are not allowed; values must be strings, numbers or booleans")
    raise Invalid(f"expected a string, number or boolean, got {describe(value)}")


def secret_reference(value: str) -> str | None:
    """The secret name an env value refers to (``secret:NAME``), or ``None`` for a
    plain value. A malformed reference gives ``""`` (the config rejects it)."""
    if not value.startswith(SECRET_PREFIX):
        return None
    name = value[len(SECRET_PREFIX) :]
    if len(name) > 64 or not _NAME.fullmatch(name) or ".." in name:
        return ""
    return name


def build_env(ctx: BuildContext, path: Path_, value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        ctx.error(path, f"expected a table of NAME = value, got {describe(value)}")
        return {}
    if len(value) > MAX_ENV_VARS:
        ctx.error(path, f"too many variables ({len(value)} > {MAX_ENV_VARS})")
        return {}
    env: dict[str, str] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key or len(key) > 256:
            shown = short(key) if isinstance(key, str) else describe(key)
            ctx.error(
                path,
                f"invalid variable name {shown}: must be a non-empty string without '=' or NUL",
            )
            continue
        if raw is None:
            continue
        try:
            env[key] = env_value(raw, ctx.environ)
        except Invalid as exc:
            ctx.error((*path, key), exc.message)
    return env


# --------------------------------------------------------------------------- the schema
#
# The model (``_model.py``) is the one place a key is written: each attrs field that
# is a config key carries a :class:`Key` in its metadata (built with :func:`key`),
# with the reader of its value. The builder takes the allowed keys, the simple
# values and their defaults from there; keys whose value is a table or needs other
# keys (``command``, ``ready``, ``backoff``...) have no reader and are built by hand.

KEY = "omnitron.config.key"


@attrs.frozen
class Key:
    """What the model says about one configuration key.

    Attributes:
        reader: Gives the value reader for a build (``None``: built by ``_build``).
        inert: Set while the key is accepted but the daemon does not act on it: why
            (ends in the warning ``has no effect yet: ...``). The change that builds
            the key deletes this marker, and with it the warning.
    """

    reader: Callable[[BuildContext], Callable[[Any], Any]] | None = None
    inert: str | None = None


def key(
    parse: Callable[[Any], Any] | None = None,
    *,
    per_build: Callable[[BuildContext], Callable[[Any], Any]] | None = None,
    inert: str | None = None,
) -> dict[str, Key]:
    """The field metadata that makes an attrs field a configuration key.

    Args:
        parse: Reads the raw value (a ``p_*`` reader); omitted for keys built by hand.
        per_build: Instead of ``parse``: gives the reader for a build (e.g. paths
            resolved against its directory).
        inert: Marks a key that is accepted but has no effect yet; says why.
    """
    reader = per_build if per_build is not None else None if parse is None else lambda _: parse
    return {KEY: Key(reader=reader, inert=inert)}


def keys_of(cls: type) -> tuple[str, ...]:
    """The configuration keys of a model record, in field order."""
    return tuple(field.name for field in attrs.fields(cls) if KEY in field.metadata)


def open_table(ctx: BuildContext, cls: type, path: Path_, value: object) -> Mapping[str, Any]:
    """:func:`read_table` with the keys of ``cls``; notes each key set that is inert."""
    table = read_table(ctx, path, value, keys_of(cls))
    for field in attrs.fields(cls):
        spec = field.metadata.get(KEY)
        if spec is not None and spec.inert is not None and table.get(field.name) is not None:
            ctx.note_inert((*path, field.name), spec.inert)
    return table


def read_keys(
    ctx: BuildContext,
    cls: type,
    path: Path_,
    table: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every key of ``cls`` that has a reader: its value, else its default.

    The default is ``defaults[name]`` when given, else the model's (``None`` for a
    required field: the caller reports it missing).
    """
    values: dict[str, Any] = {}
    for field in attrs.fields(cls):
        spec = field.metadata.get(KEY)
        if spec is None or spec.reader is None:
            continue
        if defaults is not None and field.name in defaults:
            default = defaults[field.name]
        elif field.default is attrs.NOTHING:
            default = None
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            default = field.default.factory()
        else:
            default = field.default
        values[field.name] = read(ctx, table, path, field.name, spec.reader(ctx), default)
    return values


def p_name(what: str) -> Callable[[object], str]:
    """The reader of a project, app or stack name (see :func:`check_name`)."""
    return lambda value: check_name(value, what)
