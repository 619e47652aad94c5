"""The asynchronous client: concurrent calls over one connection, plus server push.

Replies are decoded with the same :class:`Limits` the server applies to requests,
so a malicious or broken server (a remote alias, RP-22) can make a call fail with
:class:`ProtocolError` but cannot exhaust the caller's memory or stall its loop.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final

import attrs
import trio

from . import _wire
from ._errors import (
    ConnectionLost,
    ProtocolError,
    RemoteError,
    check_domain_error_types,
)
from ._protocol import ErrorInfo, Notification, Response, decode_server_message
from ._util import collapse_single_exception_group, open_unix_stream
from ._wire import DEFAULT_LIMITS, DROPPED_METHOD, Limits

__all__ = ["RpcClient", "Notifications", "connect_unix"]

DEFAULT_NOTIFICATION_BUFFER: Final = 1024
BROKEN_PIPE_GRACE: Final = 1.0
"""Seconds a call whose write failed waits for the server's parting error frame."""


@attrs.define
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    response: Response | None = None
    failure: Callable[[], Exception] | None = None


class Notifications:
    """Server-pushed notifications, in arrival order (an async iterator).

    Bounded: if the application does not keep up, the oldest are dropped and a
    ``Notification(method="rpc.dropped", params={"dropped": N, "local": True})``
    takes their place. Iteration ends when the connection closes.
    """

    def __init__(self, capacity: int) -> None:
        self._buffer: collections.deque[Notification] = collections.deque()
        self._capacity = capacity
        self._dropped = 0
        self._closed = False
        self._lot = trio.lowlevel.ParkingLot()

    def _push(self, notification: Notification) -> None:
        if len(self._buffer) >= self._capacity:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(notification)
        self._lot.unpark_all()

    def _close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    def __aiter__(self) -> Notifications:
        return self

    async def __anext__(self) -> Notification:
        while not self._buffer and not self._dropped:
            if self._closed:
                raise StopAsyncIteration
            await self._lot.park()
        if self._dropped:
            count, self._dropped = self._dropped, 0
            return Notification(method=DROPPED_METHOD, params={"dropped": count, "local": True})
        return self._buffer.popleft()


class RpcClient:
    """A msgpack-rpc client on one stream; any number of tasks may call concurrently.

    Use :func:`connect_unix` to get one. Calls are matched to replies by msgid, so
    replies may arrive in any order.

    Args:
        stream: A connected stream (Unix socket, TLS, WebSocket).
        limits: Decoder limits applied to everything the server sends.
        error_types: Domain error classes to raise for their codes.
        notification_buffer: Pending server-push notifications kept.
        address: For error messages.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        limits: Limits = DEFAULT_LIMITS,
        error_types: Iterable[type[RemoteError]] = (),
        notification_buffer: int = DEFAULT_NOTIFICATION_BUFFER,
        address: str = "",
    ) -> None:
        self._stream = stream
        self._limits = limits
        self._domain = check_domain_error_types(error_types)
        self._address = address
        self._pending: dict[int, _Pending] = {}
        self._next_msgid = 0
        # Requests waiting to be written, and whether a caller is writing them: the
        # first caller to find no write in progress writes every request queued
        # meanwhile in one send_all (one TLS record and system call per batch).
        self._outbox: list[bytes] = []
        self._writing = False
        self._failure: Callable[[], Exception] | None = None
        self._reader_scope = trio.CancelScope()
        self._notifications = Notifications(notification_buffer)

    @property
    def closed(self) -> bool:
        """True once the connection can no longer carry calls."""
        return self._failure is not None

    def notifications(self) -> Notifications:
        """The (single) iterator of server-pushed notifications."""
        return self._notifications

    async def call(self, method: str, /, **params: object) -> Any:
        """Call ``method`` with named ``params`` and return its result.

        Raises:
            RemoteError: The server replied with an error; the subclass matches the
                code (``NotFound``, ``Forbidden``, ``InvalidParams``, ...).
            ProtocolError: The server sent something malformed or over a limit, or
                the request itself breaks the limits (then nothing was sent).
            ConnectionLost: The connection closed before the reply.
            TypeError: A param value cannot be encoded.

        Cancellation: abandons the wait; a late reply is ignored. Requests queued
        together are written together, by one of their callers: cancelling that
        caller while the batch is partly written closes the connection (it cannot
        be resumed), failing the other calls of the batch with ``ConnectionLost``.
        """
        if self._failure is not None:
            raise self._failure()
        msgid = self._allocate_msgid()
        # Checked against the limits before sending: a request the server would
        # refuse fails here, and the connection stays usable.
        frame = _wire.pack_request(msgid, method, params, self._limits)
        pending = _Pending()
        self._pending[msgid] = pending
        try:
            self._outbox.append(frame)
            broken = await self._flush() if not self._writing else False
            if broken:
                # The server may have hung up with a reason (BUSY, TIMEOUT, ...) that
                # the reader is about to deliver; that beats a bare "connection lost".
                with trio.move_on_after(BROKEN_PIPE_GRACE):
                    await pending.done.wait()
                self._fail(lambda: ConnectionLost(self._lost("while sending")))
            await pending.done.wait()
        finally:
            self._pending.pop(msgid, None)
        if pending.failure is not None:
            raise pending.failure()
        assert pending.response is not None
        if pending.response.error is not None:
            raise pending.response.error.to_exception(self._domain)
        return pending.response.result

    async def _flush(self) -> bool:
        """Write the queued requests until none is left; ``True`` if the peer has gone away."""
        self._writing = True
        sent = broken = False
        try:
            # Let the other callers woken in this tick queue their requests first.
            await trio.lowlevel.cancel_shielded_checkpoint()
            while self._outbox and self._failure is None:
                frames, self._outbox = self._outbox, []
                await self._stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))
            sent = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            broken = True
        finally:
            self._writing = False
            self._outbox.clear()
            if not sent and not broken:
                # Cancelled part-way: the stream may hold half a request now.
                self._fail(
                    lambda: ConnectionLost(
                        f"{self._where()}a request was cut off mid-write; the connection was closed"
                    )
                )
        return broken

    def _allocate_msgid(self) -> int:
        while True:
            msgid = self._next_msgid
            self._next_msgid = (msgid + 1) % (_wire.MAX_MSGID + 1)
            if msgid not in self._pending:
                return msgid

    def _where(self) -> str:
        return f"{self._address}: " if self._address else ""

    def _lost(self, when: str) -> str:
        return f"{self._where()}the connection to the daemon was lost {when}"

    def _fail(self, failure: Callable[[], Exception]) -> None:
        """Mark the connection dead: every pending and future call raises ``failure()``."""
        if self._failure is None:
            self._failure = failure
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.failure = self._failure
                pending.done.set()
        self._notifications._close()
        self._reader_scope.cancel()

    async def aclose(self) -> None:
        """Close the connection; pending calls raise :class:`ConnectionLost`."""
        self._fail(lambda: ConnectionLost(f"{self._where()}the client was closed"))
        await trio.aclose_forcefully(self._stream)

    async def _run_reader(self) -> None:
        """Read replies and notifications until the connection ends. Never raises."""
        decoder = _wire.FrameDecoder(self._limits)
        try:
            with self._reader_scope:
                while True:
                    data = await self._stream.receive_some(self._limits.read_size)
                    if not data:
                        self._fail(lambda: ConnectionLost(self._lost("(the daemon closed it)")))
                        return
                    decoder.feed(data)
                    while (frame := decoder.next_frame()) is not None:
                        self._on_message(decode_server_message(frame))
        except ProtocolError as exc:
            code, message = exc.code, exc.message
            self._fail(
                lambda: ProtocolError(code, f"{self._where()}bad reply from the server: {message}")
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._fail(lambda: ConnectionLost(self._lost("(reset)")))
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            self._fail(lambda: ConnectionLost(self._lost(f"({text})")))
        finally:
            await trio.aclose_forcefully(self._stream)

    def _on_message(self, message: Response | Notification) -> None:
        if isinstance(message, Notification):
            self._notifications._push(message)
            return
        if message.msgid is None:
            # A connection-level error (BUSY, TIMEOUT, FORBIDDEN, PARSE_ERROR...):
            # it applies to every call, and the server closes the connection.
            info: ErrorInfo | None = message.error
            assert info is not None
            domain = self._domain
            self._fail(lambda: info.to_exception(domain))
            return
        pending = self._pending.get(message.msgid)
        if pending is None or pending.done.is_set():
            return  # a late reply to a call that was cancelled
        pending.response = message
        pending.done.set()


@contextlib.asynccontextmanager
async def connect_unix(
    path: str | os.PathLike[str],
    *,
    limits: Limits = DEFAULT_LIMITS,
    error_types: Iterable[type[RemoteError]] = (),
    notification_buffer: int = DEFAULT_NOTIFICATION_BUFFER,
) -> AsyncIterator[RpcClient]:
    """Connect to the daemon's Unix socket: ``async with connect_unix(p) as client``.

    Raises:
        DaemonNotRunning: The socket does not exist or nothing listens on it.
        DaemonUnreachable: Connecting failed otherwise.
        SocketPathTooLong: ``path`` exceeds 107 bytes.

    Errors raised inside the block come out as themselves (no ``ExceptionGroup``).
    Leaving the block closes the connection; calls still waiting raise
    :class:`ConnectionLost`.
    """
    stream = await open_unix_stream(path)
    async with open_client(
        stream,
        limits=limits,
        error_types=error_types,
        notification_buffer=notification_buffer,
        address=os.fspath(path),
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def open_client(
    stream: trio.abc.Stream,
    *,
    limits: Limits = DEFAULT_LIMITS,
    error_types: Iterable[type[RemoteError]] = (),
    notification_buffer: int = DEFAULT_NOTIFICATION_BUFFER,
    address: str = "",
) -> AsyncIterator[RpcClient]:
    """A client on an already connected ``stream`` (TLS, WebSocket), closed on exit."""
    client = RpcClient(
        stream,
        limits=limits,
        error_types=error_types,
        notification_buffer=notification_buffer,
        address=address,
    )
    with collapse_single_exception_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run_reader)
            try:
                yield client
            finally:
                await client.aclose()
