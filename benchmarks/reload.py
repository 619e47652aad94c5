"""HTTP requests/s and latency of a socket-activated app before vs during ``reload``.

Usage::

    python benchmarks/reload.py [--instances 3] [--clients 8] [--seconds 3] [--repeats 3]
                                [--json out.json]

A real daemon (``omnitron up`` in a throwaway home) runs ``examples/http_server.py``
with ``--instances`` processes sharing one daemon-owned socket (``sockets``,
``ready = "notify"``). A client in this process keeps ``--clients`` HTTP/1.0
requests in flight (one connection each, Trio streams) and records every
outcome. Each repeat measures two phases back to back:

before
    ``--seconds`` of steady load: the floor, measured in the same run.
during
    the load while ``omnitron reload web`` (the real CLI in a subprocess) replaces
    every process, from the command's start until it returns.

For each phase: requests/s, p50 and p99 latency, and failed requests (refused,
reset, or not a 200; the target is 0), then the ratios during/before. The load
average before and after is printed, and everything goes to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "examples" / "http_server.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Phase:
    """Outcomes of the requests that completed within one phase."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.started = time.monotonic()
        self.ended: float | None = None

    def summary(self) -> dict[str, Any]:
        ended = self.ended if self.ended is not None else time.monotonic()
        elapsed = ended - self.started
        ordered = sorted(self.latencies)

        def quantile(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

        return {
            "phase": self.name,
            "seconds": round(elapsed, 3),
            "requests": len(ordered),
            "rps": len(ordered) / elapsed if elapsed else 0.0,
            "p50_ms": quantile(0.50),
            "p99_ms": quantile(0.99),
            "failed": len(self.failures),
            "failures": self.failures[:10],
        }


async def request(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    if not data.startswith(b"HTTP/1.0 200"):
        raise ValueError(f"unexpected answer {data[:40]!r}")


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.phase = Phase("warm-up")
        self.done = False

    async def loop(self) -> None:
        while not self.done:
            phase = self.phase
            start = time.monotonic()
            try:
                await request(self.port)
            except (OSError, ValueError) as exc:
                phase.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if phase is self.phase:  # count each request in the phase it began and ended in
                phase.latencies.append(time.monotonic() - start)


def cli(home: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "omnitron", "--home", home, *args]


async def measure(
    port: int, home: str, clients: int, seconds: float, repeats: int
) -> list[dict[str, Any]]:
    client = Client(port)
    runs: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client.loop)
        await trio.sleep(1.0)  # warm-up
        for repeat in range(repeats):
            before = client.phase = Phase("before")
            await trio.sleep(seconds)
            before.ended = time.monotonic()
            during = client.phase = Phase("during")
            result = await trio.run_process(
                cli(home, "reload", "web"), capture_stdout=True, capture_stderr=True, check=False
            )
            during.ended = time.monotonic()
            if result.returncode != 0:
                raise SystemExit(f"reload failed: {result.stderr.decode()}")
            runs.append({"repeat": repeat, "before": before.summary(), "during": during.summary()})
            print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr)
        client.done = True
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| repeat | phase | seconds | requests/s | p50 | p99 | failed | rps ratio | p99 ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        before, during = run["before"], run["during"]
        for phase in (before, during):
            ratio_rps = phase["rps"] / before["rps"] if before["rps"] else 0.0
            ratio_p99 = phase["p99_ms"] / before["p99_ms"] if before["p99_ms"] else 0.0
            lines.append(
                f"| {run['repeat'] + 1} | {phase['phase']} | {phase['seconds']:.2f} "
                f"| {phase['rps']:,.0f} | {phase['p50_ms']:.2f} ms | {phase['p99_ms']:.2f} ms "
                f"| {phase['failed']} | {ratio_rps:.2f} | {ratio_p99:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    port = free_port()
    home = tempfile.mkdtemp(prefix="omnitron-reload-bench-")
    project = Path(home) / "project"
    project.mkdir()
    (project / "omnitron.toml").write_text(
        'project = "bench"\n\n[[apps]]\nname = "web"\n'
        f"command = [{json.dumps(sys.executable)}, {json.dumps(str(SERVER))}]\n"
        f'sockets = [{{ name = "http", port = {port} }}]\n'
        f'ready = "notify"\ninstances = {args.instances}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")}
    load_before = os.getloadavg()
    up = subprocess.run(cli(home, "up"), cwd=project, env=env, capture_output=True, text=True)
    if up.returncode != 0:
        raise SystemExit(f"omnitron up failed: {up.stderr}")
    try:
        runs = trio.run(measure, port, home, args.clients, args.seconds, args.repeats)
    finally:
        subprocess.run(cli(home, "down"), env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    load_after = os.getloadavg()

    totals = {
        phase: {
            "rps": statistics.median(run[phase]["rps"] for run in runs),
            "p50_ms": statistics.median(run[phase]["p50_ms"] for run in runs),
            "p99_ms": statistics.median(run[phase]["p99_ms"] for run in runs),
            "failed": sum(run[phase]["failed"] for run in runs),
        }
        for phase in ("before", "during")
    }
    before, during = totals["before"], totals["during"]
    print(table(runs))
    print()
    print(
        f"median over {len(runs)} repeats: during/before requests/s "
        f"{during['rps'] / before['rps']:.2f}, p50 {during['p50_ms'] / before['p50_ms']:.2f}x, "
        f"p99 {during['p99_ms'] / before['p99_ms']:.2f}x; failed requests: "
        f"{before['failed']} before, {during['failed']} during (target 0)"
    )
    print(f"load average: {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "instances": args.instances,
                    "clients": args.clients,
                    "runs": runs,
                    "median": totals,
                    "loadavg": {"before": load_before, "after": load_after},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
