"""Metrics: the sampler's rings and switch, real processes sampled, memory restarts,
and the real CLI's ``metrics`` (table, JSON, Prometheus text)."""

from __future__ import annotations

import collections
import math
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import trio
import trio.testing
from hypothesis import strategies as st
from orchestrator_harness import open_orchestrator
from prometheus_client.parser import text_string_to_metric_families
from test_cli_e2e import SLEEP, Omnitron, app_toml, home, omnitron, wait_for  # noqa: F401 - fixtures

from omnitron._eventtext import describe
from omnitron.daemon._metrics import FIELDS, Clock, LoopLag, Ring, Sampler, prometheus_text
from omnitron.state import AppStatus

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

WAIT = 30.0
"""Generous bound for real processes to come, go and use CPU."""
BUSY = "while True: pass"
# Holds 1MB more every 20 ms, up to 200MB: past a 50MB limit within a second.
GROW = (
    "import time\nheld = []\nwhile True:\n"
    "    if len(held) < 200: held.append(bytearray(b'x' * 1_000_000))\n"
    "    time.sleep(0.02)"
)


def sample(t: float) -> tuple[float, ...]:
    return (t,) + (0.0,) * (len(FIELDS) - 1)


def test_a_ring_keeps_the_newest_samples_oldest_first() -> None:
    ring = Ring(3)
    for t in range(5):
        ring.append(sample(t))
    assert len(ring) == 3
    assert [s[0] for s in ring.last(10)] == [2.0, 3.0, 4.0]
    assert [s[0] for s in ring.last(2)] == [3.0, 4.0]
    assert [s[0] for s in ring.resize(2).last(10)] == [3.0, 4.0]
    assert [s[0] for s in ring.resize(5).last(10)] == [2.0, 3.0, 4.0]


async def test_sampling_follows_the_interval_and_the_switch(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def inline(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)  # virtual time cannot wait for a real thread

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)
    sampler = Sampler(lambda: [], interval=1.0, retention=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sampler.run)
        await trio.sleep(3.5)
        assert sampler.taken == 4  # at 0, 1, 2, 3
        assert sampler.loop_lag == 0.0  # virtual time is never late
        assert len(sampler.rings[os.getpid()]) == 3  # the retention: 3 s / 1 s
        sampler.set_enabled(False)
        assert (sampler.samples, sampler.last) == ({}, {})
        await trio.sleep(60)
        assert sampler.taken == 4
        sampler.set_enabled(True)
        await trio.sleep(0.5)
        assert sampler.taken == 5  # at once, then every interval
        sampler.configure(interval=10.0, retention=20.0)
        await trio.sleep(15)
        assert sampler.taken == 7  # at once again, then 10 s later
        assert sampler.capacity == 2
        nursery.cancel_scope.cancel()


async def test_the_heartbeat_measures_how_late_the_loop_wakes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task holding the loop for 0.3 s (virtual) shows up as one late beat."""
    lag = LoopLag(period=0.1, window=50)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await trio.sleep(2.05)
        assert lag.count == 20
        assert lag.summary()["loop_lag_max"] == 0.0  # virtual time is never late
        # Hold the loop: the clock moves on 0.25 s while nothing else runs; the
        # heartbeat was due 0.05 s after this moment, so it wakes 0.2 s late.
        autojump_clock.jump(0.25)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    summary = lag.summary()
    assert summary["loop_lag_max"] == pytest.approx(0.2, abs=1e-6)
    assert summary["loop_lag_p50"] == 0.0
    assert summary["loop_lag_window"] == lag.count > 25
    histogram = summary["loop_lag_histogram"]
    assert sum(histogram["counts"]) == histogram["count"]
    assert histogram["counts"][histogram["buckets"].index(0.25)] == 1  # 0.1 < 0.21 <= 0.25
    assert histogram["counts"][0] == lag.count - 1


def test_prometheus_text_parses_with_health_and_lag() -> None:
    lag = LoopLag()
    for value in (0.0005, 0.002, 0.03, 0.7, 9.0):
        lag.record(value)
    process = {"instance": 0, "pid": 7, "status": "online", "restarts": 2, "uptime": 3.0}
    metrics = {
        "daemon": {"rss": 1, **lag.summary()},
        "apps": [
            {
                "name": "web",
                "processes": [
                    {**process, "health": "unhealthy"},
                    {**process, "instance": 1, "health": None},
                ],
            }
        ],
    }
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(metrics))}
    [healthy] = families["omnitron_process_healthy"].samples
    assert (healthy.labels, healthy.value) == ({"app": "web", "instance": "0"}, 0.0)
    [status] = families["omnitron_process_health_status"].samples
    assert status.labels["status"] == "unhealthy"
    buckets = {
        s.labels["le"]: s.value
        for s in families["omnitron_daemon_loop_lag_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets["0.001"] == 1
    assert buckets["0.005"] == 2
    assert buckets["0.05"] == 3
    assert buckets["1.0"] == 4
    assert buckets["+Inf"] == 5
    [max_lag] = families["omnitron_daemon_loop_lag_max_seconds"].samples
    assert max_lag.value == 9.0


async def until(check: Callable[[], bool], what: str) -> None:
    with trio.fail_after(WAIT):
        while not check():  # noqa: ASYNC110 - real processes, polled
            await trio.sleep(0.05)


async def test_a_busy_child_and_a_childs_descendants_are_sampled(tmp_path: Path) -> None:
    apps = [
        {"name": "busy", "command": [sys.executable, "-c", BUSY]},
        {"name": "tree", "command": ["sh", "-c", "sleep 3600 & sleep 3600"], "instances": 2},
    ]
    async with open_orchestrator(tmp_path, apps) as (orchestrator, service):
        await until(
            lambda: all(r.status is AppStatus.ONLINE for r in orchestrator.apps.values()), "online"
        )
        await service.sampler.sample()
        await trio.sleep(1.0)  # the busy loop burns CPU between two samples
        await service.sampler.sample()
        result = service.metrics(history=5)
        apps_by_name = {app["name"]: app for app in result["apps"]}
        [busy] = apps_by_name["busy"]["processes"]
        # Well above an idle process even on a crowded machine.
        assert busy["cpu"] > 10.0, busy
        assert all(p["cpu"] < 5.0 for p in apps_by_name["tree"]["processes"])
        assert busy["cpu_seconds"] > 0.1
        assert busy["rss"] > 1_000_000
        assert busy["threads"] >= 1
        assert busy["fds"] >= 3
        assert len(busy["history"]) == 2
        assert busy["history"][-1][FIELDS.index("cpu")] == pytest.approx(busy["cpu"], abs=0.01)

        tree = apps_by_name["tree"]
        assert [p["descendants"] for p in tree["processes"]] == [2, 2]  # sh's two sleeps
        for process in tree["processes"]:
            assert process["tree_rss"] > process["rss"]
        assert tree["tree_rss"] == sum(p["tree_rss"] for p in tree["processes"])
        assert tree["descendants"] == 4

        daemon = result["daemon"]
        assert daemon["pid"] == os.getpid()
        assert daemon["rss"] > 10_000_000

        only = service.metrics("busy")
        assert [app["name"] for app in only["apps"]] == ["busy"]


async def test_a_process_over_max_memory_for_two_samples_is_restarted(tmp_path: Path) -> None:
    apps = [
        {"name": "grow", "command": [sys.executable, "-c", GROW], "max_memory": "50MB"},
        {"name": "calm", "command": ["sleep", "3600"], "max_memory": "50MB"},
    ]
    async with open_orchestrator(tmp_path, apps) as (orchestrator, service):
        await until(lambda: orchestrator.apps["grow"].status is AppStatus.ONLINE, "grow online")
        first = orchestrator.apps["grow"].processes[0].pid
        calm = orchestrator.apps["calm"].processes[0].pid
        async with trio.open_nursery() as nursery:
            await nursery.start(service.sampler.run)  # reads [monitoring] metrics: 5 s
            service.sampler.configure(interval=0.2, retention=10.0)

            def restarted() -> bool:
                process = orchestrator.apps["grow"].processes[0]
                return process.pid not in (None, first) and process.status is AppStatus.ONLINE

            await until(restarted, "grow restarted for its memory")
            nursery.cancel_scope.cancel()
        record = orchestrator.apps["grow"]
        assert record.restarts >= 1
        assert record.processes[0].restarts >= 1
        [event, *_] = [e for e in record.events if e.kind.value == "memory_restart"]
        assert event.instance == 0
        assert event.pid == first
        assert event.reason is not None
        used, limit = event.reason.removeprefix("memory ").split(" > ")
        assert limit == "50MB"
        assert int(used.removesuffix("MB")) > 50
        assert record.last_error == f"instance 0: {event.reason}"
        assert describe(event.to_wire()) == f"instance 0 restarted: {event.reason}"
        # The stop was graceful: no kill after a stop timeout.
        stops = [e for e in record.events if e.kind.value == "stopped" and e.pid == first]
        assert stops
        assert not stops[0].killed
        assert orchestrator.apps["calm"].processes[0].pid == calm  # under its limit


# --------------------------------------------------------------------------- the real CLI


@pytest.mark.slow
def test_the_metrics_command_shows_a_busy_child_and_speaks_prometheus(
    omnitron: Omnitron,  # noqa: F811 - the fixture
) -> None:
    omnitron.write_config(
        'project = "m"\n[monitoring.metrics]\ninterval = "500ms"\n'
        + app_toml("busy", BUSY)
        + app_toml(
            "idle",
            SLEEP,
            instances="2",
            health='{ command = ["true"], interval = "200ms", start_period = "0s" }',
        )
    )
    omnitron.up()

    def busy_sampled() -> dict[str, object] | None:
        result = omnitron.json("metrics", "busy")
        [process] = result["apps"][0]["processes"]
        return result if result["samples"] >= 3 and process["cpu"] > 10 else None

    def idle_healthy() -> bool:
        processes = omnitron.json("metrics", "idle")["apps"][0]["processes"]
        return [p["health"] for p in processes] == ["healthy", "healthy"]

    wait_for(idle_healthy, "idle's probes passing", timeout=WAIT)

    result = wait_for(busy_sampled, "busy sampled at high cpu", timeout=WAIT)
    assert result["interval"] == 0.5

    table = omnitron.ok("metrics").stdout.splitlines()
    assert table[0].startswith("daemon pid ")
    assert table[1].split()[:4] == ["APP", "INSTANCE", "PID", "CPU"]
    assert [line.split()[:2] for line in table[2:]] == [
        ["busy", "0"],
        ["idle", "0"],
        ["idle", "1"],
        ["idle", "total"],
    ]

    text = omnitron.ok("metrics", "--prometheus").stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    cpu = {
        (s.labels["app"], s.labels["instance"]): s.value
        for s in families["omnitron_process_cpu_seconds"].samples
        if s.name.endswith("_total")
    }
    assert set(cpu) == {("busy", "0"), ("idle", "0"), ("idle", "1")}
    assert cpu[("busy", "0")] > 0.1
    assert families["omnitron_process_cpu_seconds"].type == "counter"
    up = {s.labels["app"] for s in families["omnitron_process_up"].samples if s.value == 1}
    assert up == {"busy", "idle"}
    for name in ("omnitron_process_resident_memory_bytes", "omnitron_process_uptime_seconds"):
        assert len(families[name].samples) == 3
    [daemon_rss] = families["omnitron_daemon_resident_memory_bytes"].samples
    assert daemon_rss.value > 10_000_000
    [calls] = [
        s for s in families["omnitron_daemon_rpc_calls"].samples if s.name.endswith("_total")
    ]
    assert calls.value >= 3
    [generation] = families["omnitron_daemon_persistence_generation"].samples
    assert generation.value >= 1
    # Health: only the probed processes, a 1 for their current status.
    healthy = {
        (s.labels["app"], s.labels["instance"]): s.value
        for s in families["omnitron_process_healthy"].samples
    }
    assert healthy == {("idle", "0"): 1.0, ("idle", "1"): 1.0}
    statuses = families["omnitron_process_health_status"].samples
    assert {(s.labels["instance"], s.labels["status"], s.value) for s in statuses} == {
        ("0", "healthy", 1.0),
        ("1", "healthy", 1.0),
    }
    ready = {s.labels["app"]: s.value for s in families["omnitron_process_ready"].samples}
    assert ready == {"busy": 1.0, "idle": 1.0}
    # Loop lag: the heartbeat's histogram (cumulative buckets) and its recent p99.
    lag = families["omnitron_daemon_loop_lag_seconds"]
    assert lag.type == "histogram"
    buckets = [s for s in lag.samples if s.name.endswith("_bucket")]
    assert buckets[-1].labels["le"] == "+Inf"
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)
    [count] = [s.value for s in lag.samples if s.name.endswith("_count")]
    assert count == counts[-1] >= 10  # ten beats a second, the daemon is seconds old
    [p99] = families["omnitron_daemon_loop_lag_p99_seconds"].samples
    assert 0 <= p99.value < 5
    daemon = omnitron.json("metrics")["daemon"]
    assert daemon["loop_lag_window"] >= 10
    assert 0 <= daemon["loop_lag_p50"] <= daemon["loop_lag_p99"] <= daemon["loop_lag_max"]

    assert omnitron.ok("metrics", "--disable").stdout.strip() == "metrics sampling off"
    off = omnitron.json("metrics")
    assert off["enabled"] is False
    assert off["apps"][0]["processes"][0]["cpu"] is None
    assert "sampling off" in omnitron.ok("metrics").stdout.splitlines()[0]
    omnitron.ok("metrics", "--enable")
    wait_for(lambda: omnitron.json("metrics")["samples"] > off["samples"] or None, "sampling again")

    bad = omnitron.run("metrics", "--prometheus", "--json")
    assert bad.returncode == 2
    assert "exclude each other" in bad.stderr
    unknown = omnitron.run("metrics", "nope")
    assert unknown.returncode == 1
    assert "nope" in unknown.stderr


async def test_reload_config_applies_new_metrics_settings_at_once(tmp_path: Path) -> None:
    async with open_orchestrator(tmp_path, []) as (_orchestrator, service):
        assert (service.sampler.interval, service.sampler.retention) == (5.0, 3600.0)
        (tmp_path / "omnitron.toml").write_text(
            'project = "test"\n[monitoring.metrics]\ninterval = "2s"\nretention = "10s"\n'
        )
        result = await service.reload_config(dry_run=False)
        assert result["applied"]
        assert [w.endswith("no apps defined") for w in result["warnings"]] == [True]
        assert (service.sampler.interval, service.sampler.capacity) == (2.0, 5)


def test_neither_the_daemon_nor_the_metrics_command_loads_prometheus_client() -> None:
    """Only a request for the Prometheus format loads it (in the daemon)."""
    code = (
        "import sys\n"
        "from omnitron.daemon import _entry\n"
        "_entry.defer_unused_modules()\n"
        "import omnitron.daemon._main, omnitron.cli._main, omnitron.cli._metrics\n"
        "print('prometheus_client' in sys.modules)\n"
        "from omnitron.daemon._metrics import prometheus_text\n"
        "prometheus_text({'daemon': {'rss': 1}, 'apps': []})\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.split() == ["False", "True"]


def test_the_procfs_reader_agrees_with_psutil_and_skips_zombies_and_the_gone() -> None:
    # The sampler reads /proc itself (psutil costs the daemon 3 MiB resident):
    # the same figures as psutil's, for a live process; None for a zombie or a gone pid.
    import psutil

    from omnitron.daemon._metrics import _read_proc

    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"  # started up: its figures hold still
        proc = psutil.Process(child.pid)
        cpu, started, rss, uss, threads, fds = _read_proc(child.pid, full=True, uss=True) or ()
        times = proc.cpu_times()
        assert abs(cpu - (times.user + times.system)) < 0.05
        assert abs(started - proc.create_time()) < 0.05
        assert abs(rss - proc.memory_info().rss) <= 256 * 1024
        assert abs(uss - proc.memory_full_info().uss) <= 256 * 1024
        assert (threads, fds) == (proc.num_threads(), proc.num_fds())
        assert _read_proc(child.pid, full=False, uss=False) == (cpu, started, rss, -1, 0, -1)
    finally:
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.close()
        child.stdout.close()
        child.wait()
    zombie = subprocess.Popen(["true"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    assert _read_proc(zombie.pid, full=True, uss=True) is None
    zombie.wait()
    assert _read_proc(zombie.pid, full=True, uss=True) is None


_FIGURES = st.sampled_from(
    [
        (0.0, 0.0, 4096.0, 1024.0, 1.0, 3.0, 0.0, 0.0, 4096.0),
        (-0.0, 0.0, 4096.0, 1024.0, 1.0, 3.0, 0.0, 0.0, 4096.0),  # differs by its sign bit
        (12.5, 0.31, 8192.0, -1.0, 2.0, -1.0, 1.0, 13.25, 16384.0),
        (math.inf, 1e300, 5e-324, 0.1, 0.2, 0.3, 7.0, 8.0, 9.0),
    ]
)


def _bits(samples: list[tuple[float, ...]]) -> list[bytes]:
    return [struct.pack(f"{len(s)}d", *s) for s in samples]


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    capacity=st.integers(1, 12),
    figures=st.lists(_FIGURES, max_size=60),
    shrink_to=st.integers(1, 12),
    first_row=st.sampled_from([0, 2**32 - 3]),
)
def test_a_ring_gives_back_exactly_what_it_kept(
    capacity: int, figures: list[tuple[float, ...]], shrink_to: int, first_row: int
) -> None:
    # Figures repeated from one sample to the next are stored once (an idle
    # process's samples cost their time only); every sample still comes back bit
    # for bit, through wrap-arounds, the dropping of old figures and a resize.
    ring = Ring(capacity)
    ring._first = first_row  # as after 2**32 - 3 distinct rows: the numbers wrap around
    kept: collections.deque[tuple[float, ...]] = collections.deque(maxlen=capacity)
    for t, row in enumerate(figures):
        ring.append((1000.0 + t, *row))
        kept.append((1000.0 + t, *row))
        assert len(ring) == len(kept)
        assert _bits(ring.last(capacity)) == _bits(list(kept))
    for n in range(capacity + 2):
        assert _bits(ring.last(n)) == _bits(list(kept)[len(kept) - min(n, len(kept)) :])
    resized = ring.resize(shrink_to)
    assert _bits(resized.last(shrink_to)) == _bits(list(kept)[-shrink_to:] if kept else [])


def test_an_idle_process_ring_stores_its_figures_once() -> None:
    ring = Ring(720)
    idle = (0.0, 0.0, 1_720_320.0, 106_496.0, 1.0, 3.0, 0.0, 0.0, 1_720_320.0)
    for t in range(2000):
        ring.append((float(t), *idle))
    busy = Ring(720)
    for t in range(2000):
        busy.append((float(t), float(t % 7), *idle[1:]))
    assert len(ring) == len(busy) == 720
    assert ring.last(1) == [(1999.0, *idle)]
    assert busy.last(1) == [(1999.0, float(1999 % 7), *idle[1:])]
    # One row of figures for the idle ring, one per distinct neighbour for the busy one.
    assert len(ring._figures) == len(idle)
    assert len(busy._figures) >= 720 * len(idle)


# One step of the sampler-like run below: ("tick", figures) samples every ring at a
# new round, ("late", figures) samples one ring at a time of its own (out of step:
# it keeps its own times from then on), ("skip", figures) ticks without sampling
# the first process, whose ring goes (as the sampler drops it) and starts anew at
# the next round, ("resize", capacity) applies new settings.
_STEP = st.one_of(
    st.tuples(st.just("tick"), _FIGURES),
    st.tuples(st.just("late"), _FIGURES),
    st.tuples(st.just("skip"), _FIGURES),
    st.tuples(st.just("resize"), st.integers(1, 12)),
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(capacity=st.integers(1, 12), steps=st.lists(_STEP, max_size=60))
def test_rings_sharing_a_clock_give_back_exactly_what_they_kept(
    capacity: int, steps: list[tuple[str, Any]]
) -> None:
    # The rings of a sampler take their times from its clock (one time per round),
    # and come back bit for bit whatever happens: rounds, samples out of step,
    # processes not sampled in a round, new settings.
    clock = Clock(capacity)
    rings = [Ring(capacity, clock), Ring(capacity, clock)]
    kept = [collections.deque[tuple[float, ...]](maxlen=capacity) for _ in rings]
    for t, (kind, arg) in enumerate(steps):
        when = 1000.0 + t
        if kind == "resize":
            capacity = arg
            clock = clock.resize(capacity)
            rings = [ring.resize(capacity, clock) for ring in rings]
            kept = [collections.deque(k, maxlen=capacity) for k in kept]
        elif kind == "late":
            rings[1].append((when + 0.5, *arg))
            kept[1].append((when + 0.5, *arg))
        else:
            clock.tick(when)
            for index, (ring, k) in enumerate(zip(rings, kept, strict=True)):
                if kind == "skip" and index == 0:
                    rings[0], kept[0] = Ring(capacity, clock), collections.deque(maxlen=capacity)
                    continue
                ring.append((when, *arg))
                k.append((when, *arg))
        for ring, k in zip(rings, kept, strict=True):
            assert len(ring) == len(k)
            assert _bits(ring.last(capacity)) == _bits(list(k))


def test_an_idle_process_ring_on_the_samplers_clock_stores_no_times() -> None:
    # 4 bytes a sample (its row number) instead of 12: the time is the clock's.
    clock = Clock(720)
    ring = Ring(720, clock)
    idle = (0.0, 0.0, 1_720_320.0, 106_496.0, 1.0, 3.0, 0.0, 0.0, 1_720_320.0)
    for t in range(2000):
        clock.tick(float(t))
        ring.append((float(t), *idle))
    assert ring._times is None
    assert ring.last(2) == [(1998.0, *idle), (1999.0, *idle)]
    assert len(ring._figures) == len(idle)
    assert len(ring._rows) == 720


async def test_the_samplers_rings_share_its_clock() -> None:
    sampler = Sampler(lambda: [])
    for _ in range(3):
        await sampler.sample()
    ring = sampler.rings[os.getpid()]
    assert len(ring) == 3
    assert ring._times is None
    assert ring._clock is sampler._clock
    assert ring.last(1)[0] == sampler.last[os.getpid()]
    sampler.configure(interval=1.0, retention=2.0)
    ring = sampler.rings[os.getpid()]
    assert ring._clock is sampler._clock
    assert len(ring) == 2
    await sampler.sample()
    assert sampler.rings[os.getpid()]._times is None
