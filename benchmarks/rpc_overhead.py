"""The RPC server's own cost per call, next to a bare Trio echo server in the same run.

Usage::

    python benchmarks/rpc_overhead.py [--seconds 2] [--repeats 5] [--json out.json]

Two servers, each a subprocess on a Unix socket in a temporary directory:

echo server
    ``benchmarks/daemon.py``'s bare Trio msgpack server: one task per connection,
    every message answered in order with ``{"pong": True}``; no limits, no
    dispatch, no per-call task. The floor.
rpc server
    ``omnitron.rpc.serve_unix`` with a bare ``Dispatcher`` (only the built-in
    ``daemon.ping``), the real server the daemon runs, without the daemon.

The same client drives both: one raw socket keeping 32 ``daemon.ping`` requests
in flight (``benchmarks/daemon.py``'s sliding window; 32 is the server's
per-connection in-flight cap). Runs alternate between the servers; the table gives
the median calls/s of the repeats, the server process's CPU time per call, and
the ratio of the rpc server's rate to the echo server's. ``--json FILE`` writes
every run and the load average before and after. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon import (  # the sibling benchmark owns the floor and the client
    echo_server,
    rate_raw_window,
)

RPC_SERVER = """\
import sys, trio
from omnitron import _log
from omnitron.rpc import Dispatcher, serve_unix

_log.configure(_log.Console(None, level=_log.WARNING, timestamps=True))


async def main(path):
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_unix, path, Dispatcher())
        print("ready", flush=True)


trio.run(main, sys.argv[1])
"""


@contextlib.contextmanager
def rpc_server(path: str) -> Iterator[psutil.Process]:
    """The real RPC server in a subprocess; yields once it accepts on ``path``."""
    with subprocess.Popen(
        [sys.executable, "-c", RPC_SERVER, path], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            if proc.stdout.readline() != "ready\n":
                raise RuntimeError(f"the rpc server exited with {proc.wait()}")
            yield psutil.Process(proc.pid)
        finally:
            proc.terminate()


def server_process(path: str) -> psutil.Process:
    """The child of this process whose command line names ``path`` (the echo server)."""
    for child in psutil.Process().children():
        if path in child.cmdline():
            return child
    raise RuntimeError(f"no server process for {path}")


def cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"echo server": [], "rpc server": []}
    with tempfile.TemporaryDirectory(prefix="rpcbench-") as workdir:
        os.chmod(workdir, 0o700)
        rpc_path = os.path.join(workdir, "rpc.sock")
        with echo_server(Path(workdir)) as echo_path, rpc_server(rpc_path) as rpc:
            echo = server_process(echo_path)
            targets = [("echo server", echo_path, echo), ("rpc server", rpc_path, rpc)]
            for i in range(args.repeats):
                for name, path, proc in targets if i % 2 else targets[::-1]:
                    used = cpu(proc)
                    sample = dict(rate_raw_window(path, args.seconds))
                    used = cpu(proc) - used
                    sample["server_cpu_us_per_call"] = round(
                        1e6 * used / max(1, sample["calls"]), 1
                    )
                    runs[name].append(sample)
                    print(f"  {name}: {sample}", file=sys.stderr)
    load_after = os.getloadavg()

    summary = {
        name: {
            "per_s": statistics.median(r["per_s"] for r in name_runs),
            "server_cpu_us_per_call": statistics.median(
                r["server_cpu_us_per_call"] for r in name_runs
            ),
        }
        for name, name_runs in runs.items()
    }
    ratio = summary["rpc server"]["per_s"] / summary["echo server"]["per_s"]
    print("| server | calls/s (median) | server CPU µs/call | of echo |")
    print("|---|---|---|---|")
    for name, row in summary.items():
        of_echo = row["per_s"] / summary["echo server"]["per_s"]
        print(f"| {name} | {row['per_s']:.0f} | {row['server_cpu_us_per_call']} | {of_echo:.2f} |")
    print(f"\nload average before {load_before}, after {load_after}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "runs": runs,
                    "summary": summary,
                    "rpc_of_echo": round(ratio, 3),
                    "load_before": load_before,
                    "load_after": load_after,
                    "seconds": args.seconds,
                    "repeats": args.repeats,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
