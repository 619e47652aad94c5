"""Server push on one connection: a bounded, drop-oldest notification stream."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Mapping

import trio

from .._log import get_logger
from . import _wire
from ._wire import CLOSED_METHOD, DROPPED_METHOD

__all__ = ["NotificationStream", "DROPPED_METHOD", "CLOSED_METHOD"]

log = get_logger()


class NotificationStream:
    """Notifications ``[2, method, [params]]`` pushed to one client.

    Producers call :meth:`send_nowait`, which never blocks and never fails: when the
    client reads slower than the producer writes, the oldest pending items are
    dropped and the client receives one ``rpc.dropped`` notice saying how many, in
    their place. Every item carries ``"stream": id`` so a client can tell streams of
    the same method apart.

    Streams are created by handlers with :meth:`Call.open_stream` and live as long
    as the connection, or until :meth:`close`. A producer should stop when
    :attr:`closed` turns true (or :meth:`wait_closed` returns).
    """

    def __init__(self, *, stream_id: int, method: str, capacity: int, limits: _wire.Limits) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._id = stream_id
        self._method = method
        self._capacity = capacity
        self._limits = limits
        self._buffer: collections.deque[Mapping[str, object]] = collections.deque()
        self._pending_dropped = 0
        self._dropped_total = 0
        self._closing = False
        self._finished = trio.Event()
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def id(self) -> int:
        """The value of ``"stream"`` in every notification of this stream."""
        return self._id

    @property
    def method(self) -> str:
        return self._method

    @property
    def closed(self) -> bool:
        """True once the stream takes no more items (closed, or the client went away)."""
        return self._closing or self._finished.is_set()

    @property
    def dropped(self) -> int:
        """Items dropped so far because the client did not keep up."""
        return self._dropped_total

    def send_nowait(self, params: Mapping[str, object]) -> bool:
        """Queue one notification; returns ``False`` if the stream is closed.

        Raises:
            ValueError: ``params`` already has a ``"stream"`` key.
        """
        if "stream" in params:
            raise ValueError('notification params must not set "stream"; the stream adds it')
        if self.closed:
            return False
        if len(self._buffer) >= self._capacity:
            self._buffer.popleft()
            self._pending_dropped += 1
            self._dropped_total += 1
        self._buffer.append(params)
        self._lot.unpark_all()
        return True

    def close(self) -> None:
        """Stop taking items; those already queued are still delivered."""
        self._closing = True
        self._lot.unpark_all()

    async def wait_closed(self) -> None:
        """Return once the stream has ended and its last item was sent (or discarded)."""
        await self._finished.wait()

    def _abort(self) -> None:
        self._closing = True
        self._buffer.clear()
        self._pending_dropped = 0
        self._finished.set()
        self._lot.unpark_all()

    async def _pump(self, send: Callable[[bytes], Awaitable[bool]]) -> None:
        """Deliver items until closed and drained, or until ``send`` reports failure."""
        try:
            while True:
                while not self._buffer and not self._pending_dropped:
                    if self._finished.is_set():
                        return
                    if self._closing:
                        await send(_wire.pack_notification(CLOSED_METHOD, {"stream": self._id}))
                        return
                    await self._lot.park()
                if self._pending_dropped:
                    count, self._pending_dropped = self._pending_dropped, 0
                    frame = _wire.pack_notification(
                        DROPPED_METHOD,
                        {"stream": self._id, "method": self._method, "dropped": count},
                    )
                else:
                    encoded = self._encode(self._buffer.popleft())
                    if encoded is None:
                        continue
                    frame = encoded
                if not await send(frame):
                    return
        finally:
            self._abort()

    def _encode(self, params: Mapping[str, object]) -> bytes | None:
        try:
            return _wire.pack_notification(
                self._method, {**params, "stream": self._id}, self._limits
            )
        except (TypeError, ValueError, OverflowError) as exc:
            # ProtocolError (over the limits) is a ValueError too: drop this item only.
            log.error(
                "rpc_notification_dropped",
                method=self._method,
                stream=self._id,
                reason=f"{type(exc).__name__}: {exc}",
            )
            return None
