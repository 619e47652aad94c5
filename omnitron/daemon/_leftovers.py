"""Processes a dead daemon left behind: found, then terminated before the relaunch.

When a daemon dies without stopping its apps (SIGKILL, OOM killer, a crash),
their processes keep running unsupervised. The next daemon on the same home
does not re-adopt them (FAULTS.md, "Daemon death"): before it relaunches what
``state.json`` says should run, it finds them with :func:`find_leftovers` and
stops their whole trees with :func:`terminate_leftovers`, so no app runs twice
and nothing is left orphaned (PL-14, SG-06).

A managed process is recognised by the markers the daemon puts in its
environment (``OMNITRON_HOME``, ``OMNITRON_APP``, ``OMNITRON_INSTANCE``; see
:func:`marker_environ`), never by its command name. The home must match
exactly and the app and instance markers must be well formed, so a shell that
merely exports ``OMNITRON_HOME`` is not a leftover.

No signal reaches a process whose identity was not checked first (promise 4):
on Linux each process is pinned by a pidfd once its pid and start time are
confirmed, and every later signal goes through that pidfd; without pidfds the
identity is re-read just before each signal. Typical use, before the
supervision tree starts::

    leftovers = await trio.to_thread.run_sync(find_leftovers, home.path)
    report = await terminate_leftovers(leftovers, timeout=5.0)
    if report.escaped:
        ...  # name them: they could not be killed
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Final

import attrs

from supervision import ProcessIdentity, TerminateReport, find_marked, terminate_processes

from ..state import LoadResult, StateSource
from ._tree import ENV_APP, ENV_HOME, ENV_INSTANCE, _home_marker, marker_environ

__all__ = [
    "DEFAULT_KILL_TIMEOUT",
    "Leftover",
    "TerminateReport",
    "find_leftovers",
    "marker_environ",
    "may_have_leftovers",
    "terminate_leftovers",
]

DEFAULT_KILL_TIMEOUT: Final = 2.0
"""How long :func:`terminate_leftovers` waits after SIGKILL before calling a process escaped."""


def _parse_markers(environ: Mapping[str, str]) -> tuple[str, int] | None:
    app = environ.get(ENV_APP, "")
    instance = environ.get(ENV_INSTANCE, "")
    if not app or not (instance.isascii() and instance.isdecimal()):
        return None
    return app, int(instance)


@attrs.frozen(kw_only=True)
class Leftover:
    """A process that carries this home's markers: started by an earlier daemon.

    Attributes:
        pid: Its pid.
        create_time: Its start time, in the units of :class:`ProcessIdentity`
            (seconds since boot on Linux), so it compares with the
            ``start_time`` recorded in ``state.json``.
        app: Its ``OMNITRON_APP`` marker.
        instance: Its ``OMNITRON_INSTANCE`` marker.
        cmdline: Its command line when it was found (for messages only).
        boot_id: The boot it was found in, if known.
    """

    pid: int
    create_time: float
    app: str
    instance: int
    cmdline: tuple[str, ...] = ()
    boot_id: str | None = None

    @property
    def identity(self) -> ProcessIdentity:
        """The process's identity, comparable with a ``ProcessIdentity.of`` taken later."""
        return ProcessIdentity(pid=self.pid, start_time=self.create_time, boot_id=self.boot_id)


def may_have_leftovers(*, lock_reclaimed: bool, loaded: LoadResult, reset: bool) -> bool:
    """Whether the previous daemon of this home may have left processes behind.

    The scan (:func:`find_leftovers`) reads every process on the machine, so a
    daemon skips it when its predecessor provably stopped its apps: the pid file
    was released (every stop short of dying removes it), ``state.json`` was read
    as written (not the backup, not moved aside, no problem found) and records no
    running process. Anything else (a reclaimed pid file, a pid in the state, a
    state that could not be trusted or was reset) scans.
    """
    if lock_reclaimed or reset:
        return True
    if loaded.source is StateSource.BACKUP or loaded.warnings or loaded.moved_aside:
        return True
    return any(process.pid is not None for app in loaded.state.apps for process in app.processes)


def find_leftovers(
    home: str | os.PathLike[str], *, exclude_pids: AbstractSet[int] = frozenset()
) -> list[Leftover]:
    """Find the processes, owned by this user, that carry ``home``'s markers.

    A process matches when its ``OMNITRON_HOME`` equals ``home`` (made
    absolute) exactly and it has an app name and a decimal instance number. The
    calling process, its ancestors and ``exclude_pids`` never match. Processes
    whose environment cannot be read (another user's, a zombie, gone) are
    skipped; so is one whose pid was recycled while it was being read
    (:func:`supervision.find_marked`).

    Call it before the daemon starts any app (or exclude what it started).
    Blocking: it reads ``/proc`` for every process; run it with
    ``trio.to_thread.run_sync``.

    Args:
        home: The daemon's home directory.
        exclude_pids: Pids that must not be reported.

    Returns:
        The leftovers, ordered by app, instance and pid.
    """
    found = []
    for marked in find_marked(ENV_HOME, _home_marker(home), exclude_pids=exclude_pids):
        markers = _parse_markers(marked.environ)
        if markers is None:
            continue
        identity = marked.identity
        assert identity.start_time is not None  # read from /proc
        found.append(
            Leftover(
                pid=identity.pid,
                create_time=identity.start_time,
                app=markers[0],
                instance=markers[1],
                cmdline=marked.cmdline,
                boot_id=identity.boot_id,
            )
        )
    found.sort(key=lambda leftover: (leftover.app, leftover.instance, leftover.pid))
    return found


async def terminate_leftovers(
    leftovers: Iterable[Leftover],
    *,
    # The grace period between SIGTERM and SIGKILL, not a deadline on the call.
    timeout: float = 5.0,  # noqa: ASYNC109
    kill_timeout: float = DEFAULT_KILL_TIMEOUT,
) -> TerminateReport:
    """Stop the leftovers and all their descendants: SIGTERM, then SIGKILL.

    :func:`supervision.terminate_processes` on the leftovers' identities: each
    leftover whose pid and start time still match is pinned, with its
    descendants; SIGTERM and SIGCONT go to each leftover's group and to every
    pinned process; whatever runs ``timeout`` seconds later is killed.

    Cancellation: whatever is still running is killed with SIGKILL (shielded,
    waiting at most ``kill_timeout``) before ``Cancelled`` propagates.

    Raises:
        ValueError: A timeout is negative.
    """
    return await terminate_processes(
        [leftover.identity for leftover in leftovers], timeout=timeout, kill_timeout=kill_timeout
    )
