"""OS process leaves: spawn, readiness, output, stop and reaping.

A :class:`ProcessRunner` runs the generations of one :class:`ProcessChild`
slot; a :class:`ProcessHost` (entered once per process by the root supervisor)
holds what the runners share: the registry of managed pids, the optional child
subreaper and its orphan reaper, a private runtime directory, ``/dev/null``.

How a child is run:

* Spawned synchronously in the Trio thread in a new session (its pid is its
  process group and session id). The common case uses :class:`subprocess.Popen`
  (CPython uses ``vfork``). Children that need file descriptors at fixed numbers
  (listening sockets at 3..., ``Ready.fd(n)``) use :func:`os.posix_spawn` with
  file actions, which places them in the child without running Python code
  between fork and exec.
* The exit is observed with a pidfd (``wait_readable``) without reaping, so the
  zombie leader keeps its pid, and therefore its process group id, reserved
  while the supervisor signals the group. The leader is reaped by its own pid,
  never with ``waitpid(-1)``.
* Every child carries ``SUPERVISION_CHILD_ID`` in its environment (unique per
  slot, stable across restarts): processes that left the group (``setsid``) are
  recognised by it, never by their command name.
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
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import attrs
import trio

from ._errors import SpawnError, StartFailure
from ._exit import ExitStatus
from ._groups import raise_collapsed as _raise_collapsed
from ._ready import NotifySocket, ReadyCheck, make_ready_check
from ._runner import RunnerContext, StopReport
from ._sockets import ListenSet, open_listen_set
from ._spec import (
    Output,
    OutputDiscard,
    OutputInherit,
    OutputLines,
    ProcessChild,
    ReadyNotify,
)

__all__ = [
    "MARKER_ENV",
    "HostStatistics",
    "ProcessHost",
    "ProcessRunner",
    "open_process_host",
]

_log = logging.getLogger("supervision.process")

MARKER_ENV: Final = "SUPERVISION_CHILD_ID"
"""The environment variable that marks every process started for a slot."""

# Variables the supervisor may itself have received from its own supervisor
# (systemd): never pass them on, they would describe the wrong process.
_PROTOCOL_ENV: Final = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
_SHELL: Final = "/bin/sh"
_DRAIN_TIMEOUT: Final = 0.5
_ESCAPEE_KILL_TIMEOUT: Final = 1.0
_PUMP_CHUNK: Final = 32768
_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UNKNOWN_ZOMBIE_GRACE: Final = 1.0
_SWEEP_COALESCE: Final = 0.02
_HAVE_PIDFD: Final = hasattr(os, "pidfd_open") and hasattr(os, "P_PIDFD")


# --------------------------------------------------------------------------- /proc


class _ProcEntry(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    starttime: int  # clock ticks since boot: with the pid, a process identity


def _read_stat(pid: int) -> _ProcEntry | None:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    end = data.rfind(b")")  # the command name may contain anything, even ")"
    if end < 0:
        return None
    fields = data[end + 2 :].split()
    if len(fields) < 20:
        return None
    return _ProcEntry(
        pid, fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])
    )


def _process_table() -> dict[int, _ProcEntry]:
    table: dict[int, _ProcEntry] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if name.isdigit():
            entry = _read_stat(int(name))
            if entry is not None:
                table[entry.pid] = entry
    return table


def _read_environ(pid: int) -> bytes:
    """``/proc/pid/environ`` (empty for a zombie, or if it cannot be read)."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return b""
    finally:
        os.close(fd)
    return b"".join(chunks)


def _environ_contains(pid: int, entry: bytes) -> bool:
    """Whether ``/proc/pid/environ`` holds a variable starting with ``entry``."""
    data = _read_environ(pid)
    return data.startswith(entry) or b"\0" + entry in data


def _marker_value(pid: int, prefix: bytes) -> str | None:
    """The process's marker if it starts with ``prefix`` (``SUPERVISION_CHILD_ID=token.``)."""
    data = _read_environ(pid)
    start = 0 if data.startswith(prefix) else data.find(b"\0" + prefix) + 1
    if start == 0 and not data.startswith(prefix):
        return None
    end = data.find(b"\0", start)
    value = data[start + len(MARKER_ENV) + 1 : end if end >= 0 else len(data)]
    return value.decode(errors="replace")


def _marker_entry(child_id: str) -> bytes:
    return f"{MARKER_ENV}={child_id}\0".encode()


# --------------------------------------------------------------------------- escapees


class _Target:
    """A process that must die with a child, pinned by a pidfd where possible."""

    def __init__(self, pid: int, starttime: int, pidfd: int | None) -> None:
        self.pid = pid
        self.starttime = starttime
        self.pidfd = pidfd

    def send(self, sig: int) -> bool:
        """Signal it; ``False`` only if the OS refused (it is then reported as escaped)."""
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                entry = _read_stat(self.pid)
                if entry is None or entry.starttime != self.starttime:
                    return True  # gone, and the pid may already be someone else's
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
        return True

    async def wait_dead(self, deadline: float) -> bool:
        if self.pidfd is None:
            return True  # no way to watch it; SIGKILL was delivered to the right process
        with trio.move_on_at(deadline):
            await trio.lowlevel.wait_readable(self.pidfd)
            return True
        return False

    def reap(self) -> None:
        # Only reaps if it was reparented to us (subreaper); ECHILD otherwise.
        if self.pidfd is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _pin(pid: int, starttime: int) -> _Target | None:
    if not _HAVE_PIDFD:
        return _Target(pid, starttime, None)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError:
        # Out of descriptors: still kill it, after a start-time check.
        return _Target(pid, starttime, None)
    entry = _read_stat(pid)
    if entry is None or entry.starttime != starttime:
        os.close(pidfd)  # the pid was recycled between the scan and the pidfd
        return None
    return _Target(pid, starttime, pidfd)


class _Tree(NamedTuple):
    escapees: list[_Target]  # outside the leader's group: killpg misses them
    members: list[_Target]  # in the group: killpg reaches them, the stop waits for them


def _find_tree(
    leader: int | None, marker: bytes | None, managed: frozenset[int], host_pid: int
) -> _Tree:
    """The processes that must die with ``leader``, pinned by pidfds.

    Walks the leader's descendants and, when ``marker`` is given (the host is a
    subreaper), the host's own unmanaged children carrying the slot's marker or
    in the leader's group (descendants orphaned and reparented to the host), with
    their descendants. Those outside the leader's process group (``setsid``,
    ``setpgid``) are escapees. Runs in a worker thread.
    """
    table = _process_table()
    children: dict[int, list[int]] = {}
    for entry in table.values():
        children.setdefault(entry.ppid, []).append(entry.pid)
    stack = list(children.get(leader, ())) if leader is not None else []
    if marker is not None:
        for pid in children.get(host_pid, ()):
            entry = table[pid]
            if pid in managed or entry.state == "Z":
                continue
            if entry.pgid == leader or _environ_contains(pid, marker):
                stack.append(pid)
    found: dict[int, _ProcEntry] = {}
    while stack:
        pid = stack.pop()
        entry = table[pid]
        if entry.state != "Z" and pid != leader:
            found[pid] = entry
        stack.extend(p for p in children.get(pid, ()) if p not in found)
    tree = _Tree([], [])
    for pid, entry in found.items():
        target = _pin(pid, entry.starttime)
        if target is not None:
            (tree.members if entry.pgid == leader else tree.escapees).append(target)
    return tree


async def _kill_targets(targets: Sequence[_Target]) -> tuple[int, ...]:
    """SIGKILL the targets, wait for them (bounded) and reap those reparented to us."""
    escaped: list[int] = []
    try:
        refused = {t.pid for t in targets if not t.send(signal.SIGKILL)}
        deadline = trio.current_time() + _ESCAPEE_KILL_TIMEOUT
        for target in targets:
            if target.pid in refused or not await target.wait_dead(deadline):
                escaped.append(target.pid)
            else:
                target.reap()
    finally:
        for target in targets:
            target.close()
    return tuple(escaped)


# --------------------------------------------------------------------------- host


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

    # -- used by ProcessRunner

    def _new_child_id(self) -> str:
        return f"{self._token}.{next(self._ids)}"

    def _new_socket_path(self, child_id: str) -> str:
        return os.path.join(self.runtime_dir, f"{child_id.rsplit('.', 1)[-1]}.sock")

    def _register(self, pid: int) -> None:
        self._managed.add(pid)
        if self._subreaper:
            self._sessions.add(pid)  # each child leads its own session

    def _unregister(self, pid: int) -> None:
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

    def _after_crash(self, child_id: str, current_leader: Callable[[], int | None]) -> None:
        """Have the next sweep kill what a slot's ended generation left behind.

        Its escaped descendants are orphans reparented here, recognised by their
        marker; they are found by the same scan of every process that reaps
        orphans, at most one per :data:`_SWEEP_COALESCE`, off the restart path.
        """
        if self._subreaper:
            self._crashed[child_id] = (current_leader, self._sweeps)

    def _expect_orphans(self, pids: Iterable[int]) -> None:
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


# --------------------------------------------------------------------------- output


def _utf8_cut(data: bytearray, limit: int) -> int:
    """A cut point ``<= limit`` that does not split a UTF-8 sequence (if there is one)."""
    for cut in range(limit, max(limit - 4, 0), -1):
        if data[cut] & 0xC0 != 0x80:
            return cut
    return limit


class _LinePump:
    """Reads a child's output pipe and hands complete lines to a sink.

    Memory is bounded by ``max_line`` plus one read: a longer line is delivered in
    pieces, each but the last ending with ``"…"``. A final line without newline is
    delivered at EOF. The pump is shielded from the generation's cancellation (the
    child's last words during a graceful stop matter); the runner ends it with
    :meth:`stop` after the child exited and the pipe drained (or did not in time).
    """

    def __init__(self, fd: int, output: OutputLines) -> None:
        self._stream = trio.lowlevel.FdStream(fd)
        self._sink = output.sink
        self._max = output.max_line
        self._scope = trio.CancelScope(shield=True)
        self._sink_failed = False
        self.done = trio.Event()

    def _deliver(self, data: bytes | bytearray, *, piece: bool) -> None:
        text = bytes(data).decode("utf-8", errors="replace")
        try:
            self._sink(text + "…" if piece else text)
        except Exception:
            if not self._sink_failed:
                self._sink_failed = True
                _log.exception("output sink %r failed; later failures are not logged", self._sink)

    def _deliver_line(self, line: bytearray) -> None:
        while len(line) > self._max:
            cut = _utf8_cut(line, self._max)
            self._deliver(line[:cut], piece=True)
            del line[:cut]
        self._deliver(line, piece=False)

    async def run(self) -> None:
        buffer = bytearray()
        try:
            with self._scope:
                while True:
                    try:
                        chunk = await self._stream.receive_some(_PUMP_CHUNK)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not chunk:
                        break
                    buffer += chunk
                    start = 0
                    while (end := buffer.find(b"\n", start)) >= 0:
                        self._deliver_line(buffer[start:end])
                        start = end + 1
                    del buffer[:start]
                    while len(buffer) > self._max:
                        cut = _utf8_cut(buffer, self._max)
                        self._deliver(buffer[:cut], piece=True)
                        del buffer[:cut]
        finally:
            if buffer:
                self._deliver_line(buffer)
            self._stream.close()
            self.done.set()

    def stop(self) -> None:
        self._scope.cancel()

    def close(self) -> None:
        """Close without running (spawn failed)."""
        self._stream.close()
        self.done.set()


# --------------------------------------------------------------------------- child


def _wait_exited_nowait(pid: int) -> None:
    """Block until ``pid`` has exited, leaving it unreaped (no-pidfd fallback)."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


class _Child:
    """The leader process of one generation."""

    def __init__(self, pid: int, pidfd: int | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.exited = False
        self.reaped = False
        self._watch_scope = trio.CancelScope(shield=True)

    async def watch(self, changed: Callable[[], None]) -> None:
        """Mark :attr:`exited` when the leader exits (it stays unreaped)."""
        with self._watch_scope:
            if self.pidfd is not None:
                await trio.lowlevel.wait_readable(self.pidfd)
            else:
                await trio.to_thread.run_sync(_wait_exited_nowait, self.pid, abandon_on_cancel=True)
            self.exited = True
            changed()

    def stop_watching(self) -> None:
        self._watch_scope.cancel()

    def signal_group(self, sig: int) -> None:
        # Only while the leader is unreaped: it holds the pid, so the group id
        # cannot have been recycled for a stranger's group.
        if self.reaped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def reap(self) -> int | None:
        """Reap the (exited) leader; its raw wait status, or ``None`` if it was lost."""
        status: int | None
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = None
        self.reaped = True
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return status


class _Generation:
    """One run of a slot: the leader, its readiness check and its output pumps."""

    def __init__(self, child: _Child, check: ReadyCheck, pumps: list[_LinePump]) -> None:
        self.child = child
        self.check = check
        self.pumps = pumps
        self.check_error: BaseException | None = None
        self._changed = trio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()


# --------------------------------------------------------------------------- spawn


def _inheritable_fds() -> list[int]:
    """This process's fds above 2 without close-on-exec (inherited from our parent)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(fd) for fd in range(3, 1024)]
    fds = []
    for name in names:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    fds.append(fd)
    return fds


def _file_actions(placements: Mapping[int, int]) -> list[tuple[int, ...]]:
    """posix_spawn actions putting each source fd at its target, closing everything else.

    Sources go first to temporaries above every number involved, so no source is
    overwritten before it has been copied; ``dup2`` clears close-on-exec on the
    targets, and fds inherited without close-on-exec are closed.
    """
    floor = max([2, *placements, *placements.values()]) + 1
    temps = {target: floor + i for i, target in enumerate(placements)}
    actions: list[tuple[int, ...]] = []
    for target, source in placements.items():
        actions.append((os.POSIX_SPAWN_DUP2, source, temps[target]))
    for target, temp in temps.items():
        actions.append((os.POSIX_SPAWN_DUP2, temp, target))
    for temp in temps.values():
        actions.append((os.POSIX_SPAWN_CLOSE, temp))
    for fd in _inheritable_fds():
        if fd not in placements:
            actions.append((os.POSIX_SPAWN_CLOSE, fd))
    return actions


def _check_format(path: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return  # unreadable but executable: let the kernel decide
    if not (magic.startswith(b"#!") or magic == b"\x7fELF"):
        raise OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC), path)


def _resolve_executable(name: str, env: Mapping[str, str], cwd: str | None) -> str:
    """Find ``name`` as ``execvpe`` in the child would (PATH of the child's env).

    Raises the ``OSError`` the exec would have raised, naming ``name``.
    """
    if cwd is not None and not os.path.isdir(cwd):
        err = errno.ENOENT if not os.path.exists(cwd) else errno.ENOTDIR
        raise OSError(err, os.strerror(err), cwd)
    if "/" in name:
        candidates = [name]
    else:
        candidates = [
            os.path.join(d or ".", name) for d in env.get("PATH", os.defpath).split(os.pathsep)
        ]
    denied: str | None = None
    for candidate in candidates:
        full = os.path.join(cwd, candidate) if cwd is not None else candidate
        if not os.path.exists(full):
            continue
        if os.path.isfile(full) and os.access(full, os.X_OK):
            _check_format(full)
            return full
        denied = denied or full
    if denied is not None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _shim(argv: Sequence[str], *, cwd: str | None, listen_pid: bool) -> list[str]:
    """A ``/bin/sh -c`` prefix doing what must happen in the child after fork.

    ``LISTEN_PID`` must be the child's pid, known only after fork: ``$$`` is the
    shell's pid and ``exec`` keeps it. ``posix_spawn`` has no ``chdir`` action,
    so the shell also changes directory when needed.
    """
    steps = []
    if cwd is not None:
        steps.append('cd -- "$0" || exit 127')
    if listen_pid:
        steps.append("LISTEN_PID=$$; export LISTEN_PID")
    if cwd is not None:
        steps.append('exec "$@"')
        return [_SHELL, "-c", "; ".join(steps), cwd, *argv]
    steps.append('exec "$0" "$@"')
    return [_SHELL, "-c", "; ".join(steps), *argv]


def _spawn_error(
    path: tuple[str, ...], exc: OSError, argv0: str, env: Mapping[str, str], cwd: str | None
) -> SpawnError:
    code = exc.errno
    filename = exc.filename if isinstance(exc.filename, str) else None
    about_cwd = cwd is not None and filename == cwd and argv0 != cwd
    if code == errno.ENOENT and about_cwd:
        reason = f"working directory not found: {cwd}"
    elif code == errno.ENOTDIR and about_cwd:
        reason = f"working directory is not a directory: {cwd}"
    elif code == errno.EACCES and about_cwd:
        reason = f"permission denied entering working directory {cwd}"
    elif code == errno.ENOENT:
        if "/" in argv0:
            where = argv0 if cwd is None or os.path.isabs(argv0) else os.path.join(cwd, argv0)
            if os.path.exists(where):
                reason = f"interpreter not found for {argv0} (check its #! line)"
            else:
                reason = f"executable not found: {argv0}"
        else:
            search = env.get("PATH", os.defpath)
            reason = f"executable not found: {argv0} (PATH={search})"
    elif code == errno.EACCES:
        reason = f"permission denied executing {argv0}"
    elif code == errno.ENOEXEC:
        reason = (
            f"exec format error: {argv0} (add a shebang line or run it through its interpreter)"
        )
    elif code == errno.EAGAIN:
        reason = "fork failed: resource temporarily unavailable"
    elif code == errno.EMFILE:
        reason = "too many open files"
    elif code == errno.ENFILE:
        reason = "too many open files in the system"
    elif code == errno.ENOMEM:
        reason = "fork failed: out of memory"
    else:
        reason = f"cannot start {argv0}: {exc.strerror or exc}"
    return SpawnError(path, reason, errno=code, filename=filename)


# --------------------------------------------------------------------------- runner


class ProcessRunner:
    """Runs the generations of one :class:`ProcessChild` slot (the ``Runner`` protocol).

    Resources kept across generations (listening sockets, the notify socket) are
    opened by the first :meth:`run` and released by :meth:`aclose`.
    """

    def __init__(self, spec: ProcessChild, context: RunnerContext) -> None:
        self._spec = spec
        self._context = context
        self._host: ProcessHost = context.host
        self._child_id = self._host._new_child_id()
        self._base_env: dict[str, str] | None = None
        self._marker = _marker_entry(self._child_id)
        self._listeners: ListenSet | None = None
        self._notify: NotifySocket | None = None
        self._generation: _Generation | None = None
        self._generations = 0
        self._stop_report: StopReport | None = None
        self._status_text: str | None = None
        self._running = False
        self._closed = False
        self._normal_signals = frozenset({int(spec.stop_signal)})

    # -- introspection

    @property
    def pid(self) -> int | None:
        """The current generation's pid, while its process exists."""
        gen = self._generation
        return None if gen is None or gen.child.reaped else gen.child.pid

    @property
    def stop_report(self) -> StopReport | None:
        """How the last stop went: set when :meth:`run` was cancelled, or when it had
        to kill a child that did not become ready in time; ``None`` otherwise."""
        return self._stop_report

    @property
    def status_text(self) -> str | None:
        """The last ``STATUS=`` text the child sent (``Ready.notify`` only)."""
        gen = self._generation
        if gen is not None and gen.check.status_text is not None:
            return gen.check.status_text
        return self._status_text

    @property
    def child_id(self) -> str:
        """The ``SUPERVISION_CHILD_ID`` value every process of this slot carries."""
        return self._child_id

    @property
    def generations(self) -> int:
        """How many processes this slot has spawned."""
        return self._generations

    @property
    def listen_addresses(self) -> tuple[Any, ...]:
        """The bound addresses of the slot's listening sockets (after the first run)."""
        return () if self._listeners is None else self._listeners.addresses

    @property
    def notify_socket(self) -> str | None:
        """The path of the slot's ``$NOTIFY_SOCKET`` (after the first run)."""
        return None if self._notify is None else self._notify.path

    # -- Runner protocol

    async def run(
        self,
        spawned: Callable[[int | None], None],
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> ExitStatus:
        """Run one generation: spawn, wait until ready, wait for the exit.

        Calls ``spawned(pid)`` right after the spawn and ``task_status.started(pid)``
        once the readiness protocol says so. When the child exits by itself, what
        is left of its process group is killed before this returns (on a subreaper
        host, descendants that left the group are killed shortly after, off the
        restart path), so no old process holds a port when the child restarts.

        Returns:
            How the child ended (a missed watchdog is an abnormal exit).

        Raises:
            SpawnError: the OS refused to start the process.
            StartFailure: it exited before becoming ready, did not become ready
                within ``startup_timeout`` (it is then stopped), or a listening
                socket could not be opened.

        Cancellation: stops the child (``stop_signal`` and SIGCONT to its process
        group, ``stop_timeout``, then SIGKILL; escaped descendants are killed too),
        shielded; records :attr:`stop_report` and re-raises ``Cancelled``.
        """
        try:
            return await self._run(spawned, task_status)
        except BaseExceptionGroup as group:
            _raise_collapsed(group)

    async def aclose(self) -> None:
        """Close the listening and notify sockets. Idempotent.

        Cancellation: not a checkpoint; always completes.
        """
        self._closed = True
        if self._listeners is not None:
            self._listeners.close()
        if self._notify is not None:
            self._notify.close()

    # -- internals

    @property
    def _path(self) -> tuple[str, ...]:
        return self._context.path

    async def _run(
        self, spawned: Callable[[int | None], None], task_status: trio.TaskStatus[int | None]
    ) -> ExitStatus:
        if self._closed:
            raise RuntimeError(f"{'/'.join(self._path)}: the runner is closed")
        if self._running:
            raise RuntimeError(f"{'/'.join(self._path)}: a generation is already running")
        self._running = True
        self._stop_report = None
        try:
            try:
                await self._open_slot()
                gen = await self._spawn_generation()
            except trio.Cancelled:
                self._stop_report = StopReport()
                raise
            self._generation = gen
            try:
                async with trio.open_nursery() as nursery:
                    outcome = await self._supervise(gen, nursery, spawned, task_status)
            finally:
                gen.check.close()
            if isinstance(outcome, StartFailure):
                raise outcome
            return outcome
        finally:
            self._running = False

    async def _open_slot(self) -> None:
        spec = self._spec
        if spec.listen and self._listeners is None:
            try:
                self._listeners = await open_listen_set(spec.listen)
            except OSError as exc:
                raise StartFailure(
                    self._path, f"cannot open listening socket: {exc.strerror or exc}"
                ) from exc
        if isinstance(spec.ready, ReadyNotify) and self._notify is None:
            try:
                self._notify = NotifySocket(self._host._new_socket_path(self._child_id))
            except OSError as exc:
                raise StartFailure(
                    self._path, f"cannot open the notify socket: {exc.strerror or exc}"
                ) from exc

    def _output_fd(
        self, output: Output, pumps: list[_LinePump], child_ends: list[int]
    ) -> int | None:
        if isinstance(output, OutputInherit):
            return None
        if isinstance(output, OutputDiscard):
            return self._host._devnull
        if isinstance(output, OutputLines):
            read_end, write_end = os.pipe()
            child_ends.append(write_end)
            pumps.append(_LinePump(read_end, output))
            return write_end
        raise TypeError(f"unsupported output: {output!r}")

    def _child_env(self, check: ReadyCheck) -> dict[str, str]:
        # The supervisor's own environment is read once per slot (at its first
        # start), not copied anew on every restart: that copy is on the restart path.
        base = self._base_env
        if base is None:
            base = {k: v for k, v in os.environ.items() if k not in _PROTOCOL_ENV}
            if self._spec.env:
                base.update(self._spec.env)
            base.setdefault("PYTHONUNBUFFERED", "1")
            base[MARKER_ENV] = self._child_id
            self._base_env = base
        env = dict(base)
        env.update(check.child_env())
        if self._listeners is not None:
            env.update(self._listeners.child_env())
        return env

    async def _spawn_generation(self) -> _Generation:
        spec = self._spec
        pumps: list[_LinePump] = []
        child_ends: list[int] = []
        check = make_ready_check(spec.ready, notify=self._notify)
        try:
            try:
                stdout = self._output_fd(spec.stdout, pumps, child_ends)
                stderr = self._output_fd(spec.stderr, pumps, child_ends)
            except OSError as exc:
                raise _spawn_error(self._path, exc, spec.argv[0], os.environ, spec.cwd) from exc
            env = self._child_env(check)
            async with self._host.spawn_lock:
                pid = self._spawn(env, stdout, stderr, check)
                self._host._register(pid)
        except BaseException:
            for pump in pumps:
                pump.close()
            check.close()
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        self._generations += 1
        pidfd: int | None = None
        if _HAVE_PIDFD:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)
        check.spawned()
        return _Generation(_Child(pid, pidfd), check, pumps)

    def _spawn(
        self, env: dict[str, str], stdout: int | None, stderr: int | None, check: ReadyCheck
    ) -> int:
        spec = self._spec
        extra = dict(check.child_fds())
        if self._listeners is not None:
            extra.update(self._listeners.child_fds())
        try:
            if not extra:
                popen = subprocess.Popen(
                    spec.argv,
                    env=env,
                    cwd=spec.cwd,
                    stdin=self._host._devnull,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                    close_fds=True,
                )
                # The runner reaps this pid itself (pidfd, then waitpid by pid). A
                # returncode keeps Popen from ever waiting on it (its __del__ would
                # otherwise queue it for subprocess._cleanup(), which could reap it)
                # and from warning that it is still running.
                popen.returncode = 0
                return popen.pid
            return self._posix_spawn(env, stdout, stderr, extra)
        except OSError as exc:
            raise _spawn_error(self._path, exc, spec.argv[0], env, spec.cwd) from exc

    def _posix_spawn(
        self, env: dict[str, str], stdout: int | None, stderr: int | None, extra: dict[int, int]
    ) -> int:
        spec = self._spec
        executable = _resolve_executable(spec.argv[0], env, spec.cwd)
        argv: list[str] = list(spec.argv)
        if self._listeners is not None or spec.cwd is not None:
            argv = _shim(argv, cwd=spec.cwd, listen_pid=self._listeners is not None)
            executable = _SHELL
        placements = {0: self._host._devnull}
        if stdout is not None:
            placements[1] = stdout
        if stderr is not None:
            placements[2] = stderr
        placements.update(extra)
        return os.posix_spawn(
            executable,
            argv,
            env,
            file_actions=_file_actions(placements),
            setsid=True,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            setsigmask=(),
        )

    async def _supervise(
        self,
        gen: _Generation,
        nursery: trio.Nursery,
        spawned: Callable[[int | None], None],
        task_status: trio.TaskStatus[int | None],
    ) -> ExitStatus | StartFailure:
        spec = self._spec
        child = gen.child
        nursery.start_soon(child.watch, gen.changed)
        for pump in gen.pumps:
            nursery.start_soon(pump.run)
        nursery.start_soon(self._run_check, gen)
        try:
            spawned(child.pid)
            if not gen.check.ready:
                with trio.move_on_after(spec.startup_timeout):
                    await gen.until(
                        lambda: gen.check.ready or child.exited or gen.check_error is not None
                    )
            if not gen.check.ready and child.exited:
                # Its last words (READY=1, a newline on the fd) may still be queued.
                gen.check.settle(child.pid)
            if not gen.check.ready:
                if child.exited:
                    status = self._finish(gen)
                    return StartFailure(self._path, f"exited before becoming ready ({status})")
                with trio.CancelScope(shield=True):
                    self._stop_report = await self._stop(gen, spec.stop_signal, spec.stop_timeout)
                if gen.check_error is not None:
                    return StartFailure(self._path, f"readiness check failed: {gen.check_error!r}")
                return StartFailure(
                    self._path, f"readiness timeout after {spec.startup_timeout:g}s"
                )
            task_status.started(child.pid)
            await gen.until(lambda: child.exited or gen.check.failure is not None)
            if child.exited:
                return self._finish(gen)
            with trio.CancelScope(shield=True):
                report = await self._stop(gen, signal.SIGABRT, spec.stop_timeout)
            end = report.exit or ExitStatus()
            return ExitStatus(
                code=end.code,
                signal=end.signal,
                normal=False,
                reason=f"{gen.check.failure}; {end.reason}",
            )
        except BaseException:
            if not child.reaped:
                with trio.CancelScope(shield=True):
                    self._stop_report = await self._stop(gen, spec.stop_signal, spec.stop_timeout)
            raise
        finally:
            if child.reaped:
                gen.check.settle(child.pid)
            self._status_text = gen.check.status_text or self._status_text
            with trio.CancelScope(shield=True):
                await self._drain(gen)
            child.stop_watching()
            nursery.cancel_scope.cancel()

    async def _run_check(self, gen: _Generation) -> None:
        try:
            await gen.check.run(gen.child.pid, gen.changed)
        except Exception as exc:
            if gen.check.ready:
                _log.warning(
                    "%s: readiness protocol failed after ready: %r", "/".join(self._path), exc
                )
            else:
                gen.check_error = exc
                gen.changed()

    async def _drain(self, gen: _Generation) -> None:
        with trio.move_on_after(_DRAIN_TIMEOUT):
            for pump in gen.pumps:
                await pump.done.wait()
        for pump in gen.pumps:
            pump.stop()

    def _exit_status(self, status: int | None, *, stopping: bool) -> ExitStatus:
        if status is None:
            return ExitStatus(normal=False, reason="exit status lost (reaped elsewhere)")
        # Death by the stop signal is normal when the supervisor sent it; a child
        # killed by any signal from elsewhere exited abnormally (SPEC 1.2).
        return ExitStatus.from_wait_status(
            status,
            success_codes=self._spec.success_exit_codes,
            normal_signals=self._normal_signals if stopping else frozenset(),
        )

    def _reap(self, child: _Child, *, stopping: bool) -> ExitStatus:
        status = child.reap()
        self._host._unregister(child.pid)
        return self._exit_status(status, stopping=stopping)

    async def _tree(self, child: _Child) -> _Tree:
        host = self._host
        marker = self._marker if host.subreaper else None
        try:
            tree = await trio.to_thread.run_sync(
                _find_tree, child.pid, marker, frozenset(host._managed), os.getpid()
            )
        except Exception:
            # Never let the walk keep a stop from killing the group.
            _log.exception("%s: cannot walk the process tree", "/".join(self._path))
            return _Tree([], [])
        host._expect_orphans(t.pid for t in (*tree.escapees, *tree.members))
        return tree

    def _finish(self, gen: _Generation) -> ExitStatus:
        """The leader exited by itself: kill what is left of its group, then reap it."""
        child = gen.child
        # The unreaped leader keeps the group id ours: clear leftovers now, so no
        # old group member holds a port when the child is restarted.
        child.signal_group(signal.SIGKILL)
        end = self._reap(child, stopping=False)
        self._host._after_crash(self._child_id, self._leader_starttime)
        return end

    def _leader_starttime(self) -> int | None:
        gen = self._generation
        if gen is None or gen.child.reaped:
            return None
        entry = _read_stat(gen.child.pid)
        return None if entry is None else entry.starttime

    async def _stop(self, gen: _Generation, sig: int, grace: float) -> StopReport:
        """Stop the generation: ``sig`` + SIGCONT, ``grace`` seconds, then SIGKILL.

        Call it shielded: a stop always completes.
        """
        child = gen.child
        # Walk the tree before signalling: once the leader is gone, its escaped
        # descendants are reparented and cannot be told apart from strangers.
        walk = not child.exited or self._host.subreaper
        tree = await self._tree(child) if walk else _Tree([], [])
        killed = False
        if not child.exited:
            child.signal_group(sig)
            child.signal_group(signal.SIGCONT)
            for target in tree.escapees:
                target.send(sig)
                target.send(signal.SIGCONT)
            with trio.move_on_after(grace):
                await gen.until(lambda: child.exited)
            killed = not child.exited
        child.signal_group(signal.SIGKILL)
        await gen.until(lambda: child.exited)
        end = self._reap(child, stopping=True)
        # SIGKILL every escapee, and wait until the whole tree is really gone.
        escaped = await _kill_targets([*tree.escapees, *tree.members])
        if escaped:
            _log.warning(
                "%s: processes of the child survived SIGKILL: %s", "/".join(self._path), escaped
            )
        return StopReport(exit=end, killed=killed, escaped=escaped)
