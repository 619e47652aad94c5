"""Processes read from ``/proc``: identity, descendants, and killing them safely.

A pid names a process only until it exits; the kernel then hands the number to
the next process. ``(pid, start time, boot id)`` names one process for good
(:class:`ProcessIdentity`). Nothing here signals a process whose identity was
not checked first: a process is pinned (:class:`PinnedProcess`) with a pidfd
where there are pidfds, otherwise its start time is re-read just before each
signal, so a recycled pid is never signalled.

On Linux, ``/proc/<pid>/stat`` is parsed here and nowhere else (the start time
is field 22, in clock ticks since boot); elsewhere psutil supplies the start
time and there is no boot id.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Final, NamedTuple

import attrs
import trio

__all__ = [
    "MARKER_ENV",
    "MarkedProcess",
    "PinnedProcess",
    "ProcessIdentity",
    "TerminateReport",
    "descendants",
    "find_marked",
    "kill_processes",
    "process_children",
    "terminate_processes",
]

MARKER_ENV: Final = "SUPERVISION_CHILD_ID"
"""The environment variable that marks every process started for a slot."""

_ESCAPEE_KILL_TIMEOUT: Final = 1.0
_HAVE_PIDFD: bool = hasattr(os, "pidfd_open") and hasattr(os, "P_PIDFD")
_PROCFS: Final = sys.platform.startswith("linux") and os.path.isdir("/proc")


# --------------------------------------------------------------------------- reading /proc


class _Stat(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    ticks: int  # start time, clock ticks since boot: with the pid, a process identity

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")

    @property
    def start_time(self) -> float:
        """The start time in seconds since boot (:attr:`ProcessIdentity.start_time`)."""
        return self.ticks / _clock_ticks()


@functools.cache
def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


@functools.cache
def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _boot_ticks() -> int:
    """Now, in the units of a process's start time (clock ticks since boot); no ``/proc`` read.

    Taken before a spawn, it is at most the child's start time.
    """
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _clock_ticks())


def _read_stat(pid: int) -> _Stat | None:
    """``/proc/<pid>/stat``, or ``None`` if it is gone, hidden or unreadable right now."""
    if not _PROCFS:  # pragma: no cover - platforms without /proc
        return _psutil_stat(pid)
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        # Gone, hidden from us (hidepid), or out of descriptors: in every case the
        # process is not provably the one expected.
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    end = data.rfind(b")")  # the command name may contain anything, even ")"
    fields = data[end + 2 :].split()
    if end < 0 or len(fields) < 20:
        return None  # truncated: the process was exiting as we read
    return _Stat(
        pid,
        fields[0].decode("ascii", "replace"),
        int(fields[1]),
        int(fields[2]),
        int(fields[3]),
        int(fields[19]),
    )


def _psutil() -> Any:  # pragma: no cover - platforms without /proc
    return importlib.import_module("psutil")


def _psutil_stat(pid: int) -> _Stat | None:  # pragma: no cover - platforms without /proc
    psutil = _psutil()

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            state = "Z" if proc.status() == psutil.STATUS_ZOMBIE else "R"
            ticks = round(proc.create_time() * _clock_ticks())
            return _Stat(pid, state, proc.ppid(), os.getpgid(pid), os.getsid(pid), ticks)
    except (psutil.Error, OSError):
        return None


def _pids() -> list[int]:
    if not _PROCFS:  # pragma: no cover - platforms without /proc
        return list(_psutil().pids())
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _process_table() -> dict[int, _Stat]:
    """Every process's stat, by pid (a read of every ``/proc/<pid>/stat``)."""
    table: dict[int, _Stat] = {}
    for pid in _pids():
        entry = _read_stat(pid)
        if entry is not None:
            table[pid] = entry
    return table


def _children(pid: int) -> list[int] | None:
    """The direct children of ``pid`` from ``/proc/<pid>/task/*/children``.

    ``None`` when the kernel does not offer the file (then read the table).
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    found: list[int] = []
    for tid in tasks:
        try:
            fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            if tid == str(pid) and os.path.exists(f"/proc/{pid}/task/{tid}"):
                return None  # the leader lives but has no such file: not offered here
            continue  # the thread exited
        except OSError:
            return None
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except ProcessLookupError:
            continue  # the thread exited as we read
        except OSError:
            return None
        finally:
            os.close(fd)
        found.extend(int(p) for p in b"".join(chunks).split())
    return found


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


def _environ_value(data: bytes, name: bytes) -> bytes | None:
    """The value of ``name`` in a raw environment block, if set."""
    prefix = name + b"="
    start = 0 if data.startswith(prefix) else data.find(b"\0" + prefix) + 1
    if start == 0 and not data.startswith(prefix):
        return None
    end = data.find(b"\0", start)
    return data[start + len(prefix) : end if end >= 0 else len(data)]


def _marker_value(pid: int, prefix: bytes) -> str | None:
    """The process's ``SUPERVISION_CHILD_ID`` if it starts with ``prefix`` (``token.``)."""
    value = _environ_value(_read_environ(pid), MARKER_ENV.encode())
    if value is None or not value.startswith(prefix):
        return None
    return value.decode(errors="replace")


# --------------------------------------------------------------------------- identity


@attrs.frozen(kw_only=True)
class ProcessIdentity:
    """Who a process is, in a form that survives pid reuse.

    Build one with :meth:`of` or :meth:`current`; compare a remembered identity
    with the live process with :meth:`is_running`. ``start_time`` is opaque:
    compare it only with a value obtained the same way on the same host.

    Attributes:
        pid: The process id.
        start_time: When the process started (seconds since boot on Linux).
        boot_id: The kernel's boot id when the identity was taken, if known.
    """

    pid: int = attrs.field(validator=attrs.validators.gt(0))
    start_time: float | None = None
    boot_id: str | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the live process ``pid``, or ``None`` if there is none (or a zombie).

        Blocking: one read of ``/proc/<pid>/stat``.
        """
        entry = _read_stat(pid)
        if entry is None or entry.zombie:
            return None
        return cls._of(entry)

    @classmethod
    def _of(cls, entry: _Stat) -> ProcessIdentity:
        return cls(pid=entry.pid, start_time=entry.start_time, boot_id=_boot_id())

    @classmethod
    def current(cls) -> ProcessIdentity:
        """The identity of the calling process."""
        me = cls.of(os.getpid())
        assert me is not None  # we are alive
        return me

    def matches(self, entry: _Stat | None) -> bool:
        """Whether ``entry`` (a fresh read, zombie or not) is this very process."""
        if entry is None:
            return False
        boot_id = _boot_id()
        if self.boot_id is not None and boot_id is not None and self.boot_id != boot_id:
            return False
        return self.start_time is None or entry.start_time == self.start_time

    def is_running(self) -> bool:
        """Whether this very process is still alive (same pid, start time and boot)."""
        entry = _read_stat(self.pid)
        return entry is not None and not entry.zombie and self.matches(entry)


def process_children() -> dict[int, list[int]]:
    """The direct children of every live process: ``{parent pid: [child pid, ...]}``.

    One read of each ``/proc/<pid>/stat`` (processes without a parent, such as
    init, are under none). Zombies are included: they are still their parent's
    children. A snapshot: processes come and go while it is read.

    Blocking: reads ``/proc`` (run it with ``trio.to_thread.run_sync`` in a loop).
    """
    children: dict[int, list[int]] = {}
    for pid, entry in _process_table().items():
        if entry.ppid:
            children.setdefault(entry.ppid, []).append(pid)
    return children


def descendants(pid: int) -> list[ProcessIdentity]:
    """The live descendants of ``pid``, whatever their session or group.

    Blocking: reads ``/proc`` (run it with ``trio.to_thread.run_sync`` in a loop).
    A process that left the tree because its parent exited (reparented to init
    or to a child subreaper) is no longer a descendant.
    """
    return [ProcessIdentity._of(entry) for entry in _subtree(pid) if not entry.zombie]


# --------------------------------------------------------------------------- pinning


class PinnedProcess:
    """A process whose identity was checked; signals never reach a recycled pid.

    Get one with :meth:`pin`. On Linux 5.3+ it holds a pidfd (close it with
    :meth:`close`, or use it as a context manager); without pidfds, each signal
    re-reads the process's start time just before it is sent.
    """

    def __init__(self, identity: ProcessIdentity, pidfd: int | None) -> None:
        self.identity = identity
        self.pidfd = pidfd

    @classmethod
    def pin(cls, identity: ProcessIdentity) -> PinnedProcess | None:
        """Pin ``identity``'s process; ``None`` if it is gone or the pid is someone else's."""
        pidfd: int | None = None
        if _HAVE_PIDFD:
            try:
                pidfd = os.pidfd_open(identity.pid)
            except ProcessLookupError:
                return None
            except OSError:
                pidfd = None  # ENOSYS, EMFILE: check before every signal instead
        # Read after the pidfd exists: a match now means the pidfd names this process.
        if not identity.matches(_read_stat(identity.pid)):
            if pidfd is not None:
                os.close(pidfd)
            return None
        return cls(identity, pidfd)

    @property
    def pid(self) -> int:
        return self.identity.pid

    @property
    def ticks(self) -> int:
        """The start time in clock ticks since boot (0 if unknown)."""
        start = self.identity.start_time
        return 0 if start is None else round(start * _clock_ticks())

    def __enter__(self) -> PinnedProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        return self.identity.matches(_read_stat(self.pid))

    def exited(self) -> bool:
        """Whether it has exited (a zombie has)."""
        if self.pidfd is not None:
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            return bool(poller.poll(0))
        entry = _read_stat(self.pid)
        return entry is None or entry.zombie or not self.identity.matches(entry)

    def send(self, sig: int) -> bool:
        """Signal it; ``False`` only if the OS refused (not ours to signal).

        A process that is gone counts as signalled.
        """
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            elif self.is_same():
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
        return True

    def send_group(self, sig: int) -> None:
        """Signal its process group, if it still leads one."""
        entry = _read_stat(self.pid)
        # The identity check comes after the read, so the group id read was this
        # process's own; while it is unreaped, no other process can lead that group.
        if entry is None or entry.pgid != self.pid or not self.identity.matches(entry):
            return
        if not self.is_same():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def wait_exited(self) -> None:
        """Return once it has exited. Cancel it to stop waiting."""
        if self.pidfd is not None:
            await trio.lowlevel.wait_readable(self.pidfd)
            return
        # Without a pidfd there is nothing to wait on: poll (old kernels only).
        while not self.exited():  # noqa: ASYNC110
            await trio.sleep(0.01)

    def reap(self) -> None:
        """Reap it if it is this process's child and has exited (never blocks)."""
        with contextlib.suppress(ChildProcessError):
            if self.pidfd is not None:
                os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
            elif self.identity.matches(_read_stat(self.pid)):
                os.waitpid(self.pid, os.WNOHANG)

    def close(self) -> None:
        """Release the pidfd. Idempotent."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _pin_entry(entry: _Stat) -> PinnedProcess | None:
    return PinnedProcess.pin(ProcessIdentity._of(entry))


async def _kill_pinned(
    targets: Sequence[PinnedProcess], *, grace: float = _ESCAPEE_KILL_TIMEOUT
) -> tuple[int, ...]:
    """SIGKILL the targets, wait for them (bounded), reap those that are our children.

    Closes them. Returns the pids still alive after ``grace`` or not ours to signal.
    """
    escaped: list[int] = []
    try:
        refused = {t.pid for t in targets if not t.send(signal.SIGKILL)}
        with trio.move_on_after(grace):
            for target in targets:
                if target.pid not in refused:
                    await target.wait_exited()
        for target in targets:
            if target.pid in refused or not target.exited():
                escaped.append(target.pid)
            else:
                target.reap()
    finally:
        for target in targets:
            target.close()
    return tuple(escaped)


def _subtree(pid: int) -> list[_Stat]:
    """The descendants of ``pid`` (zombies included), read through the children files."""
    found: list[_Stat] = []
    stack = [pid]
    seen = {pid}
    while stack:
        children = _children(stack.pop())
        if children is None:
            return _subtree_from_table(pid)
        for child in children:
            entry = _read_stat(child)
            if entry is not None and child not in seen:
                seen.add(child)
                found.append(entry)
                stack.append(child)
    return found


def _subtree_from_table(pid: int) -> list[_Stat]:
    table = _process_table()
    children: dict[int, list[int]] = {}
    for entry in table.values():
        children.setdefault(entry.ppid, []).append(entry.pid)
    found: list[_Stat] = []
    stack = list(children.get(pid, ()))
    seen = set(stack)
    while stack:
        entry = table[stack.pop()]
        found.append(entry)
        for child in children.get(entry.pid, ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return found


class _Tree(NamedTuple):
    escapees: list[PinnedProcess]  # outside the leader's group: killpg misses them
    members: list[PinnedProcess]  # in the group: killpg reaches them, the stop waits for them


def _find_tree(leader: int, claim: Callable[[int], list[tuple[int, int]]] | None) -> _Tree:
    """The processes that must die with ``leader``, pinned.

    Its descendants, and (on a subreaper host) what ``claim(leader start ticks)``
    says was reparented from it, with their descendants. Those outside the
    leader's process group (``setsid``, ``setpgid``) are escapees. Blocking.
    """
    found = {e.pid: e for e in _subtree(leader)}
    leader_entry = _read_stat(leader)
    if claim is not None and leader_entry is not None:
        for pid, ticks in claim(leader_entry.ticks):
            entry = _read_stat(pid)
            if entry is None or entry.ticks != ticks or pid in found:
                continue
            found[pid] = entry
            found.update((e.pid, e) for e in _subtree(pid))
    tree = _Tree([], [])
    for entry in found.values():
        if entry.zombie or entry.pid == leader:
            continue
        target = _pin_entry(entry)
        if target is not None:
            (tree.members if entry.pgid == leader else tree.escapees).append(target)
    return tree


def _watched_pids() -> set[int]:
    """Pids some code of this process holds a pidfd on (``trio.Process`` does)."""
    watched: set[int] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return watched
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[pidfd]":
                continue
            with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
                info = f.read()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith(b"Pid:"):
                with contextlib.suppress(ValueError):
                    watched.add(int(line.split()[1]))
    return watched


# --------------------------------------------------------------------------- marked processes


@attrs.frozen(kw_only=True)
class MarkedProcess:
    """A process found by :func:`find_marked`.

    Attributes:
        identity: Its identity when it was found.
        environ: Its environment when it was found.
        cmdline: Its command line when it was found (for messages).
    """

    identity: ProcessIdentity
    environ: Mapping[str, str] = attrs.field(repr=False)
    cmdline: tuple[str, ...] = ()


def find_marked(
    name: str,
    value: str | Callable[[str], bool],
    *,
    exclude_pids: AbstractSet[int] = frozenset(),
) -> list[MarkedProcess]:
    """The live processes of this user whose environment marks them as ours.

    A process matches when its environment variable ``name`` equals ``value``
    (or ``value(v)`` is true). The calling process, its ancestors and
    ``exclude_pids`` never match; neither do processes whose environment
    cannot be read (another user's, a zombie, gone), nor one whose pid was
    recycled while it was being read.

    Blocking: reads ``/proc`` for every process; run it with
    ``trio.to_thread.run_sync``.

    Returns:
        The processes found, by pid.
    """
    me = os.getpid()
    excluded = {me, *exclude_pids}
    parent = os.getppid()
    while parent > 1 and parent not in excluded:
        excluded.add(parent)
        entry = _read_stat(parent)
        parent = entry.ppid if entry is not None else 0
    wanted = value if callable(value) else value.__eq__
    uid = os.getuid()
    key = name.encode()
    found = []
    for pid in _pids():
        if pid in excluded:
            continue
        before = _read_stat(pid)
        if before is None or before.zombie:
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        raw = _read_environ(pid)
        mark = _environ_value(raw, key)
        if mark is None or not wanted(mark.decode(errors="replace")):
            continue
        environ = dict(
            item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item
        )
        cmdline = tuple(_read_cmdline(pid))
        identity = ProcessIdentity._of(before)
        if not identity.matches(_read_stat(pid)):
            continue  # the pid now names another process: what we read may be mixed up
        found.append(MarkedProcess(identity=identity, environ=environ, cmdline=cmdline))
    return found


def _read_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


# --------------------------------------------------------------------------- terminating


@attrs.frozen(kw_only=True)
class TerminateReport:
    """What :func:`terminate_processes` did, by pid (the processes and their descendants).

    Members of a process's group that are no longer its descendants (their
    parent exited) get the group's signals but are not listed.

    Attributes:
        terminated: Exited within the timeout after the stop signal.
        killed: Still running after the timeout, then killed with SIGKILL.
        escaped: Still running after SIGKILL (or not ours to signal).
        skipped: Processes that were no longer the one named (exited, or their
            pid now names another process): never signalled.
    """

    terminated: tuple[int, ...] = ()
    killed: tuple[int, ...] = ()
    escaped: tuple[int, ...] = ()
    skipped: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether nothing escaped."""
        return not self.escaped


class _Claim:
    """The pinned processes a termination is responsible for."""

    def __init__(self) -> None:
        self.roots: list[PinnedProcess] = []
        self.targets: dict[int, PinnedProcess] = {}
        self.skipped: list[int] = []

    @classmethod
    def of(cls, identities: Sequence[ProcessIdentity]) -> _Claim:
        """Pin the processes, then their descendants (blocking)."""
        claim = cls()
        try:
            for identity in identities:
                if identity.pid in claim.targets or identity.pid in claim.skipped:
                    continue
                target = PinnedProcess.pin(identity)
                if target is None:
                    claim.skipped.append(identity.pid)
                    continue
                claim.roots.append(target)
                claim.targets[identity.pid] = target
            claim.add_descendants(claim.roots)
        except BaseException:
            claim.close()
            raise
        return claim

    def add_descendants(self, parents: Sequence[PinnedProcess]) -> list[PinnedProcess]:
        """Pin the live descendants of ``parents`` not pinned yet (blocking).

        Descendants in another process group or session are found too: a
        group signal does not reach them.
        """
        if not parents:
            return []
        table = _process_table()
        children: dict[int, list[int]] = {}
        for entry in table.values():
            children.setdefault(entry.ppid, []).append(entry.pid)
        added: list[PinnedProcess] = []
        stack = list(parents)
        while stack:
            parent = stack.pop()
            if not parent.is_same():
                continue  # its pid's children would be a stranger's
            for pid in children.get(parent.pid, ()):
                entry = table[pid]
                if pid in self.targets or entry.zombie:
                    continue
                target = _pin_entry(entry)
                if target is None:
                    continue
                # Confirmed after pinning: the process read was the live parent's child.
                now = _read_stat(pid)
                if now is None or now.ppid != parent.pid or not parent.is_same():
                    target.close()
                    continue
                self.targets[pid] = target
                added.append(target)
                stack.append(target)
        return added

    def send_all(self, targets: Iterable[PinnedProcess], sig: int) -> None:
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


async def _wait_all_exited(targets: Iterable[PinnedProcess]) -> None:
    """Return when every target has exited. Cancel it to stop waiting."""
    async with trio.open_nursery() as nursery:
        for target in targets:
            if not target.exited():
                nursery.start_soon(target.wait_exited)


async def terminate_processes(
    processes: Iterable[ProcessIdentity],
    *,
    # The grace period between the stop signal and SIGKILL, not a deadline on the call.
    timeout: float = 5.0,  # noqa: ASYNC109
    kill_timeout: float = 2.0,
    stop_signal: int = signal.SIGTERM,
) -> TerminateReport:
    """Stop the processes and all their descendants: ``stop_signal``, then SIGKILL.

    Each process whose identity still matches is pinned, with its descendants.
    ``stop_signal`` then SIGCONT (so a stopped process acts on it) go to each
    process's group, when it leads one, and to every pinned process, including
    descendants that left the group. Whatever runs ``timeout`` seconds later is
    killed with SIGKILL, after its descendants are looked for again (children it
    forked meanwhile).

    Cancellation: whatever is still running is killed with SIGKILL (shielded,
    waiting at most ``kill_timeout``) before ``Cancelled`` propagates.

    Raises:
        ValueError: A timeout is negative.
    """
    if timeout < 0 or kill_timeout < 0:
        raise ValueError(f"timeouts must be >= 0, got {timeout} and {kill_timeout}")
    pending = tuple(processes)
    claim = await trio.to_thread.run_sync(_Claim.of, pending)
    terminated: list[int] = []
    try:
        if stop_signal != signal.SIGKILL:
            claim.send_all(claim.targets.values(), stop_signal)
            with trio.move_on_after(timeout):
                await _wait_all_exited(claim.targets.values())
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
        await _wait_all_exited(survivors)
    killed = sorted(target.pid for target in survivors if target.exited())
    escaped = sorted(target.pid for target in survivors if not target.exited())
    return tuple(killed), tuple(escaped)


def kill_processes(
    processes: Iterable[ProcessIdentity], *, kill_timeout: float = 2.0
) -> TerminateReport:
    """SIGKILL the processes and all their descendants at once, for code without Trio.

    As :func:`terminate_processes` with ``stop_signal=signal.SIGKILL``, blocking.
    """
    return trio.run(
        functools.partial(
            terminate_processes, processes, kill_timeout=kill_timeout, stop_signal=signal.SIGKILL
        )
    )
