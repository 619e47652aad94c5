"""The real ``omnitron`` CLI, end to end: subprocesses, a real daemon, real app processes.

Every test gets a fresh ``OMNITRON_HOME`` under ``/tmp`` (a Unix socket path must
fit in 107 bytes) and a project directory holding an ``omnitron.toml`` of small
``python -c`` apps. The ``home`` fixture always cleans up: ``omnitron kill`` for
that home, then SIGKILL for anything still carrying the home's marker in its
environment. Nothing sleeps for a fixed time: every wait polls under a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from omnitron.cli._launch import optimized_bytecode_usable
from omnitron.rpc import RpcError
from omnitron.rpc.sync_client import connect_unix_sync
from omnitron.state import Home, read_lock_info
from supervision import PinnedProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

T = TypeVar("T")

CLI_TIMEOUT = 60.0
"""Seconds any one CLI invocation may take before the test fails (never a hang)."""
DEADLINE = 20.0
"""Seconds a polled condition may take to become true."""
POLL = 0.02

# --------------------------------------------------------------------------- apps

SLEEP = "import time; time.sleep(3600)"
# A stdlib sd_notify client, as any sd_notify library would do it.
NOTIFY = (
    "import os, socket, time; a = os.environ['NOTIFY_SOCKET']; "
    "a = '\\0' + a[1:] if a.startswith('@') else a; "
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'READY=1', a); "
    "time.sleep(3600)"
)
CRASH_SOON = "import time; time.sleep(0.2); raise SystemExit(3)"


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def app_toml(name: str, code: str = SLEEP, **fields: str) -> str:
    """One ``[[apps]]`` table running ``python -c code``; ``fields`` are raw TOML values."""
    values = {
        "name": toml_string(name),
        "command": f'[{toml_string(sys.executable)}, "-c", {toml_string(code)}]',
        "stop_timeout": '"5s"',
        **fields,
    }
    return "[[apps]]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())


FAST_BACKOFF = 'backoff = { initial = "50ms", max = "200ms", factor = 2 }'

BASIC = (
    'project = "e2e"\n\n'
    + app_toml("sleeper", restart_policy=f'{{ max_restarts = 5, window = "60s", {FAST_BACKOFF} }}')
    + app_toml("dependent", depends_on='["sleeper"]', env='{ PORT = "8000", API_TOKEN = "s3cret" }')
    + app_toml("notifier", NOTIFY, ready='"notify"', startup_timeout='"10s"')
)
BASIC_APPS = ("sleeper", "dependent", "notifier")


# --------------------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)


def marked(home: str, *, apps_only: bool = False) -> list[psutil.Process]:
    """Live processes whose environment says ``OMNITRON_HOME=<home>``."""
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("OMNITRON_HOME") != home or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if apps_only and "OMNITRON_APP" not in env:
                continue
            found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def app_pids(home: str) -> dict[str, set[int]]:
    """Managed processes by app name, from their environment markers (not from the daemon)."""
    result: dict[str, set[int]] = {}
    for proc in marked(home, apps_only=True):
        with contextlib.suppress(psutil.Error):
            result.setdefault(proc.environ()["OMNITRON_APP"], set()).add(proc.pid)
    return result


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Omnitron:
    """Runs the CLI as a user would, against one home, from one project directory."""

    def __init__(self, home: str, project: Path) -> None:
        self.home = home
        self.project = project

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")}
        env.pop("NOTIFY_SOCKET", None)
        env["OMNITRON_HOME"] = self.home
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "omnitron", *args]

    def run(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=self.project,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args).stdout)

    def status(self) -> dict[str, Any]:
        """``--json status``; it exits 1 exactly when an app is crashed or errored."""
        result = self.run("--json", "status")
        assert "Traceback" not in result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        troubled = any(app["status"] in ("crashed", "errored") for app in report["apps"])
        assert result.returncode == (1 if troubled else 0), (result.stdout, result.stderr)
        return report

    def apps(self) -> dict[str, dict[str, Any]]:
        return {app["name"]: app for app in self.status()["apps"]}

    def call(self, method: str, /, **params: object) -> Any:
        """One call on the daemon's socket, in this process (for waits: no CLI start per poll)."""
        with connect_unix_sync(os.path.join(self.home, "daemon.sock"), timeout=CLI_TIMEOUT) as c:
            return c.call(method, **params)

    def wait_apps(
        self, predicate: Callable[[dict[str, dict[str, Any]]], bool], what: str
    ) -> dict[str, dict[str, Any]]:
        """Poll ``daemon.status`` (what ``--json status`` prints) until ``predicate`` holds."""

        def check() -> dict[str, dict[str, Any]] | None:
            apps = {app["name"]: app for app in self.call("daemon.status")["apps"]}
            return apps if predicate(apps) else None

        return wait_for(check, what)

    def wait_online(self, *names: str) -> dict[str, dict[str, Any]]:
        def online(apps: dict[str, dict[str, Any]]) -> bool:
            return all(
                apps[name]["status"] == "online"
                and all(p["status"] == "online" and p["pid"] for p in apps[name]["processes"])
                for name in names
            )

        return self.wait_apps(online, f"{names} online")

    @contextlib.contextmanager
    def foreground(self) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
        """``omnitron up --foreground``, its output in a file; killed if still running at exit."""
        output = self.project.parent / "foreground.out"
        with output.open("wb") as sink:
            proc = subprocess.Popen(
                self.argv("up", "--foreground"),
                cwd=self.project,
                env=self.env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            yield proc, output
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=CLI_TIMEOUT)

    def wait_answering(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait until a daemon started in the foreground answers on its socket."""

        def answering() -> bool:
            assert proc.poll() is None, "the foreground daemon exited"
            try:
                return bool(self.call("daemon.ping"))
            except RpcError:
                return False

        wait_for(answering, "the daemon answering")

    def up(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.ok("up", *args)
        return result

    def write_config(self, text: str, name: str = "omnitron.toml") -> Path:
        path = self.project / name
        path.write_text(text)
        return path


def pids_of(app: dict[str, Any]) -> set[int]:
    return {p["pid"] for p in app["processes"] if p["pid"]}


def kill_marked(home: str) -> None:
    for proc in marked(home):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def kill_home(home: str) -> None:
    """SIGKILL everything of ``home`` until nothing is left: its daemon, sentinel and apps.

    What ``omnitron kill`` does, in this process (not an interpreter start per test):
    the daemon named by the pid file, then every process carrying ``OMNITRON_HOME=<home>``
    (the :class:`Omnitron` environment sets it, so the daemons the CLI starts carry it too).
    """
    info = read_lock_info(Home(home))
    daemon = PinnedProcess.pin(info.identity) if info is not None and info.alive else None
    if daemon is not None:  # started without the marker (another environment)
        with daemon:
            daemon.send(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while marked(home) and time.monotonic() < deadline:
        kill_marked(home)
        time.sleep(POLL)


@pytest.fixture
def home() -> Iterator[str]:
    path = tempfile.mkdtemp(dir="/tmp", prefix="omt-")
    try:
        yield path
    finally:
        kill_home(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def omnitron(home: str, tmp_path: Path) -> Omnitron:
    project = tmp_path / "project"
    project.mkdir()
    return Omnitron(home, project)


@pytest.fixture
def running(omnitron: Omnitron) -> Omnitron:
    """A daemon started with ``omnitron up`` on the BASIC ecosystem, every app online."""
    omnitron.write_config(BASIC)
    omnitron.up()
    return omnitron


# --------------------------------------------------------------------------- lifecycle


def test_up_detaches_and_reports_every_app_online(omnitron: Omnitron) -> None:
    omnitron.write_config(BASIC)
    result = omnitron.up()
    assert "config: " + str(omnitron.project / "omnitron.toml") in result.stderr
    for name in BASIC_APPS:
        assert any(line.split()[:2] == [name, "online"] for line in result.stdout.splitlines())

    status = omnitron.status()
    daemon_pid = status["daemon"]["pid"]
    assert status["daemon"]["home"] == omnitron.home
    assert [app["name"] for app in status["apps"]] == list(BASIC_APPS)
    for app in status["apps"]:
        assert app["status"] == "online"
        [process] = app["processes"]
        assert process["status"] == "online"
        assert psutil.pid_exists(process["pid"])
    assert {name: len(pids) for name, pids in app_pids(omnitron.home).items()} == {
        name: 1 for name in BASIC_APPS
    }
    # The daemon outlived the `up` that started it, in a session of its own.
    assert os.getsid(daemon_pid) == daemon_pid

    assert json.loads(omnitron.ok("--json", "ping").stdout) == {"pong": True}
    table = omnitron.ok("list").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "PID", "UPTIME", "RESTARTS", "CPU", "MEMORY"]
    graph = omnitron.json("graph")
    assert graph["order"] == list(BASIC_APPS)
    assert graph["apps"]["dependent"] == ["sleeper"]
    assert "└── dependent" in omnitron.ok("graph").stdout
    inspect = omnitron.json("inspect", "notifier")
    assert inspect["spec"]["ready"] == "notify"
    assert omnitron.json("env", "sleeper") == {}
    assert omnitron.ok("env", "dependent").stdout.splitlines() == [
        "API_TOKEN=<redacted>",
        "PORT=8000",
    ]
    assert omnitron.json("env", "dependent", "--reveal")["API_TOKEN"] == "s3cret"
    # --home wins over $OMNITRON_HOME
    elsewhere = subprocess.run(
        omnitron.argv("--home", omnitron.home, "--json", "ping"),
        env={**omnitron.env(), "OMNITRON_HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr

    down = omnitron.ok("down")
    assert f"daemon stopped (pid {daemon_pid})" in down.stdout
    assert pid_gone(daemon_pid)
    assert marked(omnitron.home) == []
    assert not os.path.exists(os.path.join(omnitron.home, "daemon.sock"))
    assert not os.path.exists(os.path.join(omnitron.home, "daemon.pid"))


def test_stop_start_restart_an_app(running: Omnitron) -> None:
    before = running.apps()
    dependent = pids_of(before["dependent"])

    result = running.ok("stop", "dependent")
    assert result.stdout.strip() == "stopped: dependent"
    apps = running.apps()
    assert apps["dependent"]["status"] == "stopped"
    assert pids_of(apps["dependent"]) == set()
    assert all(pid_gone(pid) for pid in dependent)
    assert pids_of(apps["sleeper"]) == pids_of(before["sleeper"])
    assert "dependent" not in app_pids(running.home)

    assert running.ok("stop", "dependent").stdout.strip() in (
        "dependent: already stopped",
        "stopped: dependent",
    )

    assert running.json("start", "dependent") == {"started": ["dependent"]}
    apps = running.wait_online("dependent")
    restarted = pids_of(apps["dependent"])
    assert restarted
    assert restarted.isdisjoint(dependent)

    assert running.ok("restart", "sleeper").stdout.strip() == "restarted: sleeper"
    apps = running.wait_online(*BASIC_APPS)
    assert pids_of(apps["sleeper"]).isdisjoint(pids_of(before["sleeper"]))
    assert pids_of(apps["notifier"]) == pids_of(before["notifier"])

    assert set(running.json("restart", "all")["restarted"]) == set(BASIC_APPS)
    running.wait_online(*BASIC_APPS)


def test_scale_up_and_down(running: Omnitron) -> None:
    assert running.json("scale", "sleeper", "3") == {
        "name": "sleeper",
        "previous": 1,
        "instances": 3,
    }
    apps = running.wait_online("sleeper")
    assert [p["instance"] for p in apps["sleeper"]["processes"]] == [0, 1, 2]
    assert len(pids_of(apps["sleeper"])) == 3
    assert app_pids(running.home)["sleeper"] == pids_of(apps["sleeper"])
    first = apps["sleeper"]["processes"][0]["pid"]

    assert running.ok("scale", "sleeper", "1").stdout.strip() == "sleeper: 3 -> 1 instance"
    apps = running.wait_online("sleeper")
    assert [p["pid"] for p in apps["sleeper"]["processes"]] == [first]
    wait_for(lambda: app_pids(running.home)["sleeper"] == {first}, "extra instances gone")


def test_a_killed_app_process_comes_back(running: Omnitron) -> None:
    before = running.apps()["sleeper"]
    [old] = pids_of(before)
    os.kill(old, signal.SIGKILL)

    def replaced(apps: dict[str, dict[str, Any]]) -> bool:
        sleeper = apps["sleeper"]
        pids = pids_of(sleeper)
        return sleeper["status"] == "online" and bool(pids) and old not in pids

    apps = running.wait_apps(replaced, "sleeper back with a new pid")
    sleeper = apps["sleeper"]
    assert sleeper["restarts"] == before["restarts"] + 1
    assert sleeper["processes"][0]["restarts"] == before["processes"][0]["restarts"] + 1
    assert "SIGKILL" in (sleeper["last_error"] or "")
    # one_for_one: the others were not touched
    assert pids_of(apps["dependent"]) == pids_of(running.apps()["dependent"])


def test_daemon_sigkill_then_up_again_relaunches_without_orphans(running: Omnitron) -> None:
    status = running.status()
    daemon = status["daemon"]["pid"]
    old = {app["name"]: pids_of(app) for app in status["apps"]}
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: pid_gone(daemon), "the daemon gone")
    # Its sentinel stops its apps (on_daemon_death = "stop", the default)...
    wait_for(
        lambda: all(pid_gone(pid) for pids in old.values() for pid in pids),
        "the apps stopped by the sentinel",
    )
    not_running = running.run("status")
    assert not_running.returncode == 1
    assert "daemon not running" in not_running.stderr

    # ...and the next daemon relaunches what should run.
    running.up()
    apps = running.wait_online(*BASIC_APPS)
    for name in BASIC_APPS:
        assert len(pids_of(apps[name])) == 1
        assert pids_of(apps[name]).isdisjoint(old[name])
    assert all(pid_gone(pid) for pids in old.values() for pid in pids)
    assert app_pids(running.home) == {name: pids_of(apps[name]) for name in BASIC_APPS}


def recorded_intent(home: str) -> dict[str, str]:
    """``{app: desired}`` from ``state.json`` as it is on disk now (empty if unreadable)."""
    try:
        state = json.loads((Path(home) / "state.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return {}
    return {app["name"]: app["desired"] for app in state["apps"]}


def test_run_stop_intent_survives_a_daemon_crash(running: Omnitron) -> None:
    running.ok("scale", "sleeper", "2")
    running.ok("stop", "notifier")
    running.wait_online("sleeper")
    # The state file is written by a coalescing task, shortly after the reply.
    wait_for(
        lambda: recorded_intent(running.home).get("notifier") == "stopped",
        "the stop recorded in state.json",
    )
    daemon = running.status()["daemon"]["pid"]
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: pid_gone(daemon), "the daemon gone")

    running.up()
    apps = running.wait_online("sleeper", "dependent")
    assert apps["notifier"]["status"] == "stopped"
    # A scale survives the crash too (the config's instances did not change).
    assert len(pids_of(apps["sleeper"])) == 2
    counts = {name: len(pids) for name, pids in app_pids(running.home).items()}
    assert counts == {"sleeper": 2, "dependent": 1}


def test_two_racing_ups_start_exactly_one_daemon(omnitron: Omnitron) -> None:
    omnitron.write_config(BASIC)
    procs = [
        subprocess.Popen(
            omnitron.argv("up"),
            cwd=omnitron.project,
            env=omnitron.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(3)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=CLI_TIMEOUT)
        results.append((proc.returncode, out, err))

    daemon = omnitron.status()["daemon"]["pid"]
    winners = [r for r in results if r[0] == 0]
    losers = [r for r in results if r[0] != 0]
    assert len(winners) == 1, results
    for code, _, err in losers:
        assert code == 1
        assert f"daemon already running (pid {daemon})" in err
        assert "Traceback" not in err
    daemons = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "omnitron.daemon" in (p.info["cmdline"] or []) and omnitron.home in p.info["cmdline"]
    ]
    assert [p.pid for p in daemons] == [daemon]
    omnitron.wait_online(*BASIC_APPS)
    assert {name: len(p) for name, p in app_pids(omnitron.home).items()} == {
        name: 1 for name in BASIC_APPS
    }


def test_up_names_the_apps_that_did_not_come_up(omnitron: Omnitron) -> None:
    omnitron.write_config(
        app_toml("fine")
        + app_toml(
            "broken",
            CRASH_SOON,
            ready='{ after = "2s" }',  # exits before it is ready: a start failure
            restart_policy='{ max_restarts = 0, window = "60s" }',
        )
    )
    result = omnitron.run("up")
    assert result.returncode == 1
    assert "omnitron: not online after start-up: broken (crashed)" in result.stderr.splitlines()
    assert "broken (crashed): " in result.stdout  # the table, then the app's last error
    assert omnitron.apps()["fine"]["status"] == "online"


def test_up_waits_while_an_app_crash_loops_then_reports_it_crashed(omnitron: Omnitron) -> None:
    # Exits 0.2 s after each start, restarted after 0.3 s: "errored" and "online" come
    # and go about 14 times before the limit is exceeded, some 7 s after start-up.
    omnitron.write_config(
        app_toml("fine")
        + app_toml(
            "looping",
            CRASH_SOON,
            restart_policy='{ max_restarts = 12, window = "60s", '
            'backoff = { initial = "300ms", max = "300ms", factor = 1 } }',
        )
    )
    started = time.monotonic()
    result = omnitron.run("up")
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "omnitron: not online after start-up: looping (crashed)" in result.stderr.splitlines()
    assert "settled: 1 crashed, 1 online" in result.stderr
    assert "Traceback" not in result.stderr
    apps = omnitron.apps()
    assert apps["looping"]["status"] == "crashed"
    assert apps["looping"]["restarts"] >= 12
    assert apps["fine"]["status"] == "online"
    assert elapsed > 12 * 0.5, "up returned before the app was given up on"


def test_up_names_the_apps_still_looping_at_its_timeout(omnitron: Omnitron) -> None:
    omnitron.write_config(
        app_toml("fine")
        + app_toml(
            "looping",
            CRASH_SOON,
            restart_policy='{ max_restarts = 1000, window = "60s", '
            'backoff = { initial = "100ms", max = "100ms", factor = 1 } }',
        )
    )
    # Long enough for `fine` to be ready on a loaded machine; `looping` never settles.
    result = omnitron.run("up", "--wait-timeout", "10")
    assert result.returncode == 1, (result.stdout, result.stderr)
    last = result.stderr.splitlines()[-1]
    assert last.startswith("omnitron: not settled within 10s: looping ("), last
    assert "fine" not in last
    assert omnitron.apps()["looping"]["restarts"] >= 3  # it kept looping meanwhile


def test_up_starts_the_daemon_entry_point_not_the_cli(running: Omnitron) -> None:
    daemon = psutil.Process(running.status()["daemon"]["pid"])
    cmdline = daemon.cmdline()
    # -OO (no docstrings held) wherever its bytecode can be cached, as in this venv.
    flags = ["-P", "-OO"] if optimized_bytecode_usable() else ["-P"]
    assert cmdline[1 : len(flags) + 3] == [*flags, "-m", "omnitron.daemon"], cmdline
    # Its start-up pipe is closed once the apps have started: no app holds it either.
    assert not any(arg == "--ready-fd" for arg in cmdline[:1])
    out = Path(running.home) / "logs" / "daemon.out"
    assert out.exists()
    assert "Traceback" not in out.read_text()


def test_up_reports_why_the_detached_daemon_could_not_start(omnitron: Omnitron) -> None:
    omnitron.write_config(BASIC)
    (Path(omnitron.home) / "state.json").symlink_to("/nonexistent")
    result = omnitron.run("up")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("omnitron: ")
    assert "state.json is a symbolic link" in result.stderr
    assert "Traceback" not in result.stderr
    assert marked(omnitron.home) == []


def test_up_refuses_a_second_daemon(running: Omnitron) -> None:
    daemon = running.status()["daemon"]["pid"]
    result = running.run("up")
    assert result.returncode == 1
    assert f"omnitron: daemon already running (pid {daemon})" in result.stderr
    assert running.status()["daemon"]["pid"] == daemon


@pytest.mark.parametrize("bak", ["good", "corrupt"])
def test_a_corrupt_state_file_does_not_stop_the_daemon(omnitron: Omnitron, bak: str) -> None:
    omnitron.write_config(BASIC)
    omnitron.up()
    omnitron.ok("stop", "notifier")
    wait_for(
        lambda: recorded_intent(omnitron.home).get("notifier") == "stopped",
        "the stop recorded in state.json",
    )
    omnitron.ok("down")
    state = Path(omnitron.home) / "state.json"
    backup = Path(omnitron.home) / "state.json.bak"
    shutil.copyfile(state, backup)  # a backup that certainly holds the stop
    state.write_bytes(b'{"format": "omnitron-state", "state": {"apps": [trunc')
    if bak == "corrupt":
        backup.write_bytes(b"\x00\xff not json")

    result = omnitron.up()
    assert "Traceback" not in result.stderr
    log = (Path(omnitron.home) / "logs" / "daemon.log").read_text()
    if bak == "good":
        # The intent comes back from the backup...
        apps = omnitron.wait_online("sleeper", "dependent")
        assert apps["notifier"]["status"] == "stopped"
        assert "source='backup'" in log
    else:
        # ...or, with nothing usable, everything starts from the config.
        omnitron.wait_online(*BASIC_APPS)
        assert "source='none'" in log
    assert "state_warning" in log


# --------------------------------------------------------------------------- across apps


GROUP = (
    'project = "group"\n\n'
    '[supervision]\nstrategy = "{strategy}"\nmax_restarts = 10\nwindow = "60s"\n'
    f"{FAST_BACKOFF}\n\n"
    + app_toml("first")
    + app_toml("second", depends_on='["first"]')
    + app_toml("third", depends_on='["second"]')
)


@pytest.mark.parametrize(
    ("strategy", "restarted", "kept"),
    [
        ("one_for_all", {"first", "second", "third"}, set()),
        ("rest_for_one", {"second", "third"}, {"first"}),
        ("one_for_one", {"second"}, {"first", "third"}),
    ],
)
def test_strategy_across_apps(
    omnitron: Omnitron, strategy: str, restarted: set[str], kept: set[str]
) -> None:
    omnitron.write_config(GROUP.replace("{strategy}", strategy))
    omnitron.up()
    before = {name: pids_of(app) for name, app in omnitron.apps().items()}
    [victim] = before["second"]
    os.kill(victim, signal.SIGKILL)

    def settled(apps: dict[str, dict[str, Any]]) -> bool:
        return all(
            app["status"] == "online" and pids_of(app) and pids_of(app) != before[name]
            for name, app in apps.items()
            if name in restarted
        ) and all(app["status"] == "online" for app in apps.values())

    apps = omnitron.wait_apps(settled, f"{sorted(restarted)} restarted ({strategy})")
    for name in restarted:
        assert pids_of(apps[name]).isdisjoint(before[name]), name
    for name in kept:
        assert pids_of(apps[name]) == before[name], name
    assert {name: len(pids) for name, pids in app_pids(omnitron.home).items()} == {
        "first": 1,
        "second": 1,
        "third": 1,
    }


def test_a_crash_looping_critical_app_stops_the_foreground_daemon(omnitron: Omnitron) -> None:
    omnitron.write_config(
        'project = "critical"\n\n'
        + app_toml("steady")
        + app_toml(
            "boom",
            CRASH_SOON,
            critical="true",
            restart_policy=f'{{ max_restarts = 2, window = "60s", {FAST_BACKOFF} }}',
        )
    )
    with omnitron.foreground() as (proc, output):
        proc.wait(timeout=CLI_TIMEOUT)
    err = output.read_text()
    assert proc.returncode == 3, err
    assert "critical app 'boom' crashed" in err
    assert "Traceback" not in err
    assert marked(omnitron.home) == []
    assert not os.path.exists(os.path.join(omnitron.home, "daemon.sock"))


def _foreground_until_sigint(omnitron: Omnitron) -> tuple[int, str]:
    """Run the BASIC apps in the foreground until online, then Ctrl-C: exit code, output."""
    with omnitron.foreground() as (proc, output):
        omnitron.wait_answering(proc)
        omnitron.wait_online(*BASIC_APPS)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=CLI_TIMEOUT)
    return proc.returncode, output.read_text()


def test_sigint_stops_the_foreground_daemon_cleanly(omnitron: Omnitron) -> None:
    omnitron.write_config(BASIC)
    code, err = _foreground_until_sigint(omnitron)
    assert code == 0, err
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err
    assert marked(omnitron.home) == []


def test_a_project_directory_does_not_shadow_the_daemons_modules(omnitron: Omnitron) -> None:
    # The foreground daemon runs in the project directory: a package there named
    # like one the daemon imports (the library itself here) is not what it loads.
    omnitron.write_config(BASIC)
    shadow = omnitron.project / "supervision"
    shadow.mkdir()
    (shadow / "__init__.py").write_text('raise SystemExit("the project shadowed the library")\n')
    code, err = _foreground_until_sigint(omnitron)
    assert code == 0, err
    assert "shadowed" not in err


# --------------------------------------------------------------------------- kill, down


def test_kill_leaves_nothing_behind(running: Omnitron) -> None:
    status = running.status()
    daemon = status["daemon"]["pid"]
    apps = {pid for app in status["apps"] for pid in pids_of(app)}
    report = running.json("kill")
    assert report["daemon"] == daemon
    assert {p["pid"] for p in report["processes"]} == apps
    assert pid_gone(daemon)
    assert all(pid_gone(pid) for pid in apps)
    assert marked(running.home) == []
    assert not os.path.exists(os.path.join(running.home, "daemon.sock"))
    assert not os.path.exists(os.path.join(running.home, "daemon.pid"))
    again = running.ok("kill")
    assert "nothing to kill" in again.stdout


def test_down_force_kills(running: Omnitron) -> None:
    daemon = running.status()["daemon"]["pid"]
    result = running.ok("down", "--force")
    assert f"killed daemon (pid {daemon})" in result.stdout
    assert marked(running.home) == []


def test_down_kills_what_does_not_stop_in_time(omnitron: Omnitron) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
    )
    omnitron.write_config(app_toml("stubborn", stubborn, stop_timeout='"30s"'))
    omnitron.up()
    daemon = omnitron.status()["daemon"]["pid"]
    started = time.monotonic()
    result = omnitron.run("down", "--wait-timeout", "1")
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"omnitron: the daemon (pid {daemon}) did not stop within 1s; killed it and its apps"
    )
    assert f"killed daemon (pid {daemon})" in result.stdout
    assert marked(omnitron.home) == []
    assert not os.path.exists(os.path.join(omnitron.home, "daemon.sock"))


@pytest.mark.parametrize("command", [["down"], ["status"], ["--json", "list"], ["stop", "all"]])
def test_no_daemon_is_a_clear_error(omnitron: Omnitron, command: list[str]) -> None:
    result = omnitron.run(*command, timeout=CLI_TIMEOUT)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("omnitron: daemon not running")
    assert "omnitron up" in line


def test_remote_errors_are_one_line(running: Omnitron) -> None:
    result = running.run("stop", "nosuch")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("omnitron: no app named 'nosuch'")
    usage = running.run("scale", "sleeper", "0")
    assert usage.returncode == 2


# --------------------------------------------------------------------------- config


CONFIG_ERRORS = {
    "syntax": ('project = "x"\n[[apps]\n', "syntax error"),
    "unknown key": (app_toml("a", colour='"red"'), "apps[0].colour: unknown key"),
    "cycle": (
        app_toml("a", depends_on='["b"]') + app_toml("b", depends_on='["a"]'),
        "dependency cycle",
    ),
    "missing dependency": (app_toml("a", depends_on='["ghost"]'), "ghost"),
    "bad duration": (app_toml("a", stop_timeout='"soon"'), "apps[0].stop_timeout"),
    "duplicate": (app_toml("a") + app_toml("a"), "apps[1].name"),
    "bad strategy": ('[supervision]\nstrategy = "some_for_one"\n' + app_toml("a"), "strategy"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_check_reports_each_config_error(omnitron: Omnitron, case: str) -> None:
    text, expected = CONFIG_ERRORS[case]
    path = omnitron.write_config(text)
    result = omnitron.run("check")
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert expected in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr
    # up refuses the same config before starting anything
    up = omnitron.run("up")
    assert up.returncode == 2
    assert expected in up.stderr
    assert not os.path.exists(os.path.join(omnitron.home, "daemon.sock"))


def test_check_lists_every_problem_at_once(omnitron: Omnitron) -> None:
    omnitron.write_config(
        '[supervision]\nstrategy = "nope"\n' + app_toml("a", colour='"red"', depends_on='["x"]')
    )
    result = omnitron.run("check")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith("omnitron: 3 configuration problems in ")
    assert len(lines) == 4
    as_json = omnitron.run("--json", "check")
    assert as_json.returncode == 2
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert len(report["issues"]) == 3
    assert all(issue["line"] for issue in report["issues"])


@pytest.mark.parametrize(
    ("target", "message"),
    [("missing.toml", "not found"), (".", "is a directory")],
)
def test_check_config_path_errors(omnitron: Omnitron, target: str, message: str) -> None:
    result = omnitron.run("check", "--config", str(omnitron.project / target))
    assert result.returncode == 2
    assert message in result.stderr


def test_check_valid_config_prints_the_start_order(omnitron: Omnitron) -> None:
    path = omnitron.write_config(BASIC)
    result = omnitron.ok("check")
    assert result.stdout.splitlines()[0] == f"{path}: ok, 3 apps"
    assert "  2. dependent  (after sleeper)" in result.stdout
    report = omnitron.json("check", "--config", str(path))
    assert [app["name"] for app in report["apps"]] == list(BASIC_APPS)


def test_an_empty_config_is_only_a_warning(omnitron: Omnitron) -> None:
    omnitron.write_config("")
    result = omnitron.ok("check")
    assert "empty: no apps defined" in result.stderr
    assert ": ok, 0 apps" in result.stdout


def test_no_config_found(omnitron: Omnitron) -> None:
    result = omnitron.run("check")
    assert result.returncode == 2
    assert "no configuration found" in result.stderr


def test_reload_config_dry_run_then_apply(running: Omnitron) -> None:
    running.write_config(BASIC + app_toml("extra"))
    dry = running.json("reload-config", "--dry-run")
    assert dry["applied"] is False
    assert dry["added"] == ["extra"]
    assert "extra" not in running.apps()
    assert "+ extra (added)" in running.ok("reload-config").stdout
    running.wait_online("extra")


def test_startup_systemd_print(omnitron: Omnitron) -> None:
    path = omnitron.write_config(BASIC)
    result = omnitron.ok("startup", "systemd", "--user", "--print")
    assert "Type=notify" in result.stdout
    assert f"--config {path}" in result.stdout
    assert f"OMNITRON_HOME={omnitron.home}" in result.stdout
    assert "systemctl --user daemon-reload" in result.stderr


def test_starting_an_app_that_cannot_start_is_an_error(running: Omnitron) -> None:
    running.write_config(
        BASIC
        + app_toml(
            "broken",
            CRASH_SOON,
            ready='{ after = "2s" }',
            enabled="false",
            restart_policy='{ max_restarts = 0, window = "60s" }',
        )
    )
    running.ok("reload-config")
    result = running.run("start", "broken")
    assert result.returncode == 1, result
    assert result.stderr.startswith("omnitron: broken failed to start: ")
    assert "exited before becoming ready" in result.stderr
    assert running.apps()["broken"]["status"] == "crashed"


def test_a_restart_that_fails_is_an_error_and_is_retried(running: Omnitron) -> None:
    flag = running.project / "flag"
    flag.touch()
    code = f"import os, sys, time; os.path.exists({str(flag)!r}) or sys.exit(4); time.sleep(3600)"
    running.write_config(
        BASIC
        + app_toml(
            "flaky",
            code,
            instances="2",
            ready='{ after = "300ms" }',
            restart_policy=f'{{ max_restarts = 50, window = "60s", {FAST_BACKOFF} }}',
        )
    )
    running.ok("reload-config")
    before = pids_of(running.wait_online("flaky")["flaky"])
    flag.unlink()
    result = running.run("restart", "flaky")
    assert result.returncode == 1, result
    assert "instance 0 failed to restart" in result.stderr
    assert "the remaining instances were left running" in result.stderr
    # Instance 1 was left alone; instance 0 is retried by its restart policy.
    assert len(before & pids_of(running.apps()["flaky"])) == 1
    flag.touch()
    after = running.wait_online("flaky")["flaky"]
    assert len(pids_of(after)) == 2


def test_reload_of_an_invalid_config_exits_2_with_one_problem_per_line(
    running: Omnitron,
) -> None:
    running.write_config(
        BASIC + app_toml("a", depends_on='["nope"]') + app_toml("b", instances="0")
    )
    result = running.run("reload-config")
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert lines[0].startswith("omnitron: the config was not applied: ")
    assert any("apps[3].depends_on" in line for line in lines[1:])
    assert any("apps[4].instances" in line for line in lines[1:])
    assert "\\n" not in result.stderr
    assert set(running.apps()) == set(BASIC_APPS)
