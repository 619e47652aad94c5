"""The seam between the supervisor engine and the things it supervises.

Each child spec type (:class:`ProcessChild`, :class:`TaskChild`,
:class:`SupervisorSpec`, and the fake in :mod:`supervision.testing`) makes a
:class:`Runner` for its slot. The engine runs one *generation* at a time with
:meth:`Runner.run` inside a task of its own and stops it by cancelling that task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from ._events import Event
from ._exit import ExitStatus

if TYPE_CHECKING:
    from ._host import ProcessHost

__all__ = ["Runner", "RunnerContext", "StopReport"]


@attrs.frozen
class StopReport:
    """What happened when a running generation was stopped by its supervisor.

    Attributes:
        exit: How it ended (``None`` if it had not started a process yet).
        killed: ``True`` if it outlived ``stop_timeout`` and was SIGKILLed.
        escaped: PIDs of descendants that could not be killed.
    """

    exit: ExitStatus | None = None
    killed: bool = False
    escaped: tuple[int, ...] = ()


@attrs.frozen
class RunnerContext:
    """What a runner gets from its supervisor.

    Attributes:
        path: The child's path in the tree.
        publish: Publishes an event to the tree's subscribers (never blocks).
        host: Process-wide services for process leaves (orphan reaping, ...).
    """

    path: tuple[str, ...]
    publish: Callable[[Event], None]
    host: ProcessHost


class Runner(Protocol):
    """Runs the generations of one child slot."""

    @property
    def pid(self) -> int | None:
        """The pid of the current generation's process, if any."""

    @property
    def stop_report(self) -> StopReport | None:
        """Set by :meth:`run` when it was cancelled (stopped by the supervisor)."""

    async def run(
        self,
        spawned: Callable[[int | None], None],
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> ExitStatus:
        """Run one generation.

        Calls ``spawned(pid)`` as soon as the child exists, then
        ``task_status.started(pid)`` once it is ready, then returns how it ended.
        Raises :class:`~supervision.StartFailure` if it cannot start or become ready.

        Cancellation: stops the child (stop signal, ``stop_timeout``, SIGKILL —
        shielded), records :attr:`stop_report`, and re-raises ``Cancelled``.
        """

    async def aclose(self) -> None:
        """Release resources kept across generations (listening sockets, ...)."""
