"""Wall-clock jumps (SG-09): restart decisions and displayed uptimes do not follow them.

Supervision runs on Trio's clock only (a ``MockClock`` here); the wall clock is
faked to jump a year back and forth on every read. The restart schedule must be
identical to the one with an honest wall clock, and no uptime the daemon shows
may be negative.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from omnitron.config import define_ecosystem
from omnitron.daemon._logs import LogCollector
from omnitron.daemon._orchestrator import Orchestrator, ProcessRecord
from omnitron.daemon._service import DaemonService
from omnitron.state import AppStatus
from supervision import (
    Backoff,
    ChildSpec,
    Intensity,
    SupervisorSpec,
    open_supervisor,
)
from supervision import events as ev
from supervision.testing import Exit, FakeChild

YEAR = 365 * 24 * 3600.0


def jumping_wall_clock(monkeypatch: pytest.MonkeyPatch, offsets: list[float]) -> None:
    """Make ``time.time()`` return the real time plus each offset in turn, forever."""
    real = time.time
    cycle = itertools.cycle(offsets)
    monkeypatch.setattr(time, "time", lambda: real() + next(cycle))


async def restart_schedule() -> tuple[list[float], list[float], list[tuple[int, float]], bool]:
    """A child that is STARTING 2 s, RUNNING 1 s, then crashes, three times, with backoff."""
    child = FakeChild(script=[Exit(1, after=1)] * 3, ready_delay=2)
    spec = SupervisorSpec(
        name="root",
        intensity=Intensity(max_restarts=3, window=60),
        backoff=Backoff(initial=1, max=30, factor=2),
        children=[ChildSpec("a", child)],
    )
    async with open_supervisor(spec) as sup:
        subscription = sup.subscribe()
        await child.wait_generation(4)
        await trio.sleep(100)  # long enough for any wrongly scheduled restart
        running = sup.running
    events = [event async for event in subscription]
    delays = [(e.attempt, e.delay) for e in events if isinstance(e, ev.ChildRestarting)]
    gave_up = any(isinstance(e, ev.SupervisorGaveUp) for e in events)
    return child.starts, child.ready_times, delays, running and not gave_up


@pytest.mark.parametrize(
    "offsets",
    [[-YEAR], [YEAR], [-YEAR, YEAR, 0.0], [0.0, YEAR, -YEAR, -2 * YEAR]],
    ids=["minus-a-year", "plus-a-year", "back-and-forth", "wild"],
)
async def test_wall_clock_jumps_change_no_restart_decision(
    offsets: list[float],
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SG-09: STARTING, RUNNING and BACKOFF all run on the monotonic clock."""
    honest = await restart_schedule()
    assert honest == (
        [0.0, 4.0, 9.0, 16.0],  # exits at 3, 7, 12; backoff 1, 2, 4 s
        [2.0, 6.0, 11.0, 18.0],
        [(1, 1.0), (2, 2.0), (3, 4.0)],
        True,
    )
    jumping_wall_clock(monkeypatch, offsets)
    start = trio.current_time()
    starts, ready, delays, healthy = await restart_schedule()
    assert [t - start for t in starts] == honest[0]
    assert [t - start for t in ready] == honest[1]
    assert delays == honest[2]
    assert healthy


async def test_displayed_uptimes_are_never_negative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SG-09: the daemon's uptime is monotonic; a process uptime never goes below zero."""
    ecosystem = define_ecosystem(
        project="sg09", apps=[{"name": "web", "command": ["sleep", "1"]}], base_dir=tmp_path
    )
    orchestrator = Orchestrator(ecosystem, home=tmp_path, logs=LogCollector(tmp_path / "logs"))
    service = DaemonService(
        orchestrator,
        home=tmp_path,
        config_path=tmp_path / "omnitron.toml",
        stack=None,
        request_shutdown=lambda: None,
    )
    # web's process became ready "an hour from now": the wall clock was moved back.
    record = orchestrator.apps["web"]
    record.processes[0] = ProcessRecord(
        instance=0, pid=os.getpid(), status=AppStatus.ONLINE, ready_at=time.time() + 3600
    )
    for offsets in ([0.0], [-YEAR], [YEAR]):
        jumping_wall_clock(monkeypatch, offsets)
        status = await service.status()
        assert status["daemon"]["uptime"] >= 0
        assert status["daemon"]["uptime"] < 60  # monotonic: a year's jump does not show
        [app] = status["apps"]
        [process] = app["processes"]
        assert process["uptime"] >= 0
