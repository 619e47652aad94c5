"""How long a supervised child is down after a crash, against a bare spawn loop.

Usage::

    python benchmarks/restart_latency.py [--quick] [--json out.json]
    python benchmarks/restart_latency.py --only storm [--storm-seconds S]

Scenarios (each supervisor under test is measured next to the *floor*, a bare loop
in this same process that spawns the same child with ``os.posix_spawn`` and waits
for the same readiness datagram on its own ``NOTIFY_SOCKET``):

restart latency
    SIGKILL the child, measure from the kill until its replacement has sent
    ``READY=1`` (sd_notify) and the supervisor has said so (``ChildReady`` seen by a
    subscriber).  Two children: a minimal C program (compiled here with ``cc``; a
    ``sh`` + ``systemd-notify`` script without a compiler) and a Python program that
    sends the datagram with the stdlib.  Floor and supervisor samples alternate so
    both see the same machine state.  Each restart is also split into phases (exit
    noticed, replacement spawned, ready, event delivered), from the floor's own
    clock readings and from the supervisor's event timestamps.
crash storm
    20 children that exit 50 ms after they start, for 10 s (2 s with ``--quick``):
    restarts per second, and the CPU the supervising process used.
start 100
    Time until 100 children are all ready, with ``Ready.on_spawn()`` and with
    ``Ready.notify()``.

The markdown tables go to stdout, progress to stderr.  Another supervisor can be
measured here by writing a small :class:`Adapter` and listing it in
:data:`ADAPTERS`; ``benchmarks/compare.py`` measures omnitron next to supervisord,
circus, PM2 and Erlang/OTP as separate processes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

HERE = Path(__file__).resolve().parent

#: How a restart is split: the kill until the exit is noticed, then until the
#: replacement is spawned, then until it is ready, then until a subscriber hears
#: of it (supervisors only).
PHASES = ("exit_seen", "spawned", "ready", "delivered")

STORM_CHILDREN = 20
STORM_EXIT_MS = 50
STORM_WARMUP = 0.25  # seconds before counting, so every side counts steady state only
START_CHILDREN = 100
READY_TIMEOUT = 10.0  # seconds; a child that takes longer is a broken benchmark, not a sample

# A POSIX-shell stand-in for the C child when there is no compiler.
SH_CHILD = """\
[ -z "${NOTIFY_SOCKET-}" ] || systemd-notify --ready || exit 2
if [ "$#" -gt 0 ]; then
    sleep "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"
    exit 1
fi
exec sleep infinity
"""


class BenchmarkError(RuntimeError):
    """The benchmark could not take a valid measurement."""


# --------------------------------------------------------------------------- children


@dataclass(frozen=True)
class Child:
    """A program to supervise.

    Attributes:
        kind: Short key used in the results (``"minimal"``, ``"python"``).
        label: What the program is, for humans.
        argv: How to run it; ``argv[0]`` is an absolute path.
        env: Variables added to the inherited environment.
    """

    kind: str
    label: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def crashing(self, after_ms: int) -> Child:
        """The same program, told to exit with code 1 ``after_ms`` after it starts."""
        return Child(self.kind, self.label, (*self.argv, str(after_ms)), self.env)


def build_children(workdir: Path, *, use_cc: bool = True) -> list[Child]:
    """Prepare the minimal child (compiling it if possible) and the Python child."""
    children = []
    cc = shutil.which("cc") if use_cc else None
    if cc is not None:
        exe = workdir / "notify_child"
        subprocess.run([cc, "-O2", "-o", str(exe), str(HERE / "notify_child.c")], check=True)
        children.append(Child("minimal", "C program (cc -O2)", (str(exe),)))
    elif (notify := shutil.which("systemd-notify")) is not None:
        sh = shutil.which("sh") or "/bin/sh"
        script = SH_CHILD.replace("systemd-notify", notify)
        children.append(Child("minimal", "sh + systemd-notify", (sh, "-c", script, "child")))
    else:
        print("no cc and no systemd-notify: skipping the minimal child", file=sys.stderr)
    children.append(
        Child(
            "python",
            f"Python {platform.python_version()} (stdlib socket)",
            (sys.executable, str(HERE / "notify_child.py")),
            {"PYTHONUNBUFFERED": "1"},
        )
    )
    return children


# --------------------------------------------------------------------------- adapters


class Adapter(Protocol):
    """One supervisor under test.

    The harness drives every adapter from one Trio task.  ``setup`` /
    ``kill_and_wait_ready`` / ``teardown`` make the restart-latency scenario; the
    other two scenarios are single calls.  An adapter that cannot run a scenario
    raises ``NotImplementedError`` and the scenario reports it as skipped.

    ``phases`` splits each restart into those of the :data:`PHASES` that the
    adapter can see: nanoseconds, one list per phase, reset by ``setup`` (leave it
    empty if the supervisor shows no intermediate steps).
    """

    name: str
    phases: dict[str, list[int]]

    async def setup(self, child: Child) -> None:
        """Start supervising one ``child`` that uses sd_notify readiness; return once ready."""

    async def kill_and_wait_ready(self) -> int:
        """SIGKILL the child; return the nanoseconds until its replacement is ready."""

    async def teardown(self) -> None:
        """Stop the child and release everything ``setup`` made."""

    async def crash_storm(self, child: Child, *, children: int, seconds: float) -> StormResult:
        """Run ``children`` copies of a crashing ``child``; count restarts for ``seconds``."""

    async def start_many(self, child: Child, *, children: int, notify: bool) -> int:
        """Start ``children`` copies of ``child``; nanoseconds until all are ready."""


@dataclass(frozen=True)
class StormResult:
    restarts: int
    seconds: float
    cpu_seconds: float  # user + system time of this process while counting

    @property
    def rate(self) -> float:
        return self.restarts / self.seconds

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.seconds


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# The floor's blocking helpers are plain functions: while the floor runs, nothing
# else in the process has work to do, and a bare loop is exactly what it measures.


class _NotifySocket:
    """A bound ``AF_UNIX`` datagram socket, the receiving end of sd_notify."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(READY_TIMEOUT)

    def wait_ready(self) -> None:
        try:
            while b"READY=1" not in self.sock.recv(4096).split(b"\n"):
                pass
        except TimeoutError:
            raise BenchmarkError(f"no READY=1 within {READY_TIMEOUT} s") from None

    def drain(self) -> int:
        readies = 0
        self.sock.setblocking(False)
        try:
            while True:
                readies += b"READY=1" in self.sock.recv(4096).split(b"\n")
        except BlockingIOError:
            return readies
        finally:
            self.sock.settimeout(READY_TIMEOUT)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _spawn(argv: Sequence[str], env: Mapping[str, str]) -> int:
    # A new session, like a supervised child gets.
    return os.posix_spawn(argv[0], list(argv), dict(env), setsid=True)


def _kill_and_reap(pid: int) -> None:
    # The whole group: a shell child may have a helper of its own running.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _floor_restart(
    pid: int, argv: Sequence[str], env: Mapping[str, str], ready: _NotifySocket
) -> tuple[int, tuple[int, int, int, int]]:
    """Kill, reap, respawn, wait for READY; the new pid and the four timestamps."""
    killed = time.perf_counter_ns()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    reaped = time.perf_counter_ns()
    pid = _spawn(argv, env)
    spawned = time.perf_counter_ns()
    ready.wait_ready()
    return pid, (killed, reaped, spawned, time.perf_counter_ns())


def _floor_storm(
    argv: Sequence[str], env: Mapping[str, str], ready: _NotifySocket, children: int, seconds: float
) -> StormResult:
    poller = select.epoll()
    pidfds: dict[int, int] = {}

    def spawn() -> None:
        pid = _spawn(argv, env)
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.EPOLLIN)
        pidfds[pidfd] = pid

    poller.register(ready.sock.fileno(), select.EPOLLIN)
    try:
        for _ in range(children):
            spawn()
        begin = time.perf_counter() + STORM_WARMUP
        end = begin + seconds
        restarts = 0
        cpu = 0.0
        counting = False
        while (now := time.perf_counter()) < end:
            if not counting and now >= begin:
                counting, restarts, cpu = True, 0, _cpu_seconds()
            timeout = (begin if not counting else end) - now
            for fd, _ in poller.poll(max(timeout, 0.0)):
                if fd == ready.sock.fileno():
                    ready.drain()
                    continue
                poller.unregister(fd)
                os.close(fd)
                os.waitpid(pidfds.pop(fd), 0)
                spawn()
                restarts += 1
        return StormResult(restarts, time.perf_counter() - begin, _cpu_seconds() - cpu)
    finally:
        for pidfd, pid in pidfds.items():
            os.close(pidfd)
            _kill_and_reap(pid)
        poller.close()


def _floor_start_many(
    argv: Sequence[str], env: Mapping[str, str], ready: _NotifySocket | None, children: int
) -> int:
    pids = []
    try:
        start = time.perf_counter_ns()
        for _ in range(children):
            pids.append(_spawn(argv, env))
            if ready is not None:
                ready.wait_ready()
        return time.perf_counter_ns() - start
    finally:
        for pid in pids:
            _kill_and_reap(pid)


class FloorAdapter:
    """The floor: a bare ``posix_spawn`` / ``waitpid`` loop with its own notify socket."""

    name = "floor"

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._pid: int | None = None
        self._ready: _NotifySocket | None = None
        self._argv: tuple[str, ...] = ()
        self._env: dict[str, str] = {}
        self.phases: dict[str, list[int]] = {}

    def _open(self, child: Child, tag: str) -> tuple[_NotifySocket, dict[str, str]]:
        ready = _NotifySocket(self._workdir / f"floor-{tag}.sock")
        return ready, {**os.environ, **child.env, "NOTIFY_SOCKET": ready.path}

    async def setup(self, child: Child) -> None:
        self._ready, self._env = self._open(child, "restart")
        self._argv = child.argv
        self._pid = _spawn(self._argv, self._env)
        self._ready.wait_ready()
        self.phases = {phase: [] for phase in PHASES[:3]}

    async def kill_and_wait_ready(self) -> int:
        assert self._pid is not None
        assert self._ready is not None
        self._pid, stamps = _floor_restart(self._pid, self._argv, self._env, self._ready)
        for phase, begin, end in zip(PHASES, stamps, stamps[1:], strict=False):
            self.phases[phase].append(end - begin)
        return stamps[-1] - stamps[0]

    async def teardown(self) -> None:
        if self._pid is not None:
            _kill_and_reap(self._pid)
            self._pid = None
        if self._ready is not None:
            self._ready.close()
            self._ready = None

    async def crash_storm(self, child: Child, *, children: int, seconds: float) -> StormResult:
        ready, env = self._open(child, "storm")
        try:
            return _floor_storm(child.argv, env, ready, children, seconds)
        finally:
            ready.close()

    async def start_many(self, child: Child, *, children: int, notify: bool) -> int:
        if not notify:
            return _floor_start_many(child.argv, {**os.environ, **child.env}, None, children)
        ready, env = self._open(child, "start")
        try:
            return _floor_start_many(child.argv, env, ready, children)
        finally:
            ready.close()


class SupervisionAdapter:
    """omnitron's ``supervision`` library, through its public API only.

    The phases come from the events' Trio timestamps (``ChildExited``,
    ``ChildStarted``, ``ChildReady``); Trio's default clock is ``perf_counter``.
    """

    name = "supervision"
    subreaper = False

    def __init__(self, workdir: Path) -> None:
        del workdir  # the library makes its own notify sockets
        self._stack = contextlib.AsyncExitStack()
        self._sup: Any = None
        self._events: Any = None
        self._pid: int | None = None
        self.phases: dict[str, list[int]] = {}

    @staticmethod
    def _spec(child: Child, *, count: int, notify: bool, prefix: str = "c") -> Any:
        # The same spec as the library's peer in compare.py: peers/embedded.py.
        path = HERE / "peers" / "embedded.py"
        loader = importlib.util.spec_from_file_location("omnitron_bench_embedded", path)
        assert loader is not None
        assert loader.loader is not None
        embedded = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(embedded)
        return embedded.spec(child.argv, count, notify=notify, env=child.env, prefix=prefix)

    async def setup(self, child: Child) -> None:
        from supervision import open_supervisor

        spec = self._spec(child, count=1, notify=True)
        self._sup = await self._stack.enter_async_context(
            open_supervisor(spec, subreaper=self.subreaper)
        )
        self._events = self._stack.enter_context(self._sup.subscribe())
        [info] = self._sup.which_children()
        self._pid = info.pid
        self.phases = {phase: [] for phase in PHASES}

    async def kill_and_wait_ready(self) -> int:
        from supervision.events import ChildExited, ChildReady, ChildStarted, EventsDropped

        old = self._pid
        assert old is not None
        stamps = {}
        with trio.fail_after(READY_TIMEOUT):
            killed_at = trio.current_time()
            start = time.perf_counter_ns()
            os.kill(old, signal.SIGKILL)
            while True:
                event = await self._events.__anext__()
                if isinstance(event, ChildReady) and event.pid != old:
                    break
                if isinstance(event, EventsDropped):
                    raise BenchmarkError("the subscriber fell behind; events were dropped")
                if isinstance(event, ChildExited | ChildStarted):
                    stamps[type(event)] = event.monotonic
            elapsed = time.perf_counter_ns() - start
            delivered = trio.current_time()
        if len(stamps) != 2:
            raise BenchmarkError(f"expected ChildExited and ChildStarted before {event!r}")
        times = (killed_at, stamps[ChildExited], stamps[ChildStarted], event.monotonic, delivered)
        for phase, begin, end in zip(PHASES, times, times[1:], strict=False):
            self.phases[phase].append(round((end - begin) * 1e9))
        self._pid = event.pid
        return elapsed

    async def teardown(self) -> None:
        self._events = self._sup = self._pid = None
        await self._stack.aclose()

    async def crash_storm(self, child: Child, *, children: int, seconds: float) -> StormResult:
        from supervision import open_supervisor

        spec = self._spec(child, count=children, notify=True)

        def restarts() -> int:
            return sum(info.restarts for info in sup.which_children())

        async with open_supervisor(spec, subreaper=self.subreaper) as sup:
            await trio.sleep(STORM_WARMUP)
            before, cpu, begin = restarts(), _cpu_seconds(), time.perf_counter()
            await trio.sleep(seconds)
            after, cpu, elapsed = restarts(), _cpu_seconds() - cpu, time.perf_counter() - begin
        return StormResult(after - before, elapsed, cpu)

    async def start_many(self, child: Child, *, children: int, notify: bool) -> int:
        from supervision import open_supervisor

        spec = self._spec(child, count=children, notify=notify)
        start = time.perf_counter_ns()
        async with open_supervisor(spec, subreaper=self.subreaper):
            elapsed = time.perf_counter_ns() - start
        return elapsed


class SubreaperAdapter(SupervisionAdapter):
    """The same library as a child subreaper (as the daemon runs it): orphans are reaped."""

    name = "supervision-subreaper"
    subreaper = True


#: Supervisors to compare with the floor, by name.
ADAPTERS: dict[str, Callable[[Path], Adapter]] = {
    "supervision": SupervisionAdapter,
    "supervision-subreaper": SubreaperAdapter,
}


# --------------------------------------------------------------------------- statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize_ns(samples: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max of nanosecond samples, in milliseconds."""

    def ms(ns: float) -> float:
        return round(ns / 1e6, 4)

    return {
        "n": len(samples),
        "p50": ms(percentile(samples, 50)),
        "p90": ms(percentile(samples, 90)),
        "p99": ms(percentile(samples, 99)),
        "mean": ms(sum(samples) / len(samples)),
        "min": ms(min(samples)),
        "max": ms(max(samples)),
    }


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Plan:
    restart_samples: Mapping[str, int]  # per child kind
    warmup: int
    storm_seconds: float
    start_rounds: int

    @classmethod
    def full(cls) -> Plan:
        return cls({"minimal": 2000, "python": 300}, warmup=20, storm_seconds=10.0, start_rounds=5)

    @classmethod
    def quick(cls) -> Plan:
        return cls({"minimal": 300, "python": 40}, warmup=5, storm_seconds=2.0, start_rounds=2)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def restart_latency(
    adapters: Sequence[Adapter], child: Child, samples: int, warmup: int
) -> dict[str, Any]:
    samples_by_name: dict[str, list[int]] = {adapter.name: [] for adapter in adapters}
    ready: list[Adapter] = []
    try:
        for adapter in adapters:
            await adapter.setup(child)
            ready.append(adapter)
        for i in range(warmup + samples):
            # Alternate who goes first, so neither side always follows the other.
            order = adapters if i % 2 == 0 else list(reversed(adapters))
            for adapter in order:
                elapsed = await adapter.kill_and_wait_ready()
                if i >= warmup:
                    samples_by_name[adapter.name].append(elapsed)
    finally:
        for adapter in reversed(ready):
            await adapter.teardown()
    floor = summarize_ns(samples_by_name["floor"])
    result: dict[str, Any] = {"child": child.label, "floor": dict(floor)}
    for adapter in adapters:
        if adapter.name == "floor":
            continue
        measured: dict[str, Any] = dict(summarize_ns(samples_by_name[adapter.name]))
        measured["overhead"] = {q: round(measured[q] - floor[q], 4) for q in ("p50", "p90", "p99")}
        result[adapter.name] = measured
    for adapter in adapters:
        result[adapter.name]["phases_p50"] = {
            phase: round(percentile(ns[warmup:], 50) / 1e6, 4)
            for phase, ns in adapter.phases.items()
        }
    return result


async def crash_storm(adapters: Sequence[Adapter], child: Child, seconds: float) -> dict[str, Any]:
    crashing = child.crashing(STORM_EXIT_MS)
    result: dict[str, Any] = {
        "child": child.label,
        "children": STORM_CHILDREN,
        "exit_after_ms": STORM_EXIT_MS,
        "seconds": seconds,
    }
    for adapter in adapters:
        try:
            storm = await adapter.crash_storm(crashing, children=STORM_CHILDREN, seconds=seconds)
        except NotImplementedError:
            continue
        result[adapter.name] = {
            "restarts": storm.restarts,
            "restarts_per_s": round(storm.rate, 1),
            "cpu_percent": round(storm.cpu_percent, 1),
            "cpu_ms_per_restart": round(1000 * storm.cpu_seconds / max(storm.restarts, 1), 3),
        }
    floor_rate = result["floor"]["restarts_per_s"]
    for adapter in adapters:
        if adapter.name != "floor" and adapter.name in result:
            result[adapter.name]["of_floor"] = round(
                result[adapter.name]["restarts_per_s"] / floor_rate, 3
            )
    return result


async def start_many(adapters: Sequence[Adapter], child: Child, rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {"child": child.label, "children": START_CHILDREN, "rounds": rounds}
    for notify in (False, True):
        mode = "notify" if notify else "on_spawn"
        times: dict[str, list[int]] = {}
        for _ in range(rounds):
            for adapter in adapters:
                try:
                    elapsed = await adapter.start_many(
                        child, children=START_CHILDREN, notify=notify
                    )
                except NotImplementedError:
                    continue
                times.setdefault(adapter.name, []).append(elapsed)
        result[mode] = {
            name: {"p50_ms": round(percentile(ns, 50) / 1e6, 2), "min_ms": round(min(ns) / 1e6, 2)}
            for name, ns in times.items()
        }
    return result


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
        "kernel": platform.release(),
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
    }


PARTS = ("latency", "storm", "start")


async def run(
    plan: Plan,
    adapter_names: Sequence[str],
    *,
    use_cc: bool,
    parts: Sequence[str] = PARTS,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="omnitron-bench-") as tmp:
        workdir = Path(tmp)
        children = build_children(workdir, use_cc=use_cc)
        floor = FloorAdapter(workdir)
        adapters: list[Adapter] = [floor, *(ADAPTERS[name](workdir) for name in adapter_names)]
        results: dict[str, Any] = {
            "machine": machine(),
            "plan": {
                "restart_samples": dict(plan.restart_samples),
                "warmup": plan.warmup,
                "storm_seconds": plan.storm_seconds,
                "start_rounds": plan.start_rounds,
            },
            "adapters": [adapter.name for adapter in adapters],
            "restart_latency": {},
        }
        for child in children if "latency" in parts else ():
            samples = plan.restart_samples[child.kind]
            _log(f"restart latency, {child.label}: {samples} samples per side")
            results["restart_latency"][child.kind] = await restart_latency(
                adapters, child, samples, plan.warmup
            )
        minimal = children[0]
        if "storm" in parts:
            _log(
                f"crash storm, {minimal.label}: {STORM_CHILDREN} children, "
                f"{plan.storm_seconds} s each"
            )
            results["crash_storm"] = await crash_storm(adapters, minimal, plan.storm_seconds)
        if "start" in parts:
            _log(f"start {START_CHILDREN}, {minimal.label}: {plan.start_rounds} rounds per side")
            results["start_many"] = await start_many(adapters, minimal, plan.start_rounds)
        results["machine"]["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
        return results


# --------------------------------------------------------------------------- report


def _table(header: Sequence[str], rows: Iterator[Sequence[object]]) -> list[str]:
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    """The results as markdown tables."""
    names = [name for name in results["adapters"] if name != "floor"]
    m = results["machine"]
    out = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['implementation']} {m['python']}, "
        f"trio {m['trio']}, Linux {m['kernel']}; 1-minute load average "
        f"{m['loadavg_1min_at_start']} at start, {m['loadavg_1min_at_end']} at end.",
        "",
        "Restart latency, SIGKILL to replacement ready (ms):",
        "",
    ]

    def latency_rows() -> Iterator[Sequence[object]]:
        for kind in results["restart_latency"].values():
            label = kind["child"]
            floor = kind["floor"]
            yield (label, "floor", floor["n"], floor["p50"], floor["p90"], floor["p99"])
            for name in names:
                s = kind[name]
                yield (label, name, s["n"], s["p50"], s["p90"], s["p99"])
                o = s["overhead"]
                yield (label, f"{name} overhead", "", o["p50"], o["p90"], o["p99"])

    if results["restart_latency"]:
        out += _table(("child", "measured", "n", "p50", "p90", "p99"), latency_rows())
    else:
        out += ["(not measured in this run)"]

    out += [
        "",
        "Where a restart's time goes (p50 of each phase, ms): kill → exit noticed → "
        "replacement spawned → ready → a subscriber hears of it:",
        "",
    ]

    def phase_rows() -> Iterator[Sequence[object]]:
        for kind in results["restart_latency"].values():
            for name in ["floor", *names]:
                phases = kind[name].get("phases_p50", {})
                if phases:
                    yield (kind["child"], name, *(phases.get(p, "") for p in PHASES))

    out += _table(("child", "measured", *PHASES), phase_rows())
    if "crash_storm" in results:
        out += _storm_section(results["crash_storm"], names)
    if "start_many" in results:
        out += _start_section(results["start_many"], names)
    return "\n".join(out) + "\n"


def _storm_section(storm: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    out = [
        "",
        f"Crash storm: {storm['children']} children exiting {storm['exit_after_ms']} ms after "
        f"start, counted for {storm['seconds']:g} s ({storm['child']}):",
        "",
    ]

    def storm_rows() -> Iterator[Sequence[object]]:
        for name in ["floor", *names]:
            if name in storm:
                s = storm[name]
                ratio = f"{s['of_floor']:.0%}" if "of_floor" in s else "100%"
                per_restart = s.get("cpu_ms_per_restart", "")
                yield (name, s["restarts_per_s"], ratio, s["cpu_percent"], per_restart)

    header = ("measured", "restarts/s", "of floor", "CPU % of one core", "CPU ms per restart")
    return out + _table(header, storm_rows())


def _start_section(start: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    out = [
        "",
        f"Start {start['children']} children until all are ready "
        f"(median of {start['rounds']} rounds, ms; {start['child']}):",
        "",
    ]

    def start_rows() -> Iterator[Sequence[object]]:
        for mode in ("on_spawn", "notify"):
            for name in ["floor", *names]:
                if name in start[mode]:
                    yield (f"Ready.{mode}()", name, start[mode][name]["p50_ms"])

    return out + _table(("readiness", "measured", "ms"), start_rows())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Restart latency of a supervised child, against a bare spawn loop."
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples; under a minute")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--adapter",
        action="append",
        choices=sorted(ADAPTERS),
        help="supervisor to compare with the floor (repeatable; default: all)",
    )
    parser.add_argument(
        "--floor-only", action="store_true", help="measure only the floor (checks the machine)"
    )
    parser.add_argument(
        "--no-cc",
        action="store_true",
        help="use the sh + systemd-notify minimal child even if a C compiler exists",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="measure only this part (repeatable; default: all)",
    )
    parser.add_argument(
        "--storm-seconds",
        type=float,
        help="seconds each crash storm is counted (overrides the plan)",
    )
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    if args.storm_seconds is not None:
        plan = dataclasses.replace(plan, storm_seconds=args.storm_seconds)
    names = [] if args.floor_only else args.adapter or list(ADAPTERS)
    parts = tuple(args.only or PARTS)
    results = trio.run(functools.partial(run, plan, names, use_cc=not args.no_cc, parts=parts))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
