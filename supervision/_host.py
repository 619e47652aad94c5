"""The process host: what the process runners of one tree share.

The registry of managed pids, the optional child subreaper and its orphan
reaper, a private runtime directory and ``/dev/null``; one per process, entered
by the root supervisor (:func:`open_process_host`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import itertools
import logging
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Final, NamedTuple

import attrs
import trio

from ._groups import raise_collapsed as _raise_collapsed
from ._procfs import MARKER_ENV, _kill_targets, _marker_value, _pin, _process_table, _Target

__all__ = ["HostStatistics", "ProcessHost", "open_process_host"]

_log = logging.getLogger("supervision.process")

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UNKNOWN_ZOMBIE_GRACE: Final = 1.0
_SWEEP_COALESCE: Final = 0.02


def _prctl_subreaper(value: int | None) -> int:
    """Set (``value``) or read (``None``) the child-subreaper flag of this process."""
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "a child subreaper is only available on Linux")
    libc = ctypes.CDLL(None, use_errno=True)
    if value is None:
        current = ctypes.c_int(0)
        result = libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(current), 0, 0, 0)
    else:
        result = libc.prctl(_PR_SET_CHILD_SUBREAPER, value, 0, 0, 0)
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(child subreaper): {os.strerror(err)}")
    return current.value if value is None else value


class _ChildEntry(NamedTuple):
    pid: int
    state: str
    pgid: int
    sid: int
    starttime: int
    child_id: str | None  # the host's marker it carries (never known for a zombie)


def _host_children(host_pid: int, managed: frozenset[int], prefix: bytes) -> list[_ChildEntry]:
    """The host's unmanaged children (runs in a worker thread)."""
    result = []
    for entry in _process_table().values():
        if entry.ppid != host_pid or entry.pid in managed:
            continue
        child_id = None if entry.state == "Z" else _marker_value(entry.pid, prefix)
        result.append(
            _ChildEntry(entry.pid, entry.state, entry.pgid, entry.sid, entry.starttime, child_id)
        )
    return result


@attrs.frozen
class HostStatistics:
    """A snapshot of a :class:`ProcessHost`.

    Attributes:
        subreaper: Whether the host is a child subreaper.
        managed: Managed child processes not yet reaped.
        orphans_reaped: Orphaned descendants reaped by the host so far.
    """

    subreaper: bool
    managed: int
    orphans_reaped: int


class ProcessHost:
    """Process-wide services shared by the process runners of one tree.

    Build it with :func:`open_process_host` (once per process: the subreaper flag
    and the ``SIGCHLD`` handler are process-wide).

    As a subreaper, the host reaps (by pid, never ``waitpid(-1)``) the zombies
    among its children that descend from managed children: those it saw alive
    with one of its markers, those in a managed child's session, and those the
    runners were killing. A zombie's environment can no longer be read, so an
    unrecognised zombie in a session other than the host's own is reaped only
    after it stayed unreaped for a second: children that other code of this
    process spawns are left to their owners, provided the owners wait for them
    promptly (``trio.run_process`` and ``Popen.wait`` do).

    Attributes:
        spawn_lock: Held across spawn and registration, and by the orphan reaper
            while it reaps, so a just-spawned managed child is never reaped as an
            orphan.
    """

    def __init__(self, *, subreaper: bool, token: str, devnull: int) -> None:
        self.spawn_lock = trio.Lock()
        self._subreaper = subreaper
        self._runtime_dir: str | None = None
        self._token = token
        self._devnull = devnull
        self._prefix = f"{MARKER_ENV}={token}.".encode()
        self._ids = itertools.count(1)
        self._managed: set[int] = set()
        self._sessions: set[int] = set()
        self._orphans: dict[int, int] = {}  # pid -> sweep number when learnt
        self._sweeps = 0
        self._orphans_reaped = 0
        self._unknown: dict[int, tuple[int, float]] = {}  # pid -> (starttime, first seen)
        self._nursery: trio.Nursery | None = None
        self._own_sid = os.getsid(0)
        # Slots whose generation ended by itself: child id -> (start time of the
        # slot's current leader, None when it has none; sweep number when listed).
        self._crashed: dict[str, tuple[Callable[[], int | None], int]] = {}

    @property
    def subreaper(self) -> bool:
        """Whether orphaned descendants of children are reparented to this process."""
        return self._subreaper

    @property
    def runtime_dir(self) -> str:
        """A private (0700) directory for notify sockets, removed when the host closes.

        Created on first use: a tree without ``Ready.notify()`` children touches no
        file system (and does no I/O a ``MockClock`` would see).
        """
        if self._runtime_dir is None:
            self._runtime_dir = _make_runtime_dir()  # one mkdir: not worth a thread
        return self._runtime_dir

    @property
    def token(self) -> str:
        """Prefix of every ``SUPERVISION_CHILD_ID`` this host hands out."""
        return self._token

    @property
    def devnull(self) -> int:
        """An fd open on ``/dev/null`` (read and write), for the children's stdin."""
        return self._devnull

    @property
    def managed_pids(self) -> frozenset[int]:
        """Pids of managed children not yet reaped."""
        return frozenset(self._managed)

    def statistics(self) -> HostStatistics:
        """Counters for introspection and tests."""
        return HostStatistics(
            subreaper=self._subreaper,
            managed=len(self._managed),
            orphans_reaped=self._orphans_reaped,
        )

    # -- used by the process runners

    def new_child_id(self) -> str:
        return f"{self._token}.{next(self._ids)}"

    def socket_path(self, child_id: str) -> str:
        return os.path.join(self.runtime_dir, f"{child_id.rsplit('.', 1)[-1]}.sock")

    def register(self, pid: int) -> None:
        self._managed.add(pid)
        if self._subreaper:
            self._sessions.add(pid)  # each child leads its own session

    def unregister(self, pid: int) -> None:
        self._managed.discard(pid)

    def _start_soon(self, async_fn: Callable[[], Awaitable[None]]) -> None:
        """Run a clean-up task in the host's nursery (its errors are logged, not raised)."""

        async def guarded() -> None:
            try:
                await async_fn()
            except Exception:
                _log.exception("process host background task %r failed", async_fn)

        if self._nursery is not None:
            self._nursery.start_soon(guarded)

    def after_crash(self, child_id: str, current_leader: Callable[[], int | None]) -> None:
        """Have the next sweep kill what a slot's ended generation left behind.

        Its escaped descendants are orphans reparented here, recognised by their
        marker; they are found by the same scan of every process that reaps
        orphans, at most one per :data:`_SWEEP_COALESCE`, off the restart path.
        """
        if self._subreaper:
            self._crashed[child_id] = (current_leader, self._sweeps)

    def expect_orphans(self, pids: Iterable[int]) -> None:
        if self._subreaper:
            for pid in pids:
                self._orphans[pid] = self._sweeps

    # -- the orphan reaper (subreaper only)

    async def _reap_orphans(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGCHLD) as signals:
            task_status.started()
            while True:
                await self._sweep()
                # Wake on the next SIGCHLD, or when an unrecognised zombie's grace ends.
                deadline = min(
                    (seen + _UNKNOWN_ZOMBIE_GRACE for _, seen in self._unknown.values()),
                    default=math.inf,
                )
                with trio.move_on_at(deadline):
                    await signals.__anext__()
                # A sweep reads every process's stat: during a burst of exits (a
                # restart storm), coalesce the signals instead of sweeping per exit.
                await trio.sleep(_SWEEP_COALESCE)

    async def _sweep(self) -> None:
        self._sweeps += 1
        sweep = self._sweeps
        entries = await trio.to_thread.run_sync(
            _host_children, os.getpid(), frozenset(self._managed), self._prefix
        )
        doomed: list[_ChildEntry] = []
        busy: set[str] = set()
        async with self.spawn_lock:
            now = trio.current_time()
            seen: set[int] = set()
            unknown: dict[int, tuple[int, float]] = {}
            for entry in entries:
                if entry.pid in self._managed:
                    continue
                ours = (
                    entry.child_id is not None
                    or entry.pid in self._orphans
                    or entry.sid in self._sessions
                    or entry.pgid in self._sessions
                )
                if not ours and entry.state == "Z" and entry.sid != self._own_sid:
                    # A zombie whose marker can no longer be read: a descendant that
                    # died just before being reparented here, or the child of other
                    # code in this process, whose owner reaps it at once. Wait first.
                    first = self._unknown.setdefault(entry.pid, (entry.starttime, now))
                    if first[0] == entry.starttime and now - first[1] < _UNKNOWN_ZOMBIE_GRACE:
                        unknown[entry.pid] = first
                        continue
                    ours = True
                if not ours:
                    continue  # spawned by other code in this process: its owner reaps it
                if entry.state == "Z":
                    self._reap_one(entry.pid)
                    continue
                seen.add(entry.pid)
                self._orphans.setdefault(entry.pid, sweep)
                if entry.child_id in self._crashed:
                    # Left behind by a generation that ended: kill it, unless the
                    # slot's current generation is older (then it may be its own).
                    current = self._crashed[entry.child_id][0]()
                    if current is None or entry.starttime < current:
                        doomed.append(entry)
                        busy.add(entry.child_id)
            self._orphans = {
                pid: learnt
                for pid, learnt in self._orphans.items()
                if pid in seen or learnt >= sweep
            }
            self._unknown = unknown
            # A slot stays listed until a sweep finds nothing of it: the children
            # of what is killed now are reparented here and show up next time.
            self._crashed = {
                child_id: listed
                for child_id, listed in self._crashed.items()
                if child_id in busy or listed[1] >= sweep  # listed during this scan
            }
            self._prune_sessions(entries)
        if doomed:
            targets = [t for e in doomed if (t := _pin(e.pid, e.starttime)) is not None]
            self._start_soon(functools.partial(self._kill_leftovers, targets))

    async def _kill_leftovers(self, targets: list[_Target]) -> None:
        escaped = await _kill_targets(targets)
        if escaped:
            _log.warning("processes left by a crashed child survived SIGKILL: %s", escaped)

    def _reap_one(self, pid: int) -> None:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            reaped = 0
        if reaped:
            self._orphans_reaped += 1
        self._orphans.pop(pid, None)

    def _prune_sessions(self, entries: Sequence[_ChildEntry]) -> None:
        alive = {e.sid for e in entries} | {e.pgid for e in entries}
        for sid in list(self._sessions):
            if sid in self._managed or sid in alive:
                continue
            try:
                os.killpg(sid, 0)
            except ProcessLookupError:
                self._sessions.discard(sid)  # nothing left in it: the number may be reused
            except OSError:
                pass


def _make_runtime_dir() -> str:
    base = tempfile.gettempdir()
    if len(base) > 60:  # keep socket paths well under the 107-byte AF_UNIX limit
        base = "/tmp"
    return tempfile.mkdtemp(prefix="sv-", dir=base)


@contextlib.asynccontextmanager
async def open_process_host(
    *, subreaper: bool = False, token: str | None = None
) -> AsyncIterator[ProcessHost]:
    """Open the process-wide services the process runners need.

    Args:
        subreaper: Make this process a child subreaper (Linux), so descendants
            orphaned by a child are reparented here instead of to init, and run
            a ``SIGCHLD`` task that reaps them by pid (see :class:`ProcessHost`).
        token: Prefix of the ``SUPERVISION_CHILD_ID`` markers (random if ``None``);
            pass a stable one to recognise leftovers of an earlier run.

    Raises:
        OSError: ``subreaper=True`` and the platform refuses it.

    Cancellation: leaving the block stops the reaper, restores the subreaper flag
    and removes the runtime directory. Runners using the host must be finished.
    """
    if token is None:
        token = secrets.token_hex(6)
    elif not _TOKEN.match(token):
        raise ValueError(f"token must match {_TOKEN.pattern}, got {token!r}")
    previous = _prctl_subreaper(None) if subreaper else 0
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    host = ProcessHost(subreaper=subreaper, token=token, devnull=devnull)
    try:
        if subreaper and not previous:
            _prctl_subreaper(1)
        try:
            async with trio.open_nursery() as nursery:
                host._nursery = nursery
                if subreaper:
                    await nursery.start(host._reap_orphans)
                try:
                    yield host
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            _raise_collapsed(group)
    finally:
        if subreaper and not previous:
            _prctl_subreaper(0)
        os.close(devnull)
        if host._runtime_dir is not None:
            # Holds only the notify sockets of runners (closed by now): tiny.
            shutil.rmtree(host._runtime_dir, ignore_errors=True)
