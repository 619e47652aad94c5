"""The peer comparison harness (``benchmarks/compare.py``) without the peers.

Statistics, each peer's configuration (checked with the peer's own format
parser, and omnitron's with its own config loader), the report, the JSON and the
data given to the plots, from synthetic results; and one real ``--quick`` run of
the C floor and the ``supervision`` library.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from omnitron.config import load_config

ROOT = Path(__file__).resolve().parent.parent.parent


def _load(name: str) -> ModuleType:
    key = f"omnitron_bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    return _load("compare")


@pytest.fixture(scope="module")
def plots() -> ModuleType:
    return _load("plots")


@pytest.fixture
def env(compare: ModuleType, tmp_path: Path) -> Any:
    env = compare.Env(tmp_path / "peers", tmp_path / "work", omnitron="/opt/bin/omnitron")
    env.workdir.mkdir()
    env.children = {"minimal": ["/w/notify_child"], "python": ["/py", "/w/notify_child.py"]}
    env.floor_c = "/w/floor_sup"
    env.erlang_ebin = "/w/ebin"
    return env


def _setup(compare: ModuleType, tmp_path: Path, count: int = 3, autostart: bool = True) -> Any:
    argv = ["/w/notify child", "--hello", "/w/h.sock", "50"]  # a space: quoting matters
    return compare.Setup(tmp_path, argv, count, autostart, port=12345)


# --------------------------------------------------------------------------- statistics


def test_summarize_is_nearest_rank_in_milliseconds(compare: ModuleType) -> None:
    samples = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    s = compare.summarize(samples)
    assert (s["n"], s["p50"], s["p90"], s["p99"], s["min"], s["max"]) == (100, 50, 90, 99, 1, 100)
    assert s["mean"] == pytest.approx(50.5)


def test_against_floor_gives_overheads_and_the_ratio(compare: ModuleType) -> None:
    floor = {"p50": 2.0, "p90": 3.0, "p99": 4.0}
    peer = {"p50": 5.0, "p90": 3.5, "p99": 10.0}
    out = compare.against_floor(peer, floor)
    assert out == {"over_p50": 3.0, "over_p90": 0.5, "over_p99": 6.0, "x_p50": 2.5}
    assert math.isnan(compare.against_floor(peer, {**floor, "p50": 0.0})["x_p50"])


def test_busy_is_load_per_cpu(compare: ModuleType) -> None:
    assert not compare.is_busy(0.9, 2)
    assert compare.is_busy(1.1, 2)
    assert compare.is_busy(0.6, 1)


# --------------------------------------------------------------------------- peers' configuration


def test_omnitron_config_is_valid_for_omnitron(
    compare: ModuleType, env: Any, tmp_path: Path
) -> None:
    peer = compare.Omnitron()
    for count, autostart in ((3, True), (100, False), (0, True)):
        setup = _setup(compare, tmp_path, count, autostart)
        [(name, text)] = peer.files(env, setup).items()
        path = tmp_path / name
        path.write_text(text)
        ecosystem = load_config(path)
        assert ecosystem.supervision.max_restarts == 1_000_000
        assert ecosystem.supervision.backoff.initial == 0
        if count:
            [app] = ecosystem.apps
            assert list(app.command) == setup.argv
            assert app.instances == count
            assert app.enabled is autostart
        else:
            assert ecosystem.apps == ()
    setup = _setup(compare, tmp_path)
    home = str(tmp_path / "home")
    assert peer.launch_argv(env, setup)[:5] == [
        "/opt/bin/omnitron",
        "--home",
        home,
        "up",
        "--foreground",
    ]
    assert peer.status_argv(env, setup) == ["/opt/bin/omnitron", "--home", home, "status"]
    assert peer.start_argv(env, setup)[-2:] == ["start", "c"]


def test_supervisord_config(compare: ModuleType, env: Any, tmp_path: Path) -> None:
    peer = compare.Supervisord()
    setup = _setup(compare, tmp_path, 100, autostart=False)
    [(name, text)] = peer.files(env, setup).items()
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    program = parser["program:c"]
    assert shlex.split(program["command"]) == setup.argv
    assert program["numprocs"] == "100"
    assert (program["autostart"], program["autorestart"]) == ("false", "true")
    assert (program["startsecs"], program["startretries"]) == ("0", "1000000")
    assert parser["inet_http_server"]["port"] == "127.0.0.1:12345"
    assert peer.launch_argv(env, setup) == [
        str(env.venv_bin / "supervisord"),
        "-n",
        "-c",
        str(tmp_path / name),
    ]
    probe = peer.probe_argv(env, setup, 1.0, 2.0, 0.01)
    assert probe[2:4] == ["supervisord", "http://127.0.0.1:12345"]
    empty = configparser.RawConfigParser()
    empty.read_string(peer.files(env, _setup(compare, tmp_path, 0))[name])
    assert not any(section.startswith("program") for section in empty.sections())


def test_circus_default_and_fast_check_delay(compare: ModuleType, env: Any, tmp_path: Path) -> None:
    setup = _setup(compare, tmp_path, 20)
    configs = {}
    for peer in (compare.Circus(), compare.CircusFast()):
        parser = configparser.RawConfigParser()
        parser.read_string(peer.files(env, setup)["circus.ini"])
        configs[peer.name] = parser
        watcher = parser["watcher:c"]
        assert shlex.split(watcher["cmd"]) == setup.argv
        assert watcher["numprocesses"] == "20"
        assert (watcher["respawn"], watcher["max_retry"], watcher["warmup_delay"]) == (
            "true",
            "-1",
            "0",
        )
        assert parser["circus"]["endpoint"] == f"ipc://{tmp_path}/endpoint"
    assert "check_delay" not in configs["circus"]["circus"]
    assert configs["circus-fast"]["circus"]["check_delay"] == "0.01"


def test_pm2_ecosystem(compare: ModuleType, env: Any, tmp_path: Path) -> None:
    peer = compare.PM2()
    setup = _setup(compare, tmp_path, 100)
    [app] = json.loads(peer.files(env, setup)["ecosystem.json"])["apps"]
    assert [app["script"], *app["args"]] == setup.argv
    assert (app["interpreter"], app["exec_mode"], app["instances"]) == ("none", "fork", 100)
    assert (app["restart_delay"], app["max_restarts"], app["autorestart"]) == (0, 1000000, True)
    assert peer.launch_env(env, setup)["PM2_HOME"] == str(tmp_path / "pm2home")
    assert peer.launch_argv(env, setup)[1] == "start"
    # Not started, or no children: only the daemon.
    assert peer.launch_argv(env, _setup(compare, tmp_path, 100, autostart=False))[1:] == ["ping"]
    assert json.loads(peer.files(env, _setup(compare, tmp_path, 0))["ecosystem.json"]) == {
        "apps": []
    }


def test_erlang_and_floors_take_the_child_argv(
    compare: ModuleType, env: Any, tmp_path: Path
) -> None:
    setup = _setup(compare, tmp_path, 7)
    erl = compare.Erlang().launch_argv(env, setup)
    assert erl[erl.index("-extra") + 1 :] == ["7", *setup.argv]
    assert "/w/ebin" in erl
    cold = compare.Erlang().launch_argv(env, _setup(compare, tmp_path, 7, autostart=False))
    assert cold[cold.index("-extra") + 1] == "0"  # started later over its control socket
    assert compare.FloorC().launch_argv(env, setup) == ["/w/floor_sup", "7", *setup.argv]
    assert compare.FloorPython().launch_argv(env, setup)[2:] == ["7", *setup.argv]
    assert compare.Library().launch_argv(env, setup)[2:] == ["7", *setup.argv]


def test_an_uninstalled_peer_is_skipped_with_its_reason(compare: ModuleType, env: Any) -> None:
    (env.peers_dir / "skipped").mkdir(parents=True)
    (env.peers_dir / "skipped" / "pm2").write_text("npm install pm2 failed (see install.log)\n")
    peers, skipped = compare.select_peers(env, ["supervisord", "pm2", "circus-fast"])
    assert [p.name for p in peers] == ["floor-c"]  # the floor always comes along
    assert skipped["pm2"] == "npm install pm2 failed (see install.log)"
    assert "install.sh" in skipped["supervisord"]
    assert "install.sh" in skipped["circus-fast"]
    every = {p.name for p in compare.ALL_PEERS}
    assert {
        "floor-c",
        "floor-py",
        "supervision",
        "omnitron",
        "supervisord",
        "circus",
        "circus-fast",
        "pm2",
        "erlang",
    } == every


# --------------------------------------------------------------------------- the harness's socket


def test_hellos_receives_pids_and_counts(compare: ModuleType, tmp_path: Path) -> None:
    import socket
    import time

    hellos = compare.Hellos(tmp_path / "h.sock")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            for pid in (11, 12, 11):
                sender.sendto(str(pid).encode(), hellos.path)
            assert hellos.receive(5) == 11
            assert hellos.drain() == [12, 11]
            assert hellos.receive(0.01) is None
            sender.sendto(b"14", hellos.path)
            sender.sendto(b"15", hellos.path)
            assert hellos.count_until(time.perf_counter() + 0.05) == 2
    finally:
        hellos.close()
    assert not (tmp_path / "h.sock").exists()


class Exits:
    """A peer whose supervisor exits at once (``false``), or after ``after`` seconds."""

    def __init__(self, compare: ModuleType, after: float | None = None) -> None:
        self.peer = type("Broken", (compare.Peer,), {"name": "broken", "label": "broken"})()
        script = "exit 1" if after is None else f"exec {{argv}} & sleep {after}; exit 1"
        self.peer.launch_argv = lambda env, setup: [
            "/bin/sh",
            "-c",
            script.replace("{argv}", shlex.join(setup.argv)),
        ]


def test_a_failing_peer_is_reported_and_the_others_measured(
    compare: ModuleType, env: Any, tmp_path: Path
) -> None:
    env.workdir = tmp_path
    compare.prepare(env, need_erlang=False)
    plan = compare.Plan.quick()
    dies_at_start = Exits(compare).peer
    result = compare.restart_scenario([compare.FloorC(), dies_at_start], env, "minimal", plan)
    assert len(result["samples_s"]["floor-c"]) == plan.restart_samples["minimal"]
    assert result["errors"] == {"broken": "BenchmarkError: broken exited (1): (no output)"}
    assert "broken" not in result["summary"]
    # A supervisor that dies after its first child is up: the floor goes on.
    dies_later = Exits(compare, after=0.3).peer
    result = compare.restart_scenario([compare.FloorC(), dies_later], env, "minimal", plan)
    assert len(result["samples_s"]["floor-c"]) == plan.restart_samples["minimal"]
    assert result["errors"]["broken"].startswith("BenchmarkError: broken exited (1)")
    peer = {"version": "", "restart_config": "", "status": ""}
    results = {
        **synthetic_results(compare),
        "peers": {"floor-c": {**peer, "label": "floor (C)"}, "broken": {**peer, "label": "broken"}},
        "restart": {"minimal": result},
        "storm": {},
        "hundred": {},
        "zero": {},
    }
    report = compare.markdown(results)
    assert "broken: failed: BenchmarkError: broken exited (1)" in report


def test_the_children_say_hello_and_a_full_socket_holds_them_a_second_at_most(
    compare: ModuleType, env: Any, tmp_path: Path
) -> None:
    env.workdir = tmp_path
    compare.prepare(env, need_erlang=False)
    hellos = compare.Hellos(tmp_path / "h.sock")
    try:
        for kind in ("minimal", "python"):
            child = subprocess.Popen([*env.children[kind], "--hello", hellos.path, "1"])
            assert hellos.receive(30) == child.pid
            assert child.wait(timeout=30) == 1  # the crash, after 1 ms
        # Nobody reads: the queue (10 datagrams by default) fills, and still every child
        # runs to its exit, the ones that found it full after waiting 1 s.
        for kind in ("minimal", "python"):
            children = [
                subprocess.Popen([*env.children[kind], "--hello", hellos.path, "0"])
                for _ in range(15)
            ]
            assert [c.wait(timeout=60) for c in children] == [1] * 15
            assert 0 < len(hellos.drain()) < 15
    finally:
        hellos.close()


# --------------------------------------------------------------------------- report and plots


def synthetic_results(compare: ModuleType) -> dict[str, Any]:
    """Results as ``run`` makes them, for three peers (one without an API) and one skipped."""
    peers = {
        "floor-c": ("floor (C)", [0.001, 0.002, 0.003, 0.004]),
        "omnitron": ("omnitron (daemon)", [0.002, 0.003, 0.005, 0.009]),
        "circus": ("circus", [0.5, 1.0, 2.0, 4.0]),
    }
    meter = {
        "loadavg_before": [0.2, 0.1, 0.1],
        "loadavg_after": [0.3, 0.1, 0.1],
        "cpus": {"busy_percent": 40.0, "steal_percent": 0.0},
        "seconds": 3.0,
        "busy": False,
    }
    busy = {**meter, "loadavg_before": [3.5, 2.0, 1.0], "busy": True}
    samples = {name: s for name, (_, s) in peers.items()}
    summary = {name: compare.summarize(s) for name, s in samples.items()}
    for s in summary.values():
        s.update(compare.against_floor(s, summary["floor-c"]))
    mem = {"rss": 3 * 2**20, "uss": 2**20, "processes": 1}
    return {
        "machine": {
            "nproc": 2,
            "cpu": "Test CPU",
            "kernel": "6.1",
            "implementation": "CPython",
            "python": "3.11.7",
            "trio": "0.27",
            "loadavg_at_start": [0.2, 0.1, 0.1],
            "loadavg_at_end": [3.5, 2.0, 1.0],
        },
        "plan": compare.Plan.quick().__dict__ | {"restart_samples": {"minimal": 4}},
        "peers": {
            name: {
                "label": label,
                "version": "1.0",
                "restart_config": f"{name} config",
                "status": "x",
            }
            for name, (label, _) in peers.items()
        },
        "skipped": {"pm2": "npm not found"},
        "children": {"minimal": "C program"},
        "floor": "floor-c",
        "restart": {
            "minimal": {
                "child": "C program",
                "samples_s": samples,
                "summary": summary,
                "meter": meter,
            },
            "python": {"error": "BenchmarkError: circus: no replacement in 30.0 s"},
        },
        "storm": {
            "floor-c": {
                "restarts": 800,
                "seconds": 2.0,
                "restarts_per_s": 400.0,
                "cpu_percent": 3.0,
                "meter": meter,
            },
            "omnitron": {
                "restarts": 760,
                "seconds": 2.0,
                "restarts_per_s": 380.0,
                "cpu_percent": 60.0,
                "status_samples_s": [[0.0, 0.002], [0.01, 0.004]],
                "status": compare.summarize([0.002, 0.004]),
                "meter": busy,
            },
            "circus": {"error": "BenchmarkError: the status client did not finish"},
        },
        "hundred": {
            "children": 100,
            "rounds": 1,
            "cold_start_s": {n: [0.1] for n in peers},
            "cold_start": {n: compare.summarize([0.1]) for n in peers},
            "status_command_s": {"omnitron": [0.04]},
            "status_command": {"omnitron": compare.summarize([0.04])},
            "status_api": {
                "omnitron": {"calls_per_s": 1000.0, "latency": compare.summarize([0.001])}
            },
            "idle_cpu_percent": dict.fromkeys(peers, 0.0),
            "memory": {n: {**mem, "rss": (i + 1) * 10 * 2**20} for i, n in enumerate(peers)},
            "meter": meter,
        },
        "zero": {"memory": dict.fromkeys(peers, mem), "meter": meter},
        "seconds": 12.0,
        "busy": ["crash storm (omnitron)"],
    }


def test_markdown_report(compare: ModuleType) -> None:
    results = synthetic_results(compare)
    report = compare.markdown(results)
    lines = report.splitlines()
    headline = next(line for line in lines if line.startswith("| omnitron (daemon) |"))
    # C child p50 3 ms (x1.5 of the floor's 2 ms), no Python samples (n/a), storm 380/s
    # = 95% of the floor, status p99 4 ms, RSS 20 MiB, status command 40 ms, cold 100 ms.
    assert headline == (
        "| omnitron (daemon) | 3 | 1.5 | n/a | n/a | 380 | 95% | 4 | 20 | 40 | 100 |"
    )
    assert "| pm2 | n/a | **skipped**: npm not found | n/a |" in report
    assert "**Busy machine**" in report
    assert "crash storm (omnitron)" in report.split("**Busy machine**")[1].splitlines()[0]
    assert "Failed: BenchmarkError: circus: no replacement in 30.0 s" in report
    assert "| circus | error: BenchmarkError: the status client did not finish |" in report
    assert "| circus config |" in report  # every peer's configuration is in the report
    # Every table row has as many cells as its header.
    table: list[str] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            assert len({row.count(" | ") for row in table if not row.startswith("|---")}) == 1, (
                table
            )
            table = []
    json.loads(json.dumps(results))  # the JSON form holds every sample


def test_plot_data(compare: ModuleType, plots: ModuleType) -> None:
    data = plots.figures(synthetic_results(compare))
    xs, ys = data["restart_latency"]["C program"]["circus"]
    assert xs == [500.0, 1000.0, 2000.0, 4000.0]
    assert ys == [0.25, 0.5, 0.75, 1.0]
    assert list(data["restart_latency"]) == ["C program"]  # the failed scenario is left out
    assert data["storm"]["omnitron (daemon)"] == {
        "restarts_per_s": 380.0,
        "status_p50": 2.0,
        "status_p99": 4.0,
    }
    assert data["storm"]["floor (C)"]["status_p50"] is None
    assert "circus" not in data["storm"]
    assert data["memory"]["circus"] == {"no children": 3.0, "100 children": 30.0}


def test_plots_are_written(compare: ModuleType, plots: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots need the bench extra")
    written = plots.render(synthetic_results(compare), tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"{stem}.{ext}" for stem in ("restart_latency", "storm", "memory") for ext in ("png", "svg")
    )
    assert all(p.stat().st_size > 1000 for p in written)


# --------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_quick_run_of_the_floor_and_the_library(compare: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "--quick",
        "--peer",
        "supervision",
        "--out",
        str(out),
        "--no-plots",
        "--only",
        "restart",
        "--only",
        "hundred",
    ]
    assert compare.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["peers"]) == ["floor-c", "supervision"]
    for kind in ("minimal", "python"):
        scenario = results["restart"][kind]
        assert "error" not in scenario, scenario
        for name in ("floor-c", "supervision"):
            assert len(scenario["samples_s"][name]) == compare.Plan.quick().restart_samples[kind]
            assert all(0 < s < compare.HELLO_TIMEOUT for s in scenario["samples_s"][name])
        assert scenario["summary"]["floor-c"]["x_p50"] == 1.0
        assert scenario["summary"]["supervision"]["x_p50"] > 0
    for name in ("floor-c", "supervision"):
        assert results["hundred"]["memory"][name]["rss"] > 0
        assert len(results["hundred"]["cold_start_s"][name]) == 1
    assert "| supervision (library) |" in (out / "report.md").read_text()
    # Nothing of the run is left running.
    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(results["workdir"] in arg for arg in p.info["cmdline"] or ())
    ]
    for p in left:
        os.kill(p.pid, signal.SIGKILL)
    assert left == []


def test_a_noisy_supervisor_is_paused_while_another_is_measured(
    compare: ModuleType, env: Any, tmp_path: Path
) -> None:
    env.workdir = tmp_path
    compare.prepare(env, need_erlang=False)
    measured, noisy = (compare.Instance(compare.FloorC(), env, t, "minimal", 1) for t in "ab")
    with compare.running([measured, noisy]):
        for instance in (measured, noisy):
            instance.launch()
            instance.wait_hellos(1)

        def stopped(instance: Any) -> bool:
            return bool(psutil.Process(instance.pid).status() == psutil.STATUS_STOPPED)

        with compare.only_running(measured, [measured, noisy]):
            assert (stopped(measured), stopped(noisy)) == (False, True)
        assert not stopped(noisy)
        with compare.only_running(noisy, [noisy]):  # its own measurement: it runs
            assert not stopped(noisy)
    assert measured.proc is not None
    assert measured.proc.returncode == 0  # stopped by SIGTERM, cleanly


@pytest.mark.slow
def test_crash_storm_of_the_floor(compare: ModuleType, env: Any, tmp_path: Path) -> None:
    env.workdir = tmp_path
    compare.prepare(env, need_erlang=False)
    plan = compare.Plan.quick()
    result = compare.storm_scenario(compare.FloorC(), env, plan)
    # 20 children exiting 50 ms after they start: at most 400 restarts a second.
    assert 20 < result["restarts_per_s"] <= 400 * 1.1, result
    assert result["seconds"] == pytest.approx(plan.storm_seconds, abs=0.5)
    assert "status" not in result  # the floor has no status API
    assert set(result["meter"]) >= {"loadavg_before", "loadavg_after", "busy", "cpus"}
