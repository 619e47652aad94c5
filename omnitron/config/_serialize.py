"""The plain-data (TOML-shaped) form of the records, through a private cattrs converter.

Imported lazily: only ``Ecosystem.to_dict()`` and ``define_ecosystem`` given typed
records need it, so loading a TOML file never imports cattrs.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from ._fields import KEY
from ._model import DEFAULT_WATCH_IGNORE, ReadyConfig, ReadyKind, WatchConfig

__all__ = ["to_raw", "unstructure"]


def _ready(ready: ReadyConfig) -> str | dict[str, Any]:
    if ready.kind is ReadyKind.ON_SPAWN:
        return "on_spawn"
    if ready.kind is ReadyKind.NOTIFY:
        return "notify" if ready.watchdog is None else {"notify": {"watchdog": ready.watchdog}}
    if ready.kind is ReadyKind.TCP:
        return {"tcp": ready.port, "host": ready.host}
    if ready.kind is ReadyKind.HTTP:
        return {"http": ready.url}
    if ready.kind is ReadyKind.AFTER:
        return {"after": ready.seconds}
    return {"fd": ready.fd}


def _watch(watch: WatchConfig) -> dict[str, Any]:
    # The defaults are added again on load: give back only the app's own patterns.
    ignore = watch.ignore
    if ignore[: len(DEFAULT_WATCH_IGNORE)] == DEFAULT_WATCH_IGNORE:
        ignore = ignore[len(DEFAULT_WATCH_IGNORE) :]
    return {"directory": str(watch.directory), "ignore": list(ignore), "debounce": watch.debounce}


def _without_none(cls: type, converter: cattrs.Converter) -> Callable[[Any], dict[str, Any]]:
    # Only configuration keys: not an ecosystem's base_dir or warnings, a stack's name...
    omitted: dict[str, Any] = {
        field.name: override(omit=True) for field in attrs.fields(cls) if KEY not in field.metadata
    }
    generated: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(cls, converter, **omitted)

    def unstructure(obj: Any) -> dict[str, Any]:
        return {key: value for key, value in generated(obj).items() if value is not None}

    return unstructure


@functools.cache
def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(unstruct_collection_overrides={Sequence: list, tuple: list})
    converter.register_unstructure_hook(Path, str)
    converter.register_unstructure_hook(signal.Signals, lambda sig: sig.name)
    converter.register_unstructure_hook(ReadyConfig, _ready)
    converter.register_unstructure_hook(WatchConfig, _watch)
    converter.register_unstructure_hook_factory(
        attrs.has, lambda cls: _without_none(cls, converter)
    )
    return converter


def unstructure(obj: Any) -> Any:
    """A record as plain data: the shape the TOML file has."""
    return _converter().unstructure(obj)


def to_raw(value: Any) -> Any:
    """``value`` with every record inside it (lists, tables) turned into plain data."""
    if attrs.has(type(value)):
        return unstructure(value)
    if isinstance(value, list | tuple):
        return [to_raw(item) for item in value]
    if isinstance(value, Mapping):
        return {key: to_raw(item) for key, item in value.items()}
    return value
