"""The orchestrator on real processes: records from events, status from the last sample."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
import trio.testing
from orchestrator_harness import open_orchestrator

from omnitron.config import AppConfig, define_ecosystem
from omnitron.daemon._orchestrator import Orchestrator
from omnitron.daemon._service import DaemonService, Sampler
from omnitron.daemon._tree import Place, TreeBuilder
from omnitron.state import AppStatus, DesiredStatus
from supervision import ProcessIdentity
from supervision.testing import FakeChild

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

WAIT = 20.0
"""Generous bound for real processes to come and go."""


def test_the_builder_maps_every_path_to_its_app_and_instance(tmp_path: Path) -> None:
    ecosystem = define_ecosystem(
        project="shop",
        apps=[{"name": "web", "command": ["sleep", "1"], "instances": 2}],
        base_dir=tmp_path,
    )
    builder = TreeBuilder(ecosystem, home=tmp_path, sink=lambda app, i, stream: print)
    builder.app(ecosystem.apps[0], 2)
    builder.instance(ecosystem.apps[0], 2)  # a scale-up
    assert builder.places == {
        ("shop", "web"): Place("web"),
        ("shop", "web", "0"): Place("web", 0),
        ("shop", "web", "1"): Place("web", 1),
        ("shop", "web", "2"): Place("web", 2),
    }


def daemon(
    tmp_path: Path, apps: list[dict[str, Any]]
) -> contextlib.AbstractAsyncContextManager[tuple[Orchestrator, DaemonService]]:
    def changed() -> None:
        CHANGED[0].set()
        CHANGED[0] = trio.Event()

    return open_orchestrator(tmp_path, apps, on_change=changed)


CHANGED = [trio.Event()]
"""Set at every change of the orchestrator's records (then replaced)."""


async def until(check: Callable[[], bool], what: str) -> None:
    with trio.fail_after(WAIT):
        while not check():
            await CHANGED[0].wait()


async def test_records_follow_a_real_tree(tmp_path: Path) -> None:
    apps = [{"name": "web", "command": ["sleep", "3600"], "instances": 2}]
    async with daemon(tmp_path, apps) as (orchestrator, service):
        await until(lambda: orchestrator.apps["web"].status is AppStatus.ONLINE, "web online")
        record = orchestrator.apps["web"]
        pids = {i: p.pid for i, p in record.processes.items()}
        # Identities are read when first needed: the state file's snapshot holds
        # each live process's own (its pid, start time and boot).
        snapshot = orchestrator.snapshot()
        record = orchestrator.apps["web"]
        for p in record.processes.values():
            assert p.pid is not None
            assert p.identity == ProcessIdentity.of(p.pid)
        [state] = snapshot.apps
        assert [(s.pid, s.start_time, s.boot_id) for s in state.processes] == [
            (p.pid, p.identity.start_time, p.identity.boot_id)
            for p in sorted(record.processes.values(), key=lambda p: p.instance)
            if p.identity is not None
        ]
        status = await service.status()
        [web] = status["apps"]
        assert [(p["instance"], p["pid"], p["status"]) for p in web["processes"]] == [
            (0, pids[0], "online"),
            (1, pids[1], "online"),
        ]

        victim = pids[0]
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        await until(
            lambda: (
                orchestrator.apps["web"].restarts == 1
                and orchestrator.apps["web"].status is AppStatus.ONLINE
            ),
            "web restarted",
        )
        record = orchestrator.apps["web"]
        assert record.processes[0].pid not in (None, victim)
        assert record.processes[0].restarts == 1
        assert record.processes[1].pid == pids[1]
        assert record.last_error == "instance 0: killed by SIGKILL"
        kinds = [(e.kind.value, e.instance) for e in record.events]
        assert kinds[-3:] == [("exited", 0), ("restarting", 0), ("online", 0)]

        inspect = await service.inspect("web")
        assert inspect["last_exits"] == {"0": "killed by SIGKILL"}
        exited = [e for e in inspect["recent_events"] if e["kind"] == "exited"]
        assert exited == [
            {
                "time": pytest.approx(exited[0]["time"]),
                "kind": "exited",
                "instance": 0,
                "pid": victim,
                "reason": "killed by SIGKILL",
            }
        ]

        assert await orchestrator.stop("web") == ["web"]
        record = orchestrator.apps["web"]
        assert (record.status, record.desired) == (AppStatus.STOPPED, DesiredStatus.STOPPED)
        assert {p.pid for p in record.processes.values()} == {None}
        assert [e["status"] for e in (await service.get_app("web"))["processes"]] == [
            "stopped",
            "stopped",
        ]


async def test_status_reads_the_last_sample_and_samples_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = [{"name": "web", "command": ["sleep", "3600"]}]
    async with daemon(tmp_path, apps) as (orchestrator, service):
        await until(lambda: orchestrator.apps["web"].status is AppStatus.ONLINE, "web online")
        [process] = (await service.status())["apps"][0]["processes"]
        assert (process["cpu"], process["memory"]) == (0.0, 0)  # not sampled yet

        await service.sampler.sample()  # what the sampling task does every interval
        [process] = (await service.status())["apps"][0]["processes"]
        assert process["memory"] > 0

        # From now on no status call touches a process.
        def refuse(*args: object) -> None:
            raise AssertionError("status sampled a process")

        monkeypatch.setattr(psutil, "Process", refuse)
        for _ in range(3):
            [process] = (await service.status())["apps"][0]["processes"]
            assert process["memory"] > 0
            await service.get_app("web")


async def test_a_sampler_that_cannot_start_a_thread_counts_and_retries(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = trio.to_thread.run_sync
    refusals = [RuntimeError("can't start new thread")]

    async def flaky(fn: Callable[..., Any], *args: Any) -> Any:
        if refusals:
            raise refusals.pop()
        return await real(fn, *args)

    monkeypatch.setattr(trio.to_thread, "run_sync", flaky)
    sampler = Sampler(lambda: [os.getpid()], interval=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sampler.run)
        await trio.sleep(1)
        assert (sampler.failures, sampler.samples) == (1, {})
        await trio.sleep(2)  # the next round succeeds
        nursery.cancel_scope.cancel()
    assert sampler.failures == 1
    assert sampler.samples[os.getpid()][1] > 0


async def test_commands_answer_while_a_real_app_is_slow(tmp_path: Path) -> None:
    """The real-process side of ``test_orchestrator_slow_apps.py``: a process that never
    reports ready, and one that waits 30 s to be restarted."""
    apps = [
        {"name": "fast", "command": ["sleep", "3600"]},
        {"name": "slow", "command": ["sleep", "3600"], "ready": "notify", "startup_timeout": "30s"},
        {
            "name": "flaky",
            "command": ["sh", "-c", "exit 1"],
            "restart_policy": {"max_restarts": 5, "backoff": {"initial": "30s", "max": "30s"}},
            "depends_on": ["slow"],  # held up by slow's start until slow is stopped
        },
    ]
    async with daemon(tmp_path, apps) as (orchestrator, service):
        await until(
            lambda: (
                orchestrator.apps["fast"].status is AppStatus.ONLINE
                and bool(orchestrator.apps["slow"].processes)
            ),
            "fast online, slow's process spawned",
        )
        with trio.fail_after(5):  # far below slow's 30 s
            assert await orchestrator.stop("fast") == ["fast"]
            assert {a["name"]: a["status"] for a in (await service.status())["apps"]} == {
                "fast": "stopped",
                "slow": "starting",
                "flaky": "starting",
            }
            assert await orchestrator.stop("slow") == ["slow"]
        slow = orchestrator.apps["slow"]
        assert (slow.status, slow.crashed) == (AppStatus.STOPPED, False)
        await until(lambda: orchestrator.apps["flaky"].status is AppStatus.ERRORED, "flaky crashed")
        with trio.fail_after(5):  # far below flaky's 30 s backoff
            assert await orchestrator.stop("flaky") == ["flaky"]
        assert orchestrator.apps["flaky"].status is AppStatus.STOPPED


async def test_status_is_built_once_per_tick_and_change(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Within one tick (0.1 s), with the same records and sample, status is not
    rebuilt; any change, or the next tick, gives a fresh one."""
    fakes = {"web": FakeChild(), "db": FakeChild()}

    def leaf(config: AppConfig, index: int) -> FakeChild:
        return fakes[config.name]

    apps = [{"name": "web", "command": ["true"]}, {"name": "db", "command": ["true"]}]
    async with open_orchestrator(tmp_path, apps, leaf=leaf) as (orchestrator, service):
        await trio.sleep(1)
        first = (await service.status())["apps"]
        assert (await service.status())["apps"] is first
        assert [p["uptime"] for a in first for p in a["processes"]] == [1.0, 1.0]

        await trio.sleep(0.05)  # the same tick
        assert (await service.status())["apps"] is first
        await trio.sleep(0.1)
        later = (await service.status())["apps"]
        assert [p["uptime"] for a in later for p in a["processes"]] == [1.1, 1.1]

        await orchestrator.stop("db")  # a record changes: rebuilt at once
        stopped = (await service.status())["apps"]
        assert [a["status"] for a in stopped] == ["online", "stopped"]

        service.sampler.samples = {fakes["web"].pids[-1]: (12.5, 4096)}  # a new sample
        [web, _db] = (await service.status())["apps"]
        assert (web["processes"][0]["cpu"], web["processes"][0]["memory"]) == (12.5, 4096)
        # get_app and inspect hand out their own copies.
        app = await service.get_app("web")
        app["spec"] = "mine"
        assert "spec" not in (await service.get_app("web"))


async def test_a_restarted_app_reuses_its_pool_spec_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stopped pool leaves the root; starting it again builds nothing unless the
    # builder, the config, the instances or the places of its paths changed.
    apps = [{"name": "web", "command": ["sleep", "3600"], "instances": 2}]
    async with daemon(tmp_path, apps) as (orchestrator, _service):
        await until(lambda: orchestrator.apps["web"].status is AppStatus.ONLINE, "web online")
        built: list[int] = []
        real_app = TreeBuilder.app

        def counting(self: TreeBuilder, app: AppConfig, instances: int) -> Any:
            built.append(instances)
            return real_app(self, app, instances)

        monkeypatch.setattr(TreeBuilder, "app", counting)

        async def stop_then_start() -> dict[int, int | None]:
            assert await orchestrator.stop("web") == ["web"]
            assert await orchestrator.start("web") == ["web"]
            await until(lambda: orchestrator.apps["web"].status is AppStatus.ONLINE, "online")
            return {i: p.pid for i, p in orchestrator.apps["web"].processes.items()}

        first = await stop_then_start()  # the spec the launch built
        second = await stop_then_start()
        assert built == []
        assert set(first) == set(second) == {0, 1}
        assert not set(first.values()) & set(second.values())  # new processes
        assert orchestrator.apps["web"].status is AppStatus.ONLINE

        # The places of its paths are gone (as after a reload): built anew.
        del orchestrator._builder.places[("test", "web", "0")]
        await stop_then_start()
        assert built == [2]
        assert ("test", "web", "0") in orchestrator._builder.places


async def test_an_apps_lock_is_forgotten_once_released_and_still_serializes(
    tmp_path: Path,
) -> None:
    # An idle daemon keeps no lock per app; operations on one app still run one at
    # a time (the second restart waits for the first, then takes the same lock).
    apps = [{"name": "web", "command": ["sleep", "3600"]}]
    async with daemon(tmp_path, apps) as (orchestrator, _):
        await orchestrator.wait_launched(WAIT)
        assert orchestrator._locks == {}
        async with orchestrator._lock("web"):
            assert set(orchestrator._locks) == {"web"}
            with trio.fail_after(WAIT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(orchestrator.restart, "web")
                    nursery.start_soon(orchestrator.restart, "web")
                    await trio.testing.wait_all_tasks_blocked()
                    assert orchestrator._locks["web"].statistics().tasks_waiting == 2
                    nursery.cancel_scope.cancel()
        assert orchestrator._locks == {}
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(orchestrator.restart, "web")
                nursery.start_soon(orchestrator.restart, "web")
        assert orchestrator._locks == {}
        assert orchestrator.apps["web"].status is AppStatus.ONLINE
