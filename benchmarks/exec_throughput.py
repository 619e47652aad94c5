"""``exec`` through the daemon against a direct call to the same worker, in one run.

Usage::

    python benchmarks/exec_throughput.py [--seconds 2] [--repeats 5] [--depth 8] [--ping]
                                         [--json out.json]

Starts a daemon (``omnitron up`` in a temporary home) running ``examples/shop``
with one ``users`` worker, then calls ``users.count`` on that worker two ways,
with the same client library (``omnitron.rpc.connect_unix``, one connection):

direct
    msgpack-rpc straight to the worker's socket (``HOME/run/shop/users.0.sock``),
    ``users.count`` with ``{"args": [], "kwargs": {}}``: the floor.
daemon
    ``daemon.exec`` on the daemon's socket: the control plane, the router's
    choice of worker and its own connection to the worker, and back.
ping (with ``--ping``)
    ``daemon.ping`` on the daemon's socket: what the control plane costs per call
    with no worker behind it.

Each run is ``--seconds`` long with ``--depth`` calls in flight (throughput), then
500 calls one at a time (latency: p50, p99). Runs alternate between the two ways;
the table gives medians over the repeats and the ratio daemon/direct (target:
the daemon keeps at least 50 % of the direct rate). During the throughput part the
CPU time (user + system) of each process is read before and after: the table
also gives the CPU microseconds per call of the client (this process), the
daemon and the worker, which a busy machine disturbs less than the rates.
``--json FILE`` writes every run and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio

from omnitron.rpc import RpcClient, connect_unix

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "examples" / "shop"
LATENCY_CALLS = 500


def start_daemon(home: str, project: Path) -> None:
    shutil.copytree(SHOP, project)
    boot = project / "bootstrap.py"
    boot.write_text(boot.read_text().replace("instances=2", "instances=1"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")}
    env["OMNITRON_HOME"] = home
    subprocess.run(
        [sys.executable, "-m", "omnitron", "up"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def stop_daemon(home: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "omnitron", "--home", home, "down"],
        capture_output=True,
        timeout=120,
        check=False,
    )


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


class Way:
    """One way of calling ``users.count``."""

    def __init__(self, name: str, path: Path, method: str, params: dict[str, Any]) -> None:
        self.name = name
        self.path = path
        self.method = method
        self.params = params

    async def call(self, client: RpcClient) -> None:
        await client.call(self.method, **self.params)


async def measure(
    way: Way, seconds: float, depth: int, processes: dict[str, psutil.Process]
) -> dict[str, float]:
    async with connect_unix(way.path) as client:
        await way.call(client)  # connected, and the daemon's link to the worker open
        done = 0
        deadline = trio.current_time() + seconds

        async def loop() -> None:
            nonlocal done
            while trio.current_time() < deadline:
                await way.call(client)
                done += 1

        cpu_before = {name: cpu_seconds(p) for name, p in processes.items()}
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(depth):
                nursery.start_soon(loop)
        rate = done / (time.perf_counter() - started)
        cpu = {
            f"cpu_{name}_us": (cpu_seconds(p) - cpu_before[name]) / done * 1e6
            for name, p in processes.items()
        }
        latencies = []
        for _ in range(LATENCY_CALLS):
            begin = time.perf_counter()
            await way.call(client)
            latencies.append((time.perf_counter() - begin) * 1e6)
    latencies.sort()
    return {
        "calls_per_s": rate,
        "p50_us": latencies[len(latencies) // 2],
        "p99_us": latencies[int(len(latencies) * 0.99)],
        **cpu,
    }


async def find_processes(home: str) -> dict[str, psutil.Process]:
    """The client (this process), the daemon and the ``users`` worker."""
    async with connect_unix(Path(home) / "daemon.sock") as client:
        status = await client.call("daemon.status")
        done = await client.call("daemon.exec", app="shop", service="users", method="count")
    return {
        "client": psutil.Process(),
        "daemon": psutil.Process(status["daemon"]["pid"]),
        "worker": psutil.Process(done["pid"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--ping", action="store_true", help="also measure daemon.ping")
    parser.add_argument("--json", metavar="FILE")
    options = parser.parse_args()

    home = tempfile.mkdtemp(dir="/tmp", prefix="omx-bench-")
    project = Path(tempfile.mkdtemp(prefix="omx-shop-")) / "shop"
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "daemon": []}
    if options.ping:
        runs["ping"] = []
    try:
        start_daemon(home, project)
        ways = [
            Way(
                "direct",
                Path(home) / "run" / "shop" / "users.0.sock",
                "users.count",
                {"args": [], "kwargs": {}},
            ),
            Way(
                "daemon",
                Path(home) / "daemon.sock",
                "daemon.exec",
                {"app": "shop", "service": "users", "method": "count"},
            ),
        ]
        if options.ping:
            ways.append(Way("ping", Path(home) / "daemon.sock", "daemon.ping", {}))
        processes = trio.run(find_processes, home)
        for _ in range(options.repeats):
            for way in ways:
                runs[way.name].append(
                    trio.run(measure, way, options.seconds, options.depth, processes)
                )
    finally:
        stop_daemon(home)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(project.parent, ignore_errors=True)
    load_after = os.getloadavg()

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    direct = median("direct", "calls_per_s")
    print(f"load average: {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{options.repeats} x {options.seconds:g} s per way, {options.depth} calls in flight")
    print()
    print(
        "| way | calls/s, median (range) | p50 | p99 | of direct (calls/s) "
        "| CPU µs/call: client, daemon, worker |"
    )
    print("|---|---|---|---|---|---|")
    for name in runs:
        rates = [run["calls_per_s"] for run in runs[name]]
        cpu = ", ".join(
            f"{median(name, f'cpu_{who}_us'):,.0f}" for who in ("client", "daemon", "worker")
        )
        print(
            f"| {name} | {median(name, 'calls_per_s'):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
            f"| {median(name, 'p50_us'):,.0f} µs | {median(name, 'p99_us'):,.0f} µs "
            f"| {median(name, 'calls_per_s') / direct:.2f} | {cpu} |"
        )
    if options.json:
        Path(options.json).write_text(
            json.dumps(
                {
                    "runs": runs,
                    "load_before": load_before,
                    "load_after": load_after,
                    "options": vars(options),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
