"""Lifecycle events published by a supervision tree.

Every event carries the child's ``path`` in the tree (the root supervisor's name
first), the ``pid`` where there is one, the wall-clock ``timestamp`` and the
``monotonic`` time of Trio's clock (useful in tests under a ``MockClock``).
"""

from __future__ import annotations

import time

import attrs
import trio

from ._exit import ExitStatus

__all__ = [
    "ChildExited",
    "ChildReady",
    "ChildRestarting",
    "ChildStarted",
    "ChildStopped",
    "Event",
    "EventsDropped",
    "SupervisorGaveUp",
]


def _now() -> float:
    return time.time()


def _monotonic() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # outside of a Trio run (e.g. building events in a test)
        return time.monotonic()


@attrs.frozen(kw_only=True)
class Event:
    """Base class of every lifecycle event."""

    path: tuple[str, ...]
    pid: int | None = None
    timestamp: float = attrs.field(factory=_now, eq=False)
    monotonic: float = attrs.field(factory=_monotonic, eq=False)

    @property
    def name(self) -> str:
        """The last element of ``path``: the child's (or supervisor's) name."""
        return self.path[-1]


@attrs.frozen(kw_only=True)
class ChildStarted(Event):
    """A child was spawned (process) or scheduled (task); it is not ready yet."""

    generation: int


@attrs.frozen(kw_only=True)
class ChildReady(Event):
    """A child reported ready by its readiness protocol."""

    generation: int


@attrs.frozen(kw_only=True)
class ChildExited(Event):
    """A child ended without being asked to (crash, normal exit, or start failure)."""

    exit: ExitStatus
    start_failure: bool = False

    @property
    def code(self) -> int | None:
        return self.exit.code

    @property
    def signal(self) -> int | None:
        return self.exit.signal

    @property
    def exception(self) -> BaseException | None:
        return self.exit.exception


@attrs.frozen(kw_only=True)
class ChildRestarting(Event):
    """A child will be restarted after ``delay`` seconds (its ``attempt``-th in a row)."""

    attempt: int
    delay: float


@attrs.frozen(kw_only=True)
class ChildStopped(Event):
    """A child was stopped by its supervisor.

    Attributes:
        exit: How it ended, if it was running.
        killed: ``True`` if it ignored ``stop_signal`` and had to be SIGKILLed.
        escaped: PIDs of descendants that left the child's process group and could
            not be killed (empty when the whole tree is gone).
    """

    exit: ExitStatus | None = None
    killed: bool = False
    escaped: tuple[int, ...] = ()


@attrs.frozen(kw_only=True)
class SupervisorGaveUp(Event):
    """A supervisor exceeded its restart intensity and stopped all its children.

    Attributes:
        child: The child whose exit tipped the balance.
        last: How it ended, e.g. ``"child 'cache' exited with code 1"``.
    """

    restarts: int
    window: float
    child: str
    last: str = ""


@attrs.frozen(kw_only=True)
class EventsDropped(Event):
    """Marker: this subscriber fell behind and ``count`` events were dropped."""

    count: int
