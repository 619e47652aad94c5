"""Zero-downtime ``reload``: each process replaced by a successor that is ready
before it stops; an abort keeps the old ones; the old generation's end never
touches the new one (PL-09, PL-10 for reload).

Real processes for the behaviour, and the scripted child of
:mod:`supervision.testing` in virtual time for the timing (startup timeout, order
of ready and stop).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from orchestrator_harness import open_orchestrator

from omnitron.config import AppConfig
from omnitron.daemon._errors import AppStartFailed
from omnitron.daemon._orchestrator import Orchestrator
from omnitron.daemon._records import EventKind
from omnitron.state import AppStatus
from supervision.testing import FakeChild, Hang

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

WAIT = 30.0
"""Generous bound for real processes to come and go."""

APP = """\
import os, signal, sys, time
flag = os.environ["BROKEN_FLAG"]
if os.path.exists(flag):
    print("config error: " + open(flag).read(), file=sys.stderr, flush=True)
    sys.exit(2)
late = os.environ.get("LATE_EXIT")
def stop(signum, frame):
    if late:
        time.sleep(float(late))  # still draining when the new one is already serving
        os._exit(3)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(3600)
"""


def app_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    return {
        "name": "web",
        "command": [sys.executable, str(script)],
        "instances": 2,
        "ready": {"after": "300ms"},
        "env": {"BROKEN_FLAG": str(tmp_path / "broken")},
        **extra,
    }


async def until(check: Callable[[], bool]) -> None:
    """Wait for a condition on records and OS process states (the OS gives no event
    for the latter), bounded by a generous deadline."""
    with trio.fail_after(WAIT):
        while not check():  # noqa: ASYNC110
            await trio.sleep(0.02)


def online(orchestrator: Orchestrator) -> bool:
    return orchestrator.apps["web"].status is AppStatus.ONLINE


def pids(orchestrator: Orchestrator) -> dict[int, int | None]:
    return {i: p.pid for i, p in sorted(orchestrator.apps["web"].processes.items())}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_reload_replaces_every_process_keeping_numbers_and_counters(
    tmp_path: Path,
) -> None:
    # Every record the reload goes through shows both instances online, with a pid.
    watching: list[Orchestrator] = []
    seen: list[dict[int, tuple[AppStatus, int | None]]] = []

    def changed() -> None:
        if watching:
            processes = watching[0].apps["web"].processes
            view = {i: (p.status, p.pid) for i, p in processes.items()}
            if sorted(view) != [0, 1] or any(
                status is not AppStatus.ONLINE or pid is None for status, pid in view.values()
            ):
                seen.append(view)

    config = [app_config(tmp_path)]
    async with open_orchestrator(tmp_path, config, on_change=changed) as (orchestrator, _):
        await until(lambda: online(orchestrator))
        before = pids(orchestrator)
        watching.append(orchestrator)
        assert await orchestrator.reload("web") == ["web"]
        watching.clear()
        after = pids(orchestrator)
        assert list(after) == [0, 1]
        assert all(after[i] not in (None, before[i]) for i in (0, 1))
        await until(lambda: not any(alive(pid) for pid in before.values() if pid))
        record = orchestrator.apps["web"]
        assert record.status is AppStatus.ONLINE
        assert (record.restarts, [p.restarts for p in record.processes.values()]) == (0, [0, 0])
        orchestrator.identify()  # read when first needed (the state file, a signal)
        record = orchestrator.apps["web"]
        assert all(
            p.pid is not None and p.identity is not None and p.identity.pid == p.pid
            for p in record.processes.values()
        )
        assert record.events[-1].kind is EventKind.RELOADED
        assert seen == []
        # A second reload replaces the successors in turn.
        assert await orchestrator.reload("all") == ["web"]
        again = pids(orchestrator)
        assert list(again) == [0, 1]
        assert set(again.values()).isdisjoint(after.values())
        pool = orchestrator.pool("web")
        assert pool is not None
        assert len(pool.which_children()) == 2


async def test_a_broken_successor_aborts_the_reload_and_the_old_keep_serving(
    tmp_path: Path,
) -> None:
    (tmp_path / "logs").mkdir()
    async with open_orchestrator(tmp_path, [app_config(tmp_path)]) as (orchestrator, service):
        await until(lambda: online(orchestrator))
        before = pids(orchestrator)
        (tmp_path / "broken").write_text("port must be a number")
        with pytest.raises(AppStartFailed) as info:
            await orchestrator.reload("web")
        message = info.value.message
        assert message.startswith("web: the new instance 0 did not become ready (")
        assert "the running instances were kept" in message
        assert pids(orchestrator) == before  # neither instance was touched
        assert all(alive(pid) for pid in before.values() if pid)
        record = orchestrator.apps["web"]
        assert record.status is AppStatus.ONLINE
        assert record.restarts == 0
        assert record.events[-1].kind is EventKind.RELOAD_FAILED
        assert record.last_error is not None
        assert "reload" in record.last_error
        pool = orchestrator.pool("web")
        assert pool is not None
        assert sorted(c.name for c in pool.which_children()) == ["0", "1"]
        details = await service.failure_details("web")
        assert any("port must be a number" in line for line in details["stderr_tail"])
        # Fixed: the next reload goes through.
        (tmp_path / "broken").unlink()
        assert await orchestrator.reload("web") == ["web"]
        assert set(pids(orchestrator).values()).isdisjoint(before.values())


async def test_the_old_generations_late_exit_never_touches_the_new_one(tmp_path: Path) -> None:
    """PL-10 for reload: the old process drains for a while and then exits 3 (an
    abnormal code) after its successor took over: no restart, counter unchanged,
    one process per instance."""
    config = app_config(
        tmp_path, instances=1, env={"BROKEN_FLAG": "/nonexistent", "LATE_EXIT": "1"}
    )
    async with open_orchestrator(tmp_path, [config]) as (orchestrator, _):
        await until(lambda: online(orchestrator))
        [old] = pids(orchestrator).values()
        assert old is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(orchestrator.reload, "web")
            # The successor serves while the old one still drains.
            await until(lambda: pids(orchestrator)[0] not in (None, old))
            new = pids(orchestrator)[0]
            assert alive(old)
        assert not alive(old)
        await trio.sleep(0.5)  # anything the late exit would set off has happened
        record = orchestrator.apps["web"]
        assert pids(orchestrator) == {0: new}
        assert (record.status, record.restarts, record.processes[0].restarts) == (
            AppStatus.ONLINE,
            0,
            0,
        )
        assert record.last_error is None
        assert [e.kind for e in record.events if e.kind is EventKind.EXITED] == []
        assert new is not None
        assert alive(new)
        pool = orchestrator.pool("web")
        assert pool is not None
        assert [c.pid for c in pool.which_children()] == [new]


async def test_a_stop_racing_the_old_generations_own_exit(tmp_path: Path) -> None:
    """PL-09 for reload: the old process ends by itself just as its stop escalates
    (it drains for as long as its stop timeout): over many reloads, the kill never
    reaches another process, and each successor stays untouched."""
    config = app_config(
        tmp_path,
        instances=1,
        stop_timeout=0.2,
        env={"BROKEN_FLAG": "/nonexistent", "LATE_EXIT": "0.2"},
    )
    async with open_orchestrator(tmp_path, [config]) as (orchestrator, _):
        await until(lambda: online(orchestrator))
        me = os.getpid()
        for _ in range(8):
            [old] = pids(orchestrator).values()
            assert await orchestrator.reload("web") == ["web"]
            [new] = pids(orchestrator).values()
            assert new is not None
            assert new != old
            assert alive(new)
            assert old is not None
            assert not alive(old)
        record = orchestrator.apps["web"]
        assert (record.status, record.restarts, record.last_error) == (AppStatus.ONLINE, 0, None)
        assert alive(me)


# ----------------------------------------------------------------- virtual time


def fakes(successor: Callable[[], FakeChild]) -> tuple[Callable[[AppConfig, int], FakeChild], dict]:
    made: dict[str, list[FakeChild]] = {"first": [], "successors": []}

    def leaf(config: AppConfig, index: int) -> FakeChild:
        first = len(made["first"]) < config.instances and not made["successors"]
        fake = FakeChild(stop_delay=2.0) if first else successor()
        made["first" if first else "successors"].append(fake)
        return fake

    return leaf, made


async def test_each_old_process_stops_only_after_its_successor_is_ready(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    leaf, made = fakes(lambda: FakeChild(ready_delay=5.0, stop_delay=2.0))
    apps = [{"name": "web", "command": ["true"], "instances": 3}]
    async with open_orchestrator(tmp_path, apps, leaf=leaf) as (orchestrator, _):
        await until(lambda: online(orchestrator))
        start = trio.current_time()
        assert await orchestrator.reload("web") == ["web"]
        old, new = made["first"], made["successors"]
        assert len(new) == 3
        for before, after in zip(old, new, strict=True):
            # Started, ready 5 s later, and only then the old one is asked to stop.
            assert before.stops[0] == after.ready_times[0] == after.starts[0] + 5.0
        # One at a time: the next successor starts once the old one has stopped.
        assert [f.starts[0] - start for f in new] == [0.0, 7.0, 14.0]
        assert trio.current_time() - start == 21.0
        assert all(not f.running for f in old)
        assert all(f.running for f in new)


async def test_a_successor_that_misses_its_startup_timeout_aborts_the_reload(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    leaf, made = fakes(lambda: FakeChild([Hang()], startup_timeout=30.0))
    apps = [{"name": "web", "command": ["true"], "instances": 2}]
    async with open_orchestrator(tmp_path, apps, leaf=leaf) as (orchestrator, _):
        await until(lambda: online(orchestrator))
        before = pids(orchestrator)
        start = trio.current_time()
        with pytest.raises(AppStartFailed, match="new instance 0 did not become ready"):
            await orchestrator.reload("web")
        assert trio.current_time() - start == 30.0
        assert len(made["successors"]) == 1  # instance 1 was not even tried
        assert all(f.running and f.stops == [] for f in made["first"])
        assert pids(orchestrator) == before
        assert orchestrator.apps["web"].status is AppStatus.ONLINE
