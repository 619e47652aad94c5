"""What an operator is told when things go wrong, end to end: the real CLI against a
real daemon (the harness of ``test_cli_e2e.py``).

The cause of a start failure with the app's own stderr, and scale, reset and
signal as an operator uses them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_e2e import (
    BASIC,
    CRASH_SOON,
    FAST_BACKOFF,
    Omnitron,
    app_toml,
    home,
    omnitron,
    pids_of,
    running,
    wait_for,
)
from test_cli_e2e import app_pids as marked_pids

__all__ = ["home", "omnitron", "running"]  # fixtures used here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

ADDRESS_IN_USE = "OSError: [Errno 98] Address already in use"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that this test holds bound (and listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def binder(port: int) -> str:
    """An app that binds ``port`` and serves forever (fails if the port is taken)."""
    return (
        "import socket, time; s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(3600)"
    )


def check_explained(stderr: str, app: str, home: str) -> None:
    """``stderr`` names the cause, shows the app's stderr tail and its log file."""
    lines = stderr.splitlines()
    assert f"  last stderr lines of {app}:" in lines, stderr
    tail = lines[lines.index(f"  last stderr lines of {app}:") + 1 :]
    assert f"    {ADDRESS_IN_USE}" in tail, stderr
    assert len([line for line in tail if line.startswith("    ")]) <= 10
    log = next(line for line in lines if line.startswith("  log: "))
    path = Path(log.removeprefix("  log: "))
    assert path == Path(home) / "logs" / f"{app}.log", stderr
    assert ADDRESS_IN_USE in path.read_text()


# --------------------------------------------------------------------------- item: the cause


def test_start_failure_shows_the_apps_stderr_and_log(running: Omnitron, taken_port: int) -> None:
    running.write_config(
        BASIC
        + app_toml(
            "web",
            binder(taken_port),
            ready='{ after = "2s" }',
            enabled="false",
            restart_policy='{ max_restarts = 0, window = "60s" }',
        )
    )
    running.ok("reload-config")
    result = running.run("start", "web")
    assert result.returncode == 1, result
    assert result.stderr.startswith("omnitron: web failed to start: "), result.stderr
    check_explained(result.stderr, "web", running.home)
    assert "Traceback" in result.stderr  # the app's own traceback, not the CLI's
    # The data travels with the RPC error, for any client.
    restart = running.run("restart", "web")
    assert restart.returncode == 1, restart
    check_explained(restart.stderr, "web", running.home)


def test_up_shows_why_an_app_did_not_come_up(omnitron: Omnitron, taken_port: int) -> None:
    omnitron.write_config(
        app_toml("fine")
        + app_toml(
            "web",
            binder(taken_port),
            ready='{ after = "2s" }',
            restart_policy='{ max_restarts = 0, window = "60s" }',
        )
    )
    result = omnitron.run("up")
    assert result.returncode == 1, result
    assert "omnitron: not online after start-up: web (crashed)" in result.stderr
    assert any(line.startswith("  web: ") for line in result.stderr.splitlines()), result.stderr
    check_explained(result.stderr, "web", omnitron.home)


# --------------------------------------------------------------------------- item: critical stop


def test_status_says_a_critical_app_stopped_the_daemon(omnitron: Omnitron) -> None:
    omnitron.write_config(
        app_toml("steady")
        + app_toml(
            "boom",
            CRASH_SOON,
            critical="true",
            restart_policy=f'{{ max_restarts = 2, window = "60s", {FAST_BACKOFF} }}',
        )
    )
    assert omnitron.run("up").returncode == 3
    status = omnitron.run("status")
    assert status.returncode == 1, status
    assert status.stdout == ""
    line = status.stderr.strip()
    assert line.startswith("omnitron: daemon not running: it stopped at "), line
    assert "because critical app 'boom' crashed: restart limit exceeded" in line, line
    assert line.endswith("fix the app, then `omnitron up`"), line
    # A daemon stopped on request leaves no such reason behind.
    omnitron.write_config(app_toml("steady"))
    omnitron.ok("up")
    omnitron.ok("down")
    again = omnitron.run("status")
    assert again.returncode == 1
    assert again.stderr.startswith("omnitron: daemon not running: the socket"), again.stderr


# --------------------------------------------------------------------------- item: another config


def test_a_second_up_with_another_config_names_it(running: Omnitron) -> None:
    daemon = running.status()["daemon"]
    other = running.project / "other"
    other.mkdir()
    (other / "omnitron.toml").write_text(app_toml("elsewhere"))
    result = running.run("up", "--config", str(other / "omnitron.toml"))
    assert result.returncode == 1, result
    line = result.stderr.splitlines()[-1]
    assert line.startswith(f"omnitron: daemon already running (pid {daemon['pid']}) on "), line
    assert f"with another config: {daemon['config']} (not {other / 'omnitron.toml'})" in line
    assert "`omnitron up --home PATH`" in line
    assert running.status()["daemon"]["pid"] == daemon["pid"]
    assert "elsewhere" not in running.apps()
    # The same config is refused as before, by the daemon's pid lock.
    same = running.run("up")
    assert same.returncode == 1
    assert f"omnitron: daemon already running (pid {daemon['pid']})" in same.stderr
    assert "another config" not in same.stderr


# --------------------------------------------------------------------------- item: reset, signal


def test_reset_sets_the_restart_counters_to_zero(running: Omnitron) -> None:
    old = pids_of(running.apps()["sleeper"])
    os.kill(next(iter(old)), signal.SIGKILL)
    apps = running.wait_apps(
        lambda apps: apps["sleeper"]["restarts"] == 1 and apps["sleeper"]["status"] == "online",
        "sleeper restarted once",
    )
    assert apps["sleeper"]["processes"][0]["restarts"] == 1
    assert running.ok("reset", "sleeper").stdout.strip() == "reset: sleeper"
    sleeper = running.apps()["sleeper"]
    assert sleeper["restarts"] == 0
    assert sleeper["processes"][0]["restarts"] == 0
    assert sleeper["status"] == "online"
    assert pids_of(sleeper) == pids_of(apps["sleeper"])  # nothing was restarted
    state = json.loads((Path(running.home) / "state.json").read_text())["state"]
    recorded = next(app for app in state["apps"] if app["name"] == "sleeper")
    assert recorded["restarts"] == 0
    assert json.loads(running.ok("--json", "reset", "all").stdout) == {
        "reset": ["sleeper", "dependent", "notifier"]
    }
    unknown = running.run("reset", "nosuch")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("omnitron: no app named 'nosuch'")


def test_signal_reaches_every_process_of_the_app(running: Omnitron) -> None:
    seen = running.project / "seen"
    seen.mkdir()
    code = (
        f"import os, pathlib, signal, time; d = pathlib.Path({str(seen)!r}); "
        "signal.signal(signal.SIGUSR1, lambda *a: (d / f'usr1-{os.getpid()}').touch()); "
        "(d / f'ready-{os.getpid()}').touch(); time.sleep(3600)"
    )
    running.write_config(BASIC + app_toml("trapper", code, instances="2"))
    running.ok("reload-config")
    pids = pids_of(running.wait_online("trapper")["trapper"])
    wait_for(lambda: {f"ready-{pid}" for pid in pids} <= {p.name for p in seen.iterdir()}, "ready")
    result = running.ok("signal", "USR1", "trapper")
    line = result.stdout.strip()
    assert line.startswith("SIGUSR1 -> trapper: "), line
    assert {int(pid) for pid in line.split(": ")[1].split(", ")} == pids
    wait_for(lambda: {f"usr1-{pid}" for pid in pids} <= {p.name for p in seen.iterdir()}, "usr1")
    assert pids_of(running.apps()["trapper"]) == pids  # handled, not killed
    # Only the app's own processes got it: the other apps' are untouched.
    assert marked_pids(running.home)["sleeper"] == pids_of(running.apps()["sleeper"])
    signalled = {int(p.name[5:]) for p in seen.iterdir() if p.name.startswith("usr1-")}
    assert signalled == pids

    as_json = json.loads(running.ok("--json", "signal", "sigusr1", "trapper").stdout)
    assert as_json["signal"] == "SIGUSR1"
    assert set(as_json["sent"]["trapper"]) == pids
    bad = running.run("signal", "NOPE", "trapper")
    assert bad.returncode == 2, bad
    assert "unknown signal 'NOPE'" in bad.stderr
    running.ok("stop", "notifier")
    idle = running.run("signal", "HUP", "notifier")
    assert idle.returncode == 1
    assert idle.stderr.strip() == "omnitron: not signalled (no running process): notifier"


# --------------------------------------------------------------------------- item: a failed scale


@pytest.fixture
def free_port() -> int:
    """A TCP port that was free a moment ago (the app binds it, not the test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("ready", ['"on_spawn"', '{ after = "300ms" }'])
def test_a_scale_whose_new_instance_fails_is_undone(
    running: Omnitron, free_port: int, ready: str
) -> None:
    running.write_config(
        BASIC
        + app_toml(
            "web",
            binder(free_port),
            ready=ready,
            restart_policy=f'{{ max_restarts = 3, window = "60s", {FAST_BACKOFF} }}',
        )
    )
    running.ok("reload-config")
    before = running.wait_online("web")["web"]
    result = running.run("scale", "web", "2")
    assert result.returncode == 1, result
    first = result.stderr.splitlines()[0]
    assert first.startswith("omnitron: web: instance 1 failed to start ("), first
    assert first.endswith("the scale was undone: the app runs its 1 instance"), first
    assert f"    {ADDRESS_IN_USE}" in result.stderr.splitlines()
    web = running.apps()["web"]
    assert web["instances"] == 1
    assert web["status"] == "online"
    assert [p["instance"] for p in web["processes"]] == [0]
    assert pids_of(web) == pids_of(before)  # instance 0 was never touched
    assert marked_pids(running.home)["web"] == pids_of(before)  # no stray instance 1
    # The pool did not give up afterwards: instance 1 is gone, not crash-looping.
    running.ok("scale", "web", "1")  # already 1: nothing to do
    assert running.apps()["web"]["status"] == "online"


# --------------------------------------------------------------------------- item: scale persists


def test_a_scale_survives_down_and_up_until_the_config_changes_instances(
    running: Omnitron,
) -> None:
    running.ok("scale", "sleeper", "3")
    running.wait_online("sleeper")
    running.ok("down")
    running.ok("up")
    sleeper = running.wait_online("sleeper")["sleeper"]
    assert sleeper["instances"] == 3
    assert len(marked_pids(running.home)["sleeper"]) == 3
    # A change elsewhere in the config keeps the scale ...
    running.write_config(BASIC + app_toml("extra"))
    running.ok("down")
    running.ok("up")
    assert running.wait_online("sleeper")["sleeper"]["instances"] == 3
    # ... the config's own instances changing makes the config win.
    config = BASIC.replace('name = "sleeper"\n', 'name = "sleeper"\ninstances = 2\n', 1) + app_toml(
        "extra"
    )
    running.write_config(config)
    running.ok("down")
    running.ok("up")
    assert running.wait_online("sleeper")["sleeper"]["instances"] == 2
    assert len(marked_pids(running.home)["sleeper"]) == 2
