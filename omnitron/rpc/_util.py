"""Small helpers shared by the server and client halves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["collapse_single_exception_group"]


@contextlib.contextmanager
def collapse_single_exception_group() -> Iterator[None]:
    """Re-raise a group holding one exception as that exception (trio-websocket style).

    Public context managers own nurseries, and Trio nurseries always wrap; callers
    should be able to ``except DaemonNotRunning`` or ``except NotFound`` directly.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if exc is group:
            raise
        raise exc from None
