"""Every exception the supervision library raises.

Each error derives from :class:`SupervisionError`; where a builtin fits, the
error also derives from it (``InvalidSpec`` is a ``ValueError``), so callers
can catch either.
"""

from __future__ import annotations


class SupervisionError(Exception):
    """Base class of every error raised by :mod:`supervision`."""


class InvalidSpec(SupervisionError, ValueError):
    """A spec was built with a bad value; the message names the field."""


class InvalidSpecType(SupervisionError, TypeError):
    """A spec field was given a value of the wrong type; the message names the field."""


class StartFailure(SupervisionError):
    """A child could not be started or did not become ready in time.

    Attributes:
        path: The child's path in the tree.
        reason: Human-readable reason, e.g. ``"readiness timeout after 3s"``.
    """

    def __init__(self, path: tuple[str, ...], reason: str) -> None:
        super().__init__(f"{'/'.join(path)}: {reason}")
        self.path = path
        self.reason = reason


class SpawnError(StartFailure):
    """The operating system refused to start a process (missing executable, ...).

    Attributes:
        errno: The OS error number, or ``None``.
        filename: The path the OS complained about (the executable or the cwd).
    """

    def __init__(
        self, path: tuple[str, ...], reason: str, *, errno: int | None, filename: str | None
    ) -> None:
        super().__init__(path, reason)
        self.errno = errno
        self.filename = filename


class SupervisorGaveUp(SupervisionError):
    """A supervisor exceeded its restart intensity and shut itself down.

    The last child exit is chained as ``__cause__`` where it was an exception (a
    start failure, a task that raised).

    Attributes:
        path: The path of the supervisor that gave up.
        restarts: How many restarts happened inside the window.
        window: The intensity window in seconds.
        child: The name of the child whose exit tipped the balance.
        last: How that child ended, e.g. ``"child 'cache' failed to start:
            executable not found: redis-server"`` (empty if unknown).
    """

    def __init__(
        self,
        path: tuple[str, ...],
        *,
        restarts: int,
        window: float,
        child: str,
        last: str = "",
    ) -> None:
        super().__init__(
            f"supervisor {'/'.join(path)} gave up: restart limit exceeded "
            f"({restarts} restarts within {window:g}s); last: {last or f'child {child!r}'}"
        )
        self.path = path
        self.restarts = restarts
        self.window = window
        self.child = child
        self.last = last


class ChildNotFound(SupervisionError, LookupError):
    """No child with that name exists in this supervisor."""


class ChildAlreadyExists(SupervisionError, ValueError):
    """A child with that name already exists in this supervisor."""


class ChildRunning(SupervisionError, RuntimeError):
    """The operation needs the child to be stopped first (e.g. ``delete_child``)."""


class SupervisorNotRunning(SupervisionError, RuntimeError):
    """The supervisor has stopped; its handle accepts no more commands."""
