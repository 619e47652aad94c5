"""App lifecycle against a real daemon (PL-13, PL-14, PL-26, PL-32).

Strangers are never signalled, a dead daemon's app never holds a port twice, a
fork storm under ``RLIMIT_NPROC`` does not silence the control socket, and the
lifecycle methods answer a request they cannot carry out without doing anything.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from fault_harness import (
    CHILDREN,
    Daemon,
    app_toml,
    clean_env,
    gone,
    pids_of,
    recorded_state,
    sentinels,
    wait_for,
)

from omnitron.config import define_ecosystem
from omnitron.daemon._orchestrator import AppRecord, ProcessRecord
from omnitron.rpc import InvalidParams, NotFound
from omnitron.state import AppState, AppStatus, DaemonState, Home, ProcessIdentity, ProcessState
from omnitron.state._codec import encode_state

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


# --------------------------------------------------------------------------- PL-32


def test_lifecycle_calls_that_cannot_be_carried_out_do_nothing(daemon: Daemon) -> None:
    """PL-32: start while running, stop while stopped, unknown names; nothing is executed."""
    daemon.start(
        'project = "pl32"\n\n' + app_toml("a", ["sleep", "3600"]) + app_toml("b", ["sleep", "3600"])
    )
    apps = daemon.wait_online("a", "b")
    a_pids = pids_of(apps["a"])
    client = daemon.client()

    # start while running: nothing started, the process is the same.
    assert client.call("daemon.start_app", name="a") == {"started": []}
    # stop, then stop again: idempotent.
    assert client.call("daemon.stop_app", name="b") == {"stopped": ["b"]}
    again = client.call("daemon.stop_app", name="b")
    assert again["stopped"] in ([], ["b"])

    def unchanged() -> None:
        apps = daemon.apps()
        assert pids_of(apps["a"]) == a_pids
        assert apps["a"]["restarts"] == 0
        assert apps["a"]["processes"][0]["restarts"] == 0
        assert apps["b"]["status"] == "stopped"
        assert pids_of(apps["b"]) == set()

    unchanged()

    # Unknown names: NOT_FOUND, with the known apps in the message.
    calls = [
        ("daemon.restart_app", {"name": "nosuch"}),
        ("daemon.start_app", {"name": "nosuch"}),
        ("daemon.stop_app", {"name": "nosuch"}),
        ("daemon.scale", {"name": "nosuch", "instances": 2}),
        ("daemon.get_app", {"name": "nosuch"}),
        ("daemon.inspect", {"name": "nosuch"}),
    ]
    for method, params in calls:
        with pytest.raises(NotFound, match="no app named 'nosuch'") as info:
            client.call(method, **params)
        assert info.value.code == "NOT_FOUND"
    # Names the config rule refuses never reach the orchestrator.
    for bad in ("../a", "a" * 65, "\x1b[2J"):
        with pytest.raises(InvalidParams):
            client.call("daemon.restart_app", name=bad)
    with pytest.raises(InvalidParams):
        client.call("daemon.scale", name="a", instances=0)

    unchanged()
    # The intent on disk was not touched by the refused calls either.
    wait_for(
        lambda: recorded_state(daemon.home).get("b", {}).get("desired") == "stopped",
        "b's stop recorded",
    )
    assert recorded_state(daemon.home)["a"]["desired"] == "running"
    # There is no delete method: an unknown method is METHOD_NOT_FOUND, not a crash.
    with pytest.raises(Exception, match="unknown method") as info:
        client.call("daemon.delete_app", name="a")
    assert getattr(info.value, "code", None) == "METHOD_NOT_FOUND"
    unchanged()


# --------------------------------------------------------------------------- PL-13

WITNESS = """\
import signal, sys
record = sys.argv[1]
def note(signum, frame):
    with open(record, "a") as f:
        f.write(f"{signum}\\n")
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCONT, signal.SIGUSR1,
            signal.SIGUSR2, signal.SIGQUIT, signal.SIGALRM):
    signal.signal(sig, note)
print("ready", flush=True)
while True:
    signal.pause()
"""


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """An unrelated process (no markers) that writes down every catchable signal it gets."""
    record = tmp_path / "witness.signals"
    record.write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-c", WITNESS, str(record)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready
        assert proc.stdout.readline() == b"ready\n"
        yield proc, record
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def write_state(home: str, state: DaemonState) -> None:
    Home(Path(home)).ensure()
    fd = os.open(os.path.join(home, "state.json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(encode_state(state, 7))


@pytest.mark.parametrize("identity", ["same start time", "recycled pid"])
def test_a_recorded_pid_now_owned_by_a_stranger_is_never_signalled(
    daemon: Daemon, witness: tuple[subprocess.Popen[bytes], Path], identity: str
) -> None:
    """PL-13: state.json names the pid of an unrelated process; it is left alone."""
    proc, record = witness
    stranger = ProcessIdentity.of(proc.pid)
    assert stranger is not None
    assert stranger.start_time is not None
    start_time = stranger.start_time if identity == "same start time" else stranger.start_time - 99
    recorded = ProcessState(
        name="web",
        pid=proc.pid,
        start_time=start_time,
        boot_id=stranger.boot_id,
        status=AppStatus.ONLINE,
    )
    write_state(daemon.home, DaemonState(apps=[AppState(name="web", processes=[recorded])]))

    daemon.start('project = "pl13"\n\n' + app_toml("web", ["sleep", "3600"]))
    web = daemon.wait_online("web")["web"]
    assert proc.pid not in pids_of(web)
    assert web["restarts"] == 0
    assert daemon.log_events("leftovers_found") == []

    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert proc.poll() is None
    assert stranger.is_running()
    assert record.read_text() == ""  # not one signal, before, during or after


# --------------------------------------------------------------------------- PL-14


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listeners(port: int) -> set[int]:
    """Pids with a TCP socket listening on ``port``."""
    return {
        conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN
    }


def test_after_a_daemon_sigkill_exactly_one_process_holds_the_port(daemon: Daemon) -> None:
    """PL-14: the leftover is terminated before the respawn; no EADDRINUSE crash loop."""
    port = free_port()
    daemon.start(
        'project = "pl14"\n\n'
        # The app must outlive its daemon for this test: no sentinel to stop it.
        + '[supervision]\non_daemon_death = "keep"\n\n'
        + app_toml(
            "web",
            [sys.executable, str(CHILDREN / "hold_port"), str(port)],
            ready=f"{{ tcp = {port} }}",
            restart_policy='{ max_restarts = 2, window = "60s" }',
        )
    )
    [old] = pids_of(daemon.wait_online("web")["web"])
    assert listeners(port) == {old}

    first = daemon.pid
    os.kill(first, signal.SIGKILL)
    daemon.wait_exit()
    assert listeners(port) == {old}  # the app outlived its daemon, still holding the port

    daemon.start()
    web = daemon.wait_online("web")["web"]
    [new] = pids_of(web)
    assert new != old
    assert gone(old)
    assert listeners(port) == {new}
    assert web["restarts"] == 0
    assert web["last_error"] is None
    assert daemon.log_events("leftovers_terminated")


# --------------------------------------------------------------------------- PL-26

FORKER = """\
import os, signal, sys, time
# Bounded fan-out: at most N children; retry while fork fails, so the pressure lasts.
wanted, children, failures = int(sys.argv[1]), 0, 0
while True:
    if children >= wanted:
        signal.pause()
        continue
    try:
        pid = os.fork()
    except BlockingIOError:
        failures += 1
        if failures == 1:
            print("fork failed: EAGAIN", flush=True)
        time.sleep(0.005)
        continue
    if pid == 0:
        while True:
            signal.pause()
    children += 1
"""
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def forker_argv(limit_slack: int, fan_out: int) -> list[str]:
    """The forker under RLIMIT_NPROC, as another user when we are root (root ignores it)."""
    if os.geteuid() == 0:
        python = "/usr/bin/python3"
        prefix = AS_NOBODY
        limit = limit_slack
    else:
        python = sys.executable
        prefix = []
        # RLIMIT_NPROC counts every task of the user; leave room for a few forks only.
        uid = os.getuid()
        tasks = 0
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.uids().real == uid:
                    tasks += proc.num_threads()
        limit = tasks + limit_slack
    return [*prefix, "prlimit", f"--nproc={limit}:{limit}", python, "-c", FORKER, str(fan_out)]


def forker_usable() -> str | None:
    if shutil.which("prlimit") is None:
        return "prlimit is not installed"
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None or not os.path.exists("/usr/bin/python3"):
            return "needs setpriv and /usr/bin/python3 to run the forker as another user"
        if any(p.uids().real == NOBODY for p in psutil.process_iter() if p.is_running()):
            return f"uid {NOBODY} already runs processes here"
        check = subprocess.run(
            [*AS_NOBODY, "/usr/bin/python3", "-c", "pass"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if check.returncode != 0:
            return f"cannot run Python as uid {NOBODY}: {check.stderr.decode()[:200]}"
    return None


def test_a_fork_storm_under_rlimit_nproc_leaves_the_daemon_answering(daemon: Daemon) -> None:
    """PL-26: the socket answers while an app's forks hit EAGAIN; stop kills every fork."""
    reason = forker_usable()
    if reason is not None:
        pytest.skip(reason)
    stop_timeout = 2.0
    daemon.start(
        'project = "pl26"\n\n'
        + app_toml("forker", forker_argv(12, 200), stop_timeout=f'"{stop_timeout}s"')
        + app_toml("other", ["sleep", "3600"])
    )
    apps = daemon.wait_online("forker", "other")
    [forker] = pids_of(apps["forker"])
    wait_for(lambda: "fork failed: EAGAIN" in daemon.app_log("forker"), "the limit to bite")

    # While fork keeps failing in the app, the daemon answers and still spawns.
    worst = 0.0
    client = daemon.client()
    for _ in range(20):
        started = time.monotonic()
        status = client.call("daemon.status")
        worst = max(worst, time.monotonic() - started)
        assert {app["name"] for app in status["apps"]} == {"forker", "other"}
    assert worst < 2.0, worst  # generous: the promise is 200 ms
    assert client.call("daemon.restart_app", name="other") == {"restarted": ["other"]}
    daemon.wait_online("other")

    tree = [forker] + [child.pid for child in psutil.Process(forker).children(recursive=True)]
    assert len(tree) > 1
    started = time.monotonic()
    assert client.call("daemon.stop_app", name="forker") == {"stopped": ["forker"]}
    assert time.monotonic() - started < stop_timeout + 5
    # Stop means stopped: every fork is gone when the reply comes.
    assert [pid for pid in tree if not gone(pid)] == []
    assert daemon.apps()["forker"]["status"] == "stopped"


# --------------------------------------------------------------------------- SG-04


def blocked_opening_a_fifo(pid: int) -> bool:
    """Whether ``pid`` sleeps in ``open()`` of a FIFO, waiting for a writer."""
    try:
        with open(f"/proc/{pid}/wchan") as file:
            if file.read().strip() == "wait_for_partner":
                return True
        with open(f"/proc/{pid}/syscall") as file:
            number = file.read().split()[0]
    except (OSError, IndexError):
        return False
    return number in {"2", "257"} if os.uname().machine == "x86_64" else number == "56"


def test_a_herd_exiting_at_once_is_reaped_and_restarted_exactly_once(
    daemon: Daemon, tmp_path: Path
) -> None:
    """SG-04 (scaled to 200): every process of an app exits in the same instant."""
    count = 200
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    daemon.start(
        'project = "sg04"\n\n'
        + app_toml(
            "herd",
            ["sh", "-c", 'read line < "$0"; exit 3', str(gate)],
            instances=str(count),
            restart_policy='{ max_restarts = 1000, window = "60s", '
            'backoff = { initial = "50ms", max = "50ms", factor = 1 } }',
        )
    )
    # Wait for the full herd: "online" alone can show up early (see the xfail below).
    herd = daemon.wait_apps(
        lambda apps: len(pids_of(apps["herd"])) == count and apps["herd"]["status"] == "online",
        "the herd online",
        timeout=60,
    )["herd"]
    first = pids_of(herd)
    wait_for(lambda: all(blocked_opening_a_fifo(pid) for pid in first), "the herd at the gate")

    # Open the gate and close it: every reader sees EOF at once and exits with 3.
    os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))

    def restarted(apps: dict[str, dict[str, Any]]) -> bool:
        herd = apps["herd"]
        return herd["status"] == "online" and all(
            p["restarts"] == 1 and p["pid"] not in first for p in herd["processes"]
        )

    herd = daemon.wait_apps(restarted, "every instance restarted once", timeout=60)["herd"]
    assert len(pids_of(herd)) == count
    assert herd["restarts"] == count
    inspect = daemon.call("daemon.inspect", name="herd")
    assert set(inspect["last_exits"].values()) == {"exited with code 3"}
    assert len(inspect["last_exits"]) == count
    assert all(gone(pid) for pid in first)

    # Nothing left unreaped: the daemon's children are exactly the new herd (and
    # the sentinel that would stop them if the daemon died).
    watchers = {proc.pid for proc in sentinels(daemon.home)}

    def children() -> set[int] | None:
        kids = psutil.Process(daemon.pid).children()
        if any(kid.status() == psutil.STATUS_ZOMBIE for kid in kids):
            return None
        return {kid.pid for kid in kids} - watchers

    assert wait_for(children, "no zombie children of the daemon") == pids_of(herd)


def test_an_app_with_instances_still_to_start_is_not_online(tmp_path: Path) -> None:
    """SG-04 "every status correct": online means every process of the app is online."""
    app = define_ecosystem(
        apps=[{"name": "herd", "command": ["sleep", "3600"], "instances": 3}], base_dir=tmp_path
    ).apps[0]
    record = AppRecord(config=app, instances=3)
    record.processes[0] = ProcessRecord(instance=0, pid=os.getpid(), status=AppStatus.ONLINE)
    # Instance 0 is ready; 1 and 2 are not even spawned yet (on_spawn readiness).
    assert record.status is not AppStatus.ONLINE
