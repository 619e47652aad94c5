"""Readiness protocols of process children (:class:`~supervision.Ready`).

Each generation of a process child gets a fresh :class:`ReadyCheck` built by
:func:`make_ready_check`. The process runner feeds the check's environment and
file descriptors into the spawn, calls :meth:`ReadyCheck.spawned` once the
child exists, runs :meth:`ReadyCheck.run` as a task for the whole generation,
and races :attr:`ReadyCheck.ready` against the child's exit and the startup
timeout. A check never kills anything itself: after readiness it may set
:attr:`ReadyCheck.failure` (a missed watchdog), and the runner acts on it.
"""

from __future__ import annotations

import array
import contextlib
import os
import re
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Final
from urllib.parse import urlsplit

import trio

from ._spec import (
    Ready,
    ReadyAfter,
    ReadyFd,
    ReadyHttp,
    ReadyNotify,
    ReadyOnSpawn,
    ReadyTcp,
)

__all__ = ["NotifySocket", "ReadyCheck", "make_ready_check"]

Changed = Callable[[], None]
"""Called by a check whenever :attr:`ReadyCheck.ready`, ``failure`` or ``status_text`` changed."""

_PROBE_FIRST_DELAY: Final = 0.005
_PROBE_MAX_DELAY: Final = 0.1
_PROBE_ATTEMPT_TIMEOUT: Final = 2.0
_HTTP_MAX_STATUS_LINE: Final = 8192


class ReadyCheck:
    """One generation's readiness protocol (the base class is :meth:`Ready.on_spawn`).

    Attributes:
        ready: Set once the child is ready.
        failure: Set after readiness when the protocol decides the child is hung
            (a missed or triggered watchdog); the runner then kills it.
        status_text: The child's last ``STATUS=`` text (notify only).
    """

    ready: bool
    failure: str | None
    status_text: str | None

    def __init__(self) -> None:
        self.ready = False
        self.failure = None
        self.status_text = None

    def child_env(self) -> Mapping[str, str]:
        """Variables the child needs for this protocol."""
        return {}

    def child_fds(self) -> Mapping[int, int]:
        """File descriptors to place in the child: ``{target_fd: supervisor_fd}``."""
        return {}

    def spawned(self) -> None:
        """The child exists: drop the supervisor's copies of the child's ends."""

    async def run(self, pid: int, changed: Changed) -> None:
        """Watch the child until it is ready (and, for notify, for its whole life).

        Cancellation: the check stops; nothing is left behind.
        """

    def settle(self, pid: int) -> None:
        """The leader ``pid`` exited: take in what it said just before (sync, non-blocking).

        Called once the exit is seen, before deciding whether the child had become
        ready, and again when the generation ends (to keep a last ``STATUS=``).
        """

    def close(self) -> None:
        """Release this generation's resources. Idempotent."""


class _OnSpawnCheck(ReadyCheck):
    """Ready as soon as the exec succeeded."""

    def spawned(self) -> None:
        self.ready = True


class _AfterCheck(ReadyCheck):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self._seconds = seconds

    async def run(self, pid: int, changed: Changed) -> None:
        await trio.sleep(self._seconds)
        self.ready = True
        changed()


class _FdCheck(ReadyCheck):
    """s6 style: ready when the child writes a newline to its fd ``n``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self._n = n
        self._read_fd, self._write_fd = os.pipe()
        self._stream: trio.lowlevel.FdStream | None = None

    def child_fds(self) -> Mapping[int, int]:
        return {self._n: self._write_fd}

    def spawned(self) -> None:
        self._close_write_end()

    def _close_write_end(self) -> None:
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1

    async def run(self, pid: int, changed: Changed) -> None:
        if self._read_fd < 0:
            return
        self._stream = trio.lowlevel.FdStream(self._read_fd)
        self._read_fd = -1
        while True:
            data = await self._stream.receive_some(4096)
            if not data:
                # The child closed the descriptor without a newline: it will never be
                # ready this way; the runner's timeout or the child's exit decides.
                return
            if b"\n" in data:
                self.ready = True
                changed()
                return

    def settle(self, pid: int) -> None:
        # The child may have written its newline just before exiting.
        fd = self._stream.fileno() if self._stream is not None else self._read_fd
        while not self.ready and fd >= 0:
            try:
                data = os.read(fd, 4096)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self.ready = b"\n" in data

    def close(self) -> None:
        self._close_write_end()
        if self._stream is not None:
            self._stream.close()
        elif self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1


async def _backoff_probe(attempt: Callable[[], Awaitable[bool]]) -> None:
    """Call the async ``attempt`` until it returns True, growing the delay 5 ms -> 100 ms."""
    delay = _PROBE_FIRST_DELAY
    while True:
        with trio.move_on_after(_PROBE_ATTEMPT_TIMEOUT):
            if await attempt():
                return
        await trio.sleep(delay)
        delay = min(delay * 2, _PROBE_MAX_DELAY)


class _TcpCheck(ReadyCheck):
    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self._host = host
        self._port = port

    async def _attempt(self) -> bool:
        try:
            stream = await trio.open_tcp_stream(self._host, self._port)
        except OSError:
            return False
        await trio.aclose_forcefully(stream)
        return True

    async def run(self, pid: int, changed: Changed) -> None:
        await _backoff_probe(self._attempt)
        self.ready = True
        changed()


class _HttpCheck(ReadyCheck):
    """A GET with a minimal HTTP/1.1 client; a 2xx answer means ready."""

    def __init__(self, url: str) -> None:
        super().__init__()
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host_header = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port is not None:
            host_header += f":{parts.port}"
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: supervision\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        ).encode("ascii", "strict")
        self._ssl_context: ssl.SSLContext | None = None
        self.last_status: int | None = None

    async def _attempt(self) -> bool:
        try:
            tcp = await trio.open_tcp_stream(self._host, self._port)
        except OSError:
            return False
        stream: trio.abc.Stream = tcp
        try:
            if self._https:
                if self._ssl_context is None:
                    # Loading the CA store reads files: keep it off the event loop.
                    self._ssl_context = await trio.to_thread.run_sync(ssl.create_default_context)
                stream = trio.SSLStream(
                    tcp, self._ssl_context, server_hostname=self._host, https_compatible=True
                )
            await stream.send_all(self._request)
            head = b""
            while b"\r\n" not in head and len(head) < _HTTP_MAX_STATUS_LINE:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                head += chunk
        except (OSError, trio.BrokenResourceError, ssl.SSLError):
            return False
        finally:
            await trio.aclose_forcefully(stream)
        match = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})", head)
        if match is None:
            return False
        self.last_status = int(match.group(1))
        return 200 <= self.last_status < 300

    async def run(self, pid: int, changed: Changed) -> None:
        await _backoff_probe(self._attempt)
        self.ready = True
        changed()


# --------------------------------------------------------------------------- sd_notify

_UCRED: Final = struct.Struct("iII")  # pid, uid, gid
_MAX_DATAGRAM: Final = 4096  # systemd's NOTIFY_BUFFER_MAX
_SCM_MAX_FD: Final = 253
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(
    _SCM_MAX_FD * array.array("i").itemsize
)


class NotifySocket:
    """A slot's ``$NOTIFY_SOCKET``: an ``AF_UNIX`` datagram socket with ``SO_PASSCRED``.

    It is bound once per slot and kept across generations; each message comes
    with the sender's pid from ``SCM_CREDENTIALS`` so a check can accept only the
    current generation (systemd's ``NotifyAccess``). File descriptors passed along
    (``FDSTORE=1``) are closed: the store is not supported.
    """

    def __init__(self, path: str) -> None:
        if not hasattr(socket, "SO_PASSCRED") or not hasattr(socket, "SCM_CREDENTIALS"):
            raise OSError("sd_notify readiness needs SO_PASSCRED (Linux)")
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            # The host's runtime directory is 0700: only this user can reach the socket.
            sock.bind(path)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def receive_nowait(self) -> tuple[int | None, bytes] | None:
        """The next queued message and its sender's pid, or ``None`` if there is none."""
        try:
            data, ancdata, flags, _ = self._sock.recvmsg(_MAX_DATAGRAM, _ANCILLARY_SIZE)
        except BlockingIOError:
            return None
        sender: int | None = None
        for level, kind, payload in ancdata:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                sender = _UCRED.unpack_from(payload)[0]
            elif kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            return None, b""  # damaged: drop it
        return sender, data

    def drain(self) -> None:
        """Drop every queued message (left over from an earlier generation)."""
        while self.receive_nowait() is not None:
            pass

    async def wait_readable(self) -> None:
        """Wait until a message may be queued.

        Read messages with :meth:`receive_nowait` and handle them before the next
        checkpoint: a message taken off the queue is never held across a yield,
        so whoever looks at the queue next sees it either queued or handled.

        Cancellation: safe; nothing is consumed.
        """
        await trio.lowlevel.wait_readable(self._sock)

    def close(self) -> None:
        """Close the socket and remove its file. Idempotent."""
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _sender_belongs(sender: int | None, leader: int) -> bool:
    """Whether ``sender`` is the leader or in its process group (its session's group)."""
    if sender is None:
        return False
    if sender == leader:
        return True
    try:
        return os.getpgid(sender) == leader
    except OSError:
        return False


class _NotifyCheck(ReadyCheck):
    """systemd's ``sd_notify`` protocol, with an optional watchdog after ``READY=1``."""

    def __init__(self, sock: NotifySocket, watchdog: float | None) -> None:
        super().__init__()
        self._sock = sock
        self._interval = watchdog
        self._last_ping = 0.0
        self._poke = trio.Event()
        self.stopping = False
        self.rejected = 0
        # Messages queued by an earlier generation must not count for this one.
        sock.drain()

    def child_env(self) -> Mapping[str, str]:
        env = {"NOTIFY_SOCKET": self._sock.path}
        if self._interval is not None:
            env["WATCHDOG_USEC"] = str(max(1, round(self._interval * 1_000_000)))
        return env

    async def run(self, pid: int, changed: Changed) -> None:
        async with trio.open_nursery() as nursery:
            if self._interval is not None:
                nursery.start_soon(self._watchdog, changed)
            while True:
                await self._sock.wait_readable()
                while (message := self._sock.receive_nowait()) is not None:
                    sender, payload = message
                    if _sender_belongs(sender, pid):
                        self._handle(payload, changed)
                    else:
                        self.rejected += 1

    def settle(self, pid: int) -> None:
        # The leader's last datagrams are queued before it exits; read them now
        # that its exit has been seen (its pid is the only sender still trusted).
        while (message := self._sock.receive_nowait()) is not None:
            sender, payload = message
            if sender == pid:
                self._handle(payload, lambda: None)

    def _handle(self, payload: bytes, changed: Changed) -> None:
        text = payload.decode("utf-8", errors="replace")
        for line in text.split("\n"):
            key, sep, value = line.partition("=")
            if not sep:
                continue
            if key == "READY" and value == "1" and not self.ready:
                self.ready = True
                self._last_ping = trio.current_time()
                self._poke.set()
                changed()
            elif key == "STATUS":
                self.status_text = value
                changed()
            elif key == "STOPPING" and value == "1":
                self.stopping = True
            elif key == "WATCHDOG" and value == "1":
                self._last_ping = trio.current_time()
            elif key == "WATCHDOG" and value == "trigger" and self._interval is not None:
                self._fail("watchdog timeout: triggered by the child (WATCHDOG=trigger)", changed)
            elif key == "WATCHDOG_USEC" and self._interval is not None:
                with contextlib.suppress(ValueError):
                    usec = int(value)
                    if usec > 0:
                        self._interval = usec / 1_000_000
                        self._last_ping = trio.current_time()
                        self._poke.set()

    def _fail(self, reason: str, changed: Changed) -> None:
        if self.failure is None:
            self.failure = reason
            changed()

    async def _watchdog(self, changed: Changed) -> None:
        while not self.ready:
            await self._poke.wait()
            self._poke = trio.Event()
        while self.failure is None and self._interval is not None:
            deadline = self._last_ping + self._interval
            with trio.move_on_at(deadline):
                await self._poke.wait()
                self._poke = trio.Event()
                continue  # the interval changed: compute the deadline again
            if trio.current_time() >= self._last_ping + self._interval:
                self._fail(f"watchdog timeout: no WATCHDOG=1 within {self._interval:g}s", changed)


def make_ready_check(ready: Ready, *, notify: NotifySocket | None) -> ReadyCheck:
    """Build one generation's check for the ``ready`` spec.

    Args:
        ready: The child's readiness spec.
        notify: The slot's notify socket (required for :meth:`Ready.notify`).
    """
    if isinstance(ready, ReadyOnSpawn):
        return _OnSpawnCheck()
    if isinstance(ready, ReadyAfter):
        return _AfterCheck(ready.seconds)
    if isinstance(ready, ReadyNotify):
        if notify is None:
            raise ValueError("Ready.notify() needs the slot's notify socket")
        return _NotifyCheck(notify, ready.watchdog)
    if isinstance(ready, ReadyFd):
        return _FdCheck(ready.n)
    if isinstance(ready, ReadyTcp):
        return _TcpCheck(ready.host, ready.port)
    if isinstance(ready, ReadyHttp):
        return _HttpCheck(ready.url)
    raise TypeError(f"unsupported readiness protocol: {ready!r}")
