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
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Final

import attrs
import trio

from ._groups import raise_collapsed as _raise_collapsed
from ._procfs import (
    PinnedProcess,
    _children,
    _kill_pinned,
    _marker_value,
    _pin_entry,
    _process_table,
    _read_stat,
    _Stat,
    _watched_pids,
)
from ._pump import PumpHub, _LinePump

__all__ = ["HostStatistics", "ProcessHost", "open_process_host"]

_log = logging.getLogger("supervision.process")

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SWEEP_COALESCE: Final = 0.02
_UNKNOWN_ZOMBIE_GRACE: Final = 1.0


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


@attrs.frozen
class HostStatistics:
    """A snapshot of a :class:`ProcessHost`.

    Attributes:
        subreaper: Whether the host is a child subreaper.
        managed: Managed child processes not yet reaped.
        orphans_reaped: Orphaned descendants reaped by the host so far.
        sweeps: Passes of the orphan reaper so far (one per burst of ``SIGCHLD``).
    """

    subreaper: bool
    managed: int
    orphans_reaped: int
    sweeps: int = 0


class ProcessHost:
    """Process-wide services shared by the process runners of one tree.

    Build it with :func:`open_process_host` (once per process: the subreaper flag
    and the ``SIGCHLD`` handler are process-wide).

    As a subreaper, the host reaps (by pid, never ``waitpid(-1)``) only the
    zombies among its children that it knows descend from managed children:
    those it saw alive with one of its markers, those in a managed child's
    session or group, and those the runners were killing. A child of this
    process that other code watches through a pidfd (``trio.run_process``,
    ``trio.lowlevel.open_process``), or that is in this process's own session,
    is never reaped: it keeps its exit status however late it is waited for.
    A zombie of unknown origin outside that session that nobody watches is
    reaped after a second (an orphan that died before it could be identified).

    It learns of its children from ``/proc/self/task/*/children`` once per burst
    of ``SIGCHLD`` (never by reading every process), and reads ``/proc`` only
    for children it has not classified yet.

    Attributes:
        spawn_lock: Held by code that must not run while a child is spawned and
            registered (or while the orphan reaper classifies and reaps), so a
            just-spawned managed child is never reaped as an orphan. Both of
            those wait for it with :meth:`spawn_turn`, which takes it only when contended.
    """

    def __init__(self, *, subreaper: bool, token: str, devnull: int) -> None:
        self.spawn_lock = trio.Lock()
        self._subreaper = subreaper
        self._runtime_dir: str | None = None
        self._token = token
        self._devnull = devnull
        self._prefix = f"{token}.".encode()
        self._ids = itertools.count(1)
        self._managed: set[int] = set()
        self._sessions: dict[int, str] = {}  # managed session/group id -> child id
        # Children of this process known to descend from managed children:
        # pid -> (start ticks, child id if known, sweep number when learnt).
        self._owned: dict[int, tuple[int, str | None, int]] = {}
        self._foreign: dict[int, int] = {}  # other code's children: pid -> start ticks
        # Zombies of unknown origin nobody here watches: pid -> (start ticks, first seen).
        self._unknown: dict[int, tuple[int, float]] = {}
        self._own_sid = os.getsid(0)
        self._sweeps = 0
        self._orphans_reaped = 0
        self._nursery: trio.Nursery | None = None
        self._pumps: PumpHub | None = None
        # Slots whose generation ended by itself: child id -> (start ticks of the
        # slot's current leader, None when it has none; sweep number when listed).
        self._crashed: dict[str, tuple[Callable[[], int | None], int]] = {}
        self._crashed_since: dict[str, int] = {}  # child id -> ticks before its spawn

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
            sweeps=self._sweeps,
        )

    # -- used by the process runners

    def new_child_id(self) -> str:
        return f"{self._token}.{next(self._ids)}"

    def socket_path(self, child_id: str) -> str:
        return os.path.join(self.runtime_dir, f"{child_id.rsplit('.', 1)[-1]}.sock")

    def register(self, pid: int, child_id: str) -> None:
        """Record a just-spawned managed child (it leads its own session)."""
        self._managed.add(pid)
        if self._subreaper:
            self._sessions[pid] = child_id

    def unregister(self, pid: int) -> None:
        self._managed.discard(pid)

    async def spawn_turn(self) -> bool:
        """Wait until no other task holds :attr:`spawn_lock`: at once, without a
        checkpoint, when it is free.

        The caller then spawns and registers (or sweeps) without a checkpoint in
        between, so nothing can interleave (Trio runs one task at a time) and the
        free lock need not be taken: ``async with spawn_lock`` would yield to the
        scheduler after taking it, and spawns that come together (a restart
        storm) would queue behind each other. When the lock is held, it is taken
        (``True``) and the caller gives it back with :meth:`end_spawn_turn`.

        Cancellation: a checkpoint only when another task holds the lock.
        """
        lock = self.spawn_lock
        if not lock.locked():
            return False
        await lock.acquire()
        return True

    def end_spawn_turn(self, held: bool) -> None:
        """End a turn begun with :meth:`spawn_turn` (``held``: what it returned)."""
        if held:
            self.spawn_lock.release()

    def start_pump(self, pump: _LinePump) -> None:
        """Read ``pump``'s pipe until its end or :meth:`_LinePump.stop` (see
        :class:`PumpHub`)."""
        if self._pumps is None:
            raise RuntimeError("the process host is not open")
        self._pumps.add(pump)

    def _start_soon(self, async_fn: Callable[[], Awaitable[None]]) -> None:
        """Run a clean-up task in the host's nursery (its errors are logged, not raised)."""

        async def guarded() -> None:
            try:
                await async_fn()
            except Exception:
                _log.exception("process host background task %r failed", async_fn)

        if self._nursery is not None:
            self._nursery.start_soon(guarded)

    def after_crash(
        self, child_id: str, current_leader: Callable[[], int | None], since: int
    ) -> None:
        """Have the next sweep kill what a slot's ended generation left behind.

        Its escaped descendants are orphans reparented here, recognised by their
        marker or session, or (an orphan that wiped its environment) as a child
        of this process that nobody here watches, outside this process's
        session, started at or after ``since`` (clock ticks since boot, taken
        before the generation was spawned) and before the slot's current leader
        (``current_leader()``, lazily). The orphan reaper finds them (at most
        one sweep per :data:`_SWEEP_COALESCE`), off the restart path.
        """
        if self._subreaper:
            self._crashed[child_id] = (current_leader, self._sweeps)
            self._crashed_since[child_id] = since

    def expect_orphans(self, pids: Iterable[tuple[int, int]], child_id: str) -> None:
        """Record ``(pid, start ticks)`` of descendants of ``child_id`` being killed.

        If they are reparented here, they are reaped, whatever their session.
        """
        if self._subreaper:
            for pid, ticks in pids:
                self._owned[pid] = (ticks, child_id, self._sweeps)

    def claimed_by(self, child_id: str, leader_ticks: int) -> list[tuple[int, int]]:
        """This process's children that belong with ``child_id``: ``(pid, start ticks)``.

        Those known to be its (marker, session, group, or seen killed with it),
        and those no code of this process is watching that started after the
        slot's leader and left this process's session: processes reparented
        here after a double fork that wiped their environment. Blocking (reads
        ``/proc``); empty unless the host is a subreaper.
        """
        if not self._subreaper:
            return []
        own_sid = os.getsid(0)
        claimed: list[tuple[int, int]] = []
        unknown: list[_Stat] = []
        for entry in self._unmanaged_children():
            if entry.zombie:
                continue
            owned = self._owned.get(entry.pid)
            if owned is not None and owned[0] == entry.ticks:
                if owned[1] == child_id:
                    claimed.append((entry.pid, entry.ticks))
                continue
            session = self._sessions.get(entry.sid) or self._sessions.get(entry.pgid)
            if session is not None:
                if session == child_id:
                    claimed.append((entry.pid, entry.ticks))
                continue  # another child's session or group
            marker = _marker_value(entry.pid, self._prefix)
            if marker == child_id:
                claimed.append((entry.pid, entry.ticks))
            elif marker is None and entry.sid != own_sid and entry.ticks >= leader_ticks:
                unknown.append(entry)
        if unknown:
            watched = _watched_pids()
            claimed += [(e.pid, e.ticks) for e in unknown if e.pid not in watched]
        return claimed

    def _unmanaged_children(self) -> list[_Stat]:
        pids = _children(os.getpid())
        if pids is None:
            me = os.getpid()
            return [
                e for e in _process_table().values() if e.ppid == me and e.pid not in self._managed
            ]
        entries = []
        for pid in pids:
            if pid not in self._managed and (entry := _read_stat(pid)) is not None:
                entries.append(entry)
        return entries

    # -- the orphan reaper (subreaper only)

    async def _reap_orphans(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGCHLD) as signals:
            task_status.started()
            while True:
                await self._sweep()
                # Wake on the next SIGCHLD, or when an unknown zombie's grace ends.
                deadline = min(
                    (seen + _UNKNOWN_ZOMBIE_GRACE for _, seen in self._unknown.values()),
                    default=math.inf,
                )
                with trio.move_on_at(deadline):
                    await signals.__anext__()
                # During a burst of exits (a restart storm), the exits that come
                # while it waits make one sweep, not one per exit.
                await trio.sleep(_SWEEP_COALESCE)

    async def _sweep(self) -> None:
        self._sweeps += 1
        sweep = self._sweeps
        doomed: list[_Stat] = []
        busy: set[str] = set()
        held = await self.spawn_turn()
        try:
            # A few reads of small files (the children lists, then only children
            # not classified yet): cheap enough for the loop, and no thread hop.
            entries = self._unmanaged_children()
            now = trio.current_time()
            owned: dict[int, tuple[int, str | None, int]] = {}
            foreign: dict[int, int] = {}
            unknown: dict[int, tuple[int, float]] = {}
            watched: set[int] | None = None
            for entry in entries:
                mine = self._owned.get(entry.pid)
                if mine is not None and mine[0] != entry.ticks:
                    mine = None  # the pid was recycled
                child_id = mine[1] if mine is not None else None
                session = self._sessions.get(entry.sid) or self._sessions.get(entry.pgid)
                if self._foreign.get(entry.pid) == entry.ticks:
                    foreign[entry.pid] = entry.ticks  # other code's: never ours
                    continue
                if entry.zombie:
                    if mine is not None or session is not None:
                        self._reap_one(entry.pid)
                    elif entry.sid != self._own_sid:
                        # Died before it could be identified (its environment is
                        # gone): an orphan of a managed child, or a child of other
                        # code, whose owner waits for it through a pidfd (Trio) or
                        # at once. Reaped only if nobody here watches it, after a grace.
                        first = self._unknown.get(entry.pid)
                        if first is None or first[0] != entry.ticks:
                            first = (entry.ticks, now)
                        if now - first[1] < _UNKNOWN_ZOMBIE_GRACE:
                            unknown[entry.pid] = first
                            continue
                        if watched is None:
                            watched = _watched_pids()
                        if entry.pid not in watched:
                            self._reap_one(entry.pid)
                    continue
                if mine is None:
                    child_id = session or _marker_value(entry.pid, self._prefix)
                    if child_id is None:
                        if watched is None:
                            watched = _watched_pids()
                        if entry.pid in watched:
                            foreign[entry.pid] = entry.ticks  # spawned by other code
                            continue
                        if entry.sid == self._own_sid:
                            continue
                        child_id = self._crashed_owner(entry.ticks)
                        if child_id is None:
                            continue
                owned[entry.pid] = (entry.ticks, child_id, mine[2] if mine else sweep)
                if child_id is not None and child_id in self._crashed:
                    # Left behind by a generation that ended: kill it, unless the
                    # slot's current generation is older (then it may be its own).
                    current = self._crashed[child_id][0]()
                    if current is None or entry.ticks < current:
                        doomed.append(entry)
                        busy.add(child_id)
            self._unknown = unknown
            # Expected orphans not reparented yet stay listed for one more sweep.
            owned.update(
                (pid, known)
                for pid, known in self._owned.items()
                if pid not in owned and known[2] >= sweep - 1
            )
            self._owned = owned
            self._foreign = foreign
            # A slot stays listed until a sweep finds nothing of it: the children
            # of what is killed now are reparented here and show up next time.
            self._crashed = {
                child_id: listed
                for child_id, listed in self._crashed.items()
                if child_id in busy or listed[1] >= sweep  # listed during this scan
            }
            self._crashed_since = {
                child_id: since
                for child_id, since in self._crashed_since.items()
                if child_id in self._crashed
            }
            self._prune_sessions(entries)
        finally:
            self.end_spawn_turn(held)
        if doomed:
            targets = [t for e in doomed if (t := _pin_entry(e)) is not None]
            self._start_soon(functools.partial(self._kill_leftovers, targets))

    def _crashed_owner(self, ticks: int) -> str | None:
        """The crashed slot whose ended generation most likely left a process started at ``ticks``.

        The latest generation spawned at or before it, if the process started
        before that slot's current leader (else it may be the current one's).
        """
        owner: str | None = None
        latest = -1
        for child_id, since in self._crashed_since.items():
            if latest < since <= ticks:
                owner, latest = child_id, since
        if owner is None:
            return None
        current = self._crashed[owner][0]()
        return owner if current is None or ticks < current else None

    async def _kill_leftovers(self, targets: list[PinnedProcess]) -> None:
        escaped = await _kill_pinned(targets)
        if escaped:
            _log.warning("processes left by a crashed child survived SIGKILL: %s", escaped)

    def _reap_one(self, pid: int) -> None:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            reaped = 0
        if reaped:
            self._orphans_reaped += 1
        self._owned.pop(pid, None)

    def _prune_sessions(self, entries: Sequence[_Stat]) -> None:
        alive = {e.sid for e in entries} | {e.pgid for e in entries}
        for sid in list(self._sessions):
            if sid in self._managed or sid in alive:
                continue
            try:
                os.killpg(sid, 0)
            except ProcessLookupError:
                del self._sessions[sid]  # nothing left in it: the number may be reused
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
        token = os.urandom(6).hex()  # secrets.token_hex, without loading secrets
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
                host._pumps = PumpHub(nursery)
                if subreaper:
                    await nursery.start(host._reap_orphans)
                try:
                    yield host
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            _raise_collapsed(group)
    finally:
        if host._pumps is not None:
            host._pumps.close()
        if subreaper and not previous:
            _prctl_subreaper(0)
        os.close(devnull)
        if host._runtime_dir is not None:
            # Holds only the notify sockets of runners (closed by now): tiny.
            shutil.rmtree(host._runtime_dir, ignore_errors=True)
