"""Reading ``/proc``: process identity, the tree of a process, and killing it.

Linux names a process by its pid only until it exits; the pid plus the
process's start time (clock ticks since boot) names it for good. Everything
that signals a process found by reading ``/proc`` pins it first: with a pidfd
where there are pidfds, otherwise by re-reading its start time just before each
signal, so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from typing import Final, NamedTuple

import trio

__all__ = ["MARKER_ENV"]

MARKER_ENV: Final = "SUPERVISION_CHILD_ID"
"""The environment variable that marks every process started for a slot."""

_ESCAPEE_KILL_TIMEOUT: Final = 1.0
_HAVE_PIDFD: Final = hasattr(os, "pidfd_open") and hasattr(os, "P_PIDFD")


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
