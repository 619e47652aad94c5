"""A one-shot flag that costs an event only while someone waits for it."""

from __future__ import annotations

import trio

__all__: list[str] = []


class Flag:
    """Like :class:`trio.Event` (set once, never cleared), for things kept per child:
    a slotted object and a bool, the event made only for a waiter."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: trio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Wait until set.

        Cancellation: a checkpoint, as :meth:`trio.Event.wait`.
        """
        if self._set:
            await trio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()
