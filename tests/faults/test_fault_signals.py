"""Signals to the daemon and from its children (SG-01..03, SG-05, SG-08, CF-07, PC-10).

Each test drives a real daemon (``up --foreground`` in its own session) and
sends it real signals. Apps record the moment a SIGTERM reaches them
(``term_recorder``), so the stop order and each stop timeout can be read off
``time.monotonic()``, a clock shared by every process on the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

import msgpack
import pytest
from fault_harness import (
    CHILDREN,
    READY_FD,
    Daemon,
    app_toml,
    gone,
    pids_of,
    python_app,
    read_terms,
    recorded_state,
    term_recorder,
    wait_for,
)

from omnitron.rpc import RemoteError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

FAST_BACKOFF = 'backoff = { initial = "50ms", max = "100ms", factor = 2 }'


def assert_clean_exit(daemon: Daemon) -> None:
    """Exit 0 without a traceback; the socket and the pid file are gone."""
    code = daemon.wait_exit()
    output = daemon.read_output()
    assert code == 0, output
    assert "Traceback" not in output
    assert "KeyboardInterrupt" not in output
    assert not os.path.exists(daemon.socket)
    assert not os.path.exists(daemon.pid_file)


# --------------------------------------------------------------------------- SG-01, PC-10


def test_sigterm_stops_dependents_first_each_within_its_own_timeout(
    daemon: Daemon, tmp_path: Path
) -> None:
    """SG-01 / PC-10: reverse dependency order, each stop timeout respected, state flushed."""
    record = tmp_path / "terms"
    base_timeout, top_timeout = 0.8, 0.4
    daemon.start(
        'project = "sg01"\n\n'
        # base and top ignore SIGTERM: each is killed at its own stop timeout.
        + python_app(
            "base",
            term_recorder("base", record, ignore=True),
            ready=READY_FD,
            stop_timeout=f'"{base_timeout}s"',
        )
        # middle exits at once: its long timeout must not be waited for.
        + python_app(
            "middle",
            term_recorder("middle", record, ignore=False),
            ready=READY_FD,
            stop_timeout='"30s"',
            depends_on='["base"]',
        )
        + python_app(
            "top",
            term_recorder("top", record, ignore=True),
            ready=READY_FD,
            stop_timeout=f'"{top_timeout}s"',
            depends_on='["middle"]',
        )
    )
    apps = daemon.wait_online("base", "middle", "top")
    pids = {pid for app in apps.values() for pid in pids_of(app)}

    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert_clean_exit(daemon)
    took = time.monotonic() - sent

    terms = read_terms(record)
    assert sorted(terms, key=terms.__getitem__) == ["top", "middle", "base"]
    # top ignored SIGTERM: middle was asked to stop only after top's timeout, and
    # not much later (the config's stop_timeout reached the process leaf as is)...
    assert terms["middle"] - terms["top"] >= top_timeout - 0.15
    assert terms["middle"] - terms["top"] < top_timeout + 1.5
    # ...middle exited by itself: its 30 s timeout was not waited for.
    assert terms["base"] - terms["middle"] < 5
    # The whole stop is bounded by the timeouts that had to expire, plus slack.
    assert took >= top_timeout + base_timeout - 0.1
    assert took < top_timeout + base_timeout + 3
    assert all(gone(pid) for pid in pids)
    assert "killed after stop timeout" in daemon.app_log("top")
    assert "killed after stop timeout" in daemon.app_log("base")
    assert "killed after stop timeout" not in daemon.app_log("middle")

    # The final state keeps every app's intent, so the next daemon brings them back.
    state = recorded_state(daemon.home)
    assert {name: app["desired"] for name, app in state.items()} == {
        "base": "running",
        "middle": "running",
        "top": "running",
    }
    assert all(p["pid"] is None for app in state.values() for p in app["processes"])
    assert daemon.log_events("daemon_stopped")


# --------------------------------------------------------------------------- SG-02


def test_sigint_then_a_second_signal_kills_the_rest_at_once(daemon: Daemon, tmp_path: Path) -> None:
    """SG-02: SIGINT is a graceful stop; a second signal during it kills what is left."""
    record = tmp_path / "terms"
    daemon.start(
        'project = "sg02"\n\n'
        + python_app("fine", term_recorder("fine", record, ignore=False), ready=READY_FD)
        + python_app(
            "stubborn",
            term_recorder("stubborn", record, ignore=True),
            ready=READY_FD,
            stop_timeout='"60s"',
        )
    )
    apps = daemon.wait_online("fine", "stubborn")
    pids = {pid for app in apps.values() for pid in pids_of(app)}

    daemon.signal(signal.SIGINT)
    # stubborn is stopped first (reverse order) and ignores it: the daemon waits.
    wait_for(lambda: "stubborn" in read_terms(record), "stubborn to get its SIGTERM")
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    second = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert_clean_exit(daemon)
    assert time.monotonic() - second < 15  # far below stubborn's 60 s stop timeout

    assert all(gone(pid) for pid in pids)
    assert daemon.log_events("forced_stop")
    stopping = daemon.log_events("daemon_stopping")
    assert len(stopping) == 1
    assert "received SIGINT" in stopping[0]
    # State is still flushed on the forced path.
    state = recorded_state(daemon.home)
    assert {name: app["desired"] for name, app in state.items()} == {
        "fine": "running",
        "stubborn": "running",
    }
    assert all(p["pid"] is None for app in state.values() for p in app["processes"])


# --------------------------------------------------------------------------- SG-03


def test_a_burst_of_sighups_is_at_most_two_reloads(daemon: Daemon) -> None:
    """SG-03: 1 000 SIGHUPs in a burst are coalesced into one or two reloads.

    Reloads run one at a time beside the signal loop (so a SIGTERM is heard even
    during a long reload); SIGHUPs that arrive while one runs make one more.
    """
    daemon.start('project = "sg03"\n\n' + app_toml("web", ["sleep", "3600"]))
    daemon.wait_online("web")
    for _ in range(1000):
        os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: daemon.log_events("reload_applied") or None, "a reload applied")
    os.kill(daemon.pid, signal.SIGTERM)  # a second reload, if one runs, is cut short
    assert_clean_exit(daemon)

    applied = daemon.log_events("reload_applied")
    assert 1 <= len(applied) <= 2, applied
    assert daemon.log_events("reload_failed") == []
    # An unchanged config restarts nothing: the app came up exactly once.
    assert daemon.app_log("web").count("instance 0 online") == 1


# --------------------------------------------------------------------------- SG-08


def test_a_child_that_signals_its_own_group_does_not_touch_the_daemon(daemon: Daemon) -> None:
    """SG-08: kill(0, SIGTERM) from an app reaches only that app's own group."""
    victim = [str(CHILDREN / "kill_own_group")]
    daemon.start(
        'project = "sg08"\n\n'
        + app_toml("bystander", ["sleep", "3600"])
        + app_toml(
            "grouper",
            victim,
            restart_policy=f'{{ max_restarts = 3, window = "60s", {FAST_BACKOFF} }}',
        )
    )
    before = pids_of(daemon.wait_online("bystander")["bystander"])

    # It signals its group on every start, dies of it, and is given up on.
    apps = daemon.wait_apps(
        lambda apps: apps["grouper"]["status"] == "crashed", "the self-signalling app given up on"
    )
    grouper = apps["grouper"]
    assert grouper["restarts"] >= 3
    assert "SIGTERM" in (grouper["last_error"] or "")
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    assert pids_of(apps["bystander"]) == before
    assert daemon.log_events("daemon_stopping") == []
    assert daemon.status()["daemon"]["pid"] == daemon.pid


# --------------------------------------------------------------------------- CF-07


def test_an_invalid_config_on_reload_changes_nothing(daemon: Daemon) -> None:
    """CF-07: a bad config (RPC or SIGHUP) leaves the old one in force and every app as it was."""
    good = 'project = "cf07"\n\n' + app_toml("a", ["sleep", "3600"])
    daemon.start(good)
    before = pids_of(daemon.wait_online("a")["a"])

    # A syntax error, over RPC: refused, with the reason.
    daemon.write_config(good + "[[apps]\n")
    with pytest.raises(RemoteError, match=r"the config was not applied: .*syntax error") as info:
        daemon.call("daemon.reload_config")
    assert info.value.code in {"CONFIG_INVALID", "INVALID_PARAMS"}

    # Valid on its own but changing [supervision] along with a new app: refused as a
    # whole, the new app is not started (no partial apply).
    daemon.write_config(
        good + '[supervision]\nstrategy = "one_for_all"\n\n' + app_toml("b", ["sleep", "3600"])
    )
    with pytest.raises(RemoteError, match="take effect only when the daemon restarts") as info:
        daemon.call("daemon.reload_config")
    assert info.value.code in {"CONFIG_INVALID", "INVALID_PARAMS"}
    apps = daemon.apps()
    assert list(apps) == ["a"]
    assert pids_of(apps["a"]) == before

    # The same through SIGHUP: logged, nothing changes, the daemon stays up.
    daemon.write_config(good + app_toml("c", ["sleep", "3600"], colour='"red"'))
    daemon.signal(signal.SIGHUP)
    [failed] = wait_for(lambda: daemon.log_events("reload_failed"), "the failed reload logged")
    assert "colour: unknown key" in failed
    apps = daemon.apps()
    assert list(apps) == ["a"]
    assert pids_of(apps["a"]) == before

    # A good config afterwards is applied as usual.
    daemon.write_config(good + app_toml("c", ["sleep", "3600"]))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.log_events("reload_applied"), "the good reload applied")
    apps = daemon.wait_online("a", "c")
    assert pids_of(apps["a"]) == before


# --------------------------------------------------------------------------- SG-05


def test_clients_that_hang_up_before_their_reply_cost_nothing(daemon: Daemon) -> None:
    """SG-05: a peer that closes while the daemon writes is a quiet EPIPE, never an error."""
    daemon.start('project = "sg05"\n\n' + app_toml("web", ["sleep", "3600"]))
    daemon.wait_online("web")
    calls = b"".join(msgpack.packb([0, msgid, "daemon.status", [{}]]) for msgid in range(8))
    for n in range(200):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(daemon.socket)
            sock.sendall(calls)  # eight calls in flight, then gone
            if n % 2:
                # Reset rather than close: the daemon's next write gets ECONNRESET/EPIPE.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    status = daemon.status()
    assert status["daemon"]["pid"] == daemon.pid
    assert daemon.log_events("rpc_handler_failed") == []
    assert daemon.log_events("rpc_protocol_error") == []
    errors = [
        line
        for line in daemon.log.read_text(errors="replace").splitlines()
        if "level='error'" in line or "level='critical'" in line
    ]
    assert errors == []
