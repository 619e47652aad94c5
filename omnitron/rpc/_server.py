"""The transport-independent RPC server: accept loop, connections, calls.

:class:`RpcServer` serves any list of ``trio.abc.Listener``s given an authenticator
that turns a fresh stream into a :class:`Peer` (or rejects it). The Unix socket
plane (:mod:`._unix`) is one such pairing; TCP+TLS and WebSocket listeners slot in
the same way later.

What a connection guarantees (FAULTS.md RP rows):

- a global connection cap: beyond it a newcomer gets one ``BUSY`` frame and is
  closed (RP-18), or, while ``max_rejecting`` newcomers are already being told so,
  is closed at once (a flood holds a bounded number of descriptors); on a trusted
  plane (``evict_idle``) the longest-idle connection is closed to admit it
  instead, and when every connection is busy a small reserve beyond the cap still
  admits newcomers for the few methods an operator needs in a storm
  (``daemon.status``, ``daemon.shutdown``, ``daemon.ping``);
- a per-connection in-flight cap with pipelining: requests run concurrently up to
  the cap and may be answered out of order; past it the connection is simply not
  read until a slot frees (back-pressure, RP-19);
- deadlines: the first request must arrive within ``hello_deadline``, any started
  message must complete within ``frame_deadline`` (slow-loris, RP-16, RP-05), and
  an idle connection (no call, no stream) is closed after ``idle_timeout``;
- a send deadline: a client that stops reading is disconnected, it never blocks
  the daemon (RP-17);
- malformed input gets an error reply where possible and closes that connection
  only (RP-01..RP-10); client notifications (``[2, method, params]``) never get a
  reply, and since no notification is acted on, each is counted and ignored;
- replies ready at the same time leave in one write: one writer task per
  connection batches them, so a pipelining client costs one system call and one
  wake-up per batch rather than per call; the writer holds one send deadline,
  moved for each write, rather than a cancel scope per write;
- a method with an inline handler (``daemon.ping``, ``daemon.exec``) runs in the
  reading task without a task of its own; a call it hands on (``exec`` to a
  worker) is answered from the callback that gets its outcome, straight into the
  writer's queue. It holds its in-flight slot like any call, and the connection
  waits for it as for a running call;
- every handler and every connection task is wrapped: no exception reaches the
  accept loop (RP-15), and a client that disconnects mid-call lets the call finish
  (RP-20);
- accept failing with ``EMFILE``/``ENFILE``/``ENOMEM``/``ENOBUFS`` sleeps 100 ms and
  retries instead of spinning or crashing (RP-18, RX-01).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import resource
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, NoReturn

import attrs
import trio

from .._log import get_logger
from . import _wire
from ._dispatch import DEFER, Dispatcher, Peer, _method_text, new_correlation_id
from ._errors import Busy, ErrorCode, ProtocolError, RemoteError, RemoteTimeout, Unavailable
from ._protocol import (
    ErrorInfo,
    Notification,
    Request,
    Response,
    decode_client_message,
    encode,
)
from ._stream import NotificationStream
from ._wire import DEFAULT_LIMITS, Limits

__all__ = ["ServerOptions", "ServerStatistics", "RpcServer", "Authenticator"]

log = get_logger()

Authenticator = Callable[[trio.abc.Stream], Awaitable[Peer]]
"""Turns a fresh stream into a :class:`Peer`; raises :class:`RemoteError` to reject it."""

ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_DELAY: Final = 0.1
REJECT_SEND_TIMEOUT: Final = 1.0
EVICTION_LOG_INTERVAL: Final = 10.0
"""Seconds between two log lines about idle connections evicted (a storm logs a count)."""
RESERVE_DEADLINE: Final = 1.0
"""Seconds a reserve connection may take to send its request, and may then stay idle."""
RESERVED_METHODS: Final = frozenset({"daemon.ping", "daemon.status", "daemon.shutdown"})
OUTBOX_HIGH_WATER: Final = 64 * 1024
"""Bytes queued for the writer beyond which a sender waits for its frame to be written."""


def send_nowait(stream: trio.abc.Stream, data: bytes | memoryview) -> int:
    """Write to ``stream``'s socket what it takes at once, without a checkpoint.

    Returns the bytes written: all of ``data`` in the usual case, fewer (down to 0)
    when the socket's buffer is full or ``stream`` is not a plain
    :class:`trio.SocketStream` (then ``send_all`` does the rest). A writer that
    was already scheduled saves the extra trip through the scheduler that
    ``send_all`` takes after each write.

    Raises:
        trio.BrokenResourceError: The connection is broken.
    """
    if type(stream) is not trio.SocketStream:
        return 0
    fd = stream.socket.fileno()
    if fd < 0:
        return 0  # closed: send_all raises ClosedResourceError
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket write failed: {exc}") from exc


READS_BEFORE_YIELD: Final = 16
"""Reads a reader makes back to back, finding data waiting each time, before it
goes through the scheduler (lets other tasks run) anyway; a read that fills its
whole buffer (a flood, a large message) ends such a run at once."""


def receive_nowait(stream: trio.abc.Stream, size: int) -> bytes | None:
    """What ``stream``'s socket holds now (at most ``size`` bytes, ``b""`` at EOF),
    without a checkpoint; ``None`` when nothing is waiting, or ``stream`` is not a
    plain :class:`trio.SocketStream` (then ``receive_some`` waits).

    Raises:
        trio.BrokenResourceError: The connection is broken.
    """
    if type(stream) is not trio.SocketStream:
        return None
    fd = stream.socket.fileno()
    if fd < 0:
        return None  # closed: receive_some raises ClosedResourceError
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket read failed: {exc}") from exc


async def receive_when_ready(stream: trio.abc.Stream, size: int) -> bytes | bytearray:
    """``stream.receive_some(size)``; on a plain socket, it waits until the socket is
    readable and reads, without ``receive_some``'s extra trip through the scheduler
    after the read."""
    if type(stream) is not trio.SocketStream:
        return await stream.receive_some(size)
    while True:
        await trio.lowlevel.wait_readable(stream.socket)
        data = receive_nowait(stream, size)
        if data is not None:
            return data


class _HeldWrites:
    """Writes held back while one task handles a burst of messages, then made at once.

    A task that handles many messages in one go without waiting (a connection's
    reader starting inline calls, a worker link's reader answering them) holds
    writes: what it queues on a connection or a link is written when it calls
    :func:`flush_writes`, one write per connection for the whole burst, straight
    to the socket, instead of waking each writer task. Frames queued by any other
    task wake the writer as usual, so a holder that waits without flushing only
    delays its own frames. A holder flushes before each of its waits.
    """

    __slots__ = ("owner", "waiting")

    def __init__(self) -> None:
        self.owner: trio.lowlevel.Task | None = None
        self.waiting: list[Any] = []  # objects with a _flush_held() method


_HELD: Final = _HeldWrites()


def hold_writes() -> None:
    """Hold the writes the current task queues until :func:`flush_writes`."""
    _HELD.owner = trio.lowlevel.current_task()


def writes_held() -> bool:
    """Whether the current task holds its writes (then register for a flush)."""
    return _HELD.owner is not None and _HELD.owner is trio.lowlevel.current_task()


def defer_write(writer: Any) -> None:
    """Have ``writer._flush_held()`` run at the next :func:`flush_writes`."""
    _HELD.waiting.append(writer)


def flush_writes() -> None:
    """Stop holding writes, and make the ones held (each writer's in one write)."""
    _HELD.owner = None
    if _HELD.waiting:
        waiting, _HELD.waiting = _HELD.waiting, []
        for writer in waiting:
            writer._flush_held()


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"ServerOptions.{attribute.name} must be > 0, got {value!r}")


def _count(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"ServerOptions.{attribute.name} must be an integer >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class ServerOptions:
    """Caps and deadlines of one server (the codec limits are in ``limits``).

    Attributes:
        max_connections: Concurrent connections; newcomers beyond it get ``BUSY``.
            Lowered under a small ``RLIMIT_NOFILE`` to keep descriptors in reserve.
        evict_idle: At the cap, close the longest-idle connection to admit a
            newcomer instead of refusing it (for a plane whose peers are all trusted).
        reserved_connections: Connections admitted beyond the cap when it is full and
            nothing can be evicted. A reserve connection may call only
            ``reserved_methods`` (others answer ``BUSY``), must send its request
            within 1 s and is closed once idle for 1 s, and any newcomer may evict
            it while it is idle: a storm cannot keep it.
        reserved_methods: What a reserve connection may call.
        max_rejecting: Newcomers being told ``BUSY`` at once (each holds a descriptor
            for up to a second, a TLS handshake included); beyond it, a newcomer over
            the cap is closed at once without a word, so a connection flood holds at
            most ``capacity + max_rejecting`` descriptors.
        max_inflight: Concurrent calls per connection (pipelining depth).
        max_streams: Notification streams per connection.
        stream_capacity: Default pending items per stream before drop-oldest.
        hello_deadline: Seconds from accept to the first complete request.
        frame_deadline: Seconds from a message's first byte to its last.
        idle_timeout: Seconds a connection with no call and no stream may stay
            silent; ``None`` for no limit.
        send_timeout: Seconds one reply may take to be written before the client
            is considered stuck and disconnected.
        limits: Frame and decoder limits.
    """

    max_connections: int = attrs.field(default=256, validator=_positive)
    evict_idle: bool = False
    reserved_connections: int = attrs.field(default=1, validator=_count)
    reserved_methods: frozenset[str] = RESERVED_METHODS
    max_rejecting: int = attrs.field(default=32, validator=_positive)
    max_inflight: int = attrs.field(default=32, validator=_positive)
    max_streams: int = attrs.field(default=16, validator=_positive)
    stream_capacity: int = attrs.field(default=1024, validator=_positive)
    hello_deadline: float = attrs.field(default=5.0, validator=_positive)
    frame_deadline: float = attrs.field(default=10.0, validator=_positive)
    idle_timeout: float | None = attrs.field(default=300.0, validator=_positive)
    send_timeout: float = attrs.field(default=10.0, validator=_positive)
    limits: Limits = DEFAULT_LIMITS


@attrs.frozen(kw_only=True)
class ServerStatistics:
    """A snapshot of a server's counters."""

    connections: int
    calls_in_flight: int
    streams: int
    accepted: int
    rejected_busy: int
    rejected_auth: int
    rejected_silently: int
    protocol_errors: int
    deadline_closes: int
    send_timeouts: int
    evicted_idle: int = 0
    reserve_admitted: int = 0
    notifications_ignored: int = 0


@attrs.define
class _Counters:
    accepted: int = 0
    rejected_busy: int = 0
    rejected_auth: int = 0
    rejected_silently: int = 0
    protocol_errors: int = 0
    deadline_closes: int = 0
    send_timeouts: int = 0
    evicted_idle: int = 0
    reserve_admitted: int = 0
    notifications_ignored: int = 0
    evicted_since_log: int = 0
    eviction_logged_at: float = -math.inf


@attrs.define(eq=False)
class _Slot:
    """One admitted connection's place under the cap (or in the reserve).

    Released exactly once: when its connection ends, or at once when a newcomer
    evicts it (so the newcomer's admission never waits for the victim to unwind).
    """

    reserve: bool
    held: bool = True


#: Descriptors kept free of client connections for everything else the daemon does.
FD_RESERVE: Final = 40


def _connection_capacity(configured: int) -> int:
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - no RLIMIT_NOFILE
        return configured
    if soft == resource.RLIM_INFINITY:
        return configured
    return min(configured, max(4, (soft - FD_RESERVE) // 2))


class RpcServer:
    """Serves a :class:`Dispatcher` on listeners; one task per connection.

    Usually obtained from :func:`serve_unix` / :func:`open_unix_server`.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        authenticate: Authenticator,
        options: ServerOptions = ServerOptions(),
        address: str = "",
    ) -> None:
        self._dispatcher = dispatcher
        self._authenticate = authenticate
        self._options = options
        self._address = address
        self._connections: set[_Connection] = set()
        # Idle connections (no call, no stream, not closing) in the order they became
        # idle: the first is the longest idle, found in O(1) in a storm.
        self._idle: dict[_Connection, None] = {}
        self._slots_taken = 0
        self._reserve_taken = 0
        self._rejecting = 0
        self._counters = _Counters()

    @property
    def address(self) -> str:
        """Where the server listens (the socket path for the Unix plane)."""
        return self._address

    @property
    def options(self) -> ServerOptions:
        return self._options

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            connections=self._slots_taken + self._reserve_taken,
            calls_in_flight=sum(len(c.inflight) for c in self._connections),
            streams=sum(len(c.streams) for c in self._connections),
            accepted=self._counters.accepted,
            rejected_busy=self._counters.rejected_busy,
            rejected_auth=self._counters.rejected_auth,
            rejected_silently=self._counters.rejected_silently,
            protocol_errors=self._counters.protocol_errors,
            deadline_closes=self._counters.deadline_closes,
            send_timeouts=self._counters.send_timeouts,
            evicted_idle=self._counters.evicted_idle,
            reserve_admitted=self._counters.reserve_admitted,
            notifications_ignored=self._counters.notifications_ignored,
        )

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[RpcServer] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Accept and serve connections on ``listeners`` until cancelled.

        Reports itself as started once the accept loops run (the listeners already
        listen, so connections made before that wait in the backlog).

        Cancellation: cancelling stops accepting, cancels running calls, and closes
        every connection and listener.
        """
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(self)
            await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _accept_loop(
        self, listener: trio.abc.Listener[Any], nursery: trio.Nursery
    ) -> NoReturn:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    # Out of fds/memory: sleeping (as trio.serve_listeners does) lets
                    # running calls finish and free descriptors; spinning would not.
                    log.error(
                        "rpc_accept_failed",
                        address=self._address,
                        errno=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                        retry_in=ACCEPT_RETRY_DELAY,
                    )
                    await trio.sleep(ACCEPT_RETRY_DELAY)
                    continue
                self._counters.accepted += 1
                nursery.start_soon(self._handle, stream)

    @property
    def capacity(self) -> int:
        """Connections served at once: ``max_connections``, lowered so that the
        connections can never take the descriptors that spawning children, writing
        state and accepting the next client need (RX-01)."""
        return _connection_capacity(self._options.max_connections)

    def _idlest(self) -> _Connection | None:
        return next(iter(self._idle), None)

    def _mark_idle(self, connection: _Connection) -> None:
        """Record that ``connection`` became idle now (or stop, if it is not idle)."""
        self._idle.pop(connection, None)
        if not connection.inflight and not connection.streams and not connection._closed:
            self._idle[connection] = None

    def _admit(self) -> _Slot | None:
        """Decide, without awaiting, whether a newcomer gets a slot (``None``: ``BUSY``)."""
        if self._slots_taken < self.capacity:
            self._slots_taken += 1
            return _Slot(reserve=False)
        victim = self._idlest()
        if victim is not None and (self._options.evict_idle or victim.slot.reserve):
            # Full: make room by closing the connection that has been idle longest,
            # so a newcomer (an operator's `status`) is served rather than a client
            # that holds a slot and does nothing. Its slot is the newcomer's now.
            reserve = victim.slot.reserve
            self._evict(victim)
            return self._take(reserve)
        if self._reserve_taken < self._options.reserved_connections:
            self._counters.reserve_admitted += 1
            return self._take(reserve=True)
        return None

    def _take(self, reserve: bool) -> _Slot:
        if reserve:
            self._reserve_taken += 1
        else:
            self._slots_taken += 1
        return _Slot(reserve=reserve)

    def _release(self, slot: _Slot) -> None:
        if not slot.held:
            return
        slot.held = False
        if slot.reserve:
            self._reserve_taken -= 1
        else:
            self._slots_taken -= 1

    def _evict(self, victim: _Connection) -> None:
        self._release(victim.slot)
        self._connections.discard(victim)
        self._idle.pop(victim, None)
        victim._close_now()
        counters = self._counters
        counters.evicted_idle += 1
        counters.evicted_since_log += 1
        now = trio.current_time()
        if now - counters.eviction_logged_at >= EVICTION_LOG_INTERVAL:
            # One line per interval, not one per eviction: a storm must not turn
            # into a flood of log writes that slows the accept loop further.
            log.info(
                "rpc_idle_connections_evicted",
                address=self._address,
                count=counters.evicted_since_log,
                total=counters.evicted_idle,
            )
            counters.evicted_since_log = 0
            counters.eviction_logged_at = now

    async def _handle(self, stream: trio.abc.Stream) -> None:
        """One connection, start to end. Never raises an ``Exception``."""
        accepted_at = trio.current_time()
        slot = self._admit()
        if slot is None:
            if self._rejecting >= min(self._options.max_rejecting, max(1, self.capacity // 4)):
                # A flood: telling each newcomer why would hold a descriptor (and, over
                # TLS, a handshake) per newcomer; close it at once instead.
                self._counters.rejected_silently += 1
                await trio.aclose_forcefully(stream)
                return
            self._counters.rejected_busy += 1
            self._rejecting += 1
            try:
                await self._reject(
                    stream,
                    Busy(f"too many connections (limit {self.capacity}); try again later"),
                )
            finally:
                self._rejecting -= 1
                await trio.aclose_forcefully(stream)
            return
        connection: _Connection | None = None
        try:
            hello_deadline = self._options.hello_deadline
            if slot.reserve:
                hello_deadline = min(hello_deadline, RESERVE_DEADLINE)
            peer: Peer | None = None
            with trio.move_on_at(accepted_at + hello_deadline):
                try:
                    peer = await self._authenticate(stream)
                except RemoteError as exc:
                    self._counters.rejected_auth += 1
                    log.warning(
                        "rpc_peer_rejected",
                        address=self._address,
                        code=exc.code,
                        reason=exc.message,
                    )
                    await self._reject(stream, exc)
                    return
            if peer is None:
                self._counters.deadline_closes += 1
                return
            if not slot.held:
                return  # evicted while authenticating
            connection = _Connection(self, stream, peer, accepted_at, slot)
            self._connections.add(connection)
            self._idle[connection] = None
            await connection.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:
            # A bug in this module: log it, drop this connection, keep serving.
            log.error("rpc_connection_crashed", address=self._address, exc_info=exc)
        finally:
            self._release(slot)
            if connection is not None:
                self._connections.discard(connection)
                self._idle.pop(connection, None)
                connection.decoder.discard()
            await trio.aclose_forcefully(stream)

    async def _reject(self, stream: trio.abc.Stream, error: RemoteError) -> None:
        frame = encode(Response(msgid=None, error=ErrorInfo.from_exception(error)))
        with (
            trio.move_on_after(REJECT_SEND_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await stream.send_all(frame)


class _Batch:
    """Frames handed to the writer together; ``done`` is set once they are written."""

    __slots__ = ("done", "written")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.written = False


class _Connection:
    """One authenticated connection: a reader loop, one task per call, one writer."""

    def __init__(
        self,
        server: RpcServer,
        stream: trio.abc.Stream,
        peer: Peer,
        accepted_at: float,
        slot: _Slot,
    ) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        self.slot = slot
        self.options = options = server._options
        self.limits = options.limits
        self.decoder = _wire.FrameDecoder(self.limits)
        self.inflight: set[int] = set()
        self.streams: dict[int, NotificationStream] = {}
        self._next_stream_id = 1
        self._slots = trio.Semaphore(options.max_inflight)
        self._closed = False
        self._accepted_at = accepted_at
        self._got_request = False
        self.last_activity = accepted_at
        self._partial_offset = -1
        self._partial_since = accepted_at
        self._read_scope: trio.CancelScope | None = None
        self._background: trio.Nursery | None = None
        self._hello_deadline = options.hello_deadline
        self._idle_timeout = options.idle_timeout
        self._allowed: frozenset[str] | None = None
        if slot.reserve:
            self._hello_deadline = min(self._hello_deadline, RESERVE_DEADLINE)
            self._idle_timeout = min(self._idle_timeout or math.inf, RESERVE_DEADLINE)
            self._allowed = options.reserved_methods
        # The writer's state: frames waiting, the batch they will leave in.
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._batch = _Batch()
        self._writer_wakeup = trio.Event()
        self._writer_idle = False  # parked, waiting for frames
        self._flush_queued = False  # registered for the held writes' flush
        self._reading_done = False
        # Calls handed on by an inline handler, answered later by a callback; the
        # calls nursery stays open (and the writer with it) until they are.
        self._calls: trio.Nursery | None = None
        self._deferred = 0
        self._deferred_done: trio.Event | None = None
        self._reads_in_a_row = 0

    def _log(self, level: str, event: str, **fields: object) -> None:
        getattr(log, level)(
            event, address=self.server.address, transport=self.peer.transport, **fields
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        # The writer outlives the calls, which live in the outer of the two inner
        # nurseries; streams and their producers live in the inner one: when reading
        # ends, streams end with it, while calls already running finish (RP-20) and
        # still reply if the peer reads.
        try:
            async with trio.open_nursery() as writer:
                writer.start_soon(self._writer)
                try:
                    async with trio.open_nursery() as calls:
                        self._calls = calls
                        try:
                            async with trio.open_nursery() as background:
                                self._background = background
                                try:
                                    await self._read_loop(calls)
                                finally:
                                    self._background = None
                                    for stream in list(self.streams.values()):
                                        stream._abort()
                                    background.cancel_scope.cancel()
                            # Calls handed on still finish and reply (RP-20), as tasks do.
                            while self._deferred:
                                self._deferred_done = trio.Event()
                                await self._deferred_done.wait()
                        finally:
                            self._calls = None
                finally:
                    self._reading_done = True
                    self._writer_wakeup.set()
        finally:
            # A handed-on call answered after this point finds the connection closed.
            self._closed = True

    def _close_now(self) -> None:
        """Stop reading and writing; running calls finish but their replies are dropped."""
        self._closed = True
        self.server._idle.pop(self, None)
        if self._read_scope is not None:
            self._read_scope.cancel()
        for stream in list(self.streams.values()):
            stream._abort()
        self._writer_wakeup.set()

    async def _abort(self) -> None:
        """Close the transport now: the peer sees EOF at once; running calls still finish."""
        self._close_now()
        await trio.aclose_forcefully(self.stream)

    # ------------------------------------------------------------------ reading

    def _read_deadline(self) -> float:
        deadline = math.inf
        if not self._got_request:
            deadline = self._accepted_at + self._hello_deadline
        if self.decoder.buffered:
            if self.decoder.frame_offset != self._partial_offset:
                self._partial_offset = self.decoder.frame_offset
                self._partial_since = trio.current_time()
            deadline = min(deadline, self._partial_since + self.options.frame_deadline)
        elif (
            self._got_request
            and self._idle_timeout is not None
            and not self.inflight
            and not self.streams
        ):
            deadline = min(deadline, self.last_activity + self._idle_timeout)
        return deadline

    def _refresh_deadline(self) -> None:
        if self._read_scope is not None:
            self._read_scope.deadline = self._read_deadline()

    async def _read_loop(self, calls: trio.Nursery) -> None:
        try:
            await self._read_messages(calls)
        finally:
            flush_writes()

    async def _read_messages(self, calls: trio.Nursery) -> None:
        # The replies of the calls answered inline while the messages of one read
        # are handled leave in one write at the end (before any wait).
        while not self._closed:
            hold_writes()
            try:
                frame = self.decoder.next_frame()
            except ProtocolError as exc:
                await self._protocol_error(exc)
                return
            if frame is not None:
                if not await self._on_frame(frame, calls):
                    return
                continue
            flush_writes()
            # Bytes already waiting are read at once (no deadline to watch: they are
            # here); otherwise, or after a run of such reads, wait under the deadline.
            data: bytes | bytearray | None = None
            if self._reads_in_a_row < READS_BEFORE_YIELD:
                try:
                    data = receive_nowait(self.stream, self.limits.read_size)
                except trio.BrokenResourceError:
                    return
            if data is not None:
                self._reads_in_a_row += (
                    1 if len(data) < self.limits.read_size else READS_BEFORE_YIELD
                )
            else:
                self._reads_in_a_row = 0
                with trio.CancelScope(deadline=self._read_deadline()) as scope:
                    self._read_scope = scope
                    try:
                        data = await receive_when_ready(self.stream, self.limits.read_size)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    finally:
                        self._read_scope = None
                if scope.cancelled_caught:
                    if not self._closed:
                        await self._deadline_expired()
                    return
            if not data:
                # EOF. A half-sent message is dropped, never dispatched (RP-05); the
                # peer may have only shut down its writing side, so calls still reply.
                if self.decoder.buffered:
                    self._log(
                        "info",
                        "rpc_truncated_message",
                        bytes=self.decoder.buffered,
                    )
                return
            try:
                self.decoder.feed(data)
            except ProtocolError as exc:
                await self._protocol_error(exc)
                return

    async def _on_frame(self, frame: object, calls: trio.Nursery) -> bool:
        try:
            message = decode_client_message(frame)
        except ProtocolError as exc:
            await self._protocol_error(exc)
            return False
        if isinstance(message, Notification):
            # msgpack-rpc: a notification never gets a reply. None is acted on, so
            # each is ignored (standard clients send some unprompted, such as a
            # client-info notice on connect). It counts as the first message for
            # the hello deadline, never as activity that keeps an idle peer open.
            self._got_request = True
            self.server._counters.notifications_ignored += 1
            self._log(
                "debug",
                "rpc_notification_ignored",
                method=_method_text(message.method),
            )
            return True
        request = message
        if request.msgid in self.inflight:
            await self._protocol_error(
                ProtocolError(
                    ErrorCode.INVALID_REQUEST,
                    f"msgid {request.msgid} is already in flight on this connection",
                )
            )
            return False
        self._got_request = True
        # Back-pressure: at the in-flight cap we stop reading until a call finishes.
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            flush_writes()
            await self._slots.acquire()
            hold_writes()
        self.inflight.add(request.msgid)
        self.server._idle.pop(self, None)
        if self._allowed is None:
            answer = self.server._dispatcher.start(
                request, peer=self.peer, host=self, done=self._done_callback(request)
            )
            if answer is DEFER:
                self._deferred += 1
                return True
            if answer is not None:
                assert isinstance(answer, Response)
                self._answered(request, answer)
                return True
        calls.start_soon(self._run_call, request)
        return True

    def _done_callback(self, request: Request) -> Callable[[Response | None], None]:
        def done(response: Response | None) -> None:
            self._deferred -= 1
            if response is None:
                # Declined after all: run it as a task (its slot is still held).
                if self._calls is not None:
                    self._calls.start_soon(self._run_call, request)
                    return
                response = self._gone(request)
            self._answered(request, response)
            if not self._deferred and self._deferred_done is not None:
                self._deferred_done.set()

        return done

    def _gone(self, request: Request) -> Response:
        """The reply of a handed-on call whose connection stopped running calls."""
        error = Unavailable("the connection closed before the call ran")
        return Response(msgid=request.msgid, error=ErrorInfo.from_exception(error))

    def _answered(self, request: Request, response: Response) -> None:
        """Queue the reply of a call answered without a task, and free its slot."""
        frame = self._encode_response(request, response)
        self.inflight.discard(request.msgid)
        backlog = self._enqueue(frame)
        if backlog is not None and self._calls is not None:
            # Past the high-water mark the slot stays taken until the batch is out.
            self._calls.start_soon(self._release_when_written, backlog)
            return
        self._call_ended()

    async def _release_when_written(self, backlog: _Batch) -> None:
        try:
            await backlog.done.wait()
        finally:
            self._call_ended()

    def _call_ended(self) -> None:
        self._slots.release()
        self.last_activity = trio.current_time()
        if not self.inflight:
            # Only an idle connection has an idle deadline to (re)start.
            self.server._mark_idle(self)
            self._refresh_deadline()

    async def _protocol_error(self, exc: ProtocolError) -> None:
        flush_writes()
        self.server._counters.protocol_errors += 1
        self._log(
            "info",
            "rpc_protocol_error",
            code=exc.code.value,
            reason=exc.message,
        )
        info = ErrorInfo(code=exc.code.value, message=exc.message)
        await self._send_best_effort(encode(Response(msgid=exc.msgid, error=info)))
        await self._abort()

    async def _deadline_expired(self) -> None:
        flush_writes()
        self.server._counters.deadline_closes += 1
        if not self._got_request and not self.decoder.buffered:
            reason = f"no request within {self._hello_deadline:g}s of connecting"
        elif self.decoder.buffered:
            reason = f"message not completed within {self.options.frame_deadline:g}s"
        else:
            reason = f"idle for {self._idle_timeout:g}s"
        self._log(
            "info",
            "rpc_connection_timeout",
            reason=reason,
        )
        error = RemoteTimeout(f"closing the connection: {reason}")
        await self._send_best_effort(
            encode(Response(msgid=None, error=ErrorInfo.from_exception(error)))
        )
        await self._abort()

    # ------------------------------------------------------------------ calls

    async def _run_call(self, request: Request) -> None:
        released = False
        try:
            if self._allowed is not None and request.method not in self._allowed:
                response = self._reserve_refusal(request)
            else:
                response = await self.server._dispatcher.dispatch(
                    request, peer=self.peer, host=self
                )
            frame = self._encode_response(request, response)
            # The msgid is free again once the reply is decided: a client may reuse
            # it as soon as the reply reaches it, possibly before send() returns here.
            self.inflight.discard(request.msgid)
            released = True
            # The handler has checkpointed already; wait only past the high-water mark.
            backlog = self._enqueue(frame)
            if backlog is not None:
                await backlog.done.wait()
        finally:
            if not released:
                self.inflight.discard(request.msgid)
            self._call_ended()

    def _reserve_refusal(self, request: Request) -> Response:
        allowed = ", ".join(sorted(self._allowed or ()))
        error = Busy(
            f"the server is at its connection limit; this connection was admitted to "
            f"the reserve, which serves only {allowed}; try {_method_text(request.method)} "
            "again later"
        )
        return Response(msgid=request.msgid, error=ErrorInfo.from_exception(error))

    def _encode_response(self, request: Request, response: Response) -> bytes:
        try:
            return encode(response, self.limits)
        except ProtocolError as exc:
            # Handlers must bound what they return (RP-21): a reply the client's
            # decoder would refuse is this call's error, not the connection's.
            return self._result_failure(request, "rpc_result_over_limits", reason=exc.message)
        except (TypeError, ValueError, OverflowError) as exc:
            return self._result_failure(
                request, "rpc_result_unencodable", error=f"{type(exc).__name__}: {exc}"
            )

    def _result_failure(self, request: Request, event: str, **fields: object) -> bytes:
        correlation_id = new_correlation_id()
        log.error(
            event,
            method=request.method,
            msgid=request.msgid,
            correlation_id=correlation_id,
            **fields,
        )
        info = ErrorInfo(
            code=ErrorCode.INTERNAL_ERROR.value,
            message=f"internal error in {request.method}; the daemon log has the details",
            correlation_id=correlation_id,
        )
        return encode(Response(msgid=request.msgid, error=info))

    # ------------------------------------------------------------------ writing

    async def send(self, frame: bytes, *, flush: bool = False) -> bool:
        """Queue one frame for the writer; ``False`` if the connection is gone.

        Never raises for a lost connection. While less than ``OUTBOX_HIGH_WATER``
        bytes wait, this returns at once; beyond it, it waits until its batch is
        written, so a peer that stops reading holds back its senders (a stream's
        producer, a call's in-flight slot) rather than growing the queue. With
        ``flush``, it always waits (a last frame before closing).
        """
        if self._closed:
            return False
        backlog = self._enqueue(frame)
        if backlog is None and not flush:
            await trio.lowlevel.checkpoint()
            return not self._closed
        batch = backlog or self._batch
        await batch.done.wait()
        return batch.written

    def _enqueue(self, frame: bytes) -> _Batch | None:
        """Queue ``frame`` (unless closed); its batch if past the high-water mark."""
        if self._closed:
            return None
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        if self._outbox_bytes > OUTBOX_HIGH_WATER:
            self._writer_wakeup.set()
            return self._batch
        if writes_held():
            if not self._flush_queued:
                self._flush_queued = True
                defer_write(self)
        else:
            self._writer_wakeup.set()
        return None

    def _flush_held(self) -> None:
        """Write the frames queued while writes were held, straight to the socket if
        the writer is idle; what the socket does not take is left to the writer."""
        self._flush_queued = False
        if self._closed or not self._outbox:
            return
        if not self._writer_idle:
            self._writer_wakeup.set()  # it is writing: it takes these next, in order
            return
        frames = self._outbox
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        try:
            sent = send_nowait(self.stream, data)
        except trio.BrokenResourceError:
            self._close_now()
            return
        if sent == len(data):
            self._outbox = []
            self._outbox_bytes = 0
            batch, self._batch = self._batch, _Batch()
            batch.written = True
            batch.done.set()
            return
        self._outbox = [data[sent:]]
        self._outbox_bytes = len(data) - sent
        self._writer_wakeup.set()

    async def _writer(self) -> None:
        """Write whatever frames are waiting, all in one ``send_all``, until closed.

        A batch goes straight to the socket when it takes it all (the usual case);
        what is left waits in ``send_all`` under the send deadline, which one cancel
        scope for the connection's life carries: set before such a wait, lifted
        after it.
        """
        batch = self._batch
        try:
            with trio.CancelScope() as deadline:
                while not self._closed:
                    if not self._outbox:
                        if self._reading_done:
                            return
                        self._writer_wakeup = trio.Event()
                        self._writer_idle = True
                        try:
                            await self._writer_wakeup.wait()
                        finally:
                            self._writer_idle = False
                        continue
                    frames, self._outbox = self._outbox, []
                    self._outbox_bytes = 0
                    batch, self._batch = self._batch, _Batch()
                    data = frames[0] if len(frames) == 1 else b"".join(frames)
                    try:
                        sent = send_nowait(self.stream, data)
                        if sent < len(data):
                            deadline.deadline = trio.current_time() + self.options.send_timeout
                            await self.stream.send_all(memoryview(data)[sent:])
                            deadline.deadline = math.inf
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._close_now()
                        return
                    batch.written = True
                    batch.done.set()
            if deadline.cancelled_caught:
                # The peer stopped reading. A cancelled send leaves the stream unusable.
                self.server._counters.send_timeouts += 1
                self._log(
                    "warning",
                    "rpc_send_timeout",
                    timeout=self.options.send_timeout,
                )
                await self._abort()
        finally:
            # Frames that will never be written: wake their senders with False.
            self._outbox.clear()
            batch.done.set()
            self._batch.done.set()

    async def _send_best_effort(self, frame: bytes) -> None:
        """Send a last frame before closing, waiting at most ``REJECT_SEND_TIMEOUT``."""
        with trio.move_on_after(REJECT_SEND_TIMEOUT):
            await self.send(frame, flush=True)

    # ------------------------------------------------------------------ CallHost

    def open_stream(self, method: str, *, capacity: int | None) -> NotificationStream:
        if len(self.streams) >= self.options.max_streams:
            raise Busy(
                f"too many notification streams on this connection "
                f"(limit {self.options.max_streams})"
            )
        stream_id = self._next_stream_id
        self._next_stream_id += 1
        stream = NotificationStream(
            stream_id=stream_id,
            method=method,
            capacity=capacity or self.options.stream_capacity,
            limits=self.limits,
        )
        if self._closed or self._background is None:
            stream._abort()
            return stream
        self.streams[stream_id] = stream
        self.server._idle.pop(self, None)
        self._background.start_soon(self._pump, stream)
        return stream

    async def _pump(self, stream: NotificationStream) -> None:
        try:
            await stream._pump(self.send)
        finally:
            self.streams.pop(stream.id, None)
            self.last_activity = trio.current_time()
            self.server._mark_idle(self)
            self._refresh_deadline()

    def set_peer(self, peer: Peer) -> None:
        """The identity later calls on this connection run as (after ``auth.login``)."""
        self.peer = peer

    def start_soon(self, async_fn: Callable[..., Awaitable[object]], *args: object) -> None:
        if self._closed or self._background is None:
            log.debug("rpc_background_task_skipped", reason="connection closing")
            return
        self._background.start_soon(self._guard, async_fn, args)

    async def _guard(
        self, async_fn: Callable[..., Awaitable[object]], args: tuple[object, ...]
    ) -> None:
        try:
            await async_fn(*args)
        except Exception as exc:
            log.error(
                "rpc_background_task_failed",
                address=self.server.address,
                task=getattr(async_fn, "__qualname__", repr(async_fn)),
                exc_info=exc,
            )
