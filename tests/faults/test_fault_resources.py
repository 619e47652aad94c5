"""Descriptors and scale against a real daemon (RX-02, RX-03, RX-09, AU-15).

The daemon's descriptors are read from ``/proc/<pid>/fd``; a managed process's
descriptors and environment from ``/proc/<pid>/fd`` and ``/proc/<pid>/environ``.
Wall-time bounds are generous (a loaded CI machine must not fail them); the
numbers measured are in the assertion messages.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from typing import Any

import psutil
import pytest
from fault_harness import (
    CHILDREN,
    DEADLINE,
    Daemon,
    app_toml,
    clean_env,
    gone,
    marked,
    pids_of,
    wait_for,
)

from omnitron.rpc.sync_client import connect_unix_sync

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def descriptors(pid: int) -> dict[int, str]:
    """``{fd: target}`` of a live process."""
    result = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            result[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed while we looked
    return result


# --------------------------------------------------------------------------- RX-02


def test_descriptors_return_to_baseline_after_cycles_and_connections(daemon: Daemon) -> None:
    """RX-02 (scaled): 200 start/stop/restart cycles and 1 000 connections leak no fd."""
    workers, rounds = 4, 50  # 4 x 50 = 200 cycles, in parallel on four apps
    names = [f"app{i}" for i in range(workers)]
    daemon.start('project = "rx02"\n\n' + "".join(app_toml(n, ["sleep", "3600"]) for n in names))
    daemon.wait_online(*names)
    daemon.status()  # the first status starts the sampler; count after it
    baseline = descriptors(daemon.pid)

    failures: list[BaseException] = []

    def cycle(name: str) -> None:
        try:
            with connect_unix_sync(daemon.socket, timeout=60) as client:
                for n in range(rounds):
                    client.call("daemon.stop_app", name=name)
                    client.call("daemon.start_app", name=name)
                    if n % 5 == 0:
                        client.call("daemon.restart_app", name=name)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=cycle, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []

    for _ in range(1000):
        with connect_unix_sync(daemon.socket, timeout=10) as client:
            client.call("daemon.ping")
    apps = daemon.wait_online(*names)
    assert all(len(pids_of(app)) == 1 for app in apps.values())

    # A leak is growth. The baseline may hold a few transient descriptors (the
    # status call's connection before the daemon has seen it close), so fewer
    # than the baseline afterwards is no failure.
    def settled() -> bool:
        return len(descriptors(daemon.pid)) - len(baseline) <= 2

    deadline = time.monotonic() + DEADLINE
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    after = descriptors(daemon.pid)
    extra = {fd: target for fd, target in after.items() if baseline.get(fd) != target}
    assert len(after) - len(baseline) <= 2, (len(baseline), len(after), extra)


# --------------------------------------------------------------------------- RX-03, AU-15

# sd_notify READY=1, close the socket, then become `sleep` (which opens nothing).
NOTIFY_THEN_SLEEP = (
    "import os, socket\n"
    "a = os.environ['NOTIFY_SOCKET']\n"
    "a = chr(0) + a[1:] if a.startswith('@') else a\n"
    "with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:\n"
    "    s.sendto(b'READY=1', a)\n"
    "os.execvp('sleep', ['sleep', '3600'])\n"
)


def test_a_managed_process_holds_only_its_own_descriptors(daemon: Daemon) -> None:
    """RX-03 / AU-15: 0, 1, 2 and explicitly passed fds; only the three markers in env."""
    # The daemon runs as under systemd: its own NOTIFY_SOCKET must not reach the apps.
    systemd_socket = os.path.join(daemon.home, "no-such-notify.sock")
    daemon.start(
        'project = "rx03"\n\n'
        + app_toml("plain", ["sleep", "3600"])
        + app_toml("ready_fd", ["sh", "-c", "echo ready >&3; exec sleep 3600"], ready="{ fd = 3 }")
        + app_toml("after", ["sleep", "3600"], ready='{ after = "0.1s" }')
        + app_toml("notify", [sys.executable, "-c", NOTIFY_THEN_SLEEP], ready='"notify"'),
        env={**clean_env(daemon.home), "NOTIFY_SOCKET": systemd_socket},
    )
    apps = daemon.wait_online("plain", "ready_fd", "after", "notify")
    logs = os.path.join(daemon.home, "logs")
    own = {
        daemon.home,
        os.path.join(daemon.home, "daemon.sock"),
        os.path.join(daemon.home, "daemon.pid"),
        os.path.join(daemon.home, "state.json"),
    }
    passed = {"plain": {0, 1, 2}, "ready_fd": {0, 1, 2, 3}, "after": {0, 1, 2}, "notify": {0, 1, 2}}
    for name, expected in passed.items():
        [pid] = pids_of(apps[name])
        # Each ends as `sleep`: "notify" is online at READY=1, a moment before it
        # closes its notify socket and execs.
        wait_for(lambda pid=pid: psutil.Process(pid).name() == "sleep", f"{name} as sleep")
        fds = descriptors(pid)
        assert set(fds) == expected, (name, fds)
        assert fds[0] == os.devnull
        for fd in (1, 2):
            assert fds[fd].startswith("pipe:"), (name, fd, fds[fd])
        if 3 in expected:
            assert fds[3].startswith("pipe:")
        assert not any(target in own or target.startswith("socket:") for target in fds.values())
        assert not any(target.startswith(logs) for target in fds.values())

        environ = psutil.Process(pid).environ()
        markers = {key: value for key, value in environ.items() if key.startswith("OMNITRON_")}
        assert markers == {
            "OMNITRON_HOME": daemon.home,
            "OMNITRON_APP": name,
            "OMNITRON_INSTANCE": "0",
        }
        # Only a notify app gets a NOTIFY_SOCKET, and it is its own, not the daemon's.
        assert ("NOTIFY_SOCKET" in environ) is (name == "notify")
        assert environ.get("NOTIFY_SOCKET") != systemd_socket


# --------------------------------------------------------------------------- RX-09


def test_three_hundred_apps_stop_all_start_all_and_a_fast_status(daemon: Daemon) -> None:
    """RX-09 (scaled to CI): 300 tiny apps; stop all and start all complete; status stays fast."""
    count = 300
    names = [f"s{i:03d}" for i in range(count)]
    daemon.start(
        'project = "rx09"\n\n' + "".join(app_toml(name, ["sleep", "3600"]) for name in names)
    )
    apps = daemon.wait_online(*names, timeout=120)
    first = {pid for app in apps.values() for pid in pids_of(app)}
    assert len(first) == count
    client = daemon.client(timeout=120)

    def timed_status() -> tuple[float, dict[str, object]]:
        started = time.monotonic()
        status = client.call("daemon.status")
        return time.monotonic() - started, status

    took, status = timed_status()
    assert len(status["apps"]) == count
    worst = max(took, *(timed_status()[0] for _ in range(4)))
    assert worst < 2.0, f"status with {count} apps took {worst:.3f}s"

    started = time.monotonic()
    stopped = client.call("daemon.stop_all")
    stop_time = time.monotonic() - started
    assert sorted(stopped["stopped"]) == names
    assert all(gone(pid) for pid in first)
    assert marked(daemon.home, apps_only=True) == []
    took, status = timed_status()
    assert {app["status"] for app in status["apps"]} == {"stopped"}
    assert took < 2.0, took

    started = time.monotonic()
    started_apps = client.call("daemon.start_all")
    start_time = time.monotonic() - started
    assert sorted(started_apps["started"]) == names
    apps = daemon.wait_online(*names, timeout=60)
    second = {pid for app in apps.values() for pid in pids_of(app)}
    assert len(second) == count
    assert second.isdisjoint(first)
    wait_for(lambda: len(marked(daemon.home, apps_only=True)) == count, "exactly 300 app processes")

    worst = max(timed_status()[0] for _ in range(3))
    assert worst < 2.0, f"status with {count} apps took {worst:.3f}s"
    # Loose: linear work at a few ms per app, with an order of magnitude of headroom.
    assert stop_time < 60, stop_time
    assert start_time < 60, start_time


# --------------------------------------------------------------------------- RX-01

NOFILE = 64
FAST_RETRY = 'backoff = { initial = "100ms", max = "500ms", factor = 2 }'


def low_nofile() -> list[str]:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed")
    return ["prlimit", f"--nofile={NOFILE}:{NOFILE}"]


def test_out_of_descriptors_spawns_back_off_and_recover(daemon: Daemon) -> None:
    """RX-01: under RLIMIT_NOFILE=64, spawns fail with a clear reason and are retried
    with backoff, the daemon neither dies nor spins, and everything recovers once
    descriptors are free again."""
    temporary = [f"t{i}" for i in range(10)]
    permanent = [f"p{i:02d}" for i in range(15)]
    daemon.start(
        'project = "rx01"\n\n'
        + "".join(app_toml(name, ["sleep", "3600"], restart='"temporary"') for name in temporary)
        + "".join(
            app_toml(
                name,
                ["sleep", "3600"],
                restart_policy=f'{{ max_restarts = 1000, window = "60s", {FAST_RETRY} }}',
                # Independent apps start together: the temporary ones take their
                # descriptors first, so that the permanent ones run out.
                depends_on="[" + ", ".join(f'"{t}"' for t in temporary) + "]",
            )
            for name in permanent
        ),
        wrap=low_nofile(),
    )

    def out_of_fds(apps: dict[str, dict[str, Any]]) -> bool:
        return any("too many open files" in (app["last_error"] or "") for app in apps.values())

    apps = daemon.wait_apps(out_of_fds, "a spawn to fail for lack of descriptors")
    assert all(apps[name]["status"] == "online" for name in temporary)
    # Retried with backoff, not in a tight loop: a few retries cost the daemon little CPU.
    # Which apps stay stuck varies: a retry takes the descriptors another app's
    # failed attempt just gave back, so an app that failed may be online next.
    proc = psutil.Process(daemon.pid)
    cpu, started = sum(proc.cpu_times()[:2]), time.monotonic()
    retries = {name: apps[name]["restarts"] for name in permanent}

    def retried_three_times() -> tuple[str, dict[str, dict[str, Any]]] | None:
        apps = daemon.apps()
        for name in permanent:
            if apps[name]["restarts"] >= retries[name] + 3 and apps[name]["status"] != "online":
                return name, apps
        return None

    stuck, apps = wait_for(retried_three_times, "an app retried three times")
    elapsed = time.monotonic() - started
    busy = (sum(proc.cpu_times()[:2]) - cpu) / elapsed
    assert busy < 0.5, f"the daemon used {busy:.0%} of a CPU while out of descriptors"
    assert (apps[stuck]["restarts"] - retries[stuck]) / elapsed < 20, "retried in a tight loop"
    assert apps[stuck]["status"] != "online"
    assert daemon.proc is not None
    assert daemon.proc.poll() is None

    # Free descriptors: the temporary apps go away for good, with their pipes.
    for name in temporary:
        for pid in pids_of(apps[name]):
            os.kill(pid, signal.SIGKILL)
    daemon.wait_online(*permanent, timeout=30)
    assert daemon.proc.poll() is None


def test_a_descriptor_reserve_keeps_the_admin_socket_answering(daemon: Daemon) -> None:
    """RX-01: idle clients can never take every descriptor; an operator still gets in.

    The connection cap is lowered under a small RLIMIT_NOFILE, and on the (trusted)
    Unix plane a newcomer at the cap evicts the longest-idle connection.
    """
    daemon.start('project = "rx01b"\n\n' + app_toml("a", ["sleep", "3600"]), wrap=low_nofile())
    daemon.wait_online("a")
    held = []
    try:
        for _ in range(2 * NOFILE):
            client = connect_unix_sync(daemon.socket, timeout=2.0)
            held.append(client)
            assert client.call("daemon.ping") == {"pong": True}
        with connect_unix_sync(daemon.socket, timeout=2.0) as client:
            assert client.call("daemon.status")["daemon"]["pid"] == daemon.pid
        # Spawning still has descriptors: a restart works while clients are held.
        assert daemon.call("daemon.restart_app", name="a") == {"restarted": ["a"]}
    finally:
        for client in held:
            client.close()
    assert daemon.status()["daemon"]["pid"] == daemon.pid


# --------------------------------------------------------------------------- PL-30, RX-04, RX-06


def test_a_log_flood_keeps_the_daemon_bounded_and_answering(daemon: Daemon) -> None:
    """PL-30 / RX-06 / RX-04 (scaled): two `yes` floods and a 4 MB line without a newline.

    The long line arrives in ``max_line`` pieces with a continuation marker, the
    daemon's memory stays bounded, status keeps answering, and stop still works.
    """
    size = 4 * 1024 * 1024
    daemon.start('project = "flood"\n\n' + app_toml("quiet", ["sleep", "3600"]))
    daemon.wait_online("quiet")
    proc = psutil.Process(daemon.pid)
    baseline = proc.memory_info().rss
    daemon.write_config(
        daemon.config.read_text()
        + "".join(app_toml(f"yes{i}", ["yes", "spam and eggs"]) for i in range(2))
        + app_toml(
            "long",
            [sys.executable, str(CHILDREN / "long_line"), str(size)],
            restart='"temporary"',
        )
    )
    client = daemon.client()
    client.call("daemon.reload_config")

    peak, worst = baseline, 0.0

    def long_line_written() -> bool:
        nonlocal peak, worst
        peak = max(peak, proc.memory_info().rss)
        started = time.monotonic()
        client.call("daemon.status")
        worst = max(worst, time.monotonic() - started)
        return "long[0] out | tail" in daemon.app_log("long")

    wait_for(long_line_written, "the long line logged", timeout=60)
    assert peak - baseline < 150 * 1024 * 1024, f"RSS grew by {(peak - baseline) / 1e6:.0f} MB"
    assert worst < 2.0, f"status took {worst:.2f}s during the flood"

    pieces = [
        line.split(" out | ", 1)[1]
        for line in daemon.app_log("long").splitlines()
        if " long[0] out | " in line
    ]
    assert pieces[-1] == "tail"
    body = pieces[:-1]
    assert all(piece.endswith("…") for piece in body[:-1])
    assert all(len(piece.removesuffix("…")) <= 65536 for piece in body)
    assert sum(len(piece.removesuffix("…")) for piece in body) == size

    started = time.monotonic()
    assert set(client.call("daemon.stop_all")["stopped"]) >= {"yes0", "yes1", "quiet"}
    assert time.monotonic() - started < 15
    assert marked(daemon.home, apps_only=True) == []


# Connects back to the daemon that runs it and makes an admin-only call.
CALL_HOME = (
    "import os, time\n"
    "from omnitron.rpc.sync_client import connect_unix_sync\n"
    "path = os.path.join(os.environ['OMNITRON_HOME'], 'daemon.sock')\n"
    "with connect_unix_sync(path, timeout=10) as client:\n"
    "    reply = client.call('daemon.reload_config', dry_run=True)\n"
    "print('admin call answered: applied=' + str(reply['applied']), flush=True)\n"
    "time.sleep(3600)\n"
)


def test_a_managed_app_of_the_same_user_is_an_admin_peer(daemon: Daemon) -> None:
    """AU-15: the documented trust rule. The socket admits the daemon's uid as admin, and a
    managed app runs as that uid: it can reach the socket and make admin calls. (There
    is no ``deny_managed_peers`` option to refuse it.)"""
    daemon.start('project = "au15"\n\n' + app_toml("caller", [sys.executable, "-c", CALL_HOME]))
    daemon.wait_online("caller")
    wait_for(
        lambda: "admin call answered: applied=False" in daemon.app_log("caller"),
        "the app's admin call answered",
    )
