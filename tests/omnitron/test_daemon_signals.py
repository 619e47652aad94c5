"""SIGHUP handling in virtual time: bursts settle into one reload (SG-03).

The real-signal test of the same row is in tests/faults/test_fault_signals.py.
"""

from __future__ import annotations

import signal
from typing import Any, cast

import pytest
import trio
from trio.testing import MockClock

from omnitron.daemon._main import RELOAD_SETTLE, RELOAD_SETTLE_MAX, _handle_signals, _Shutdown

RELOAD_TAKES = 1.0


class _Service:
    """Stands in for DaemonService.reload_config: records when each reload ran."""

    def __init__(self) -> None:
        self.origin = trio.current_time()
        self.started: list[float] = []

    async def reload_config(self, *, dry_run: bool) -> dict[str, Any]:
        assert not dry_run
        self.started.append(trio.current_time() - self.origin)
        await trio.sleep(RELOAD_TAKES)
        return {"summary": "unchanged"}


async def _run(script: list[tuple[float, int]], until: float) -> _Service:
    """Deliver ``(delay, signum)`` pairs to the handler, then wait until ``until``."""
    service = _Service()
    send, receive = trio.open_memory_channel[int](len(script) + 1)

    async def signals() -> Any:
        async for signum in receive:
            yield signum

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            _handle_signals, signals(), _Shutdown(), cast(Any, service), cast(Any, None)
        )
        begun = trio.current_time()
        for delay, signum in script:
            await trio.sleep(delay)
            send.send_nowait(signum)
        await trio.sleep_until(begun + until)
        nursery.cancel_scope.cancel()
    return service


async def test_a_burst_spread_over_time_is_one_reload(
    autojump_clock: MockClock,
) -> None:
    # 300 SIGHUPs 4 ms apart: longer than a reload takes.
    burst = [(0.004, signal.SIGHUP)] * 300
    service = await _run(burst, until=10)
    assert len(service.started) == 1
    # It starts once the burst has been quiet for RELOAD_SETTLE.
    assert service.started[0] == pytest.approx(1.2 + RELOAD_SETTLE, abs=0.01)


async def test_a_sighup_during_a_reload_makes_exactly_one_more(
    autojump_clock: MockClock,
) -> None:
    script = [(0.0, signal.SIGHUP), (RELOAD_SETTLE + 0.5, signal.SIGHUP)]
    script += [(0.01, signal.SIGHUP)] * 20
    service = await _run(script, until=10)
    assert len(service.started) == 2
    # The second waits for the first to finish, then for its own quiet time.
    assert service.started[1] >= service.started[0] + RELOAD_TAKES + RELOAD_SETTLE


async def test_a_steady_stream_of_sighups_still_reloads_within_the_cap(
    autojump_clock: MockClock,
) -> None:
    steady = [(RELOAD_SETTLE / 2, signal.SIGHUP)] * 40  # never quiet for long enough
    service = await _run(steady, until=20)
    assert service.started, "a reload must happen despite the stream"
    assert service.started[0] == pytest.approx(RELOAD_SETTLE / 2 + RELOAD_SETTLE_MAX, abs=0.01)
