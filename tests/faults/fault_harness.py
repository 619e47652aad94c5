"""A real daemon for fault tests: a subprocess on a temporary home, always cleaned up.

:class:`Daemon` runs ``python -m omnitron --home H up --foreground --config CFG``
in a session of its own (so a child that signals its process group can never
reach the test runner), waits until it answers on ``H/daemon.sock``, and talks to
it with the synchronous client. The ``daemon`` fixture tears everything down:
SIGKILL for the daemon (as ``omnitron --home H kill`` does, in this process), then
for anything whose environment says ``OMNITRON_HOME=H``, then the home is removed.

Every wait polls under a deadline (:func:`wait_for`); nothing sleeps to let
something happen.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from omnitron.rpc.sync_client import SyncClient, connect_unix_sync
from omnitron.state import Home, read_lock_info
from supervision import PinnedProcess

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
CHILDREN = REPO / "tests" / "fixtures" / "children"
DEADLINE = 20.0
"""Seconds a polled condition may take to become true."""
POLL = 0.02
CLI_TIMEOUT = 60.0
RPC_TIMEOUT = 30.0

SLEEP = "import time; time.sleep(3600)"


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


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def app_toml(name: str, argv: list[str] | None = None, **fields: str) -> str:
    """One ``[[apps]]`` table; ``argv`` defaults to a sleeping Python; ``fields`` are raw TOML."""
    argv = argv if argv is not None else [sys.executable, "-c", SLEEP]
    values = {
        "name": toml_string(name),
        "command": "[" + ", ".join(toml_string(a) for a in argv) + "]",
        "stop_timeout": '"5s"',
        **fields,
    }
    return "[[apps]]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())


def python_app(name: str, code: str, *args: str, **fields: str) -> str:
    return app_toml(name, [sys.executable, "-c", code, *args], **fields)


def clean_env(home: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")}
    env.pop("NOTIFY_SOCKET", None)
    if home is not None:
        env["OMNITRON_HOME"] = home
    return env


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


def sentinels(home: str) -> list[psutil.Process]:
    """The waiting sentinel of ``home``'s daemon (a shell named ``omnitron-sentinel``)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if (
                "omnitron-sentinel" in cmdline
                and home in cmdline
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def pids_of(app: dict[str, Any]) -> set[int]:
    return {p["pid"] for p in app["processes"] if p["pid"]}


class Daemon:
    """One home, one config, at most one foreground daemon process at a time."""

    def __init__(self, home: str, project: Path) -> None:
        self.home = home
        self.project = project
        self.config = project / "omnitron.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = project / "daemon.out"
        self._clients: list[SyncClient] = []

    # ---------------------------------------------------------------- running

    @property
    def socket(self) -> str:
        return os.path.join(self.home, "daemon.sock")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.home, "daemon.pid")

    @property
    def log(self) -> Path:
        return Path(self.home) / "logs" / "daemon.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def write_config(self, text: str) -> Path:
        self.config.write_text(text)
        return self.config

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "omnitron", "--home", self.home, *args]

    def start(
        self,
        config: str | None = None,
        *,
        env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
        args: Sequence[str] = (),
    ) -> Daemon:
        """Start the daemon in the foreground (in its own session); wait until it answers.

        Args:
            config: The config text to write first (else the file as it is).
            env: The daemon's environment (default: ours without ``OMNITRON_*``).
            wrap: A command that execs the rest (``["prlimit", "--nofile=64:64"]``).
            args: More options of ``up`` (``["--tcp", "127.0.0.1:9700"]``).
        """
        if config is not None:
            self.write_config(config)
        assert self.proc is None or self.proc.poll() is not None, "a daemon is already running"
        with self.output.open("ab") as sink:
            self.proc = subprocess.Popen(
                [
                    *(wrap or []),
                    *self.argv("up", "--foreground", "--config", str(self.config), *args),
                ],
                cwd=self.project,
                env=env if env is not None else clean_env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for(self._answering, "the daemon answering on its socket")
        return self

    def _answering(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the daemon exited ({self.proc.returncode}):\n{self.read_output()}")
        try:
            with connect_unix_sync(self.socket, timeout=2.0) as client:
                return bool(client.call("daemon.ping"))
        except Exception:
            return False

    def read_output(self) -> str:
        try:
            return self.output.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_exit(self, timeout: float = CLI_TIMEOUT) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    # ---------------------------------------------------------------- RPC

    def client(self, timeout: float = RPC_TIMEOUT) -> SyncClient:
        client = connect_unix_sync(self.socket, timeout=timeout)
        self._clients.append(client)
        return client

    def call(self, method: str, /, **params: object) -> Any:
        with connect_unix_sync(self.socket, timeout=RPC_TIMEOUT) as client:
            return client.call(method, **params)

    def status(self) -> dict[str, Any]:
        return self.call("daemon.status")  # type: ignore[no-any-return]

    def apps(self) -> dict[str, dict[str, Any]]:
        return {app["name"]: app for app in self.status()["apps"]}

    def wait_apps(
        self,
        predicate: Callable[[dict[str, dict[str, Any]]], bool],
        what: str,
        timeout: float = DEADLINE,
    ) -> dict[str, dict[str, Any]]:
        def check() -> dict[str, dict[str, Any]] | None:
            apps = self.apps()
            return apps if predicate(apps) else None

        return wait_for(check, what, timeout)

    def wait_online(self, *names: str, timeout: float = DEADLINE) -> dict[str, dict[str, Any]]:
        def online(apps: dict[str, dict[str, Any]]) -> bool:
            return all(
                apps[name]["status"] == "online"
                and all(p["status"] == "online" and p["pid"] for p in apps[name]["processes"])
                for name in names
            )

        return self.wait_apps(online, f"{names} online", timeout)

    def log_events(self, event: str) -> list[str]:
        """The lines of ``daemon.log`` for ``event``."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if f"event='{event}'" in line]

    def app_log(self, app: str) -> str:
        try:
            return (Path(self.home) / "logs" / f"{app}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---------------------------------------------------------------- cleanup

    def close(self) -> None:
        for client in self._clients:
            client.close()
        # What `omnitron kill` does, in this process (no interpreter start per test):
        # the daemon of the pid file (one `up` may have started), then the marked apps.
        info = read_lock_info(Home(self.home))
        daemon = PinnedProcess.pin(info.identity) if info is not None and info.alive else None
        if daemon is not None:
            with daemon:
                daemon.send(signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        kill_marked(self.home)


def kill_marked(home: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        left = marked(home)
        if not left or time.monotonic() > deadline:
            return
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        time.sleep(POLL)


READY_FD = "{ fd = 3 }"
"""``ready`` for apps made by :func:`term_recorder`: ready once the handler is installed."""


def term_recorder(name: str, record: Path, *, ignore: bool) -> str:
    """Python code: on SIGTERM append ``name <monotonic>`` to ``record``; exit unless ``ignore``.

    It writes ``ready`` on fd 3 once its handler is installed (use ``ready = READY_FD``),
    so a stop can never arrive before the handler.
    """
    return (
        "import os, signal, time\n"
        "def on_term(signum, frame):\n"
        f"    with open({str(record)!r}, 'a') as f:\n"
        f"        f.write({name!r} + ' ' + repr(time.monotonic()) + chr(10))\n"
        f"    if not {ignore!r}:\n"
        "        os._exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "os.write(3, b'ready\\n')\n"
        "while True:\n"
        "    signal.pause()\n"
    )


def read_terms(record: Path) -> dict[str, float]:
    """``{name: monotonic time of its first SIGTERM}`` from a :func:`term_recorder` file."""
    result: dict[str, float] = {}
    try:
        text = record.read_text()
    except FileNotFoundError:
        return result
    for line in text.splitlines():
        name, _, stamp = line.partition(" ")
        if stamp:
            result.setdefault(name, float(stamp))
    return result


def recorded_state(home: str) -> dict[str, dict[str, Any]]:
    """The apps of ``state.json`` as it is on disk now, by name (empty if there is none)."""
    try:
        state = json.loads((Path(home) / "state.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return {}
    return {app["name"]: app for app in state["apps"]}
