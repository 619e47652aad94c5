"""Handler results to msgpack-ready values, without a general converter.

:func:`unstructure` gives what cattrs' msgpack converter
(``cattrs.preconf.msgpack.make_converter().unstructure``) gives for the values
replies carry, with none of its import and set-up cost (the daemon no longer
imports cattrs):

- ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes`` (and subclasses of
  ``str`` and ``bytes``): as they are;
- an enum: its ``value``; an enum that is also an ``int`` or a ``str``
  (``IntEnum``, ``StrEnum``, ``Signals``): as it is (msgpack packs it as its
  ``int`` or ``str``);
- an attrs record or a dataclass: a dict of its fields by attribute name (in
  order, those of ``__init__``: not the ``init=False`` ones), each value
  unstructured;
- a mapping (``dict`` and its subclasses, ``MappingProxyType``, any
  ``collections.abc.Mapping``): a dict, keys and values unstructured;
- a ``list``, ``tuple``, ``set``, ``frozenset`` or ``deque``: a list of its
  items unstructured; a ``typing.NamedTuple`` (``LogLine``): itself when its
  items are plain, else a tuple of them unstructured;
- a ``datetime``: its POSIX timestamp (``datetime.timestamp()``, a naive one in
  local time); a ``date``: the timestamp of its midnight UTC;
- a ``pathlib.Path``: its ``str``.

The difference: values are unstructured by what they are, never by the
annotations of the record fields holding them. The two agree whenever a value
is of its field's annotated type, and the field's annotation is not ``object``
(cattrs passes such a field's value through as it is) nor a named tuple's
string annotation (cattrs passes a named tuple whose module has ``from
__future__ import annotations`` through as it is, whatever its items).

Any other value is returned as it is, as cattrs does (a subclass of ``list``,
``tuple`` or ``int``, a ``bytearray``, ...). What msgpack cannot pack then
fails when the reply is encoded: the server answers that call
``INTERNAL_ERROR`` (logged as ``rpc_result_unencodable``, naming the type) and
the connection goes on.

Each class met is looked up once: its hook (and a record's field names) is kept
in a per-class table, and the plain types return at once.
"""

from __future__ import annotations

import enum
import sys
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["unstructure"]

_PLAIN: Final = frozenset({str, int, float, bool, type(None), bytes})
"""Classes returned as they are, without a lookup."""


def unstructure(value: object) -> object:
    """``value`` as msgpack-ready data (see the module doc for each type)."""
    cls = value.__class__
    if cls in _PLAIN:
        return value
    hook = _HOOKS.get(cls)
    if hook is None:
        hook = _HOOKS[cls] = _hook_for(cls)
    return hook(value)


def _mapping(value: Mapping[Any, Any]) -> dict[Any, Any]:
    plain, again = _PLAIN, unstructure
    return {
        (key if key.__class__ in plain else again(key)): (
            item if item.__class__ in plain else again(item)
        )
        for key, item in value.items()
    }


def _items(value: Any) -> list[Any]:
    plain, again = _PLAIN, unstructure
    return [item if item.__class__ in plain else again(item) for item in value]


def _as_is(value: object) -> object:
    return value


_HOOKS: Final[dict[type, Callable[[Any], object]]] = {
    dict: _mapping,
    list: _items,
    tuple: _items,
    set: _items,
    frozenset: _items,
    deque: _items,
}
"""The hook of each class met so far (filled by :func:`_hook_for`)."""


def _hook_for(cls: type) -> Callable[[Any], object]:
    """The hook of ``cls``, in the order cattrs' msgpack converter chooses one."""
    if issubclass(cls, (str, bytes)):
        return _as_is
    # A class of a module nobody imported cannot be met: no import here.
    pathlib = sys.modules.get("pathlib")
    if pathlib is not None and issubclass(cls, pathlib.Path):
        return str
    datetime = sys.modules.get("datetime")
    if datetime is not None and issubclass(cls, datetime.date):
        if issubclass(cls, datetime.datetime):
            return _timestamp
        return _midnight_utc
    if issubclass(cls, enum.Enum):
        if issubclass(cls, (int, str)):
            return _as_is
        if "_value_" in cls.__annotations__:  # a typed enum: its value is unstructured too
            return _typed_enum_value
        return _enum_value
    if issubclass(cls, Mapping):
        return _mapping
    if _is_named_tuple(cls):
        return _named_tuple
    names = _field_names(cls)
    if names is not None:
        return _record_hook(names)
    return _as_is


def _timestamp(value: Any) -> float:
    return value.timestamp()  # type: ignore[no-any-return]


def _midnight_utc(value: Any) -> float:
    import datetime

    midnight = datetime.datetime.combine(value, datetime.time(tzinfo=datetime.UTC))
    return midnight.timestamp()


def _enum_value(value: enum.Enum) -> object:
    return value.value


def _typed_enum_value(value: enum.Enum) -> object:
    return unstructure(value.value)


def _is_named_tuple(cls: type) -> bool:
    """A ``typing.NamedTuple`` class (``collections.namedtuple`` is left as it is)."""
    typing = sys.modules.get("typing")
    if typing is None or not issubclass(cls, tuple):
        return False
    return any(typing.NamedTuple in c.__dict__.get("__orig_bases__", ()) for c in cls.__mro__)


def _named_tuple(value: tuple[Any, ...]) -> tuple[Any, ...]:
    items = _items(value)
    if all(new is old for new, old in zip(items, value, strict=True)):
        return value  # plain values only: cattrs passes such a named tuple through
    return tuple(items)


def _field_names(cls: type) -> tuple[str, ...] | None:
    """The ``__init__`` field names of an attrs class or a dataclass, in order;
    ``None`` for another class."""
    fields = getattr(cls, "__attrs_attrs__", None)
    if fields is None and hasattr(cls, "__dataclass_fields__"):
        import dataclasses

        fields = dataclasses.fields(cls)
    if fields is None:
        return None
    return tuple(field.name for field in fields if field.init)


def _record_hook(names: tuple[str, ...]) -> Callable[[Any], dict[str, object]]:
    def record(value: object) -> dict[str, object]:
        plain, again = _PLAIN, unstructure
        result = {}
        for name in names:
            item = getattr(value, name)
            result[name] = item if item.__class__ in plain else again(item)
        return result

    return record
