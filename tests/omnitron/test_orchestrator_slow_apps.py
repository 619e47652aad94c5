"""A daemon that answers while an app is slow (virtual time, scripted children).

An app that takes its whole ``startup_timeout`` to (not) become ready, or sits in
a 30 s backoff, must not hold up commands for other apps, nor ``status``, and a
``stop`` of that app cancels its start or its pending restart at once.

The apps run :mod:`supervision.testing`'s scripted child in place of their
processes (the orchestrator's ``leaf`` seam), under ``MockClock(autojump_threshold=0)``:
a command that waits for the slow app lets the clock jump to the app's timeout,
so "answers at once" is measured exactly. ``test_orchestrator.py`` runs the same
commands on real processes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from orchestrator_harness import open_orchestrator

from omnitron.config import AppConfig
from omnitron.daemon._orchestrator import LAUNCH_STAGGER, LAUNCH_WINDOW, Orchestrator
from omnitron.daemon._service import DaemonService
from omnitron.state import AppStatus, DesiredStatus
from supervision.testing import Exit, FakeChild, Hang, RunForever

AT_ONCE = 0.5
"""Virtual seconds within which a command must answer (the slow app takes 30)."""


def app(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": ["true"], **extra}


def running(
    tmp_path: Path, apps: list[dict[str, Any]], fakes: dict[str, FakeChild]
) -> contextlib.AbstractAsyncContextManager[tuple[Orchestrator, DaemonService]]:
    def leaf(config: AppConfig, index: int) -> FakeChild:
        return fakes[config.name]

    return open_orchestrator(tmp_path, apps, leaf=leaf)


def statuses(status: dict[str, Any]) -> dict[str, str]:
    return {a["name"]: a["status"] for a in status["apps"]}


async def timed(call: Any) -> tuple[float, Any]:
    before = trio.current_time()
    result = await call
    return trio.current_time() - before, result


async def test_commands_answer_while_an_app_never_becomes_ready(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fakes = {
        "fast": FakeChild(),
        "slow": FakeChild([Hang()], startup_timeout=30),
        "later": FakeChild(),
    }
    # later waits for slow (its dependency); fast depends on nothing and is not held up.
    apps = [app("fast"), app("slow", startup_timeout="30s"), app("later", depends_on=["slow"])]
    async with running(tmp_path, apps, fakes) as (orchestrator, service):
        await trio.sleep(1)  # fast is up; slow is starting, for 29 s more
        elapsed, status = await timed(service.status())
        assert elapsed < AT_ONCE
        assert statuses(status) == {"fast": "online", "slow": "starting", "later": "starting"}

        # stop of another app: at once.
        elapsed, stopped = await timed(orchestrator.stop("fast"))
        assert elapsed < AT_ONCE
        assert stopped == ["fast"]
        assert orchestrator.apps["fast"].status is AppStatus.STOPPED

        # stop of the slow app: its start is cancelled at once; it is stopped,
        # not crashed, and the apps that depend on it are launched.
        elapsed, stopped = await timed(orchestrator.stop("slow"))
        assert elapsed < AT_ONCE
        assert stopped == ["slow"]
        slow = orchestrator.apps["slow"]
        assert (slow.status, slow.crashed, slow.desired) == (
            AppStatus.STOPPED,
            False,
            DesiredStatus.STOPPED,
        )
        with trio.fail_after(AT_ONCE):
            await fakes["later"].wait_generation(1)
        await orchestrator.wait_launched(within=AT_ONCE)
        assert statuses(await service.status()) == {
            "fast": "stopped",
            "slow": "stopped",
            "later": "online",
        }
        assert trio.current_time() < 30


async def test_a_start_of_another_app_answers_while_one_is_slow(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fakes = {"idle": FakeChild(), "slow": FakeChild([Hang()], startup_timeout=30)}
    apps = [app("idle", enabled=False), app("slow", startup_timeout="30s")]
    async with running(tmp_path, apps, fakes) as (orchestrator, _):
        await trio.sleep(1)
        elapsed, started = await timed(orchestrator.start("idle"))
        assert elapsed < AT_ONCE
        assert started == ["idle"]
        assert orchestrator.apps["idle"].status is AppStatus.ONLINE


async def test_independent_apps_start_together_and_dependents_wait(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """At launch an app waits only for the apps it depends on: one listed after a
    slow app but independent of it comes up at once; a dependent of the slow app
    starts once the slow app is ready."""
    fakes = {
        "slow": FakeChild([Hang()], startup_timeout=30),
        "free": FakeChild(),
        "dependent": FakeChild(),
    }
    apps = [
        app("slow", startup_timeout="30s"),
        app("dependent", depends_on=["slow"]),
        app("free"),
    ]
    async with running(tmp_path, apps, fakes) as (orchestrator, service):
        await trio.sleep(1)
        assert statuses(await service.status()) == {
            "slow": "starting",
            "dependent": "starting",
            "free": "online",
        }
        assert fakes["dependent"].generation == 0
        await orchestrator.wait_launched(within=60)  # slow's retry comes up after 30 s
        assert trio.current_time() > 30
        assert statuses(await service.status()) == {
            "slow": "online",
            "dependent": "online",
            "free": "online",
        }


async def test_start_all_starts_independent_apps_together(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``start all`` after ``stop all``: an app independent of a slow one is online at
    once; the call returns once every app is up, in start order."""
    # slow: its first start times out, its retry runs; its start after the stop hangs.
    fakes = {
        "slow": FakeChild([Hang(), RunForever(), Hang()], startup_timeout=30),
        "free": FakeChild(),
    }
    apps = [app("slow", startup_timeout="30s"), app("free")]
    async with running(tmp_path, apps, fakes) as (orchestrator, service):
        await trio.sleep(60)  # slow's first start timed out; its retry came up
        await orchestrator.wait_launched(within=1)
        assert sorted(await orchestrator.stop("all")) == ["free", "slow"]
        result: list[list[str]] = []

        async def start_all() -> None:
            result.append(await orchestrator.start("all"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_all)
            await trio.sleep(1)
            assert statuses(await service.status()) == {"slow": "starting", "free": "online"}
        assert result == [["slow", "free"]]
        assert statuses(await service.status()) == {"slow": "online", "free": "online"}


BACKOFF = {"max_restarts": 5, "window": "600s", "backoff": {"initial": "30s", "max": "30s"}}


async def test_commands_answer_while_an_app_waits_in_a_long_backoff(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fakes = {"steady": FakeChild(), "flaky": FakeChild([Exit(1, after=1)]), "other": FakeChild()}
    apps = [app("steady"), app("flaky", restart_policy=BACKOFF), app("other")]
    async with running(tmp_path, apps, fakes) as (orchestrator, service):
        await trio.sleep(2)  # flaky crashed at 1 s; its restart is due at 31 s
        elapsed, status = await timed(service.status())
        assert elapsed < AT_ONCE
        assert statuses(status) == {"steady": "online", "flaky": "errored", "other": "online"}

        elapsed, stopped = await timed(orchestrator.stop("steady"))
        assert elapsed < AT_ONCE
        assert stopped == ["steady"]
        elapsed, restarted = await timed(orchestrator.restart("other"))
        assert elapsed < AT_ONCE
        assert restarted == ["other"]

        elapsed, stopped = await timed(orchestrator.stop("flaky"))
        assert elapsed < AT_ONCE
        assert stopped == ["flaky"]
        assert orchestrator.apps["flaky"].status is AppStatus.STOPPED
        await trio.sleep(60)  # the cancelled restart never happens
        assert fakes["flaky"].generation == 1
        assert orchestrator.apps["flaky"].status is AppStatus.STOPPED


@pytest.mark.parametrize("slow", ["hang", "backoff"])
async def test_stop_all_answers_while_an_app_is_slow(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, slow: str
) -> None:
    script = [Hang()] if slow == "hang" else [Exit(1, after=1)]
    fakes = {"a": FakeChild(), "b": FakeChild(script, startup_timeout=30), "c": FakeChild()}
    apps = [app("a"), app("b", startup_timeout="30s", restart_policy=BACKOFF), app("c")]
    async with running(tmp_path, apps, fakes) as (orchestrator, _):
        await trio.sleep(2)
        elapsed, _stopped = await timed(orchestrator.stop("all"))
        assert elapsed < AT_ONCE
        assert {r.status for r in orchestrator.apps.values()} == {AppStatus.STOPPED}
        await trio.sleep(60)
        assert {r.status for r in orchestrator.apps.values()} == {AppStatus.STOPPED}


async def test_an_app_stopped_before_its_turn_is_never_launched(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fakes = {"slow": FakeChild([Hang()], startup_timeout=30), "later": FakeChild()}
    apps = [app("slow", startup_timeout="30s"), app("later", depends_on=["slow"])]
    async with running(tmp_path, apps, fakes) as (orchestrator, _):
        await trio.sleep(1)
        elapsed, stopped = await timed(orchestrator.stop("later"))
        assert elapsed < AT_ONCE
        assert stopped == []  # nothing of it ran yet
        await trio.sleep(60)  # slow's first start fails at 30 s, its retry comes up
        await orchestrator.wait_launched(within=1)
        assert orchestrator.apps["slow"].status is AppStatus.ONLINE
        assert fakes["later"].generation == 0
        assert orchestrator.apps["later"].status is AppStatus.STOPPED
        # An operator's start afterwards does start it.
        assert await orchestrator.start("later") == ["later"]
        assert orchestrator.apps["later"].status is AppStatus.ONLINE


async def test_shutdown_during_a_slow_start(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Stopping everything cancels the start in progress (no crash) and launches nothing more."""
    fakes = {"first": FakeChild(), "slow": FakeChild([Hang()], startup_timeout=30)}
    fakes["later"] = FakeChild()
    crashes: list[str] = []
    apps = [
        app("first"),
        app("slow", startup_timeout="30s", critical=True),
        app("later", depends_on=["slow"]),
    ]
    async with running(tmp_path, apps, fakes) as (orchestrator, _):
        orchestrator._on_critical = crashes.append
        await trio.sleep(1)
        elapsed, _none = await timed(orchestrator.stop_everything())
        assert elapsed < AT_ONCE
        await trio.sleep(60)
        assert {n: r.status for n, r in orchestrator.apps.items()} == {
            "first": AppStatus.STOPPED,
            "slow": AppStatus.STOPPED,
            "later": AppStatus.STARTING,  # never launched (still wanted when the daemon comes back)
        }
        assert fakes["later"].generation == 0
        assert crashes == []


class _LaunchTasks(trio.abc.Instrument):
    """Counts the live tasks of the launcher (one per app while it is started)."""

    NAME = "Orchestrator._in_dependency_order.<locals>.one"

    def __init__(self) -> None:
        self.live = 0
        self.most = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.NAME):
            self.live += 1
            self.most = max(self.most, self.live)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.NAME):
            self.live -= 1


async def test_a_launch_hands_the_apps_to_the_tree_a_few_at_a_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Sixty apps ready at once: an app's task is started once fewer than
    LAUNCH_WINDOW are on their way to the tree, so however many apps there are, a
    bounded number of launcher tasks live at a time (those on their way, and
    about as many whose readiness is on its way back), not sixty, each waiting
    its turn in the root's queue and holding about 5 KiB."""
    names = [f"a{i:02d}" for i in range(60)]
    fakes = {name: FakeChild() for name in names}
    tasks = _LaunchTasks()
    trio.lowlevel.add_instrument(tasks)
    try:
        async with running(tmp_path, [app(name) for name in names], fakes) as (orch, service):
            await orch.wait_launched(within=AT_ONCE)
            assert set(statuses(await service.status()).values()) == {"online"}
    finally:
        trio.lowlevel.remove_instrument(tasks)
    assert LAUNCH_WINDOW <= tasks.most <= 2 * LAUNCH_WINDOW, tasks.most


async def test_starts_that_do_not_reach_the_tree_hold_up_the_next_app_only_briefly(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A window full of starts that have not reached the tree (bootstraps being
    described, locks held) delays the next app's start by LAUNCH_STAGGER; an app
    waiting for the apps it depends on leaves the window at once; every start
    still runs beside the others."""
    slow = [f"slow{i}" for i in range(LAUNCH_WINDOW - 1)]
    apps = [app(name, enabled=False) for name in slow]
    apps += [app("after", enabled=False, depends_on=["slow0"])]
    apps += [app("free", enabled=False), app("quick", enabled=False)]
    fakes = {a["name"]: FakeChild() for a in apps}
    async with running(tmp_path, apps, fakes) as (orchestrator, _):
        began: dict[str, float] = {}
        ended: dict[str, float] = {}

        async def act(name: str) -> None:
            began[name] = trio.current_time()
            if name.startswith("slow"):
                await trio.sleep(10)  # never reaches the tree while it runs
            else:
                orchestrator._reached[name].set()  # as when its pool's task starts
                await trio.sleep(5)  # readiness, waited for in parallel
            ended[name] = trio.current_time()

        start = trio.current_time()
        await orchestrator._in_dependency_order(list(fakes), act)
        began = {name: at - start for name, at in began.items()}
        ended = {name: at - start for name, at in ended.items()}
    # The window was full (the slow ones and `after`, not yet run) when `free` came:
    # it waited LAUNCH_STAGGER for slow0; by then `after` had left the window
    # (it waits for slow0), so `quick` did not wait again.
    later = {"free": LAUNCH_STAGGER, "quick": LAUNCH_STAGGER, "after": 10}
    assert began == pytest.approx({**dict.fromkeys(slow, 0), **later})
    done = {"free": 5 + LAUNCH_STAGGER, "quick": 5 + LAUNCH_STAGGER, "after": 15}
    assert ended == pytest.approx({**dict.fromkeys(slow, 10), **done})
