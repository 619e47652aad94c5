"""What the omnitron daemon costs, next to baselines measured in the same run.

Usage::

    python benchmarks/daemon.py [--quick] [--json out.json] [--only SCENARIO]...
    python benchmarks/daemon.py --render out.json    # the tables of an earlier run

Every daemon is a real ``omnitron up --foreground`` with its own temporary home
under ``/tmp``; each is stopped with ``omnitron down`` and then ``omnitron kill``
(which also kills any app process still carrying that home's markers), and the
run ends by checking that no process of any of its homes is left.

Scenarios (the first table of the output gathers the core figures, each with
its floor or baseline from the same run and the ratio):

cli
    Wall time of one ``omnitron status`` against a daemon running 100 apps, next to
    ``python -c pass``, ``python -c "import click, msgpack"``, and a bare Python
    process that imports click and msgpack and makes one ``daemon.ping`` call
    (once with a raw socket, once with ``omnitron.rpc.sync_client``).  The
    commands alternate, one run each per round, with ``posix_spawn`` +
    ``waitpid`` around each run.
hundred
    A daemon supervising 100 ``sleep 3600`` processes, laid out as one app with
    ``instances = 100`` and as 100 apps of one process, next to the same daemon
    with no apps and a bare ``posix_spawn`` loop: the time from launching
    ``omnitron up --foreground`` until ``daemon.status`` shows every process
    online (polled), the daemon's own ``daemon_ready`` -> ``apps_started``
    (``logs/daemon.log``), the span between the first and the last ``online``
    line of the app logs, the daemon's resident and unique memory (RSS, USS),
    and its CPU use while idle; beside the embedded library in a fresh
    interpreter (``open_supervisor`` with 0 and 100 sleeps) and a fresh
    interpreter that only imports what the daemon imports, in the same rounds.
rpc
    Round trips per second over the Unix socket (``daemon.ping``), against the
    daemon and against a bare Trio msgpack echo server run in the same way: one
    persistent blocking client, one asynchronous client with 32 calls in flight
    (``omnitron.rpc.connect_unix``), a raw socket keeping 32 requests in flight,
    and 8 client processes with the blocking client; the median of 3 runs of 2 s
    (one run of 1 s with ``--quick``).  Also ``daemon.status`` with 32 in flight
    against the echo server (the raw socket decoding every reply, and only
    framing them), and sequentially.
storm
    20 apps whose processes exit 50 ms after they start, restarted at once, for
    10 s (3 s with ``--quick``): restarts per second (the daemon's restart
    counters), the daemon's CPU, and the latency of ``daemon.status`` seen by a
    separate client polling every 10 ms, next to the same latency with 20 idle
    apps, to the restart rate of a bare spawn loop, and to the embedded library
    alone in a fresh interpreter (the same children, set up as the daemon sets
    up its apps: ready on spawn, output read as lines; its own CPU and
    ``ChildStarted`` events).
cold
    ``omnitron up`` (detached, the real CLI) of 100 apps: launch to the 100th
    ``online`` line of the app logs and to the command's exit (apps settled),
    interleaved with the embedded library (launch to its ``open_supervisor``
    body) and a fresh interpreter that spawns 100 sleeps (the floor).
warm
    ``omnitron start all`` of 100 stopped apps: launch to exit and to the 100th
    ``online`` line, next to a one-shot CLI call plus a bare spawn loop of 100.
backoff
    ``daemon.status`` latency (200 sequential calls) and a stop then start of
    another app, against 20 idle apps, with and without an app waiting 30 s
    before its restart.

Every scenario records the 1-minute load average before and after it.

Every Python process the run starts caches its bytecode under the work directory
(``PYTHONPYCACHEPREFIX``), as an installed package has its ``.pyc`` files, unless
``--no-bytecode-cache`` is given; before the scenarios, one discarded daemon run
with 100 apps compiles what the daemon loads only once running.  The markdown
tables go to stdout, progress to stderr, and ``--json FILE`` writes every figure
with the machine it ran on.  Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import trio

from omnitron.rpc.sync_client import connect_unix_sync

HERE = Path(__file__).resolve().parent

CLI_APPS = 100  # the daemon the CLI and RPC scenarios talk to supervises 100 processes
HUNDRED = 100
STORM_APPS = 20
STORM_EXIT_MS = 50
STORM_WARMUP = 0.5  # seconds after all apps have started, before counting
STATUS_POLL_INTERVAL = 0.010  # the storm's status client: one call, then this pause
READY_POLL_INTERVAL = 0.005  # polling for "all 100 online"
RPC_WINDOW = 32  # requests in flight per connection (the daemon's own limit)
RPC_CLIENTS = 8
DAEMON_TIMEOUT = 60.0
BACKOFF_SECONDS = 30  # the backoff scenario's app waits this long before its restart
BACKOFF_CALLS = 200  # daemon.status calls timed in each phase of the backoff scenario

# The embedded library with N ``sleep 3600`` children under one supervisor, in a
# fresh interpreter: prints "ready" once ``open_supervisor`` has started them all,
# then waits.  argv: N, the sleep executable.
LIBRARY = """\
import sys
import trio
from supervision import ChildSpec, ProcessChild, Strategy, SupervisorSpec, open_supervisor

count, sleep = int(sys.argv[1]), sys.argv[2]
spec = SupervisorSpec(
    name="lib",
    strategy=Strategy.ONE_FOR_ONE,
    children=[ChildSpec(f"c{i:03d}", ProcessChild([sleep, "3600"])) for i in range(count)],
)


async def main():
    async with open_supervisor(spec):
        print("ready", flush=True)
        await trio.sleep_forever()


try:
    trio.run(main)
except KeyboardInterrupt:  # how the benchmark stops it: the children are stopped by then
    pass
"""

# The crash storm through the embedded library alone, in a fresh interpreter: N
# copies of ARGV under one supervisor set up as the storm's daemon sets up its
# apps (one_for_one, no backoff, a million restarts a second, ready on spawn,
# output read as lines), counted for SECONDS after WARMUP from the tree's own
# ChildStarted events; prints one JSON line (restarts, seconds, cpu_seconds of
# the process while counting).  argv: N, WARMUP, SECONDS, ARGV...
LIBRARY_STORM = """\
import json, resource, sys, time
import trio
from supervision import (
    Backoff, ChildSpec, Intensity, Output, ProcessChild, Strategy, SupervisorSpec,
    open_supervisor,
)
from supervision.events import ChildStarted

count, warmup, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
argv = sys.argv[4:]
lines = Output.lines(lambda line: None)
spec = SupervisorSpec(
    name="lib",
    strategy=Strategy.ONE_FOR_ONE,
    intensity=Intensity(max_restarts=10**6, window=1.0),
    backoff=Backoff.none(),
    children=[
        ChildSpec(f"c{i:02d}", ProcessChild(argv, stdout=lines, stderr=lines))
        for i in range(count)
    ],
)


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main():
    async with open_supervisor(spec) as sup:
        await trio.sleep(warmup)
        restarts = 0
        with sup.subscribe() as events:
            begin, used = time.perf_counter(), cpu()
            with trio.move_on_after(seconds):
                async for event in events:
                    restarts += isinstance(event, ChildStarted)
            elapsed, used = time.perf_counter() - begin, cpu() - used
        print(json.dumps({"restarts": restarts, "seconds": elapsed, "cpu_seconds": used}))


trio.run(main)
"""

# What importing the daemon costs: a fresh interpreter that does what the daemon's
# entry point does before ``trio.run`` (stand-ins for unused modules, then the
# daemon's modules), prints "ready" and waits.  argv: ignored.
IMPORT_ONLY = """\
import signal
from omnitron.daemon import _entry

_entry.defer_unused_modules()
import trio
from omnitron.daemon._main import run_daemon

print("ready", flush=True)
try:
    signal.pause()
except KeyboardInterrupt:  # how the benchmark stops it
    pass
"""

# The cold-start floor: a fresh interpreter that posix_spawns N sleeps (new
# sessions) and exits.  argv: N, the sleep executable.
SPAWN_FLOOR = """\
import os, sys
count, sleep = int(sys.argv[1]), sys.argv[2]
for _ in range(count):
    os.posix_spawn(sleep, [sleep, "3600"], os.environ, setsid=True)
"""

# A bare Trio msgpack-rpc server: one task per connection, every request answered
# in order with the reply daemon.ping gives.  argv[1] is the socket path.
ECHO_SERVER = """\
import socket, sys
import msgpack, trio

REPLY = {"pong": True}


async def handle(stream):
    unpacker = msgpack.Unpacker(max_buffer_size=1 << 20)
    async with stream:
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            unpacker.feed(data)
            for message in unpacker:
                await stream.send_all(msgpack.packb([1, message[1], None, REPLY]))


async def main(path):
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(256)
    await trio.serve_listeners(handle, [trio.SocketListener(sock)])


trio.run(main, sys.argv[1])
"""

# One of the concurrent clients: connect, wait for the common start, call
# daemon.ping until the common end, print the count.  argv: path, start, end.
PING_CLIENT = """\
import sys, time
from omnitron.rpc.sync_client import connect_unix_sync

path, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
with connect_unix_sync(path, timeout=10) as client:
    client.call("daemon.ping")
    while time.time() < start:
        time.sleep(0.001)
    count = 0
    while time.time() < end:
        client.call("daemon.ping")
        count += 1
print(count)
"""

WARM_IMPORTS = (
    "import omnitron.cli._main, omnitron.cli._daemon, omnitron.cli._render, "
    "omnitron.daemon._main, omnitron.rpc._client, omnitron.rpc.sync_client, click, msgpack"
)

# The "one socket call" baselines of the CLI scenario.  argv[1] is the socket path.
RAW_PING = (
    "import socket, sys, click, msgpack\n"
    "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
    "s.sendall(msgpack.packb([0, 1, 'daemon.ping', []]))\n"
    "u = msgpack.Unpacker()\n"
    "while True:\n"
    "    u.feed(s.recv(65536))\n"
    "    if next(u, None) is not None: break\n"
)
SYNC_PING = (
    "import sys, click, msgpack\n"
    "from omnitron.rpc.sync_client import connect_unix_sync\n"
    "with connect_unix_sync(sys.argv[1]) as c: c.call('daemon.ping')\n"
)


class BenchmarkError(RuntimeError):
    """The benchmark could not take a valid measurement."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def spread_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50, min and max of samples in seconds, in milliseconds (0.1 ms)."""
    return {
        "p50": round(percentile(samples, 50) * 1e3, 1),
        "min": round(min(samples) * 1e3, 1),
        "max": round(max(samples) * 1e3, 1),
    }


def summarize_ms(samples: Sequence[float]) -> dict[str, float]:
    """n/mean/p50/p90/p99/min/max of samples in seconds, in milliseconds."""

    def ms(seconds: float) -> float:
        return round(seconds * 1e3, 3)

    return {
        "n": len(samples),
        "mean": ms(sum(samples) / len(samples)),
        "p50": ms(percentile(samples, 50)),
        "p90": ms(percentile(samples, 90)),
        "p99": ms(percentile(samples, 99)),
        "min": ms(min(samples)),
        "max": ms(max(samples)),
    }


# --------------------------------------------------------------------------- /proc


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads, exited ones too)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_jiffies() -> dict[str, int]:
    """Machine-wide CPU time by kind (all CPUs, clock ticks), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return dict(zip(names, map(int, fields[1:9]), strict=True))


def machine_usage(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Share of all CPUs' time that was busy and that was stolen (by the hypervisor)."""
    delta = {k: after[k] - before[k] for k in before}
    total = sum(delta.values()) or 1
    return {
        "busy_percent": round(100 * (total - delta["idle"] - delta["iowait"]) / total, 1),
        "steal_percent": round(100 * delta["steal"] / total, 1),
    }


def thread_counters(pid: int) -> dict[int, tuple[int, int]]:
    """Per live thread of ``pid``: (ns on CPU, context switches), from /proc."""
    counters: dict[int, tuple[int, int]] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                ns = int(f.read().split()[0])
            switches = 0
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
            counters[int(task)] = (ns, switches)
    return counters


def _counter_delta(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> tuple[int, int]:
    """CPU ns and context switches between two readings, over the threads alive at the end
    (a thread that exited in between is left out, one that started counts from zero)."""
    ns = switches = 0
    for tid, (end_ns, end_switches) in after.items():
        start_ns, start_switches = before.get(tid, (0, 0))
        ns += end_ns - start_ns
        switches += end_switches - start_switches
    return ns, switches


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon, RssFile, Threads (/proc/PID/status), Pss
    (/proc/PID/smaps_rollup: shared pages divided among the processes that map them)
    and Uss (its private pages: Private_Clean + Private_Dirty, what ``psutil``'s
    ``memory_full_info().uss`` reports)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Pss":
                out[key] = int(value.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                out["Uss"] = out.get("Uss", 0) + int(value.split()[0])
    return out


def processes_of_home(home: Path) -> list[int]:
    """Pids of this user's processes whose environment has OMNITRON_HOME=home."""
    marker = b"OMNITRON_HOME=" + os.fsencode(str(home)) + b"\0"
    uid = os.getuid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read() + b"\0":
                    found.append(int(entry))
    return found


# --------------------------------------------------------------------------- daemons


def app_toml(name: str, argv: Sequence[str], *, instances: int = 1) -> str:
    lines = ["[[apps]]", f'name = "{name}"', f"command = {json.dumps(list(argv))}"]
    if instances != 1:
        lines.append(f"instances = {instances}")
    return "\n".join(lines) + "\n"


def _parse_utc(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


_DAEMON_EVENT = re.compile(r"^timestamp='([^']+)' level='\w+' event='(\w+)'")
_ONLINE_LINE = re.compile(r"^(\S+) omnitron\[-\] sys \| instance \d+ online \(pid \d+\)$")


class Daemon:
    """One ``omnitron up --foreground`` with its own home, config and output file."""

    def __init__(self, omnitron: str, workdir: Path, name: str, config: str) -> None:
        self.omnitron = omnitron
        self.home = workdir / name
        self.config = workdir / f"{name}.toml"
        self.config.write_text(config)
        self.output = workdir / f"{name}.out"
        self.socket = str(self.home / "daemon.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.launched_wall = 0.0  # time.time() just before the launch
        self.launched = 0.0  # time.perf_counter() just before the launch

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        argv = [self.omnitron, "--home", str(self.home), "up", "--foreground"]
        argv += ["--config", str(self.config)]
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        with open(self.output, "wb") as out:
            self.launched_wall = time.time()
            self.launched = time.perf_counter()
            # In the work directory: an interpreter started with -m (an older
            # --omnitron's daemon) puts its directory first on sys.path, and the
            # repository's own packages would replace the ones it installed.
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                start_new_session=True, cwd=self.home.parent,
            )  # fmt: skip

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.output.read_text(errors="replace")[-2000:]
            raise BenchmarkError(f"the daemon exited ({self.proc.returncode}):\n{tail}")

    def wait_socket(self) -> float:
        """Wait until ``daemon.ping`` answers; seconds since the launch."""
        deadline = time.perf_counter() + DAEMON_TIMEOUT
        while True:
            self._check_alive()
            with (
                contextlib.suppress(OSError),
                connect_unix_sync(self.socket, timeout=5) as client,
            ):
                client.call("daemon.ping")
                return time.perf_counter() - self.launched
            if time.perf_counter() > deadline:
                raise BenchmarkError(f"no answer on {self.socket} within {DAEMON_TIMEOUT} s")
            time.sleep(0.002)

    def wait_online(self, processes: int, interval: float = READY_POLL_INTERVAL) -> float:
        """Poll ``daemon.status`` until ``processes`` are online; seconds since the launch."""
        self.wait_socket()
        deadline = time.perf_counter() + DAEMON_TIMEOUT
        with connect_unix_sync(self.socket, timeout=30) as client:
            while True:
                status = client.call("daemon.status")
                now = time.perf_counter()
                online = sum(
                    p["status"] == "online" for app in status["apps"] for p in app["processes"]
                )
                if online >= processes:
                    return now - self.launched
                self._check_alive()
                if now > deadline:
                    raise BenchmarkError(f"{online} of {processes} online after {DAEMON_TIMEOUT} s")
                time.sleep(interval)

    def wait_event(self, event: str) -> float:
        """Wait for ``event`` in logs/daemon.log; its timestamp (time.time() scale)."""
        deadline = time.perf_counter() + DAEMON_TIMEOUT
        while time.perf_counter() < deadline:
            events = self.daemon_events()
            if event in events:
                return events[event]
            self._check_alive()
            time.sleep(0.01)
        raise BenchmarkError(f"no {event} in the daemon log within {DAEMON_TIMEOUT} s")

    def daemon_events(self) -> dict[str, float]:
        """First timestamp of each event in logs/daemon.log."""
        events: dict[str, float] = {}
        with contextlib.suppress(FileNotFoundError), open(self.home / "logs" / "daemon.log") as f:
            for line in f:
                match = _DAEMON_EVENT.match(line)
                if match and match.group(2) not in events:
                    events[match.group(2)] = _parse_utc(match.group(1))
        return events

    def online_times(self) -> list[float]:
        """Timestamps of every ``instance N online`` line in the app logs (ms resolution)."""
        times = []
        for path in (self.home / "logs").glob("*.log"):
            if path.name == "daemon.log":
                continue
            for line in path.read_text(errors="replace").splitlines():
                match = _ONLINE_LINE.match(line)
                if match:
                    times.append(_parse_utc(match.group(1)))
        return sorted(times)

    def stop(self) -> None:
        """``omnitron down``, then ``omnitron kill``; never leaves the process behind."""
        if self.proc is None:
            return
        base = [self.omnitron, "--home", str(self.home)]
        try:
            if self.proc.poll() is None:
                subprocess.run(
                    [*base, "down", "--wait-timeout", "30"], capture_output=True, timeout=60
                )
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=30)
        finally:
            subprocess.run([*base, "kill"], capture_output=True, timeout=60)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=30)
            left = processes_of_home(self.home)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if left:
                _log(f"warning: killed {len(left)} process(es) left behind by {self.home}")
            self.proc = None


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- cli


def _spawn_wait(argv: Sequence[str], env: Mapping[str, str]) -> float:
    """Seconds from posix_spawn until the process has exited (its output to /dev/null)."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
    ]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise BenchmarkError(f"{argv} exited with {os.waitstatus_to_exitcode(status)}")
    return elapsed


def cli_commands(omnitron: str, daemon: Daemon) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import click, msgpack'": [py, "-c", "import click, msgpack"],
        "click + msgpack + daemon.ping (raw socket)": [py, "-c", RAW_PING, daemon.socket],
        "click + msgpack + daemon.ping (sync client)": [py, "-c", SYNC_PING, daemon.socket],
        "omnitron status": [omnitron, "--home", str(daemon.home), "status"],
    }


def cli_scenario(omnitron: str, daemon: Daemon, samples: int, warmup: int) -> dict[str, Any]:
    commands = cli_commands(omnitron, daemon)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON")}
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for i in range(warmup + samples):
        # Round robin, the order rotating, so no command always follows the same one.
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = _spawn_wait(commands[name], env)
            if i >= warmup:
                times[name].append(elapsed)
    result: dict[str, Any] = {"apps": CLI_APPS, "commands": {}}
    for name in names:
        result["commands"][name] = summarize_ms(times[name])
    floor = result["commands"]["python -c pass"]["mean"]
    for stats in result["commands"].values():
        stats["over_python_ms"] = round(stats["mean"] - floor, 3)
    return result


# --------------------------------------------------------------------------- 100 children


def _floor_spawn_many(count: int) -> float:
    """Seconds a bare loop takes to posix_spawn ``count`` sleeps (new sessions)."""
    sleep = shutil.which("sleep") or "/bin/sleep"
    env = dict(os.environ)
    pids = []
    try:
        start = time.perf_counter()
        for _ in range(count):
            pids.append(os.posix_spawn(sleep, [sleep, "3600"], env, setsid=True))
        return time.perf_counter() - start
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def idle_usage(pid: int, seconds: float) -> dict[str, float]:
    """CPU % of one core and wakeups (context switches) per second over ``seconds``.

    ``cpu_percent`` is from /proc/PID/stat (clock ticks, every thread including
    exited ones); ``cpu_percent_ns`` and ``wakeups_per_s`` are from the threads'
    schedstat and status (nanoseconds; threads alive at the end).
    """
    cpu, threads, start = cpu_seconds(pid), thread_counters(pid), time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - start
    ns, switches = _counter_delta(threads, thread_counters(pid))
    return {
        "seconds": round(elapsed, 2),
        "cpu_percent": round(100 * (cpu_seconds(pid) - cpu) / elapsed, 3),
        "cpu_resolution_percent": round(100 / _TICK / elapsed, 3),
        "cpu_percent_ns": round(100 * ns / 1e9 / elapsed, 4),
        "wakeups_per_s": round(switches / elapsed, 1),
    }


def hundred_layouts() -> dict[str, tuple[int, str]]:
    """Layout name -> (processes, the [[apps]] part of the config)."""
    sleep = shutil.which("sleep") or "/bin/sleep"
    argv = [sleep, "3600"]
    return {
        "no apps": (0, ""),
        "1 app x 100 instances": (HUNDRED, app_toml("s", argv, instances=HUNDRED)),
        "100 apps x 1": (HUNDRED, "".join(app_toml(f"s{i:03d}", argv) for i in range(HUNDRED))),
    }


def _one_start(daemon: Daemon, processes: int, settle: float) -> dict[str, Any]:
    # The poll sees "all online" at most one interval (plus one status call) late.
    polled = daemon.wait_online(processes) if processes else daemon.wait_socket()
    ready_at = daemon.wait_event("daemon_ready")
    started_at = daemon.wait_event("apps_started")
    events = daemon.daemon_events()
    # App log lines are written in batches, off the event loop: give them time to land.
    deadline = time.perf_counter() + 10
    while len(online := daemon.online_times()) < processes and time.perf_counter() < deadline:
        time.sleep(0.05)
    if len(online) != processes:
        raise BenchmarkError(f"{len(online)} online lines in the app logs, expected {processes}")
    launched = daemon.launched_wall
    sample: dict[str, Any] = {
        "launch_to_all_online_polled_s": polled,
        "launch_to_daemon_starting_s": events["daemon_starting"] - launched,
        "launch_to_daemon_ready_s": ready_at - launched,
        "launch_to_apps_started_s": started_at - launched,
        "daemon_ready_to_apps_started_s": started_at - ready_at,
        "first_to_last_online_s": (online[-1] - online[0]) if online else 0.0,
    }
    time.sleep(settle)
    sample["memory_kib"] = memory_kib(daemon.pid)
    return sample


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of ``proc``'s stdout within ``timeout`` seconds (blocking read, no polling)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise BenchmarkError(f"no output from pid {proc.pid} within {timeout} s")
    return proc.stdout.readline()


def _marked_env(home: Path) -> dict[str, str]:
    """The environment with ``OMNITRON_HOME=home``: the run's final sweep finds what
    carries it (the library's children inherit it), even if a stop fails."""
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env["OMNITRON_HOME"] = str(home)
    return env


def _stop_python(proc: subprocess.Popen[bytes], home: Path) -> None:
    """SIGINT (Trio cancels, the supervisor stops its children), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid in processes_of_home(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def library_start(
    workdir: Path,
    name: str,
    count: int,
    settle: float,
    code: str = LIBRARY,
    options: Sequence[str] = (),
) -> dict[str, Any]:
    """The embedded library in a fresh interpreter with ``count`` sleeps (or another
    ``code`` that prints "ready"): launch → ready, then its memory after ``settle``
    seconds."""
    sleep = shutil.which("sleep") or "/bin/sleep"
    home = workdir / name
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *options, "-c", code, str(count), sleep],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=_marked_env(home),
        start_new_session=True,
    )
    try:
        line = _read_line(proc, DAEMON_TIMEOUT)
        ready = time.perf_counter() - start
        if line.strip() != b"ready":
            raise BenchmarkError(f"the library process said {line!r}")
        time.sleep(settle)
        return {"launch_to_ready_s": ready, "memory_kib": memory_kib(proc.pid)}
    finally:
        _stop_python(proc, home)


def spawn_floor_cold(workdir: Path, count: int) -> float:
    """Seconds from launching a fresh interpreter that posix_spawns ``count`` sleeps until
    it exits (the sleeps are then killed)."""
    sleep = shutil.which("sleep") or "/bin/sleep"
    home = workdir / "floor-cold"
    env = _marked_env(home)
    try:
        return _spawn_wait([sys.executable, "-c", SPAWN_FLOOR, str(count), sleep], env)
    finally:
        for pid in processes_of_home(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


LIBRARY_LAYOUTS = {"library, no children": 0, "library, 100 children": HUNDRED}


def hundred_scenario(
    omnitron: str,
    workdir: Path,
    rounds: int,
    idle_seconds: float,
    settle: float,
    daemon_flags: Sequence[str] = (),
) -> dict[str, Any]:
    """Memory and start of 100 processes, the daemon beside the embedded library.

    The imports-only process runs with the daemon's interpreter options
    (``daemon_flags``: ``-OO`` leaves out the docstrings); the library runs as an
    embedding program does by default.
    """
    layouts = hundred_layouts()
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
    library: dict[str, list[dict[str, Any]]] = {name: [] for name in LIBRARY_LAYOUTS}
    idle: dict[str, dict[str, float]] = {}
    floor: list[float] = []
    imports: list[dict[str, Any]] = []
    for r in range(rounds):
        floor.append(_floor_spawn_many(HUNDRED))
        imports.append(library_start(workdir, f"i{r}", 0, settle, IMPORT_ONLY, daemon_flags))
        for index, (name, count) in enumerate(LIBRARY_LAYOUTS.items()):
            library[name].append(library_start(workdir, f"l{index}r{r}", count, settle))
        for index, (name, (processes, apps)) in enumerate(layouts.items()):
            config = f'project = "h{index}"\n' + apps
            daemon = Daemon(omnitron, workdir, f"h{index}r{r}", config)
            with running(daemon):
                samples[name].append(_one_start(daemon, processes, settle))
                if r == rounds - 1:
                    idle[name] = idle_usage(daemon.pid, idle_seconds)
                    idle[name]["rss_kib_after"] = memory_kib(daemon.pid)["VmRSS"]
    result: dict[str, Any] = {
        "processes": HUNDRED,
        "rounds": rounds,
        "floor_spawn_100_ms": {
            "p50": round(percentile(floor, 50) * 1e3, 2),
            "min": round(min(floor) * 1e3, 2),
        },
        "layouts": {},
    }
    for name, rows in samples.items():
        layout: dict[str, Any] = {"processes": layouts[name][0]}
        for key in rows[0]:
            if key.endswith("_s"):
                values = [row[key] for row in rows]
                layout[key[:-2] + "_ms"] = spread_ms(values)
        layout.update(_memory_medians(rows))
        layout["idle"] = idle[name]
        result["layouts"][name] = layout
    result["library"] = {}
    for name, rows in library.items():
        ready = [row["launch_to_ready_s"] for row in rows]
        result["library"][name] = {
            "processes": LIBRARY_LAYOUTS[name],
            "launch_to_ready_ms": spread_ms(ready),
            **_memory_medians(rows),
        }
    result["daemon_imports_only"] = _memory_medians(imports)
    base = result["layouts"]["no apps"]
    for layout in result["layouts"].values():
        if layout["processes"]:
            extra = layout["VmRSS"] - base["VmRSS"]
            layout["rss_over_no_apps_kib"] = extra
            layout["rss_per_process_kib"] = round(extra / layout["processes"], 1)
    return result


def _memory_medians(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    out = {}
    for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Pss", "Uss", "Threads"):
        values = [row["memory_kib"][key] for row in rows if key in row["memory_kib"]]
        if values:
            out[key] = int(percentile(values, 50))
    return out


# --------------------------------------------------------------------------- rpc


def rate_sequential(path: str, seconds: float, method: str = "daemon.ping") -> dict[str, float]:
    with connect_unix_sync(path, timeout=10) as client:
        for _ in range(100):
            client.call(method)
        count, start = 0, time.perf_counter()
        end = start + seconds
        while time.perf_counter() < end:
            client.call(method)
            count += 1
        elapsed = time.perf_counter() - start
    return {"calls": count, "per_s": round(count / elapsed, 1)}


async def _rate_async(path: str, seconds: float, concurrency: int) -> dict[str, float]:
    from omnitron.rpc import connect_unix

    count = 0
    async with connect_unix(path) as client:
        await client.call("daemon.ping")
        start = time.perf_counter()
        end = start + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < end:
                await client.call("daemon.ping")
                count += 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - start
    return {"calls": count, "per_s": round(count / elapsed, 1)}


def rate_async(path: str, seconds: float, concurrency: int = RPC_WINDOW) -> dict[str, float]:
    return trio.run(_rate_async, path, seconds, concurrency)


def _ok_replies(data: bytes) -> tuple[int, int]:
    """Complete replies at the start of ``data`` and the bytes they take, without
    building their results (``Unpacker.skip``); each must carry no error."""
    unpacker = msgpack.Unpacker(max_buffer_size=64 << 20)
    unpacker.feed(data)
    done = end = 0
    while True:
        try:
            unpacker.skip()
        except msgpack.OutOfData:
            return done, end
        head = msgpack.Unpacker()
        head.feed(data[end : end + 16])  # [1, msgid, error, result]: the error is nil
        if head.read_array_header() != 4 or head.unpack() != 1:
            raise BenchmarkError("not a reply")
        head.unpack()
        if data[end + head.tell()] != 0xC0:
            message = msgpack.unpackb(data[end : unpacker.tell()])
            raise BenchmarkError(f"error reply: {message[2]}")
        done, end = done + 1, unpacker.tell()


def rate_raw_window(
    path: str,
    seconds: float,
    window: int = RPC_WINDOW,
    method: str = "daemon.ping",
    *,
    decode: bool = True,
) -> dict[str, float]:
    """A bare socket keeping ``window`` requests of ``method`` in flight (a sliding window).

    Every request gets a new msgid: the daemon may still count a msgid as in flight
    for a moment after its reply was sent, and refuses a reuse. With ``decode``, every
    reply is decoded into Python objects (what a client that reads the answer pays:
    for ``daemon.status`` of 100 apps, more than the server's own work); without,
    replies are only framed and checked for an error, so the server is what is timed.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    unpacker = msgpack.Unpacker(max_buffer_size=64 << 20)
    pending = b""
    next_msgid = 0

    def requests(n: int) -> bytes:
        nonlocal next_msgid
        first, next_msgid = next_msgid, next_msgid + n
        return b"".join(msgpack.packb([0, i, method, []]) for i in range(first, first + n))

    try:
        sock.sendall(requests(window))
        count, start = 0, time.perf_counter()
        stopping = False
        in_flight = window
        elapsed = 0.0
        while in_flight:
            data = sock.recv(1 << 18)
            if not data:
                raise BenchmarkError("the server closed the connection")
            done = 0
            if decode:
                unpacker.feed(data)
                for message in unpacker:
                    if message[2] is not None:
                        raise BenchmarkError(f"error reply: {message[2]}")
                    done += 1
            else:
                pending += data
                done, used = _ok_replies(pending)
                pending = pending[used:]
            in_flight -= done
            if not stopping:
                count += done
                elapsed = time.perf_counter() - start
                stopping = elapsed >= seconds
            if not stopping and done:
                sock.sendall(requests(done))
                in_flight += done
    finally:
        sock.close()
    return {"calls": count, "per_s": round(count / elapsed, 1)}


def rate_clients(path: str, seconds: float, clients: int = RPC_CLIENTS) -> dict[str, float]:
    """``clients`` processes, each with one blocking client, over the same window."""
    start = time.time() + 1.0 + 0.1 * clients  # time for every process to start and connect
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PING_CLIENT, path, repr(start), repr(start + seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    counts = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise BenchmarkError(f"a client exited with {proc.returncode}")
        counts.append(int(out))
    if time.time() < start:
        raise BenchmarkError("the clients finished before the window began")
    return {"calls": sum(counts), "per_s": round(sum(counts) / seconds, 1), "clients": clients}


RPC_CLIENT_KINDS: dict[str, Callable[[str, float], dict[str, float]]] = {
    "1 client, sequential (sync client)": rate_sequential,
    f"1 client, {RPC_WINDOW} in flight (async client)": rate_async,
    f"1 client, {RPC_WINDOW} in flight (raw socket)": lambda path, seconds: rate_raw_window(
        path, seconds, method="daemon.ping"
    ),
    f"{RPC_CLIENTS} client processes, sequential (sync client)": rate_clients,
    f"1 client, {RPC_WINDOW} in flight (raw socket, replies decoded), daemon.status": (
        lambda path, seconds: rate_raw_window(path, seconds, method="daemon.status")
    ),
    f"1 client, {RPC_WINDOW} in flight (raw socket, replies skipped), daemon.status": (
        lambda path, seconds: rate_raw_window(path, seconds, method="daemon.status", decode=False)
    ),
}


@contextlib.contextmanager
def echo_server(workdir: Path) -> Iterator[str]:
    path = str(workdir / "echo.sock")
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, path])
    try:
        deadline = time.perf_counter() + 30
        while True:
            with contextlib.suppress(OSError), connect_unix_sync(path, timeout=5) as client:
                client.call("daemon.ping")
                break
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise BenchmarkError("the echo server did not start")
            time.sleep(0.01)
        yield path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rpc_scenario(daemon: Daemon, workdir: Path, seconds: float, repeats: int) -> dict[str, Any]:
    """Each client kind against both servers, ``repeats`` times, the servers alternating.

    Sequential ping-pong between two processes on a small machine depends on where
    the scheduler puts them (same CPU or not), so single runs vary: the table gives
    the median of the repeats, the JSON every run.
    """
    result: dict[str, Any] = {
        "seconds": seconds,
        "repeats": repeats,
        "method": "daemon.ping",
        "clients": {},
    }
    with echo_server(workdir) as echo:
        for kind, measure in RPC_CLIENT_KINDS.items():
            _log(f"  {kind}")
            runs: dict[str, list[dict[str, float]]] = {"echo server": [], "daemon": []}
            targets = [("echo server", echo), ("daemon", daemon.socket)]
            for i in range(repeats):
                for target, path in targets if i % 2 else targets[::-1]:
                    cpu = cpu_seconds(daemon.pid)
                    sample = measure(path, seconds)
                    if target == "daemon":
                        used = cpu_seconds(daemon.pid) - cpu
                        calls = max(1, sample["calls"])
                        sample["daemon_cpu_us_per_call"] = round(1e6 * used / calls, 1)
                    runs[target].append(sample)
            row: dict[str, Any] = {"runs": runs}
            for target, target_runs in runs.items():
                rates = [run["per_s"] for run in target_runs]
                row[target] = {
                    "per_s": percentile(rates, 50),
                    "min_per_s": min(rates),
                    "max_per_s": max(rates),
                }
            row["daemon"]["daemon_cpu_us_per_call"] = percentile(
                [run["daemon_cpu_us_per_call"] for run in runs["daemon"]], 50
            )
            row["of_echo_server"] = round(row["daemon"]["per_s"] / row["echo server"]["per_s"], 3)
            result["clients"][kind] = row
    status = rate_sequential(daemon.socket, seconds, "daemon.status")
    result["status_sequential"] = {**status, "apps": CLI_APPS}
    return result


# --------------------------------------------------------------------------- crash storm


def _load_restart_latency() -> ModuleType:
    path = HERE / "restart_latency.py"
    spec = importlib.util.spec_from_file_location("restart_latency", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def storm_child(workdir: Path) -> tuple[list[str], str]:
    """The crashing child: ``argv`` that exits 50 ms after it starts, and what it is."""
    cc = shutil.which("cc")
    if cc is not None:
        exe = workdir / "notify_child"
        subprocess.run([cc, "-O2", "-o", str(exe), str(HERE / "notify_child.c")], check=True)
        return [str(exe)], "C program (cc -O2)"
    sh = shutil.which("sh") or "/bin/sh"
    return [sh, "-c", 'sleep "$1"; exit 1', "child"], "sh -c 'sleep; exit 1'"


def _storm_argv(argv: list[str], exit_ms: int | None) -> list[str]:
    if exit_ms is None:
        return argv if len(argv) == 1 else [*argv, "3600"]
    return [*argv, str(exit_ms)] if len(argv) == 1 else [*argv, f"{exit_ms / 1000:.3f}"]


def storm_config(name: str, argv: list[str], exit_ms: int | None) -> str:
    head = (
        f'project = "{name}"\n'
        "[supervision]\n"
        "max_restarts = 1000000\n"
        'window = "1s"\n'
        'backoff = { initial = "0s", max = "0s", factor = 1 }\n'
    )
    return head + "".join(
        app_toml(f"c{i:02d}", _storm_argv(argv, exit_ms)) for i in range(STORM_APPS)
    )


class StatusProbe:
    """A separate client calling ``daemon.status`` every STATUS_POLL_INTERVAL, timing each."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stop = threading.Event()
        self.samples: list[float] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with connect_unix_sync(self._path, timeout=30) as client:
                while not self._stop.is_set():
                    start = time.perf_counter()
                    client.call("daemon.status")
                    self.samples.append(time.perf_counter() - start)
                    self._stop.wait(STATUS_POLL_INTERVAL)
        except Exception as exc:  # reported by the scenario
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> StatusProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _restarts(path: str) -> int:
    with connect_unix_sync(path, timeout=30) as client:
        return sum(app["restarts"] for app in client.call("daemon.status")["apps"])


def storm_scenario(omnitron: str, workdir: Path, seconds: float) -> dict[str, Any]:
    argv, label = storm_child(workdir)
    result: dict[str, Any] = {
        "child": label,
        "apps": STORM_APPS,
        "exit_after_ms": STORM_EXIT_MS,
        "seconds": seconds,
        "status_poll_interval_ms": STATUS_POLL_INTERVAL * 1e3,
    }

    _log(f"  status latency with {STORM_APPS} idle apps")
    idle = Daemon(omnitron, workdir, "si", storm_config("idle", argv, None))
    with running(idle):
        idle.wait_online(STORM_APPS)
        time.sleep(STORM_WARMUP)
        with StatusProbe(idle.socket) as probe:
            time.sleep(0.1)
            cpu, begin = cpu_seconds(idle.pid), time.perf_counter()
            time.sleep(min(seconds / 3, 3.0))
            cpu, elapsed = cpu_seconds(idle.pid) - cpu, time.perf_counter() - begin
    if probe.errors:
        raise BenchmarkError(f"status probe failed: {probe.errors[0]}")
    result["status_idle"] = summarize_ms(probe.samples[5:])
    # What answering the probe alone costs the daemon (included in the storm's CPU).
    result["status_idle"]["daemon_cpu_percent"] = round(100 * cpu / elapsed, 1)

    _log(f"  crash storm through the daemon, {seconds:g} s")
    storm = Daemon(omnitron, workdir, "ss", storm_config("storm", argv, STORM_EXIT_MS))
    with running(storm):
        storm.wait_socket()
        storm.wait_event("apps_started")
        time.sleep(STORM_WARMUP)
        with StatusProbe(storm.socket) as probe:
            time.sleep(0.1)  # the probe's first calls are not in the window
            before = _restarts(storm.socket)
            cpu, begin, jiffies = cpu_seconds(storm.pid), time.perf_counter(), cpu_jiffies()
            time.sleep(seconds)
            after, cpu = _restarts(storm.socket), cpu_seconds(storm.pid) - cpu
            elapsed = time.perf_counter() - begin
            usage = machine_usage(jiffies, cpu_jiffies())
        memory = memory_kib(storm.pid)
    if probe.errors:
        raise BenchmarkError(f"status probe failed: {probe.errors[0]}")
    result["daemon"] = {
        "restarts": after - before,
        "restarts_per_s": round((after - before) / elapsed, 1),
        "cpu_percent": round(100 * cpu / elapsed, 1),
        "cpu_ms_per_restart": round(1e3 * cpu / max(1, after - before), 3),
        "VmRSS": memory["VmRSS"],
        "VmHWM": memory["VmHWM"],
        "machine": usage,
    }
    result["status_during_storm"] = summarize_ms(probe.samples[5:])

    _log(f"  crash storm, embedded library, {seconds:g} s")
    result["library"] = library_storm(workdir, _storm_argv(argv, STORM_EXIT_MS), seconds)

    _log(f"  crash storm, bare spawn loop, {seconds:g} s")
    bench = _load_restart_latency()
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    ready = bench._NotifySocket(workdir / "floor.sock")  # registered, never written to
    try:
        floor = bench._floor_storm(
            _storm_argv(argv, STORM_EXIT_MS), env, ready, STORM_APPS, seconds
        )
    finally:
        ready.close()
    result["floor"] = {
        "restarts": floor.restarts,
        "restarts_per_s": round(floor.rate, 1),
        "cpu_percent": round(floor.cpu_percent, 1),
    }
    for measured in ("daemon", "library"):
        result[measured]["of_floor"] = round(
            result[measured]["restarts_per_s"] / result["floor"]["restarts_per_s"], 3
        )
    return result


def library_storm(workdir: Path, argv: list[str], seconds: float) -> dict[str, Any]:
    """The crash storm through the embedded library in a fresh interpreter (LIBRARY_STORM)."""
    home = workdir / "library-storm"
    try:
        done = subprocess.run(
            [sys.executable, "-c", LIBRARY_STORM, str(STORM_APPS), str(STORM_WARMUP + 0.5),
             str(seconds), *argv],
            stdin=subprocess.DEVNULL, capture_output=True, env=_marked_env(home),
            timeout=DAEMON_TIMEOUT + seconds, check=False,
        )  # fmt: skip
    finally:
        for pid in processes_of_home(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise BenchmarkError(f"the library storm exited {done.returncode}:\n{tail}")
    counted = json.loads(done.stdout.decode().strip().splitlines()[-1])
    restarts, elapsed, cpu = counted["restarts"], counted["seconds"], counted["cpu_seconds"]
    return {
        "restarts": restarts,
        "restarts_per_s": round(restarts / elapsed, 1),
        "cpu_percent": round(100 * cpu / elapsed, 1),
        "cpu_ms_per_restart": round(1e3 * cpu / max(1, restarts), 3),
    }


# --------------------------------------------------------------------------- cold and warm start


def _hundred_config(name: str) -> str:
    sleep = shutil.which("sleep") or "/bin/sleep"
    return f'project = "{name}"\n' + "".join(
        app_toml(f"s{i:03d}", [sleep, "3600"]) for i in range(HUNDRED)
    )


def _last_online_after(daemon: Daemon, since_wall: float, count: int) -> float:
    """Wall time of the ``count``-th ``online`` line written after ``since_wall``."""
    deadline = time.perf_counter() + 10  # app log lines are written in batches
    while True:
        times = [t for t in daemon.online_times() if t >= since_wall - 0.001]
        if len(times) >= count:
            return times[count - 1]
        if time.perf_counter() > deadline:
            raise BenchmarkError(f"{len(times)} online lines after the start, expected {count}")
        time.sleep(0.05)


def _cli(omnitron: str, daemon: Daemon, *args: str, timeout: float = 120) -> None:
    result = subprocess.run(
        [omnitron, "--home", str(daemon.home), *args],
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise BenchmarkError(f"omnitron {' '.join(args)}: {result.stderr.decode()[-500:]}")


def cold_scenario(omnitron: str, workdir: Path, rounds: int) -> dict[str, Any]:
    """``omnitron up`` (detached, the real CLI) of 100 apps, next to the embedded library
    and a fresh interpreter that only spawns 100 sleeps, interleaved round by round."""
    rows: dict[str, list[float]] = {
        "floor": [],
        "library": [],
        "up_exit": [],
        "ready": [],
        "daemon_starting": [],
        "daemon_ready": [],
        "first_online": [],
    }
    for r in range(rounds):
        rows["floor"].append(spawn_floor_cold(workdir, HUNDRED))
        rows["library"].append(library_start(workdir, f"cl{r}", HUNDRED, 0.0)["launch_to_ready_s"])
        daemon = Daemon(omnitron, workdir, f"cold{r}", _hundred_config(f"cold{r}"))
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        argv = [omnitron, "--home", str(daemon.home), "up", "--config", str(daemon.config)]
        launched_wall = time.time()
        try:
            rows["up_exit"].append(_spawn_wait(argv, env))
            ready = _last_online_after(daemon, launched_wall, HUNDRED)
            rows["ready"].append(ready - launched_wall)
            events = daemon.daemon_events()
            # Where the time goes: the daemon's own steps, and the first app online.
            rows["daemon_starting"].append(events["daemon_starting"] - launched_wall)
            rows["daemon_ready"].append(events["daemon_ready"] - launched_wall)
            first = _last_online_after(daemon, launched_wall, 1)
            rows["first_online"].append(first - launched_wall)
        finally:
            with contextlib.suppress(subprocess.SubprocessError, BenchmarkError):
                _cli(omnitron, daemon, "down", "--wait-timeout", "30")
            _cli(omnitron, daemon, "kill")
    result: dict[str, Any] = {"processes": HUNDRED, "rounds": rounds}
    for key, values in rows.items():
        result[key + "_ms"] = spread_ms(values)
    result["ready_over_floor"] = round(result["ready_ms"]["p50"] / result["floor_ms"]["p50"], 2)
    result["library_over_floor"] = round(result["library_ms"]["p50"] / result["floor_ms"]["p50"], 2)
    result["ready_over_library"] = round(result["ready_ms"]["p50"] / result["library_ms"]["p50"], 2)
    return result


def warm_scenario(omnitron: str, workdir: Path, rounds: int) -> dict[str, Any]:
    """``omnitron start all`` of 100 stopped apps against a running daemon: the CLI from
    launch to exit, and launch to the 100th ``online`` line; next to the one-shot CLI
    floor (click + msgpack + one ``daemon.ping``) plus a bare spawn loop of 100."""
    daemon = Daemon(omnitron, workdir, "warm", _hundred_config("warm"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON")}
    rows: dict[str, list[float]] = {"start_all_cli": [], "ready": [], "floor": []}
    with running(daemon):
        daemon.wait_online(HUNDRED)
        for _ in range(rounds):
            _cli(omnitron, daemon, "stop", "all")
            cli_floor = _spawn_wait([sys.executable, "-c", SYNC_PING, daemon.socket], env)
            rows["floor"].append(cli_floor + _floor_spawn_many(HUNDRED))
            argv = [omnitron, "--home", str(daemon.home), "start", "all"]
            launched_wall = time.time()
            rows["start_all_cli"].append(_spawn_wait(argv, env))
            ready = _last_online_after(daemon, launched_wall, HUNDRED)
            rows["ready"].append(ready - launched_wall)
    result: dict[str, Any] = {"processes": HUNDRED, "rounds": rounds}
    for key, values in rows.items():
        result[key + "_ms"] = spread_ms(values)
    result["cli_over_floor"] = round(
        result["start_all_cli_ms"]["p50"] / result["floor_ms"]["p50"], 2
    )
    return result


# --------------------------------------------------------------------------- backoff


def _status_latency(path: str, calls: int) -> dict[str, Any]:
    samples = []
    with connect_unix_sync(path, timeout=60) as client:
        for _ in range(calls):
            start = time.perf_counter()
            client.call("daemon.status")
            samples.append(time.perf_counter() - start)
    return summarize_ms(samples)


def _stop_start_latency(path: str, name: str, timeout: float) -> dict[str, Any]:
    """Seconds ``daemon.stop_app`` then ``daemon.start_app`` of ``name`` take (or the error)."""
    out: dict[str, Any] = {}
    for method in ("daemon.stop_app", "daemon.start_app"):
        start = time.perf_counter()
        try:
            with connect_unix_sync(path, timeout=timeout) as client:
                client.call(method, name=name)
            out[method] = round((time.perf_counter() - start) * 1e3, 1)
        except Exception as exc:  # a timeout is the finding
            out[method] = f"{type(exc).__name__} after {time.perf_counter() - start:.1f} s"
    return out


def backoff_scenario(omnitron: str, workdir: Path) -> dict[str, Any]:
    """``daemon.status`` latency (and a stop/start of another app) while one app waits
    BACKOFF_SECONDS before its restart, next to the same daemon without that app."""
    sleep = shutil.which("sleep") or "/bin/sleep"
    sh = shutil.which("sh") or "/bin/sh"
    apps = "".join(app_toml(f"s{i:02d}", [sleep, "3600"]) for i in range(STORM_APPS))
    failing = (
        app_toml("failing", [sh, "-c", "exit 1"])
        + 'restart_policy = { max_restarts = 100, window = "600s", backoff = '
        + f'{{ initial = "{BACKOFF_SECONDS}s", max = "{BACKOFF_SECONDS}s", factor = 1 }} }}\n'
    )
    result: dict[str, Any] = {"apps": STORM_APPS, "backoff_s": BACKOFF_SECONDS}
    for label, config in (("idle", apps), ("in backoff", apps + failing)):
        daemon = Daemon(omnitron, workdir, f"b{len(result)}", f'project = "b"\n{config}')
        with running(daemon):
            daemon.wait_socket()
            deadline = time.perf_counter() + DAEMON_TIMEOUT
            # The other apps are up, and the failing one has exited (in its backoff).
            while True:
                with connect_unix_sync(daemon.socket, timeout=30) as client:
                    status = client.call("daemon.status")
                states = {app["name"]: app for app in status["apps"]}
                up = sum(states[f"s{i:02d}"]["status"] == "online" for i in range(STORM_APPS))
                failed = (
                    "failing" not in states
                    or any(p["pid"] is None for p in states["failing"]["processes"])
                    or states["failing"]["status"] in ("errored", "crashed")
                )
                if up == STORM_APPS and failed:
                    break
                if time.perf_counter() > deadline:
                    raise BenchmarkError(f"backoff scenario did not settle: {states}")
                time.sleep(0.05)
            began = time.perf_counter()
            row = _status_latency(daemon.socket, BACKOFF_CALLS)
            row.update(_stop_start_latency(daemon.socket, "s00", 10.0))
            if "failing" in config:
                # Stopping the app that waits must cancel its wait at once.
                start = time.perf_counter()
                try:
                    with connect_unix_sync(daemon.socket, timeout=10.0) as client:
                        client.call("daemon.stop_app", name="failing")
                    row["stop the waiting app"] = round((time.perf_counter() - start) * 1e3, 1)
                except Exception as exc:  # a timeout is the finding
                    row["stop the waiting app"] = (
                        f"{type(exc).__name__} after {time.perf_counter() - start:.1f} s"
                    )
            row["within_backoff"] = time.perf_counter() - began < BACKOFF_SECONDS - 1
            row["daemon_cpu_s"] = cpu_seconds(daemon.pid)
            result[label] = row
    result["p50_ratio"] = round(result["in backoff"]["p50"] / result["idle"]["p50"], 2)
    result["p99_ratio"] = round(result["in backoff"]["p99"] / result["idle"]["p99"], 2)
    return result


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Plan:
    cli_samples: int
    cli_warmup: int
    hundred_rounds: int
    idle_seconds: float
    settle_seconds: float
    rpc_seconds: float
    rpc_repeats: int
    storm_seconds: float

    @classmethod
    def full(cls) -> Plan:
        return cls(100, 5, 5, 10.0, 1.0, 2.0, 3, 10.0)

    @classmethod
    def quick(cls) -> Plan:
        return cls(20, 3, 2, 3.0, 0.5, 1.0, 1, 3.0)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "kernel": platform.release(),
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
    }


def find_omnitron() -> str:
    beside = Path(sys.executable).parent / "omnitron"
    if beside.exists():
        return str(beside)
    found = shutil.which("omnitron")
    if found is None:
        raise BenchmarkError("no omnitron executable next to this Python or on PATH")
    return found


SCENARIOS = ("cli", "hundred", "rpc", "storm", "cold", "warm", "backoff")


def _measured(
    results: dict[str, Any], name: str, scenario: Callable[..., dict[str, Any]], *args: Any
) -> None:
    """``results[name] = scenario(*args)``, with the 1-minute load average before and after."""
    before = round(os.getloadavg()[0], 2)
    result = scenario(*args)
    result["loadavg_1min"] = {"before": before, "after": round(os.getloadavg()[0], 2)}
    results[name] = result


def warm_daemon(omnitron: str, workdir: Path) -> list[str]:
    """One discarded daemon run with 100 apps, stopped once all are online; returns
    the options its interpreter ran with (``-P``, ``-OO``: those before ``-m``).

    The modules a running daemon loads on first use (the state file's first
    write, the status path, the log writer...) are compiled and cached here, so
    the first measured round does not pay a compile the later ones do not (a
    passing peak of about 3 MiB, and tens of milliseconds).
    """
    _processes, apps = hundred_layouts()["100 apps x 1"]
    daemon = Daemon(omnitron, workdir, "warmup", 'project = "warmup"\n' + apps)
    with running(daemon):
        daemon.wait_online(HUNDRED)
        daemon.wait_event("apps_started")
        with open(f"/proc/{daemon.pid}/cmdline", "rb") as f:
            argv = [os.fsdecode(arg) for arg in f.read().split(b"\0")]
    return argv[1 : argv.index("-m")] if "-m" in argv else []


def _run_scenarios(
    plan: Plan, scenarios: Sequence[str], omnitron: str, workdir: Path, results: dict[str, Any]
) -> None:
    _log("warm-up: one daemon run with 100 apps (compiles what the daemon loads on first use)")
    flags = warm_daemon(omnitron, workdir)
    results["daemon_python_options"] = flags
    if "cli" in scenarios or "rpc" in scenarios:
        sleep = shutil.which("sleep") or "/bin/sleep"
        apps = "".join(app_toml(f"a{i}", [sleep, "3600"]) for i in range(CLI_APPS))
        daemon = Daemon(omnitron, workdir, "c", 'project = "cli"\n' + apps)
        with running(daemon):
            daemon.wait_online(CLI_APPS)
            time.sleep(plan.settle_seconds)
            if "cli" in scenarios:
                _log(f"cli: {plan.cli_samples} runs of each command")
                _measured(
                    results,
                    "cli",
                    cli_scenario,
                    omnitron,
                    daemon,
                    plan.cli_samples,
                    plan.cli_warmup,
                )
            if "rpc" in scenarios:
                _log(f"rpc: {plan.rpc_seconds:g} s per client kind and server")
                _measured(
                    results,
                    "rpc",
                    rpc_scenario,
                    daemon,
                    workdir,
                    plan.rpc_seconds,
                    plan.rpc_repeats,
                )
    if "hundred" in scenarios:
        _log(f"hundred: {plan.hundred_rounds} rounds per layout")
        _measured(
            results,
            "hundred",
            hundred_scenario,
            omnitron,
            workdir,
            plan.hundred_rounds,
            plan.idle_seconds,
            plan.settle_seconds,
            flags,
        )
    if "storm" in scenarios:
        _log("storm:")
        _measured(results, "storm", storm_scenario, omnitron, workdir, plan.storm_seconds)
    if "cold" in scenarios:
        _log(f"cold: {plan.hundred_rounds} rounds of `omnitron up` with {HUNDRED} apps")
        _measured(results, "cold", cold_scenario, omnitron, workdir, plan.hundred_rounds)
    if "warm" in scenarios:
        _log(f"warm: {plan.hundred_rounds} rounds of `omnitron start all` with {HUNDRED} apps")
        _measured(results, "warm", warm_scenario, omnitron, workdir, plan.hundred_rounds)
    if "backoff" in scenarios:
        _log(f"backoff: daemon.status while an app waits {BACKOFF_SECONDS} s to restart")
        _measured(results, "backoff", backoff_scenario, omnitron, workdir)


@contextlib.contextmanager
def bytecode_cache(directory: Path | None) -> Iterator[None]:
    """Let every Python this run starts cache its bytecode in ``directory``.

    An installed package has its ``.pyc`` files; an editable checkout under
    ``PYTHONDONTWRITEBYTECODE=1`` has none, and each process would compile
    omnitron from source.  A cache prefix in the work directory gives the
    installed case without writing into the checkout.  ``None``: leave the
    environment as it is.
    """
    if directory is None:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    os.environ["PYTHONPYCACHEPREFIX"] = str(directory)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(
    plan: Plan, scenarios: Sequence[str], omnitron: str, *, cache_bytecode: bool = True
) -> dict[str, Any]:
    # A short path: the socket path must stay under 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="omb-", dir="/tmp"))
    results: dict[str, Any] = {
        "machine": machine(),
        "plan": plan.__dict__,
        "omnitron": omnitron,
        "bytecode_cache": cache_bytecode,
    }
    cache = workdir / "pycache" if cache_bytecode else None
    jiffies = cpu_jiffies()
    try:
        with bytecode_cache(cache):
            # Compile (and cache) what the daemon and the clients import, once.
            for options in ([], ["-OO"]):  # the daemon runs with -OO where it can
                subprocess.run([sys.executable, *options, "-c", WARM_IMPORTS], check=True)
            _run_scenarios(plan, scenarios, omnitron, workdir, results)
    finally:
        homes = [p for p in workdir.iterdir() if p.is_dir()]
        left = [pid for home in homes for pid in processes_of_home(home)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            _log(f"warning: killed {len(left)} leftover process(es)")
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    # Busy includes this benchmark's own work; steal is time the hypervisor gave away.
    results["machine"]["during_run"] = machine_usage(jiffies, cpu_jiffies())
    results["leftover_processes"] = len(left)
    return results


# --------------------------------------------------------------------------- report


def _table(header: Sequence[str], rows: Iterator[Sequence[object]]) -> list[str]:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


def markdown(results: Mapping[str, Any]) -> str:
    """The results as markdown tables."""
    m = results["machine"]
    out = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['implementation']} {m['python']}, "
        f"trio {m['trio']}, msgpack {m['msgpack']}, Linux {m['kernel']}; 1-minute load "
        f"average {m['loadavg_1min_at_start']} at start, {m['loadavg_1min_at_end']} at end; "
        f"CPU time stolen by the hypervisor during the run: "
        f"{m['during_run']['steal_percent']}%.",
    ]
    if "daemon_python_options" in results:
        options = " ".join(results["daemon_python_options"]) or "none"
        out[0] += f" The daemon's interpreter options: {options}."

    summary = summary_rows(results)
    if summary:
        out += ["", "The core figures, each beside its floor or baseline in this run:", ""]
        out += _table(("figure", "daemon", "floor / baseline", "ratio", "target"), iter(summary))

    if "cli" in results:
        cli = results["cli"]
        out += [
            "",
            f"One CLI command, launch to exit (ms; daemon with {cli['apps']} apps):",
            "",
        ]
        out += _table(
            ("command", "n", "mean", "p50", "p90", "p99", "mean over `python -c pass`"),
            (
                (f"`{name}`" if name.startswith(("python", "omnitron")) else name,
                 s["n"], s["mean"], s["p50"], s["p90"], s["p99"], s["over_python_ms"])
                for name, s in cli["commands"].items()
            ),
        )  # fmt: skip

    if "hundred" in results:
        h = results["hundred"]
        out += [
            "",
            f"{h['processes']} supervised `sleep 3600` processes (median of {h['rounds']} "
            f"rounds, ms; a bare `posix_spawn` loop starts {h['processes']} in "
            f"{h['floor_spawn_100_ms']['p50']} ms):",
            "",
        ]

        def start_rows() -> Iterator[Sequence[object]]:
            for name, layout in h["layouts"].items():
                yield (
                    name,
                    layout["launch_to_daemon_ready_ms"]["p50"],
                    layout["launch_to_apps_started_ms"]["p50"],
                    layout["launch_to_all_online_polled_ms"]["p50"],
                    layout["daemon_ready_to_apps_started_ms"]["p50"],
                    layout["first_to_last_online_ms"]["p50"],
                )

        out += _table(
            ("layout", "launch → daemon_ready", "launch → apps_started",
             "launch → status shows all online", "daemon_ready → apps_started",
             "first → last `online` line"),
            start_rows(),
        )  # fmt: skip
        out += ["", "The daemon at rest (RSS in MiB; CPU % of one core):", ""]

        def idle_rows() -> Iterator[Sequence[object]]:
            for name, layout in h["layouts"].items():
                idle = layout["idle"]
                yield (
                    name,
                    _mib(layout["VmRSS"]),
                    _mib(layout["VmHWM"]),
                    _mib(layout["Pss"]) if "Pss" in layout else "",
                    layout.get("rss_per_process_kib", ""),
                    layout["Threads"],
                    f"{idle['cpu_percent_ns']:.3f}",
                    idle["wakeups_per_s"],
                )

        out += _table(
            ("layout", "RSS", "peak RSS", "PSS", "RSS KiB per process over no apps", "threads",
             f"idle CPU % over {h['layouts']['no apps']['idle']['seconds']:.0f} s",
             "wakeups/s"),
            idle_rows(),
        )  # fmt: skip
        out += ["", "Memory beside the embedded library, same run (MiB; medians):", ""]

        def memory_rows() -> Iterator[Sequence[object]]:
            imports = (
                {"imports only": h["daemon_imports_only"]} if "daemon_imports_only" in h else {}
            )
            for name, layout in [
                *h["layouts"].items(),
                *imports.items(),
                *h.get("library", {}).items(),
            ]:
                yield (
                    name if name.startswith("library") else f"daemon, {name}",
                    _mib(layout["VmRSS"]),
                    _mib(layout["Uss"]) if "Uss" in layout else "",
                    _mib(layout["Pss"]) if "Pss" in layout else "",
                )

        out += _table(("process", "RSS", "USS", "PSS"), memory_rows())

    out += _start_and_backoff_markdown(results)

    if "rpc" in results:
        rpc = results["rpc"]
        out += [
            "",
            f"RPC round trips per second over the Unix socket (`{rpc['method']}`; "
            + (
                f"median of {rpc['repeats']} runs of {rpc['seconds']:g} s, "
                "lowest and highest in brackets):"
                if rpc["repeats"] > 1
                else f"one run of {rpc['seconds']:g} s):"
            ),
            "",
        ]

        def rate(side: Mapping[str, float]) -> str:
            if side["min_per_s"] == side["max_per_s"]:
                return f"{side['per_s']:,.0f}"
            return f"{side['per_s']:,.0f} ({side['min_per_s']:,.0f} to {side['max_per_s']:,.0f})"

        out += _table(
            ("client", "bare Trio echo server", "daemon", "of echo server",
             "daemon CPU µs per call"),
            (
                (kind, rate(row["echo server"]), rate(row["daemon"]),
                 f"{row['of_echo_server']:.0%}", row["daemon"]["daemon_cpu_us_per_call"])
                for kind, row in rpc["clients"].items()
            ),
        )  # fmt: skip
        s = rpc["status_sequential"]
        out += [
            "",
            f"`daemon.status` ({s['apps']} apps), one sequential sync client: {s['per_s']:,.0f}/s.",
        ]

    if "storm" in results:
        st = results["storm"]
        d, f = st["daemon"], st["floor"]
        out += [
            "",
            f"Crash storm: {st['apps']} apps exiting {st['exit_after_ms']} ms after start "
            f"({st['child']}), backoff 0, counted for {st['seconds']:g} s:",
            "",
        ]
        out += _table(
            ("measured", "restarts/s", "of floor", "CPU % of one core", "CPU ms per restart"),
            iter([
                ("bare spawn loop (floor)", f["restarts_per_s"], "100%", f["cpu_percent"], ""),
                ("daemon", d["restarts_per_s"], f"{d['of_floor']:.0%}", d["cpu_percent"],
                 d["cpu_ms_per_restart"]),
                *([("embedded library, same children and settings", lib["restarts_per_s"],
                    f"{lib['of_floor']:.0%}", lib["cpu_percent"], lib["cpu_ms_per_restart"])]
                  if (lib := st.get("library")) else []),
            ]),
        )  # fmt: skip
        out += [
            "",
            f"(During the daemon's storm all CPUs were {d['machine']['busy_percent']}% busy, "
            f"{d['machine']['steal_percent']}% stolen.)",
            "",
            f"`daemon.status` latency from a separate client (one call every "
            f"{st['status_poll_interval_ms']:g} ms, ms):",
            "",
        ]
        out += _table(
            ("while", "n", "p50", "p90", "p99", "max", "daemon CPU %"),
            (
                (
                    label,
                    s["n"],
                    s["p50"],
                    s["p90"],
                    s["p99"],
                    s["max"],
                    s.get("daemon_cpu_percent", d["cpu_percent"]),
                )
                for label, s in (
                    (f"{st['apps']} idle apps", st["status_idle"]),
                    ("the crash storm", st["status_during_storm"]),
                )
            ),
        )
    return "\n".join(out) + "\n"


def _ratio(value: float, floor: float) -> str:
    return f"{value / floor:.2f}" if floor else ""


def summary_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, daemon, floor or baseline, ratio, target) for each figure of the core issue
    that this run measured."""
    rows: list[tuple[str, str, str, str, str]] = []
    h = results.get("hundred")
    if h and "library" in h:
        lib = h["library"]
        for label, layout, base in (
            ("no children", "no apps", "library, no children"),
            ("100 children (100 apps)", "100 apps x 1", "library, 100 children"),
            ("100 children (1 app x 100)", "1 app x 100 instances", "library, 100 children"),
        ):
            d, b = h["layouts"][layout], lib[base]
            rows.append((
                f"RSS, {label} (MiB)", f"{_mib(d['VmRSS'])}", f"{_mib(b['VmRSS'])} (library)",
                _ratio(d["VmRSS"], b["VmRSS"]), "≤ 30 MiB with 100" if "100" in label else "",
            ))  # fmt: skip
            rows.append((
                f"USS, {label} (MiB)", f"{_mib(d['Uss'])}", f"{_mib(b['Uss'])} (library)",
                _ratio(d["Uss"], b["Uss"]), "≤ 20 MiB with 100" if "100" in label else "",
            ))  # fmt: skip
    if "cli" in results:
        c = results["cli"]["commands"]
        status, floor = (
            c["omnitron status"]["p50"],
            c["click + msgpack + daemon.ping (sync client)"]["p50"],
        )
        rows.append((
            f"`status` CLI with {results['cli']['apps']} children, p50 (ms)", f"{status:.1f}",
            f"{floor:.1f} (one-shot CLI)", _ratio(status, floor), "≤ 1.3x",
        ))  # fmt: skip
    if "rpc" in results:
        for kind, row in results["rpc"]["clients"].items():
            if kind.endswith("daemon.status"):
                how = "replies skipped" if "skipped" in kind else "replies decoded"
                rows.append((
                    f"`daemon.status` calls/s, {CLI_APPS} children, {RPC_WINDOW} in flight "
                    f"({how})",
                    f"{row['daemon']['per_s']:,.0f}", f"{row['echo server']['per_s']:,.0f} (echo)",
                    f"{row['of_echo_server']:.2f}", "≥ 5k/s",
                ))  # fmt: skip
    if "storm" in results:
        d, f = results["storm"]["daemon"], results["storm"]["floor"]
        rows.append((
            "crash storm restarts/s (20 children)", f"{d['restarts_per_s']:.0f}",
            f"{f['restarts_per_s']:.0f}", f"{d['of_floor']:.2f}", "≥ 0.95",
        ))  # fmt: skip
        rows.append((
            "CPU during the storm (% of a core)", f"{d['cpu_percent']:.0f}",
            f"{f['cpu_percent']:.0f}", "", "≤ floor + 30",
        ))  # fmt: skip
    if "cold" in results:
        c = results["cold"]
        rows.append((
            "cold: `omnitron up` → 100 ready (ms)", f"{c['ready_ms']['p50']:.0f}",
            f"{c['floor_ms']['p50']:.0f} (spawn floor); library {c['library_ms']['p50']:.0f}",
            f"{c['ready_over_floor']:.2f}" + (
                f" ({c['ready_over_library']:.2f} of library)" if "ready_over_library" in c else ""
            ), "≤ 400 ms",
        ))  # fmt: skip
        rows.append((
            "cold: `omnitron up` exits, apps settled (ms)", f"{c['up_exit_ms']['p50']:.0f}",
            f"{c['floor_ms']['p50']:.0f}", _ratio(c["up_exit_ms"]["p50"], c["floor_ms"]["p50"]),
            "",
        ))  # fmt: skip
    if "warm" in results:
        w = results["warm"]
        rows.append((
            "warm: `start all` → 100 ready (ms)", f"{w['ready_ms']['p50']:.0f}",
            f"{w['floor_ms']['p50']:.0f} (CLI + spawn floor)",
            _ratio(w["ready_ms"]["p50"], w["floor_ms"]["p50"]), "≤ 200 ms",
        ))  # fmt: skip
    if "backoff" in results:
        b = results["backoff"]
        rows.append((
            f"`daemon.status` p50 while an app is in a {b['backoff_s']} s backoff (ms)",
            f"{b['in backoff']['p50']:.2f}", f"{b['idle']['p50']:.2f} (no backoff)",
            f"{b['p50_ratio']:.2f}", "",
        ))  # fmt: skip
    return rows


def _ms(row: Mapping[str, Any]) -> str:
    return f"{row['p50']:.0f} ({row['min']:.0f} to {row['max']:.0f})"


def _titled(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    return ["", title, "", *_table(header, iter(rows))]


def _start_and_backoff_markdown(results: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    if "cold" in results:
        c = results["cold"]
        out += _titled(
            f"Cold start, launch → {c['processes']} ready (ms; median, lowest to highest of "
            f"{c['rounds']} rounds, interleaved):",
            ("measured", "launch → ready", "of floor"),
            [
                ("fresh interpreter spawning 100 sleeps (floor)", _ms(c["floor_ms"]), "1.00"),
                ("embedded library (`open_supervisor` body runs)", _ms(c["library_ms"]),
                 f"{c['library_over_floor']:.2f}"),
                ("`omnitron up` → 100th `online` line", _ms(c["ready_ms"]),
                 f"{c['ready_over_floor']:.2f}"),
                ("`omnitron up` → daemon logs `daemon_starting` (both interpreters, imports, "
                 "config loaded, pid lock taken)", _ms(c["daemon_starting_ms"]), ""),
                *(
                    (label, _ms(c[key]), "")
                    for label, key in (
                        ("`omnitron up` → daemon logs `daemon_ready` (state, logs, sockets; "
                         "apps launching)", "daemon_ready_ms"),
                        ("`omnitron up` → first `online` line", "first_online_ms"),
                    )
                    if key in c  # not in runs recorded before these were measured
                ),
                ("`omnitron up` → it exits (apps settled)", _ms(c["up_exit_ms"]), ""),
            ],
        )  # fmt: skip
    if "warm" in results:
        w = results["warm"]
        out += _titled(
            f"Warm start, `omnitron start all` of {w['processes']} stopped apps (ms; "
            f"{w['rounds']} rounds):",
            ("measured", "ms", "of floor"),
            [
                ("one-shot CLI (one `daemon.ping`) + bare spawn of 100 (floor)",
                 _ms(w["floor_ms"]), "1.00"),
                ("`omnitron start all`, launch → exit", _ms(w["start_all_cli_ms"]),
                 f"{w['cli_over_floor']:.2f}"),
                ("`omnitron start all`, launch → 100th `online` line", _ms(w["ready_ms"]), ""),
            ],
        )  # fmt: skip
    if "backoff" in results:
        b = results["backoff"]
        out += _titled(
            f"`daemon.status` ({b['apps']} idle apps; {BACKOFF_CALLS} sequential calls, ms) and "
            f"a stop then start of another app, with and without an app waiting "
            f"{b['backoff_s']} s before its restart:",
            ("daemon", "p50", "p90", "p99", "max", "stop other app", "start it again"),
            [
                (label, row["p50"], row["p90"], row["p99"], row["max"],
                 row["daemon.stop_app"], row["daemon.start_app"])
                for label, row in ((k, b[k]) for k in ("idle", "in backoff"))
            ],
        )  # fmt: skip
        out += [
            "",
            f"In backoff over idle: p50 x{b['p50_ratio']}, p99 x{b['p99_ratio']}. Stopping the "
            f"app in its backoff: {b['in backoff'].get('stop the waiting app', 'not measured')}"
            + (" ms." if isinstance(b["in backoff"].get("stop the waiting app"), float) else "."),
        ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The omnitron daemon against baselines.")
    parser.add_argument("--quick", action="store_true", help="fewer samples; under a minute")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, help="run this scenario (repeatable)"
    )
    parser.add_argument("--omnitron", metavar="PATH", help="the omnitron executable")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the Python processes with the inherited bytecode settings "
        "(by default they cache .pyc files in the work directory, as an installed package has)",
    )
    parser.add_argument(
        "--render", metavar="JSON", type=Path, help="print the tables of an earlier --json file"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        print(markdown(json.loads(args.render.read_text())), end="")
        return 0
    plan = Plan.quick() if args.quick else Plan.full()
    results = run(
        plan,
        args.only or SCENARIOS,
        args.omnitron or find_omnitron(),
        cache_bytecode=not args.no_bytecode_cache,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
