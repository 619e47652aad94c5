"""omnitron next to the supervisors people use, on the same children and machine.

Usage::

    sh benchmarks/peers/install.sh             # once: the peers, into /tmp/omnitron-peers
    python benchmarks/compare.py [--quick] [--out DIR] [--peer NAME ...]

Every supervisor under test (a *peer*) is a separate process started by this
harness: the floor in C (``peers/floor_sup.c``) and in Python (``peers/floor_sup.py``),
the ``supervision`` library embedded in a Trio program (``peers/embedded.py``),
omnitron's daemon (``omnitron up --foreground``), supervisord, circus (with its
default ``check_delay`` and a fast one), PM2 and an Erlang/OTP supervisor
(``peers/bench_sup.erl``).  Each supervises the same children, which announce
themselves on the harness's own datagram socket (``notify_child.c`` and
``notify_child.py`` with ``--hello``: first thing, each sends its pid), so every peer is timed
by the same clock and the same event.  A peer that is not installed is reported
as skipped, with the reason.

Scenarios (``--quick`` takes fewer samples and shorter windows):

restart latency
    SIGKILL the child; the sample is the time until its replacement has said
    hello.  All peers run side by side with one child each and are killed in
    turn, the order reversing every round.  A C child and a Python child.
crash storm
    20 children that exit 50 ms after they start, 10 s per peer: restarts per
    second (hellos), the supervisor's CPU, and the latency of its status API seen
    by a separate client calling every 10 ms.
hundred
    From launching the supervisor until 100 children have said hello (cold); then,
    with every peer running its 100 children: the wall time of each peer's status
    command (interleaved), status API calls per second with one persistent client,
    idle CPU, and the supervisor's RSS and USS.
zero
    The supervisor's RSS and USS with no children.
warm start
    A running supervisor with 100 children defined but not started: from its
    start command until all 100 have said hello.

The machine's load average is recorded before and after each scenario, and a
scenario that began on a busy machine is marked.  The output directory gets
``results.json`` (every sample), ``report.md`` (the tables, also printed) and,
with matplotlib installed, plots as PNG and SVG.  Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
DEFAULT_PEERS_DIR = Path(os.environ.get("OMNITRON_PEERS", "/tmp/omnitron-peers"))

STORM_CHILDREN = 20
STORM_EXIT_MS = 50
STATUS_INTERVAL = 0.010  # the storm's status client: one call, then this pause
HUNDRED = 100
HELLO_TIMEOUT = 30.0  # seconds; a supervisor slower than this is broken, not slow
LAUNCH_TIMEOUT = 60.0
BUSY_LOAD_PER_CPU = 0.5  # a scenario begun above this 1-minute load per CPU is marked busy


class BenchmarkError(RuntimeError):
    """The benchmark could not take a valid measurement."""


FAILURES = (BenchmarkError, OSError, subprocess.SubprocessError, psutil.Error, ValueError)


def describe(exc: BaseException) -> str:
    """One line for the report: the exception's type and its message, shortened."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load(name: str) -> ModuleType:
    """A sibling module of this file (``benchmarks/`` is not a package)."""
    key = f"omnitron_bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# benchmarks/daemon.py: its /proc helpers, statistics, timing of a command.
bench = _load("daemon")
percentile = bench.percentile


# --------------------------------------------------------------------------- statistics


#: n/mean/p50/p90/p99/min/max of samples in seconds, in milliseconds.
summarize = bench.summarize_ms


def against_floor(summary: Mapping[str, float], floor: Mapping[str, float]) -> dict[str, float]:
    """Overhead (difference, same unit) at p50/p90/p99 and the p50 ratio to the floor."""
    out = {f"over_{q}": round(summary[q] - floor[q], 4) for q in ("p50", "p90", "p99")}
    out["x_p50"] = round(summary["p50"] / floor["p50"], 2) if floor["p50"] else float("nan")
    return out


def is_busy(loadavg_1min: float, nproc: int) -> bool:
    return loadavg_1min > BUSY_LOAD_PER_CPU * nproc


# --------------------------------------------------------------------------- environment


@dataclass
class Env:
    """Where things are: the scratch directory of the peers, this run's work directory."""

    peers_dir: Path
    workdir: Path
    python: str = sys.executable
    omnitron: str = ""
    children: dict[str, list[str]] = field(default_factory=dict)  # kind -> argv prefix
    child_labels: dict[str, str] = field(default_factory=dict)
    floor_c: str = ""
    erlang_ebin: str = ""

    @property
    def venv_bin(self) -> Path:
        return self.peers_dir / "venv" / "bin"

    @property
    def pm2(self) -> Path:
        return self.peers_dir / "node" / "node_modules" / ".bin" / "pm2"

    def skipped_by_install(self, peer: str) -> str | None:
        path = self.peers_dir / "skipped" / peer
        return path.read_text().strip() if path.exists() else None


def _version_of(argv: Sequence[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else "?"


def prepare(env: Env, *, need_erlang: bool) -> None:
    """Compile the C child and the C floor (and the Erlang supervisor if it is used)."""
    cc = shutil.which("cc")
    if cc is None:
        raise BenchmarkError("no C compiler (cc): the C child and the C floor need one")
    child = env.workdir / "notify_child"
    floor = env.workdir / "floor_sup"
    for source, exe in ((HERE / "notify_child.c", child), (PEERS / "floor_sup.c", floor)):
        subprocess.run([cc, "-O2", "-o", str(exe), str(source)], check=True)
    env.children = {
        "minimal": [str(child)],
        "python": [env.python, str(HERE / "notify_child.py")],
    }
    env.child_labels = {
        "minimal": "C program (cc -O2)",
        "python": f"Python {platform.python_version()} (stdlib)",
    }
    env.floor_c = str(floor)
    if need_erlang and shutil.which("erlc"):
        ebin = env.workdir / "ebin"
        ebin.mkdir(exist_ok=True)
        subprocess.run(["erlc", "-o", str(ebin), str(PEERS / "bench_sup.erl")], check=True)
        env.erlang_ebin = str(ebin)


# --------------------------------------------------------------------------- peers


@dataclass
class Setup:
    """One supervisor to start: what it runs and how many, in its own directory."""

    directory: Path
    argv: list[str]  # the child's full argv
    count: int
    autostart: bool = True
    port: int = 0  # a free TCP port, for peers that need one


class Peer:
    """A supervisor under test.  Subclasses say how to configure, launch and ask it.

    ``files`` and the ``*_argv`` methods only compute (they are tested without
    the peer installed); :class:`Instance` does the running.
    """

    name = ""
    label = ""
    #: How it is configured for its fastest immediate restart (for the report).
    restart_config = ""
    #: What its status command and status API are (for the report).
    status_how = ""
    warm = True  # has a start command for children defined but not started
    foreground = True  # the launched process is the supervisor and stays up
    leaves_children = False  # stopping it leaves its children running (the harness kills them)

    def skip_reason(self, env: Env) -> str | None:
        return None

    def version(self, env: Env) -> str:
        return ""

    def files(self, env: Env, setup: Setup) -> dict[str, str]:
        """Configuration files to write into ``setup.directory`` (name -> text)."""
        return {}

    def launch_argv(self, env: Env, setup: Setup) -> list[str]:
        raise NotImplementedError

    def launch_env(self, env: Env, setup: Setup) -> dict[str, str]:
        return {}

    def status_argv(self, env: Env, setup: Setup) -> list[str] | None:
        """Its status command (the CLI people type), or None if it has none."""
        return None

    def probe_argv(
        self, env: Env, setup: Setup, start: float, end: float, interval: float
    ) -> list[str] | None:
        """A persistent client of its status API (``peers/probe.py``), or None."""
        return None

    def start_argv(self, env: Env, setup: Setup) -> list[str] | None:
        """Its command starting children defined but not started (warm start)."""
        return None

    def ping(self, instance: Instance) -> bool:
        """Whether its control plane answers (for a warm start and for memory)."""
        return True

    def supervisor_pid(self, instance: Instance) -> int:
        return instance.pid

    def stop(self, instance: Instance) -> None:
        instance.terminate()


def _probe(env: Env, python: str, kind: str, target: str, *window: float) -> list[str]:
    return [python, str(PEERS / "probe.py"), kind, target, *(repr(x) for x in window)]


class FloorC(Peer):
    name = "floor-c"
    label = "floor (C)"
    restart_config = (
        "`peers/floor_sup.c`: blocks in `wait()`, then `posix_spawn`s the replacement "
        "(new session); no readiness, no backoff, no limits."
    )
    status_how = "none"
    warm = False

    def version(self, env: Env) -> str:
        return _version_of(["cc", "--version"])

    def launch_argv(self, env: Env, setup: Setup) -> list[str]:
        return [env.floor_c, str(setup.count), *setup.argv]


class FloorPython(Peer):
    name = "floor-py"
    label = "floor (Python)"
    restart_config = (
        "`peers/floor_sup.py`: blocks in `os.wait()`, then `os.posix_spawn`s the "
        "replacement (new session); no readiness, no backoff, no limits."
    )
    status_how = "none"
    warm = False

    def version(self, env: Env) -> str:
        return f"{platform.python_implementation()} {platform.python_version()}"

    def launch_argv(self, env: Env, setup: Setup) -> list[str]:
        return [env.python, str(PEERS / "floor_sup.py"), str(setup.count), *setup.argv]


class Library(Peer):
    name = "supervision"
    label = "supervision (library)"
    restart_config = (
        "`peers/embedded.py`: `open_supervisor` in a Trio program, one_for_one, "
        "`Backoff.none()`, `Intensity(max_restarts=10**6, window=1.0)`, `Ready.notify()`."
    )
    status_how = "in-process `which_children()`; no CLI or socket"
    warm = False

    def version(self, env: Env) -> str:
        from omnitron import __version__

        return f"omnitron {__version__}"

    def launch_argv(self, env: Env, setup: Setup) -> list[str]:
        return [env.python, str(PEERS / "embedded.py"), str(setup.count), *setup.argv]


class Omnitron(Peer):
    name = "omnitron"
    label = "omnitron (daemon)"
    restart_config = (
        '`omnitron up --foreground`; one app with `instances = N`, `ready = "notify"`, '
        '`[supervision]` `max_restarts = 1000000`, `window = "1s"`, '
        '`backoff = { initial = "0s", max = "0s", factor = 1 }`.'
    )
    status_how = "`omnitron status`; `daemon.status` over its Unix socket (msgpack-rpc)"

    def skip_reason(self, env: Env) -> str | None:
        return None if env.omnitron else "no omnitron executable next to this Python or on PATH"

    def version(self, env: Env) -> str:
        from omnitron import __version__

        return __version__

    def home(self, setup: Setup) -> Path:
        return setup.directory / "home"

    def files(self, env: Env, setup: Setup) -> dict[str, str]:
        text = (
            'project = "bench"\n'
            "[supervision]\n"
            "max_restarts = 1000000\n"
            'window = "1s"\n'
            'backoff = { initial = "0s", max = "0s", factor = 1 }\n'
        )
        if setup.count:
            text += (
                "[[apps]]\n"
                'name = "c"\n'
                f"command = {json.dumps(setup.argv)}\n"
                f"instances = {setup.count}\n"
                'ready = "notify"\n'
                f"enabled = {'true' if setup.autostart else 'false'}\n"
            )
        return {"omnitron.toml": text}

    def launch_argv(self, env: Env, setup: Setup) -> list[str]:
        config = str(setup.directory / "omnitron.toml")
        return [env.omnitron, "--home", str(self.home(setup)), "up", "--foreground", "--config",
                config]  # fmt: skip

    def status_argv(self, env: Env, setup: Setup) -> list[str]:
        return [env.omnitron, "--home", str(self.home(setup)), "status"]

    def start_argv(self, env: Env, setup: Setup) -> list[str]:
        return [env.omnitron, "--home", str(self.home(setup)), "start", "c"]

    def probe_argv(
        self, env: Env, setup: Setup, start: float, end: float, interval: float
    ) -> list[str]:
        path = str(self.home(setup) / "daemon.sock")
        return _probe(env, env.python, "omnitron", path, start, end, interval)

    def ping(self, instance: Instance) -> bool:
        argv = [instance.env.omnitron, "--home", str(self.home(instance.setup)), "ping"]
        return _quiet(argv, instance.process_env) == 0


class Supervisord(Peer):
    name = "supervisord"
    label = "supervisord"
    restart_config = (
        "`supervisord -n`; one `[program]` with `numprocs = N`, `autorestart = true`, "
        "`startsecs = 0` (running once spawned: it has no readiness protocol), "
        "`startretries = 1000000`, output to `NONE`."
    )
    status_how = "`supervisorctl status`; XML-RPC `supervisor.getAllProcessInfo` over HTTP"

    def skip_reason(self, env: Env) -> str | None:
        if (reason := env.skipped_by_install("supervisor")) is not None:
            return reason
        if not (env.venv_bin / "supervisord").exists():
            return f"not installed in {env.peers_dir} (run benchmarks/peers/install.sh)"
        return None

    def version(self, env: Env) -> str:
        return _version_of([str(env.venv_bin / "supervisord"), "--version"])

    def files(self, env: Env, setup: Setup) -> dict[str, str]:
        d = setup.directory
        text = (
            "[supervisord]\n"
            f"logfile = {d}/supervisord.log\n"
            f"pidfile = {d}/supervisord.pid\n"
            f"childlogdir = {d}\n"
            "loglevel = warn\n"
            "[unix_http_server]\n"
            f"file = {d}/supervisor.sock\n"
            "[inet_http_server]\n"
            f"port = 127.0.0.1:{setup.port}\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            "[supervisorctl]\n"
            f"serverurl = unix://{d}/supervisor.sock\n"
        )
        if setup.count:
            text += (
                "[program:c]\n"
                f"command = {shlex.join(setup.argv)}\n"
                "process_name = %(program_name)s_%(process_num)03d\n"
                f"numprocs = {setup.count}\n"
                f"autostart = {'true' if setup.autostart else 'false'}\n"
                "autorestart = true\n"
                "startsecs = 0\n"
                "startretries = 1000000\n"
                "stopwaitsecs = 5\n"
                "stdout_logfile = NONE\n"
                "stderr_logfile = NONE\n"
            )
        return {"supervisord.conf": text}

    def _ctl(self, env: Env, setup: Setup, *args: str) -> list[str]:
        conf = str(setup.directory / "supervisord.conf")
        return [str(env.venv_bin / "supervisorctl"), "-c", conf, *args]

    def launch_argv(self, env: Env, setup: Setup) -> list[str]:
        conf = str(setup.directory / "supervisord.conf")
        return [str(env.venv_bin / "supervisord"), "-n", "-c", conf]

    def status_argv(self, env: Env, setup: Setup) -> list[str]:
        return self._ctl(env, setup, "status")

    def start_argv(self, env: Env, setup: Setup) -> list[str]:
        return self._ctl(env, setup, "start", "all")

    def probe_argv(
        self, env: Env, setup: Setup, start: float, end: float, interval: float
    ) -> list[str]:
        url = f"http://127.0.0.1:{setup.port}"
        return _probe(env, env.python, "supervisord", url, start, end, interval)

    def ping(self, instance: Instance) -> bool:
        return _quiet(self._ctl(instance.env, instance.setup, "pid"), instance.process_env) == 0


class Circus(Peer):
    name = "circus"
    label = "circus"
    check_delay: float | None = None  # None: circus's own default
    restart_config = (
        "`circusd`; one `[watcher]` with `numprocesses = N`, `respawn = true`, "
        "`max_retry = -1`, `warmup_delay = 0`, `copy_env = true`; `check_delay` left at "
        "its default (5 s when read from an ini file): circus notices exits by polling "
        "every `check_delay`."
    )
    status_how = "`circusctl status`; the `status` command over its ZeroMQ endpoint"

    def skip_reason(self, env: Env) -> str | None:
        if (reason := env.skipped_by_install("circus")) is not None:
            return reason
        if not (env.venv_bin / "circusd").exists():
            return f"not installed in {env.peers_dir} (run benchmarks/peers/install.sh)"
        return None

    def version(self, env: Env) -> str:
        return _version_of([str(env.venv_bin / "circusd"), "--version"])

    def endpoint(self, setup: Setup) -> str:
        return f"ipc://{setup.directory}/endpoint"

    def files(self, env: Env, setup: Setup) -> dict[str, str]:
        d = setup.directory
        text = (
            "[circus]\n"
            f"endpoint = {self.endpoint(setup)}\n"
            f"pubsub_endpoint = ipc://{d}/pubsub\n"
            "statsd = false\n"
            "loglevel = warning\n"
        )
        if self.check_delay is not None:
            text += f"check_delay = {self.check_delay}\n"
        if setup.count:
            text += (
                "[watcher:c]\n"
                f"cmd = {shlex.join(setup.argv)}\n"
                f"numprocesses = {setup.count}\n"
                f"autostart = {'true' if setup.autostart else 'false'}\n"
                "respawn = true\n"
                "max_retry = -1\n"
                "warmup_delay = 0\n"
                "copy_env = true\n"
                "graceful_timeout = 5\n"
            )
        return {"circus.ini": text}

    def launch_argv(self, env: Env, setup: Setup) -> list[str]:
        return [str(env.venv_bin / "circusd"), str(setup.directory / "circus.ini")]

    def _ctl(self, env: Env, setup: Setup, *args: str) -> list[str]:
        return [str(env.venv_bin / "circusctl"), "--endpoint", self.endpoint(setup), *args]

    def status_argv(self, env: Env, setup: Setup) -> list[str]:
        return self._ctl(env, setup, "status")

    def start_argv(self, env: Env, setup: Setup) -> list[str]:
        return self._ctl(env, setup, "start", "c")

    def probe_argv(
        self, env: Env, setup: Setup, start: float, end: float, interval: float
    ) -> list[str]:
        python = str(env.venv_bin / "python")
        return _probe(env, python, "circus", self.endpoint(setup), start, end, interval)

    def ping(self, instance: Instance) -> bool:
        argv = self._ctl(instance.env, instance.setup, "--timeout", "2", "list")
        return _quiet(argv, instance.process_env) == 0


class CircusFast(Circus):
    name = "circus-fast"
    label = "circus (check_delay 0.01)"
    check_delay = 0.01
    restart_config = (
        "as circus, with `check_delay = 0.01` (its poll for exited children every 10 ms)."
    )


class PM2(Peer):
    name = "pm2"
    label = "PM2"
    restart_config = (
        "`pm2 start ecosystem.json` (its own `PM2_HOME`); one app, `exec_mode = fork`, "
        '`interpreter = "none"`, `instances = N`, `autorestart = true`, `restart_delay = 0`, '
        "`max_restarts = 1000000`, `min_uptime = 0`, logs to `/dev/null`; "
        "the supervisor is PM2's daemon (God)."
    )
    status_how = "`pm2 jlist`; `pm2.list()` of its node API over its RPC socket"
    foreground = False  # `pm2 start` / `pm2 ping` exit once the daemon runs

    def skip_reason(self, env: Env) -> str | None:
        if (reason := env.skipped_by_install("pm2")) is not None:
            return reason
        if not env.pm2.exists():
            return f"not installed in {env.peers_dir} (run benchmarks/peers/install.sh)"
        if shutil.which("node") is None:
            return "node not found"
        return None

    def version(self, env: Env) -> str:
        package = env.peers_dir / "node" / "node_modules" / "pm2" / "package.json"
        node = _version_of(["node", "--version"])
        return f"{json.loads(package.read_text())['version']} (node {node})"

    def files(self, env: Env, setup: Setup) -> dict[str, str]:
        apps = []
        if setup.count:
            apps.append({
                "name": "c",
                "script": setup.argv[0],
                "args": setup.argv[1:],
                "interpreter": "none",
                "exec_mode": "fork",
                "instances": setup.count,
                "autorestart": True,
                "restart_delay": 0,
                "max_restarts": 1000000,
                "min_uptime": 0,
                "out_file": "/dev/null",
                "error_file": "/dev/null",
            })  # fmt: skip
        return {"ecosystem.json": json.dumps({"apps": apps}, indent=1)}

    def launch_env(self, env: Env, setup: Setup) -> dict[str, str]:
        return {
            "PM2_HOME": str(setup.directory / "pm2home"),
            "NODE_PATH": str(env.peers_dir / "node" / "node_modules"),  # for probe_pm2.js
        }

    def launch_argv(self, env: Env, setup: Setup) -> list[str]:
        if setup.count and setup.autostart:
            return [str(env.pm2), "start", str(setup.directory / "ecosystem.json")]
        return [str(env.pm2), "ping"]

    def status_argv(self, env: Env, setup: Setup) -> list[str]:
        return [str(env.pm2), "jlist"]

    def start_argv(self, env: Env, setup: Setup) -> list[str]:
        return [str(env.pm2), "start", str(setup.directory / "ecosystem.json")]

    def probe_argv(
        self, env: Env, setup: Setup, start: float, end: float, interval: float
    ) -> list[str]:
        return ["node", str(PEERS / "probe_pm2.js"), repr(start), repr(end), repr(interval)]

    def _pid_file(self, setup: Setup) -> Path:
        return setup.directory / "pm2home" / "pm2.pid"

    def ping(self, instance: Instance) -> bool:
        return self._pid_file(instance.setup).exists() and instance.exited()

    def supervisor_pid(self, instance: Instance) -> int:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not self._pid_file(instance.setup).exists():
            if time.monotonic() > deadline:
                raise BenchmarkError("PM2's daemon wrote no pid file")
            time.sleep(0.01)
        return int(self._pid_file(instance.setup).read_text())

    def stop(self, instance: Instance) -> None:
        _quiet([str(instance.env.pm2), "kill"], instance.process_env, timeout=60)
        instance.terminate()


class Erlang(Peer):
    name = "erlang"
    label = "Erlang/OTP supervisor"
    restart_config = (
        "`peers/bench_sup.erl` (`erl -noshell`): a `supervisor`, one_for_one, "
        "`intensity = 1000000`, `period = 1`, over workers that each open the program "
        "as a port (`spawn_executable`, `exit_status`) and exit with it; OTP restarts "
        "at once (it has no backoff).  Closing a port does not kill its program: the "
        "harness kills what is left when it stops the supervisor."
    )
    status_how = "no CLI; `supervisor:count_children` over a line protocol on a TCP socket"
    leaves_children = True  # closing a port does not kill its program

    def skip_reason(self, env: Env) -> str | None:
        if (reason := env.skipped_by_install("erlang")) is not None:
            return reason
        if shutil.which("erl") is None or shutil.which("erlc") is None:
            return "erl/erlc not found (Debian: apt-get install erlang-nox)"
        return None

    def version(self, env: Env) -> str:
        expr = (
            'io:format("OTP ~s, erts ~s~n", [erlang:system_info(otp_release), '
            "erlang:system_info(version)]), halt()."
        )
        return _version_of(["erl", "-noshell", "-eval", expr])

    def launch_argv(self, env: Env, setup: Setup) -> list[str]:
        count = setup.count if setup.autostart else 0
        return ["erl", "-noshell", "-noinput", "-pa", env.erlang_ebin, "-run", "bench_sup",
                "main", "-extra", str(count), *setup.argv]  # fmt: skip

    def control(self, instance: Instance) -> str:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while time.monotonic() < deadline:
            for line in instance.output_text().splitlines():
                if line.startswith("control "):
                    return f"127.0.0.1:{int(line.split()[1])}"
            instance.check_alive()
            time.sleep(0.01)
        raise BenchmarkError("the Erlang supervisor printed no control port")

    def probe_argv(
        self, env: Env, setup: Setup, start: float, end: float, interval: float
    ) -> list[str]:
        # The control port is only known once running: see Instance.probe_argv.
        return _probe(env, env.python, "erlang", "{control}", start, end, interval)

    def ping(self, instance: Instance) -> bool:
        self.control(instance)
        return True

    def warm_start(self, instance: Instance, count: int) -> socket.socket:
        """Ask for ``count`` more children; the connection, to read its "ok" from later
        (the reply comes once all are started: the hellos must be read meanwhile)."""
        host, port = self.control(instance).split(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(f"start {count}\n".encode())
        return sock


ALL_PEERS: tuple[Peer, ...] = (
    FloorC(),
    FloorPython(),
    Library(),
    Omnitron(),
    Supervisord(),
    Circus(),
    CircusFast(),
    PM2(),
    Erlang(),
)
FLOOR = "floor-c"


def _quiet(argv: Sequence[str], env: Mapping[str, str], timeout: float = 30) -> int:
    """Run a short command, output discarded; its exit code (-1 if it timed out)."""
    try:
        return subprocess.run(
            argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, timeout=timeout, check=False,
        ).returncode  # fmt: skip
    except subprocess.TimeoutExpired:
        return -1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- running a peer


class Hellos:
    """The harness's datagram socket: every child sends its pid here when it starts."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def receive(self, timeout: float) -> int | None:
        """The next child's pid, or None after ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 1e-6))
        try:
            data = self.sock.recv(64)
        except TimeoutError:
            return None
        return int(data)

    def drain(self) -> list[int]:
        pids = []
        while (pid := self.receive(1e-6)) is not None:
            pids.append(pid)
        return pids

    def count_until(self, end: float) -> int:
        """Hellos received until ``time.perf_counter()`` reaches ``end``."""
        count = 0
        while (left := end - time.perf_counter()) > 0:
            if self.receive(left) is not None:
                count += 1
        return count

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Instance:
    """One running supervisor of one peer, with its own directory and hello socket."""

    def __init__(self, peer: Peer, env: Env, tag: str, kind: str, count: int,
                 *, autostart: bool = True, exit_ms: int | None = None) -> None:  # fmt: skip
        self.peer = peer
        self.env = env
        directory = Path(tempfile.mkdtemp(prefix=f"{peer.name[:6]}-{tag}-", dir=env.workdir))
        self.hellos = Hellos(directory / "h.sock")
        argv = [*env.children[kind], "--hello", self.hellos.path]
        if exit_ms is not None:
            argv.append(str(exit_ms))
        self.setup = Setup(directory, argv, count, autostart, _free_port())
        self.proc: subprocess.Popen[bytes] | None = None
        self.launched = 0.0
        base = {k: v for k, v in os.environ.items()
                if k != "NOTIFY_SOCKET" and not k.startswith("OMNITRON")}  # fmt: skip
        self.process_env = {**base, **peer.launch_env(env, self.setup)}
        self._sup_pid: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output_text(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.setup.directory / "output").read_text(errors="replace")
        return ""

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def check_alive(self) -> None:
        if self.peer.foreground and self.exited():
            assert self.proc is not None
            output = self.output_text()[-2000:].strip() or "(no output)"
            raise BenchmarkError(f"{self.peer.name} exited ({self.proc.returncode}): {output}")

    def wait_hellos(self, count: int, timeout: float = HELLO_TIMEOUT) -> list[int]:
        """Wait until ``count`` different children have said hello; fail at once if the
        supervisor exits meanwhile."""
        pids: dict[int, None] = {}
        deadline = time.perf_counter() + timeout
        while len(pids) < count:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise BenchmarkError(
                    f"{self.peer.name}: {len(pids)} of {count} children said hello in {timeout} s"
                )
            pid = self.hellos.receive(min(left, 0.5))
            if pid is None:
                self.check_alive()
            else:
                pids[pid] = None
        return list(pids)

    def launch(self) -> None:
        for name, text in self.peer.files(self.env, self.setup).items():
            (self.setup.directory / name).write_text(text)
        argv = self.peer.launch_argv(self.env, self.setup)
        with open(self.setup.directory / "output", "wb") as out:
            self.launched = time.perf_counter()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.process_env,
                cwd=self.setup.directory, start_new_session=True,
            )  # fmt: skip

    def wait_control(self) -> None:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not self.peer.ping(self):
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{self.peer.name}: no answer within {LAUNCH_TIMEOUT} s")
            time.sleep(0.02)

    @property
    def supervisor_pid(self) -> int:
        if self._sup_pid is None:
            self._sup_pid = self.peer.supervisor_pid(self)
        return self._sup_pid

    def supervisor_processes(self) -> list[psutil.Process]:
        """The supervisor and its helper processes, without the children it supervises."""
        root = psutil.Process(self.supervisor_pid)
        found = [root]
        with contextlib.suppress(psutil.Error):
            for proc in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if self.hellos.path not in proc.cmdline():
                        found.append(proc)
        return found

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.supervisor_processes():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def memory(self) -> dict[str, int]:
        rss = uss = 0
        processes = self.supervisor_processes()
        for proc in processes:
            info = proc.memory_full_info()
            rss += info.rss
            uss += info.uss
        return {"rss": rss, "uss": uss, "processes": len(processes)}

    def signal_supervisor(self, signum: int) -> None:
        """Send ``signum`` to the supervisor's processes (not to its children)."""
        for proc in self.supervisor_processes():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signum)

    def probe_argv(self, start: float, end: float, interval: float) -> list[str] | None:
        argv = self.peer.probe_argv(self.env, self.setup, start, end, interval)
        if argv is not None and isinstance(self.peer, Erlang):
            argv = [a.replace("{control}", self.peer.control(self)) for a in argv]
        return argv

    def terminate(self) -> None:
        if self.proc is None:
            return
        # SIGTERM again every 2 s: circus drops one that comes while it is busy with
        # another command ("arbiter is already running ...").
        for _ in range(15):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
        else:
            _log(f"  {self.peer.name} ignored SIGTERM for 30 s: killed")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        """Stop the supervisor; kill any child of this instance it left behind."""
        try:
            if self.proc is not None:
                self.peer.stop(self)
        finally:
            # Every child has the socket's path in its argv, said hello or not.
            left = kill_processes_with(self.hellos.path)
            if left and not self.peer.leaves_children:
                _log(f"  {self.peer.name} left {left} child(ren) running: killed")
            self.hellos.close()
            shutil.rmtree(self.setup.directory, ignore_errors=True)


def kill_processes_with(argument: str) -> int:
    """SIGKILL every process with ``argument`` in its command line; how many there were."""
    killed = 0
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(argument in a for a in proc.info["cmdline"] or ()):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    return killed


@contextlib.contextmanager
def running(instances: list[Instance]) -> Iterator[list[Instance]]:
    try:
        yield instances
    finally:
        for instance in instances:
            try:
                instance.close()
            except Exception as exc:  # cleanup of the others must go on
                _log(f"  stopping {instance.peer.name} failed: {exc}")


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Plan:
    restart_samples: Mapping[str, int]  # per child kind, per peer
    restart_warmup: int
    restart_budget: float  # seconds of restarts per peer and child, after which it stops
    restart_min_samples: int  # ... once it has at least this many
    storm_seconds: float
    storm_warmup: float
    hundred_rounds: int
    cli_samples: int
    api_seconds: float
    idle_seconds: float
    warm_rounds: int

    @classmethod
    def full(cls) -> Plan:
        return cls({"minimal": 200, "python": 100}, 5, 45.0, 10, 10.0, 1.0, 3, 20, 2.0, 10.0, 3)

    @classmethod
    def quick(cls) -> Plan:
        return cls({"minimal": 40, "python": 15}, 2, 6.0, 3, 2.0, 0.5, 1, 5, 1.0, 2.0, 1)


class Meter:
    """Load average before and after a scenario, how busy all CPUs were, busy mark."""

    def __init__(self) -> None:
        self.before = os.getloadavg()
        self.jiffies = bench.cpu_jiffies()
        self.started = time.perf_counter()

    def done(self) -> dict[str, Any]:
        after = os.getloadavg()
        nproc = len(os.sched_getaffinity(0))
        return {
            "loadavg_before": [round(x, 2) for x in self.before],
            "loadavg_after": [round(x, 2) for x in after],
            "cpus": bench.machine_usage(self.jiffies, bench.cpu_jiffies()),
            "seconds": round(time.perf_counter() - self.started, 1),
            "busy": is_busy(self.before[0], nproc),
        }


def _kill_and_time(instance: Instance, pid: int) -> tuple[int, float]:
    """SIGKILL ``pid``; the replacement's pid and the seconds until it said hello."""
    instance.hellos.drain()
    deadline = time.perf_counter() + HELLO_TIMEOUT
    start = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise BenchmarkError(f"{instance.peer.name}: no replacement in {HELLO_TIMEOUT} s")
        new = instance.hellos.receive(min(left, 0.5))
        if new is None:
            instance.check_alive()
        elif new != pid:
            return new, time.perf_counter() - start


def restart_scenario(peers: Sequence[Peer], env: Env, kind: str, plan: Plan) -> dict[str, Any]:
    meter = Meter()
    target = plan.restart_samples[kind]
    samples: dict[str, list[float]] = {peer.name: [] for peer in peers}
    spent = dict.fromkeys(samples, 0.0)
    instances: list[Instance] = []
    current: dict[str, int] = {}
    errors: dict[str, str] = {}  # a peer that failed is left out of the remaining rounds

    def done(name: str) -> bool:
        if name in errors:
            return True
        n = len(samples[name])
        return n >= target or (spent[name] >= plan.restart_budget and n >= plan.restart_min_samples)

    with running(instances):
        for peer in peers:
            instance = Instance(peer, env, "r", kind, 1)
            try:
                instance.launch()
                [current[peer.name]] = instance.wait_hellos(1)
            except FAILURES as exc:
                errors[peer.name] = describe(exc)
                _log(f"  {peer.name} failed: {errors[peer.name]}")
                instance.close()
                continue
            instances.append(instance)
        rounds = 0
        while not all(done(name) for name in samples):
            # Everyone in turn, the order reversing every round.
            order = instances if rounds % 2 == 0 else instances[::-1]
            for instance in order:
                name = instance.peer.name
                if done(name):
                    continue
                try:
                    current[name], elapsed = _kill_and_time(instance, current[name])
                except FAILURES as exc:
                    errors[name] = describe(exc)
                    _log(f"  {name} failed: {errors[name]}")
                    continue
                if rounds >= plan.restart_warmup:
                    samples[name].append(elapsed)
                    spent[name] += elapsed
            rounds += 1
    result: dict[str, Any] = {"child": env.child_labels[kind], "samples_s": samples}
    result["summary"] = {name: summarize(s) for name, s in samples.items() if s}
    result["errors"] = errors
    if FLOOR in result["summary"]:
        floor = result["summary"][FLOOR]
        for summary in result["summary"].values():
            summary.update(against_floor(summary, floor))
    result["meter"] = meter.done()
    return result


def _start_probe(instance: Instance, start: float, end: float, interval: float
                 ) -> subprocess.Popen[str] | None:  # fmt: skip
    argv = instance.probe_argv(start, end, interval)
    if argv is None:
        return None
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=instance.process_env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _probe_result(probe: subprocess.Popen[str], timeout: float) -> list[list[float]]:
    try:
        out, err = probe.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        raise BenchmarkError("the status client did not finish") from None
    if probe.returncode != 0:
        last = err.strip().splitlines()[-3:]
        raise BenchmarkError(f"the status client exited with {probe.returncode}: {last}")
    samples: list[list[float]] = json.loads(out)
    return samples


PROBE_STARTUP = 1.5  # seconds given to a status client to start and connect


def storm_scenario(peer: Peer, env: Env, plan: Plan) -> dict[str, Any]:
    meter = Meter()
    instance = Instance(peer, env, "s", "minimal", STORM_CHILDREN, exit_ms=STORM_EXIT_MS)
    with running([instance]):
        instance.launch()
        instance.wait_hellos(STORM_CHILDREN)
        with_probe = instance.probe_argv(0, 0, 0) is not None
        start = time.time() + max(plan.storm_warmup, PROBE_STARTUP if with_probe else 0)
        end = start + plan.storm_seconds
        probe = _start_probe(instance, start, end, STATUS_INTERVAL)
        instance.hellos.count_until(time.perf_counter() + (start - time.time()))
        cpu, begin = instance.cpu_seconds(), time.perf_counter()
        restarts = instance.hellos.count_until(begin + plan.storm_seconds)
        elapsed = time.perf_counter() - begin
        cpu = instance.cpu_seconds() - cpu
        status = _probe_result(probe, 60) if probe is not None else None
    result: dict[str, Any] = {
        "restarts": restarts,
        "seconds": round(elapsed, 3),
        "restarts_per_s": round(restarts / elapsed, 1),
        "cpu_percent": round(100 * cpu / elapsed, 1),
    }
    if status is not None:
        result["status_samples_s"] = status
        result["status"] = summarize([latency for _, latency in status]) if status else None
    result["meter"] = meter.done()
    return result


NOISY_CPU = 0.1  # CPU seconds in 1 s of idleness: a supervisor busy while idle


@contextlib.contextmanager
def only_running(measured: Instance, noisy: Sequence[Instance]) -> Iterator[None]:
    """Pause the ``noisy`` supervisors other than ``measured`` meanwhile (their
    children stay as they are)."""
    paused = [i for i in noisy if i is not measured]
    for instance in paused:
        instance.signal_supervisor(signal.SIGSTOP)
    deadline = time.monotonic() + 1.0
    for instance in paused:  # a signal is delivered asynchronously
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(instance.supervisor_pid)
            while root.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
                time.sleep(0.001)
    try:
        yield
    finally:
        for instance in paused:
            instance.signal_supervisor(signal.SIGCONT)


def hundred_scenario(peers: Sequence[Peer], env: Env, plan: Plan) -> dict[str, Any]:
    meter = Meter()
    cold: dict[str, list[float]] = {peer.name: [] for peer in peers}
    errors: dict[str, str] = {}  # a peer that failed is left out of the rest
    result: dict[str, Any] = {"children": HUNDRED, "rounds": plan.hundred_rounds, "errors": errors}
    instances: list[Instance] = []
    with running(instances):
        for r in range(plan.hundred_rounds):
            last = r == plan.hundred_rounds - 1  # the last round's supervisors stay up
            for peer in peers if r % 2 == 0 else peers[::-1]:
                if peer.name in errors:
                    continue
                instance = Instance(peer, env, f"h{r}", "minimal", HUNDRED)
                keep = False
                try:
                    instance.launch()
                    instance.wait_hellos(HUNDRED)
                    cold[peer.name].append(time.perf_counter() - instance.launched)
                    if last:
                        instance.wait_control()
                        keep = True
                except FAILURES as exc:
                    errors[peer.name] = describe(exc)
                    _log(f"  {peer.name} failed: {errors[peer.name]}")
                if keep:
                    instances.append(instance)
                else:
                    instance.close()
        result["cold_start_s"] = cold
        result["cold_start"] = {name: summarize(s) for name, s in cold.items() if s}
        time.sleep(1.0)
        # A supervisor that is busy while idle (circus polling every 10 ms) would slow
        # the others' measurements down: it is paused (SIGSTOP) except for its own.
        before = {i.peer.name: i.cpu_seconds() for i in instances}
        time.sleep(1.0)
        noisy = [i for i in instances if i.cpu_seconds() - before[i.peer.name] > NOISY_CPU]
        result["paused_while_others_measured"] = [i.peer.name for i in noisy]

        _log(f"  status command, {plan.cli_samples} runs per peer, interleaved")
        with_cli = [i for i in instances if i.peer.status_argv(env, i.setup) is not None]
        cli: dict[str, list[float]] = {i.peer.name: [] for i in with_cli}
        for n in range(plan.cli_samples + 2):
            shift = n % max(1, len(with_cli))
            for instance in with_cli[shift:] + with_cli[:shift]:
                name = instance.peer.name
                argv = instance.peer.status_argv(env, instance.setup)
                if argv is None or f"status command ({name})" in errors:
                    continue
                try:
                    with only_running(instance, noisy):
                        elapsed = bench._spawn_wait(argv, instance.process_env)
                except FAILURES as exc:
                    errors[f"status command ({name})"] = describe(exc)
                    continue
                if n >= 2:
                    cli[name].append(elapsed)
        result["status_command_s"] = cli
        result["status_command"] = {name: summarize(s) for name, s in cli.items() if s}

        _log(f"  status API, one persistent client, {plan.api_seconds:g} s per peer")
        api: dict[str, Any] = {}
        for instance in instances:
            start = time.time() + PROBE_STARTUP
            try:
                with only_running(instance, noisy):
                    probe = _start_probe(instance, start, start + plan.api_seconds, 0.0)
                    if probe is None:
                        continue
                    samples = _probe_result(probe, plan.api_seconds + 60)
            except FAILURES as exc:
                errors[f"status API ({instance.peer.name})"] = describe(exc)
                continue
            latencies = [latency for _, latency in samples]
            api[instance.peer.name] = {
                "calls_per_s": round(len(samples) / plan.api_seconds, 1),
                "latency": summarize(latencies),
                "latency_samples_s": latencies,
            }
        result["status_api"] = api

        _log(f"  idle CPU over {plan.idle_seconds:g} s, all peers at once")
        time.sleep(0.5)
        before = {i.peer.name: i.cpu_seconds() for i in instances}
        begin = time.perf_counter()
        time.sleep(plan.idle_seconds)
        elapsed = time.perf_counter() - begin
        result["idle_cpu_percent"] = {
            i.peer.name: round(100 * (i.cpu_seconds() - before[i.peer.name]) / elapsed, 3)
            for i in instances
        }
        result["memory"] = {i.peer.name: i.memory() for i in instances}
    result["meter"] = meter.done()
    return result


def zero_scenario(peers: Sequence[Peer], env: Env) -> dict[str, Any]:
    meter = Meter()
    instances: list[Instance] = []
    with running(instances):
        for peer in peers:
            instance = Instance(peer, env, "z", "minimal", 0)
            instances.append(instance)
            instance.launch()
        for instance in instances:
            instance.wait_control()
        time.sleep(1.5)
        memory = {i.peer.name: i.memory() for i in instances}
    return {"memory": memory, "meter": meter.done()}


def warm_scenario(peers: Sequence[Peer], env: Env, plan: Plan) -> dict[str, Any]:
    meter = Meter()
    times: dict[str, list[float]] = {peer.name: [] for peer in peers}
    errors: dict[str, str] = {}
    for r in range(plan.warm_rounds):
        for peer in peers if r % 2 == 0 else peers[::-1]:
            if peer.name in errors:
                continue
            try:
                times[peer.name].append(_warm_start(peer, env, f"w{r}"))
            except FAILURES as exc:
                errors[peer.name] = describe(exc)
                _log(f"  {peer.name} failed: {errors[peer.name]}")
    return {
        "samples_s": times,
        "summary": {name: summarize(s) for name, s in times.items() if s},
        "errors": errors,
        "meter": meter.done(),
    }


def _warm_start(peer: Peer, env: Env, tag: str) -> float:
    """Seconds from the start command of a running supervisor until 100 children said hello."""
    instance = Instance(peer, env, tag, "minimal", HUNDRED, autostart=False)
    with running([instance]):
        instance.launch()
        instance.wait_control()
        time.sleep(0.5)
        command = control = None
        start = time.perf_counter()
        if isinstance(peer, Erlang):
            control = peer.warm_start(instance, HUNDRED)
        else:
            argv = peer.start_argv(env, instance.setup)
            assert argv is not None
            command = subprocess.Popen(
                argv, env=instance.process_env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        instance.wait_hellos(HUNDRED)
        elapsed = time.perf_counter() - start
        if command is not None and command.wait(timeout=120) != 0:
            raise BenchmarkError(f"{peer.name}: the start command failed")
        if control is not None:
            with control:
                if not control.makefile("rb").readline().startswith(b"ok"):
                    raise BenchmarkError(f"{peer.name}: the start request failed")
        return elapsed


# --------------------------------------------------------------------------- run


SCENARIOS = ("restart", "storm", "hundred", "zero", "warm")


def select_peers(env: Env, names: Sequence[str] | None) -> tuple[list[Peer], dict[str, str]]:
    """The peers to run (in table order), and the skipped ones with their reasons."""
    chosen = [p for p in ALL_PEERS if names is None or p.name in names]
    if names is not None and FLOOR not in names:
        chosen.insert(0, ALL_PEERS[0])  # ratios need the floor
    peers, skipped = [], {}
    for peer in chosen:
        reason = peer.skip_reason(env)
        if reason is None:
            peers.append(peer)
        else:
            skipped[peer.name] = reason
    return peers, skipped


def _guarded(what: str, results: dict[str, Any], key: str, fn: Any, *args: Any) -> None:
    """Run one scenario; a failure is recorded (and the run goes on), never hidden."""
    try:
        results[key] = fn(*args)
    except FAILURES as exc:
        _log(f"  {what} failed: {describe(exc)}")
        results[key] = {"error": describe(exc)}


def run(plan: Plan, env: Env, peers: Sequence[Peer], skipped: Mapping[str, str],
        scenarios: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    prepare(env, need_erlang=any(isinstance(p, Erlang) for p in peers))
    machine = bench.machine()
    machine["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, Any] = {
        "machine": machine,
        "plan": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in plan.__dict__.items()},
        "peers": {
            peer.name: {
                "label": peer.label,
                "version": peer.version(env),
                "restart_config": peer.restart_config,
                "status": peer.status_how,
            }
            for peer in peers
        },
        "skipped": dict(skipped),
        "children": dict(env.child_labels),
        "floor": FLOOR,
    }
    started = time.perf_counter()
    with bench.bytecode_cache(env.workdir / "pycache"):
        if "restart" in scenarios:
            results["restart"] = {}
            for kind in env.children:
                _log(f"restart latency, {env.child_labels[kind]}: {len(peers)} peers in turn")
                _guarded(f"restart latency ({kind})", results["restart"], kind,
                         restart_scenario, peers, env, kind, plan)  # fmt: skip
        if "storm" in scenarios:
            results["storm"] = {}
            for peer in peers:
                _log(f"crash storm, {peer.name}: {STORM_CHILDREN} children, "
                     f"{plan.storm_seconds:g} s")  # fmt: skip
                _guarded(f"crash storm ({peer.name})", results["storm"], peer.name,
                         storm_scenario, peer, env, plan)  # fmt: skip
        if "hundred" in scenarios:
            _log(f"{HUNDRED} children: cold start, {plan.hundred_rounds} rounds")
            _guarded("hundred", results, "hundred", hundred_scenario, peers, env, plan)
        if "zero" in scenarios:
            _log("no children: memory")
            _guarded("zero", results, "zero", zero_scenario, peers, env)
        if "warm" in scenarios and (warm := [peer for peer in peers if peer.warm]):
            _log(f"warm start of {HUNDRED}: {plan.warm_rounds} rounds")
            _guarded("warm start", results, "warm", warm_scenario, warm, env, plan)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["workdir"] = str(env.workdir)
    results["busy"] = sorted(
        name for name, scenario in _scenario_meters(results) if scenario.get("busy")
    )
    return results


def _scenario_meters(results: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(scenario name, its meter) for every scenario that ran."""
    for kind, scenario in results.get("restart", {}).items():
        if "meter" in scenario:
            yield f"restart latency ({kind})", scenario["meter"]
    for name, scenario in results.get("storm", {}).items():
        if "meter" in scenario:
            yield f"crash storm ({name})", scenario["meter"]
    for key, label in (("hundred", "100 children"), ("zero", "no children"),
                       ("warm", "warm start")):  # fmt: skip
        if "meter" in results.get(key, {}):
            yield label, results[key]["meter"]


# --------------------------------------------------------------------------- report

NA = "n/a"


def _cell(value: object) -> str:
    if value is None:
        return NA
    if isinstance(value, float):
        if value != value:  # nan
            return NA
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...``, or None where a level is missing (a peer not measured)."""
    for key in keys:
        if not isinstance(mapping, Mapping) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


def headline_rows(results: Mapping[str, Any]) -> list[list[object]]:
    """Per peer: restart p50 (C, Python) and ratio to the floor, storm rate, status p99
    in the storm, RSS with 100 children, status command, cold start of 100."""
    rows = []
    floor_rate = _get(results, "storm", FLOOR, "restarts_per_s")
    for name, peer in results["peers"].items():
        rate = _get(results, "storm", name, "restarts_per_s")
        rows.append([
            peer["label"],
            _get(results, "restart", "minimal", "summary", name, "p50"),
            _get(results, "restart", "minimal", "summary", name, "x_p50"),
            _get(results, "restart", "python", "summary", name, "p50"),
            _get(results, "restart", "python", "summary", name, "x_p50"),
            rate,
            f"{rate / floor_rate:.0%}" if rate is not None and floor_rate else None,
            _get(results, "storm", name, "status", "p99"),
            _mib(_get(results, "hundred", "memory", name, "rss")),
            _get(results, "hundred", "status_command", name, "p50"),
            _get(results, "hundred", "cold_start", name, "p50"),
        ])  # fmt: skip
    return rows


HEADLINE = (
    "peer", "restart p50, C child (ms)", "x floor", "restart p50, Python child (ms)",
    "x floor", "storm restarts/s", "of floor", "status p99 in storm (ms)",
    "RSS, 100 children (MiB)", "status command (ms)", "start 100, cold (ms)",
)  # fmt: skip


def markdown(results: Mapping[str, Any]) -> str:
    """The results as markdown tables."""
    m = results["machine"]
    peers = results["peers"]
    out = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, "
        f"{m['implementation']} {m['python']}, trio {m['trio']}; 1/5/15-minute load average "
        f"{' / '.join(map(str, m['loadavg_at_start']))} at start, "
        f"{' / '.join(map(str, m['loadavg_at_end']))} at end; {results['seconds']:.0f} s.",
    ]
    if results["busy"]:
        out.append("")
        out.append(
            f"**Busy machine**: these scenarios began with a 1-minute load average above "
            f"{BUSY_LOAD_PER_CPU} per CPU: {', '.join(results['busy'])}."
        )
    out += ["", "Headline (ratios against the C floor measured in the same run):", ""]
    out += _table(HEADLINE, headline_rows(results))

    out += ["", "Peers and how each is configured for its fastest immediate restart:", ""]
    rows: list[list[object]] = [
        [p["label"], p["version"] or NA, p["restart_config"], p["status"]] for p in peers.values()
    ]
    rows += [
        [name, NA, f"**skipped**: {reason}", NA] for name, reason in results["skipped"].items()
    ]
    out += _table(("peer", "version", "configuration", "status command; API"), rows)

    for kind, scenario in results.get("restart", {}).items():
        out += ["", f"Restart latency, SIGKILL to the replacement's hello (ms; {kind} child, "
                f"{scenario.get('child', '')}):", ""]  # fmt: skip
        if "error" in scenario:
            out.append(f"Failed: {scenario['error']}")
            continue
        for name, error in scenario.get("errors", {}).items():
            out += [f"{peers[name]['label']}: failed: {error}", ""]
        out += _table(
            ("peer", "n", "p50", "p90", "p99", "max", "p50 over floor", "p99 over floor",
             "x floor (p50)"),
            [[peers[name]["label"], s["n"], s["p50"], s["p90"], s["p99"], s["max"],
              s.get("over_p50"), s.get("over_p99"), s.get("x_p50")]
             for name, s in scenario["summary"].items()],
        )  # fmt: skip

    if "storm" in results:
        seconds = results["plan"]["storm_seconds"]
        out += [
            "",
            f"Crash storm: {STORM_CHILDREN} children exiting {STORM_EXIT_MS} ms after they "
            f"start, {seconds:g} s; status API latency from a separate client calling every "
            f"{STATUS_INTERVAL * 1e3:g} ms (ms):",
            "",
        ]
        floor_rate = _get(results, "storm", FLOOR, "restarts_per_s")
        rows = []
        for name, s in results["storm"].items():
            if "error" in s:
                rows.append([peers[name]["label"], f"error: {s['error']}"] + [None] * 7)
                continue
            status = s.get("status") or {}
            rows.append([
                peers[name]["label"], s["restarts_per_s"],
                f"{s['restarts_per_s'] / floor_rate:.0%}" if floor_rate else None,
                s["cpu_percent"], status.get("n"), status.get("p50"), status.get("p99"),
                status.get("max"), s["meter"]["loadavg_before"][0],
            ])  # fmt: skip
        out += _table(("peer", "restarts/s", "of floor", "supervisor CPU % of one core",
                       "status calls", "status p50", "status p99", "status max",
                       "load before"), rows)  # fmt: skip

    hundred = results.get("hundred", {})
    zero = results.get("zero", {})
    warm = results.get("warm", {})
    for label, scenario in (("100 children", hundred), ("no children", zero),
                            ("warm start", warm)):  # fmt: skip
        if "error" in scenario:
            out += ["", f"{label}: failed: {scenario['error']}"]
        for name, error in scenario.get("errors", {}).items():
            out += ["", f"{label}, {name}: failed: {error}"]
    if "memory" in hundred or "memory" in zero:
        out += ["", f"The supervisor at rest (MiB; its helper processes included, the children "
                f"not; idle CPU over {results['plan']['idle_seconds']:g} s with 100 children):",
                ""]  # fmt: skip
        out += _table(
            ("peer", "RSS, no children", "USS, no children", "RSS, 100 children",
             "USS, 100 children", "idle CPU %, 100 children"),
            [[p["label"], _mib(_get(zero, "memory", n, "rss")),
              _mib(_get(zero, "memory", n, "uss")),
              _mib(_get(hundred, "memory", n, "rss")), _mib(_get(hundred, "memory", n, "uss")),
              _get(hundred, "idle_cpu_percent", n)]
             for n, p in peers.items()],
        )  # fmt: skip
    if "cold_start" in hundred or "summary" in warm:
        out += ["", f"Control plane with 100 children (status command: launch to exit, "
                f"{results['plan']['cli_samples']} runs interleaved; API: one persistent client "
                f"calling back to back for {results['plan']['api_seconds']:g} s) and starting "
                f"100 children (cold: launching the supervisor until all 100 said hello, "
                f"{results['plan']['hundred_rounds']} rounds; warm: its start command until "
                f"then, {results['plan']['warm_rounds']} rounds) (ms):",
                ""]  # fmt: skip
        out += _table(
            ("peer", "status command p50", "status command p90", "API calls/s",
             "API call p50", "start 100 cold, p50", "start 100 cold, min",
             "start 100 warm, p50"),
            [[p["label"], _get(hundred, "status_command", n, "p50"),
              _get(hundred, "status_command", n, "p90"),
              _get(hundred, "status_api", n, "calls_per_s"),
              _get(hundred, "status_api", n, "latency", "p50"),
              _get(hundred, "cold_start", n, "p50"), _get(hundred, "cold_start", n, "min"),
              _get(warm, "summary", n, "p50")]
             for n, p in peers.items()],
        )  # fmt: skip

    if paused := hundred.get("paused_while_others_measured"):
        names = ", ".join(peers[n]["label"] for n in paused)
        out += ["", f"(Busy while idle, so paused with SIGSTOP while the others' status "
                f"commands and APIs were measured: {names}.)"]  # fmt: skip
    out += ["", "Load during each scenario (1-minute load average before and after; share of "
            "all CPUs busy, this benchmark included):", ""]  # fmt: skip
    out += _table(
        ("scenario", "load before", "load after", "CPUs busy %", "stolen %", "s", "busy"),
        [[name, m["loadavg_before"][0], m["loadavg_after"][0], m["cpus"]["busy_percent"],
          m["cpus"]["steal_percent"], m["seconds"], "**busy**" if m["busy"] else ""]
         for name, m in _scenario_meters(results)],
    )  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="omnitron next to other supervisors: restart latency, crash storm, "
        "resources, control plane, start-up."
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (under 5 minutes)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="directory for results.json, report.md and the plots",
    )
    parser.add_argument(
        "--peer",
        action="append",
        choices=[p.name for p in ALL_PEERS],
        help="measure this peer (repeatable; the C floor is always measured)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--peers-dir",
        type=Path,
        default=DEFAULT_PEERS_DIR,
        help="where benchmarks/peers/install.sh installed the peers",
    )
    parser.add_argument("--omnitron", help="the omnitron executable")
    parser.add_argument("--no-plots", action="store_true", help="tables and JSON only")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    omnitron = args.omnitron or _find_omnitron()
    # A short work directory: AF_UNIX paths must stay under 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="omc-", dir="/tmp"))
    try:
        env = Env(args.peers_dir, workdir, omnitron=omnitron)
        peers, skipped = select_peers(env, args.peer)
        for name, reason in skipped.items():
            _log(f"skipped {name}: {reason}")
        results = run(plan, env, peers, skipped, args.only or SCENARIOS)
    finally:
        if left := kill_processes_with(str(workdir)):
            _log(f"warning: killed {left} leftover process(es)")
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = markdown(results)
    (args.out / "report.md").write_text(report)
    if not args.no_plots:
        # benchmarks/plots.py; needs matplotlib (the bench extra)
        for path in _load("plots").render(results, args.out):
            _log(f"wrote {path}")
    print(report, end="")
    return 0


def _find_omnitron() -> str:
    try:
        return str(bench.find_omnitron())
    except bench.BenchmarkError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
