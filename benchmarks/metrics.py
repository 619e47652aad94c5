"""What sampling metrics costs the daemon, next to the same daemon not sampling.

Usage::

    python benchmarks/metrics.py [--quick] [--children N] [--window SECONDS] [--json out.json]

One real daemon (``omnitron up``, detached, in a temporary home under ``/tmp``)
supervises one app of N ``sleep 3600`` processes (100 by default). Its CPU use
(user + system seconds over wall seconds, from ``/proc``) is measured over the
same window in three phases of one run:

floor
    Sampling turned off (``omnitron metrics --disable``): what the idle daemon costs.
1s
    Sampling on, ``[monitoring] metrics.interval = "1s"``.
5s
    The same after ``reload-config`` with ``interval = "5s"``.

Each sampling phase is printed with its difference from the floor, that
difference per sample (milliseconds of CPU per round of N+1 processes), and its
ratio to the floor. The phases alternate (floor, 1s, 5s, floor, ...) for
``--rounds`` rounds and the median of each is kept, so a neighbour's load
affects every phase alike. The daemon is stopped with ``omnitron down`` and then
``omnitron kill`` in any case.
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

CLI_TIMEOUT = 120.0


def config(children: int, interval: str) -> str:
    return (
        'project = "metricsbench"\n'
        f'[monitoring.metrics]\ninterval = "{interval}"\n'
        f'[[apps]]\nname = "sleepers"\ncommand = ["sleep", "3600"]\ninstances = {children}\n'
    )


class Daemon:
    def __init__(self, home: str, project: Path) -> None:
        self.home, self.project = home, project

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")}
        env["OMNITRON_HOME"] = self.home
        result = subprocess.run(
            [sys.executable, "-m", "omnitron", *args],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise SystemExit(f"omnitron {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run("--json", *args).stdout)


def cpu_percent(proc: psutil.Process, window: float) -> float:
    """The process's CPU use over the next ``window`` seconds, in percent of one core."""
    before, start = proc.cpu_times(), time.monotonic()
    time.sleep(window)
    after, end = proc.cpu_times(), time.monotonic()
    used = (after.user + after.system) - (before.user + before.system)
    return 100.0 * used / (end - start)


def measure(children: int, window: float, rounds: int) -> dict[str, Any]:
    home = tempfile.mkdtemp(dir="/tmp", prefix="omb-")
    project = Path(tempfile.mkdtemp(prefix="omb-project-"))
    daemon = Daemon(home, project)
    (project / "omnitron.toml").write_text(config(children, "1s"))
    try:
        daemon.run("up")
        pid = daemon.json("status")["daemon"]["pid"]
        proc = psutil.Process(pid)
        phases: dict[str, list[float]] = {"floor": [], "1s": [], "5s": []}
        samples: dict[str, list[float]] = {"1s": [], "5s": []}
        for _ in range(rounds):
            daemon.run("metrics", "--disable")
            time.sleep(1.0)  # a sample in flight ends
            phases["floor"].append(cpu_percent(proc, window))
            for interval in ("1s", "5s"):
                (project / "omnitron.toml").write_text(config(children, interval))
                daemon.run("reload-config")
                daemon.run("metrics", "--enable")
                time.sleep(1.0)  # the first sample (priming every process) is not counted
                taken = daemon.json("metrics")["samples"]
                phases[interval].append(cpu_percent(proc, window))
                samples[interval].append(daemon.json("metrics")["samples"] - taken)
        metrics = daemon.json("metrics")
        sampled = len(metrics["apps"][0]["processes"])
    finally:
        subprocess.run(
            [sys.executable, "-m", "omnitron", "--home", home, "down"],
            capture_output=True,
            timeout=CLI_TIMEOUT,
        )
        subprocess.run(
            [sys.executable, "-m", "omnitron", "--home", home, "kill"],
            capture_output=True,
            timeout=CLI_TIMEOUT,
        )
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)
    floor = statistics.median(phases["floor"])
    result: dict[str, Any] = {
        "children": children,
        "sampled": sampled,
        "window": window,
        "rounds": rounds,
        "floor_cpu_percent": round(floor, 3),
        "load_average": os.getloadavg()[0],
    }
    for interval in ("1s", "5s"):
        cpu = statistics.median(phases[interval])
        per_window = statistics.median(samples[interval]) or 1
        extra = max(0.0, cpu - floor)
        result[interval] = {
            "cpu_percent": round(cpu, 3),
            "over_floor": round(extra, 3),
            "ratio": round(cpu / floor, 2) if floor else None,
            "samples_in_window": per_window,
            "ms_cpu_per_sample": round(extra / 100 * window / per_window * 1000, 2),
        }
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        f"daemon CPU with {result['children']} children "
        f"(window {result['window']:g}s, median of {result['rounds']} rounds, "
        f"load {result['load_average']:.2f})",
        f"{'phase':<8}{'cpu %':>10}{'over floor':>12}{'x floor':>9}{'ms cpu/sample':>15}",
        f"{'floor':<8}{result['floor_cpu_percent']:>10.2f}{'-':>12}{'1.00':>9}{'-':>15}",
    ]
    for interval in ("1s", "5s"):
        row = result[interval]
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        lines.append(
            f"{interval:<8}{row['cpu_percent']:>10.2f}{row['over_floor']:>12.2f}"
            f"{ratio:>9}{row['ms_cpu_per_sample']:>15.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 10 s windows")
    parser.add_argument("--children", type=int, default=100)
    parser.add_argument("--window", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    args = parser.parse_args()
    window = args.window or (10.0 if args.quick else 20.0)
    rounds = args.rounds or (1 if args.quick else 3)
    result = measure(args.children, window, rounds)
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
