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

import contextlib
import functools
import math
import os
import select
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Final, NamedTuple

import attrs
import psutil
import trio

from ..state import ProcessIdentity
from ._tree import ENV_APP, ENV_HOME, ENV_INSTANCE, _home_marker, marker_environ

__all__ = [
    "DEFAULT_KILL_TIMEOUT",
    "Leftover",
    "TerminateReport",
    "find_leftovers",
    "marker_environ",
    "terminate_leftovers",
]

DEFAULT_KILL_TIMEOUT: Final = 2.0
"""How long :func:`terminate_leftovers` waits after SIGKILL before calling a process escaped."""

_HAVE_PIDFD: Final = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
_PROCFS: Final = sys.platform.startswith("linux") and os.path.isdir("/proc")


# --------------------------------------------------------------------------- markers


def _parse_markers(environ: Mapping[str, str]) -> tuple[str, int] | None:
    app = environ.get(ENV_APP, "")
    instance = environ.get(ENV_INSTANCE, "")
    if not app or not (instance.isascii() and instance.isdecimal()):
        return None
    return app, int(instance)


# --------------------------------------------------------------------------- /proc


class _Stat(NamedTuple):
    state: str
    ppid: int
    pgid: int
    start_time: float  # as ProcessIdentity.start_time: with the pid, names one process

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


@functools.cache
def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _read_stat(pid: int) -> _Stat | None:
    """State, parent, group and start time of ``pid``, read in one go; ``None`` if it is gone."""
    if not _PROCFS:  # pragma: no cover - platforms without /proc
        return _psutil_stat(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    end = raw.rfind(b")")
    fields = raw[end + 2 :].split()
    if end < 0 or len(fields) < 20:
        return None
    start = int(fields[19]) / _clock_ticks()  # the same value ProcessIdentity.of computes
    return _Stat(fields[0].decode("ascii", "replace"), int(fields[1]), int(fields[2]), start)


def _psutil_stat(pid: int) -> _Stat | None:  # pragma: no cover - platforms without /proc
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            state = "Z" if proc.status() == psutil.STATUS_ZOMBIE else "R"
            return _Stat(state, proc.ppid(), os.getpgid(pid), float(proc.create_time()))
    except (psutil.Error, OSError):
        return None


def _process_table() -> dict[int, _Stat]:
    table: dict[int, _Stat] = {}
    for pid in psutil.pids():
        stat = _read_stat(pid)
        if stat is not None:
            table[pid] = stat
    return table


def _ancestors(pid: int) -> set[int]:
    try:
        return {parent.pid for parent in psutil.Process(pid).parents()}
    except psutil.Error:
        return set()


# --------------------------------------------------------------------------- finding


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


def find_leftovers(
    home: str | os.PathLike[str], *, exclude_pids: AbstractSet[int] = frozenset()
) -> list[Leftover]:
    """Find the processes, owned by this user, that carry ``home``'s markers.

    A process matches when its ``OMNITRON_HOME`` equals ``home`` (made
    absolute) exactly and it has an app name and a decimal instance number. The
    calling process, its ancestors and ``exclude_pids`` never match. Processes
    whose environment cannot be read (another user's, a zombie, gone) are
    skipped; so is one whose pid was recycled while it was being read.

    Call it before the daemon starts any app (or exclude what it started).
    Blocking: it reads ``/proc`` for every process; run it with
    ``trio.to_thread.run_sync``.

    Args:
        home: The daemon's home directory.
        exclude_pids: Pids that must not be reported.

    Returns:
        The leftovers, ordered by app, instance and pid.
    """
    wanted = _home_marker(home)
    me = os.getpid()
    excluded = {me, *exclude_pids, *_ancestors(me)}
    uid = os.getuid()
    boot_id = ProcessIdentity.current().boot_id
    found = [
        leftover
        for pid in psutil.pids()
        if pid not in excluded and (leftover := _inspect(pid, wanted, uid, boot_id)) is not None
    ]
    found.sort(key=lambda leftover: (leftover.app, leftover.instance, leftover.pid))
    return found


def _inspect(pid: int, wanted: str, uid: int, boot_id: str | None) -> Leftover | None:
    before = _read_stat(pid)
    if before is None or before.zombie:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.uids().real != uid:
            return None
        environ = proc.environ()
        if environ.get(ENV_HOME) != wanted:
            return None
        markers = _parse_markers(environ)
        if markers is None:
            return None
        cmdline = tuple(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None
    after = _read_stat(pid)
    if after is None or after.start_time != before.start_time:
        return None  # the pid now names another process: what we read may be mixed up
    app, instance = markers
    return Leftover(
        pid=pid,
        create_time=before.start_time,
        app=app,
        instance=instance,
        cmdline=cmdline,
        boot_id=boot_id,
    )


# --------------------------------------------------------------------------- targets


class _Target:
    """One process to stop, identity confirmed, pinned by a pidfd where there are pidfds."""

    def __init__(self, pid: int, start_time: float, pidfd: int | None) -> None:
        self.pid = pid
        self.start_time = start_time
        self.pidfd = pidfd

    def is_same(self) -> bool:
        """Whether the pid still names this process (exited but unreaped counts)."""
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True  # it exists; it is just not ours to signal
            return True
        stat = _read_stat(self.pid)
        return stat is not None and stat.start_time == self.start_time

    def exited(self) -> bool:
        """Whether it has exited (a zombie has)."""
        if self.pidfd is not None:
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            return bool(poller.poll(0))
        stat = _read_stat(self.pid)
        return stat is None or stat.start_time != self.start_time or stat.zombie

    def send(self, sig: int) -> None:
        """Signal it; nothing happens if it is gone or the OS refuses."""
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            elif self.is_same():  # re-checked just before: a recycled pid is never signalled
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def send_group(self, sig: int) -> None:
        """Signal its process group, if it still leads one."""
        stat = _read_stat(self.pid)
        # The identity check comes after the read, so the group id read was this
        # process's own; while it is unreaped, no other process can lead that group.
        if stat is None or stat.pgid != self.pid or stat.start_time != self.start_time:
            return
        if not self.is_same():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _pin(pid: int, start_time: float, parent: _Target | None) -> _Target | None:
    """A target for ``pid`` if it is the process expected (and ``parent``'s child)."""
    pidfd: int | None = None
    if _HAVE_PIDFD:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError:
            pidfd = None  # ENOSYS (old kernel), EMFILE: check before every signal instead
    target = _Target(pid, start_time, pidfd)
    # Read after pinning, then confirm the pin still holds: the read described the
    # pinned process, and (with a parent) its parent was the live, confirmed parent.
    stat = _read_stat(pid)
    if (
        stat is None
        or stat.start_time != start_time
        or (parent is not None and stat.ppid != parent.pid)
        or not target.is_same()
        or (parent is not None and not parent.is_same())
    ):
        target.close()
        return None
    return target


class _Claim:
    """The processes :func:`terminate_leftovers` is responsible for."""

    def __init__(self) -> None:
        self.roots: list[_Target] = []
        self.targets: dict[int, _Target] = {}
        self.skipped: list[int] = []

    @classmethod
    def of(cls, leftovers: Sequence[Leftover]) -> _Claim:
        """Pin the leftovers that are still themselves, then their descendants (blocking)."""
        claim = cls()
        try:
            for leftover in leftovers:
                if leftover.pid in claim.targets or leftover.pid in claim.skipped:
                    continue
                target = _pin(leftover.pid, leftover.create_time, None)
                if target is None:
                    claim.skipped.append(leftover.pid)
                    continue
                claim.roots.append(target)
                claim.targets[leftover.pid] = target
            claim.add_descendants(claim.roots)
        except BaseException:
            claim.close()
            raise
        return claim

    def add_descendants(self, parents: Sequence[_Target]) -> list[_Target]:
        """Pin the live descendants of ``parents`` not pinned yet (blocking).

        Descendants in another process group or session are found too: a
        group signal does not reach them.
        """
        table = _process_table()
        children: dict[int, list[int]] = {}
        for pid, stat in table.items():
            children.setdefault(stat.ppid, []).append(pid)
        added: list[_Target] = []
        stack = list(parents)
        while stack:
            parent = stack.pop()
            for pid in children.get(parent.pid, ()):
                stat = table[pid]
                if pid in self.targets or stat.zombie:
                    continue
                target = _pin(pid, stat.start_time, parent)
                if target is not None:
                    self.targets[pid] = target
                    added.append(target)
                    stack.append(target)
        return added

    def send_all(self, targets: Iterable[_Target], sig: int) -> None:
        """Send ``sig`` to the roots' groups, then to each target; SIGCONT after a catchable one."""
        targets = list(targets)
        signals = [sig] if sig == signal.SIGKILL else [sig, signal.SIGCONT]
        for one in signals:
            for root in self.roots:
                root.send_group(one)
            for target in targets:
                target.send(one)

    def close(self) -> None:
        for target in self.targets.values():
            target.close()


async def _wait_exited(targets: Iterable[_Target]) -> None:
    """Return when every target has exited. Cancel it to stop waiting."""
    pending = [target for target in targets if not target.exited()]
    unpinned = [target.pid for target in pending if target.pidfd is None]
    async with trio.open_nursery() as nursery:
        for target in pending:
            if target.pidfd is not None:
                nursery.start_soon(trio.lowlevel.wait_readable, target.pidfd)
        if unpinned:
            nursery.start_soon(_wait_unpinned, unpinned)


async def _wait_unpinned(pids: list[int]) -> None:
    # Without pidfds there is nothing to wait on in the loop: psutil waits in a
    # worker thread, for no longer than the caller's deadline.
    deadline = trio.current_effective_deadline()
    timeout = None if math.isinf(deadline) else max(0.0, deadline - trio.current_time())
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    await trio.to_thread.run_sync(
        functools.partial(psutil.wait_procs, procs, timeout=timeout), abandon_on_cancel=True
    )


# --------------------------------------------------------------------------- terminating


@attrs.frozen(kw_only=True)
class TerminateReport:
    """What :func:`terminate_leftovers` did, by pid (leftovers and their descendants).

    Members of a leftover's process group that are no longer its descendants
    (their parent exited) get the group's signals but are not listed.

    Attributes:
        terminated: Exited within the timeout after SIGTERM.
        killed: Still running after the timeout, then killed with SIGKILL.
        escaped: Still running after SIGKILL (or not ours to signal).
        skipped: Leftovers that were no longer the process found (exited, or
            their pid now names another process): never signalled.
    """

    terminated: tuple[int, ...] = ()
    killed: tuple[int, ...] = ()
    escaped: tuple[int, ...] = ()
    skipped: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether nothing escaped."""
        return not self.escaped


async def terminate_leftovers(
    leftovers: Iterable[Leftover],
    *,
    # The grace period between SIGTERM and SIGKILL, not a deadline on the call.
    timeout: float = 5.0,  # noqa: ASYNC109
    kill_timeout: float = DEFAULT_KILL_TIMEOUT,
) -> TerminateReport:
    """Stop the leftovers and all their descendants: SIGTERM, then SIGKILL.

    Each leftover whose pid and start time still match is pinned, with its
    descendants. SIGTERM then SIGCONT (so a stopped process acts on it) go to
    each leftover's process group, when the leftover leads one, and to every
    pinned process, including descendants that left the group. Whatever runs
    ``timeout`` seconds later is killed with SIGKILL, after its descendants are
    looked for again (children it forked meanwhile).

    Cancellation: whatever is still running is killed with SIGKILL (shielded,
    waiting at most ``kill_timeout``) before ``Cancelled`` propagates.

    Args:
        leftovers: What :func:`find_leftovers` returned.
        timeout: Seconds to wait for the processes to exit after SIGTERM.
        kill_timeout: Seconds to wait after SIGKILL before calling a process escaped.

    Returns:
        What happened to each process.

    Raises:
        ValueError: A timeout is negative.
    """
    if timeout < 0 or kill_timeout < 0:
        raise ValueError(f"timeouts must be >= 0, got {timeout} and {kill_timeout}")
    pending = tuple(leftovers)
    claim = await trio.to_thread.run_sync(_Claim.of, pending)
    try:
        claim.send_all(claim.targets.values(), signal.SIGTERM)
        with trio.move_on_after(timeout):
            await _wait_exited(claim.targets.values())
        terminated = sorted(pid for pid, target in claim.targets.items() if target.exited())
    finally:
        with trio.CancelScope(shield=True):
            killed, escaped = await _kill_survivors(claim, kill_timeout)
        claim.close()
    return TerminateReport(
        terminated=tuple(terminated),
        killed=killed,
        escaped=escaped,
        skipped=tuple(claim.skipped),
    )


async def _kill_survivors(
    claim: _Claim, kill_timeout: float
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    survivors = [target for target in claim.targets.values() if not target.exited()]
    if not survivors:
        return (), ()
    # Children forked since the first walk would be orphaned (and lost) once
    # their parent dies: pin them while the parent is alive.
    survivors += await trio.to_thread.run_sync(claim.add_descendants, survivors)
    claim.send_all(survivors, signal.SIGKILL)
    with trio.move_on_after(kill_timeout):
        await _wait_exited(survivors)
    killed = sorted(target.pid for target in survivors if target.exited())
    escaped = sorted(target.pid for target in survivors if not target.exited())
    return tuple(killed), tuple(escaped)
