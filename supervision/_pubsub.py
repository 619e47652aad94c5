"""Bounded, non-blocking fan-out of lifecycle events to subscribers."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from types import TracebackType

import trio

from ._events import Event, EventsDropped

__all__ = ["Broadcaster", "Subscription"]

DEFAULT_BUFFER = 1024

_log = logging.getLogger("supervision")


class Broadcaster:
    """Delivers every published event to every current subscriber.

    Publishing never blocks and never fails: a subscriber that falls behind loses its
    oldest events and is told how many with an :class:`EventsDropped` marker.
    """

    def __init__(
        self, path: tuple[str, ...], *, observer: Callable[[Event], None] | None = None
    ) -> None:
        self._path = path
        # A dict (in subscription order): empty, it is a quarter of an empty set's
        # size, and most supervisors of a tree are never subscribed to.
        self._subscribers: dict[Subscription, None] = {}
        self._closed = False
        self._observer = observer

    def publish(self, event: Event) -> None:
        if self._observer is not None:
            try:
                self._observer(event)
            except Exception:
                # An observer's bug must never break supervision.
                _log.exception("event observer failed on %r", event)
        for subscription in tuple(self._subscribers):
            subscription._push(event)

    def subscribe(self, *, buffer: int = DEFAULT_BUFFER) -> Subscription:
        subscription = Subscription(self, buffer=buffer)
        if self._closed:
            subscription._close()
        else:
            self._subscribers[subscription] = None
        return subscription

    def _discard(self, subscription: Subscription) -> None:
        self._subscribers.pop(subscription, None)

    def close(self) -> None:
        """End every subscription; iteration stops once its buffer is drained."""
        self._closed = True
        for subscription in tuple(self._subscribers):
            subscription._close()
        self._subscribers.clear()


class Subscription:
    """An async iterator of events, also usable as a (sync or async) context manager.

    Iteration ends when the supervisor has stopped and the buffered events are read.
    Closing the subscription unsubscribes it.
    """

    def __init__(self, broadcaster: Broadcaster, *, buffer: int) -> None:
        if buffer < 1:
            raise ValueError("buffer must be >= 1")
        self._broadcaster = broadcaster
        self._buffer: collections.deque[Event] = collections.deque()
        self._limit = buffer
        self._dropped = 0
        self._closed = False
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def dropped(self) -> int:
        """Events dropped since the last :class:`EventsDropped` marker was delivered."""
        return self._dropped

    def _push(self, event: Event) -> None:
        if len(self._buffer) >= self._limit:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(event)
        self._lot.unpark_all()

    def _close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    def close(self) -> None:
        """Unsubscribe; pending events are discarded."""
        self._broadcaster._discard(self)
        self._buffer.clear()
        self._close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._lot.park()
        if self._dropped:
            count, self._dropped = self._dropped, 0
            return EventsDropped(path=self._broadcaster._path, count=count)
        return self._buffer.popleft()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
