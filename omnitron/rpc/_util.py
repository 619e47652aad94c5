"""Small helpers shared by the server and client halves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from supervision._groups import raise_collapsed

__all__ = ["collapse_single_exception_group"]


@contextlib.contextmanager
def collapse_single_exception_group() -> Iterator[None]:
    """Re-raise a nursery's group as its one meaningful exception (the library's rule).

    Public context managers own nurseries, and Trio nurseries always wrap; callers
    should be able to ``except DaemonNotRunning`` or ``except NotFound`` directly.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        raise_collapsed(group)
