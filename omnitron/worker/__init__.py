"""Module-worker runtime: what a worker module imports, and the worker's entry point.

In a process's module::

    from omnitron.worker import service, public, on_start, on_stop, health_check

    @service("users")
    class Users:
        @on_start
        async def connect(self) -> None: ...

        @public
        async def find_by_id(self, uid: str) -> dict: ...

``python -m omnitron.worker describe BOOTSTRAP`` and ``python -m omnitron.worker
serve BOOTSTRAP PROCESS`` are run by the daemon with the app's interpreter (see
:mod:`omnitron.worker.__main__` and ``docs/workers.md``). Importing this package
costs no Trio: the decorators only mark what they decorate.
"""

from __future__ import annotations

from ._api import (
    WorkerInfo,
    current_worker,
    health_check,
    on_start,
    on_stop,
    public,
    service,
)

__all__ = [
    "WorkerInfo",
    "current_worker",
    "health_check",
    "on_start",
    "on_stop",
    "public",
    "service",
]
