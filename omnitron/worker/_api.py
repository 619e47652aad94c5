"""The decorators a worker module uses; they only mark what they decorate.

Discovery (:mod:`._discover`) reads the marks when the worker imports the module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, TypeVar

import attrs

__all__ = [
    "METHOD_NAME",
    "SERVICE_NAME",
    "WorkerInfo",
    "current_worker",
    "health_check",
    "on_start",
    "on_stop",
    "public",
    "service",
]

SERVICE_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,30}")
"""A service name: a lower-case identifier (it is the first half of ``service.method``)."""
METHOD_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
"""A public method name: a lower-case identifier not starting with ``_``."""
RESERVED_SERVICES: Final = frozenset({"worker", "daemon"})

SERVICE_MARK: Final = "__omnitron_service__"
PUBLIC_MARK: Final = "__omnitron_public__"
LIFECYCLE_MARK: Final = "__omnitron_lifecycle__"

_C = TypeVar("_C", bound=type)
_F = TypeVar("_F", bound=Callable[..., object])


def service(name: str) -> Callable[[_C], _C]:
    """Mark a class as the service ``name``; the worker makes one instance of it.

    The class is instantiated with no arguments when the worker starts. Its
    :func:`public` methods become ``name.method`` for ``omnitron exec``.

    Raises:
        ValueError: ``name`` is not a lower-case identifier (``[a-z][a-z0-9_]*``, at
            most 31 characters) or is reserved (``worker``, ``daemon``).
        TypeError: The decorated object is not a class.
    """
    if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
        raise ValueError(
            f"@service({name!r}): a service name is a lower-case identifier "
            "([a-z][a-z0-9_]*, at most 31 characters)"
        )
    if name in RESERVED_SERVICES:
        raise ValueError(f"@service({name!r}): {name!r} is reserved for omnitron's own methods")

    def mark(cls: _C) -> _C:
        if not isinstance(cls, type):
            raise TypeError(f"@service({name!r}) decorates a class, not {type(cls).__name__}")
        setattr(cls, SERVICE_MARK, name)
        return cls

    return mark


def public(fn: _F) -> _F:
    """Make a service method callable from outside (``omnitron exec``, other processes).

    Only methods marked ``@public`` are reachable; arguments are checked against
    the signature before the call. ``async def`` methods run concurrently; plain
    ``def`` methods run inline on the worker's event loop (keep them short).

    Raises:
        ValueError: The method's name is not a lower-case identifier, or starts with ``_``.
        TypeError: The decorated object is not a function.
    """
    name = getattr(fn, "__name__", None)
    if not callable(fn) or not isinstance(name, str):
        raise TypeError(f"@public decorates a method, not {type(fn).__name__}")
    if not METHOD_NAME.fullmatch(name):
        raise ValueError(
            f"@public {name}: a public method name is a lower-case identifier "
            "([a-z][a-z0-9_]*, at most 32 characters, not starting with '_')"
        )
    setattr(fn, PUBLIC_MARK, True)
    return fn


def _lifecycle(kind: str) -> Callable[[_F], _F]:
    def mark(fn: _F) -> _F:
        if not callable(fn):
            raise TypeError(f"@{kind} decorates a function or method, not {type(fn).__name__}")
        setattr(fn, LIFECYCLE_MARK, kind)
        return fn

    mark.__name__ = kind
    mark.__doc__ = f"Mark a method (or module-level function) as the ``{kind}`` step."
    return mark


on_start = _lifecycle("on_start")
"""Run when the worker starts, before it listens (a service method or module function)."""
on_stop = _lifecycle("on_stop")
"""Run on shutdown (SIGTERM), after in-flight calls finished, within the stop deadline."""
health_check = _lifecycle("health_check")
"""Report health: return ``True``/``None`` (ok), ``False``, ``(ok, detail)`` or
``{"ok": bool, "detail": str}``; raising counts as not ok."""


@attrs.frozen(kw_only=True)
class WorkerInfo:
    """Who this worker process is (for hooks and services)."""

    system: str
    process: str
    instance: int
    bootstrap: str


_current: list[WorkerInfo] = []


def current_worker() -> WorkerInfo:
    """This process's :class:`WorkerInfo`.

    Raises:
        RuntimeError: Not running under ``python -m omnitron.worker serve``.
    """
    if not _current:
        raise RuntimeError("not running in an omnitron worker (python -m omnitron.worker serve)")
    return _current[0]


def set_current_worker(info: WorkerInfo) -> None:
    _current[:] = [info]
