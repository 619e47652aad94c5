"""Log throughput through the daemon, next to the same children writing to files directly.

Usage::

    python benchmarks/logs.py [--lines 500000] [--line-bytes 92] [--apps 1]
                              [--repeats 3] [--json out.json]
    python benchmarks/logs.py --flood [--apps 10] [--seconds 30] [--json out.json]

Throughput (the default): ``--apps`` children, ``python -c``, each print
``--lines`` numbered lines of ``--line-bytes`` bytes as fast as they can (a print
loop, stdout block-buffered as it is on a pipe or a file), then sleep.

direct
    Each child's stdout is a file in a temporary directory, all children at
    once. The floor: from the first child's start to the last child's end, as the
    children measure it.
daemon
    A real daemon (``omnitron up`` in a temporary home) runs the children as apps;
    their stdout is a pipe the daemon drains into ``logs/<app>.log``. The time is
    from the first child's first line to the moment every last line is in its
    file (files polled every 5 ms). Every line must be there, once, in order,
    with no ``dropped`` or ``suppressed`` marker, or the run fails.

The table gives the median lines/s and MB/s (all apps together) of the repeats,
the daemon's CPU seconds per 100,000 lines (from ``psutil``, between the start
of the apps and the last line) and the ratio of the daemon's rate to the direct
one. Linux only.

Flood (``--flood``, FAULTS RX-06 / RX-08): ``--apps`` children write 1 KiB lines
as fast as they can for ``--seconds`` under the default per-app rate limit, at
``nice 19`` (the writers must not take the daemon's CPU share of a small
machine; their pipes stay full all the same), beside a crash-looping app whose
restart delay is 300 ms. Reported: MB/s drained (kept + suppressed + dropped)
and kept, lines suppressed (rate limit) and dropped (buffer full: the disk
slower than the pipes), the daemon's CPU and peak RSS, its heartbeat's loop lag during
the flood (p50, p99, max over the recent beats; the histogram's p99 bucket),
the floor of that lag (the same heartbeat in a bare Trio process running beside
the daemon: what the machine's scheduler alone costs), and how late the
crash-looper's restarts came (timer start to the new process online, so a spawn
included).
"""

from __future__ import annotations

import argparse
import itertools
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

CHILD = """
import sys, time
n, size = int(sys.argv[1]), int(sys.argv[2])
start = time.time()
write = sys.stdout.write
write(f"START {start!r}\\n")
pad = "x" * (size - 15)
for i in range(n):
    write(f"line {i:08d} {pad}\\n")
sys.stdout.flush()
sys.stderr.write(f"{start!r} {time.time()!r}\\n")
sys.stderr.flush()
time.sleep(3600)
"""

# The floor of the loop-lag figures: the same heartbeat (100 ms sleeps, lateness
# recorded) in a bare Trio process beside the daemon, for the flood's duration.
FLOOR_HEARTBEAT = """
import json, math, sys, trio
async def main(seconds):
    lags = []
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        deadline = trio.current_time() + 0.1
        await trio.sleep_until(deadline)
        lags.append(max(0.0, trio.current_time() - deadline))
    lags.sort()
    pick = lambda f: lags[min(len(lags) - 1, math.ceil(f * len(lags)) - 1)]
    print(json.dumps({"p50": pick(0.5), "p99": pick(0.99), "max": lags[-1], "beats": len(lags)}))
trio.run(main, float(sys.argv[1]))
"""

FLOOD_CHILD = """
import sys
pad = "x" * 1000
block = "".join(f"flood {i:08d} {pad}\\n" for i in range(64)).encode()
write = sys.stdout.buffer.write
while True:
    write(block)
"""


def direct(apps: int, lines: int, size: int, workdir: Path) -> dict[str, float]:
    procs = []
    for i in range(apps):
        with (workdir / f"direct{i}.log").open("wb") as sink:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, str(lines), str(size)],
                    stdout=sink,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
    spans = []
    for proc in procs:
        assert proc.stderr is not None
        begin, end = map(float, proc.stderr.readline().split())
        spans.append((begin, end))
        proc.kill()
        proc.wait()
        proc.stderr.close()
    for i in range(apps):
        (workdir / f"direct{i}.log").unlink()
    return {"seconds": max(e for _, e in spans) - min(b for b, _ in spans)}


def cli(home: Path, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")}
    env["OMNITRON_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "omnitron", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


def _daemon(home: Path, project: Path, config: str) -> psutil.Process:
    (project / "omnitron.toml").write_text(config)
    cli(home, project, "up")
    status = json.loads(cli(home, project, "--json", "status").stdout)
    return psutil.Process(status["daemon"]["pid"])


def _start_apps(home: Path, names: list[str]) -> None:
    from omnitron.rpc.sync_client import connect_unix_sync

    with connect_unix_sync(str(home / "daemon.sock"), timeout=60) as client:
        for name in names:
            client.call("daemon.start_app", name=name)


def _kill(home: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "omnitron", "--home", str(home), "kill"],
        capture_output=True,
        timeout=60,
    )
    shutil.rmtree(home, ignore_errors=True)


def through_daemon(apps: int, lines: int, size: int, workdir: Path) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="omb-"))
    project = workdir / "project"
    project.mkdir(exist_ok=True)
    command = json.dumps([sys.executable, "-c", CHILD, str(lines), str(size)])
    names = [f"spew{i}" for i in range(apps)]
    # Throughput, not the rate limit (64 MiB/s and a 128 MiB burst by default): the
    # limit is set past what any run writes, and a run that meets it fails below.
    config = (
        'project = "bench"\n\n[logging]\nmax_size = "10GB"\nrate = "100GiB"\nburst = "100GiB"\n\n'
    ) + "".join(
        f'[[apps]]\nname = "{name}"\ncommand = {command}\nenabled = false\n\n' for name in names
    )
    try:
        daemon = _daemon(home, project, config)
        cpu_before = sum(daemon.cpu_times()[:2])
        _start_apps(home, names)
        last = f"line {lines - 1:08d} ".encode()
        expected = lines * size
        waiting = set(names)
        deadline = time.monotonic() + 300
        while waiting:
            if time.monotonic() > deadline:
                raise SystemExit(f"{sorted(waiting)}: not every line arrived within 300 s")
            for name in list(waiting):
                log = home / "logs" / f"{name}.log"
                size_now = log.stat().st_size if log.exists() else 0
                if size_now >= expected:
                    with log.open("rb") as f:
                        f.seek(max(0, size_now - 2 * size - 200))
                        tail = f.read()
                    if last in tail:
                        waiting.discard(name)
            time.sleep(0.005)
        done = time.time()
        cpu = sum(daemon.cpu_times()[:2]) - cpu_before
        starts = []
        for name in names:
            data = (home / "logs" / f"{name}.log").read_text()
            starts.append(float(data.split("START ", 1)[1].split("\n", 1)[0]))
            got = [
                int(line.split(" out | line ", 1)[1][:8])
                for line in data.splitlines()
                if " out | line " in line
            ]
            if got != list(range(lines)) or "dropped" in data or "suppressed" in data:
                raise SystemExit(f"{name}: lines lost: {len(got)} of {lines} in the file")
        return {"seconds": done - min(starts), "daemon_cpu": cpu}
    finally:
        _kill(home)


def throughput(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "daemon": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for _ in range(args.repeats):
            runs["direct"].append(direct(args.apps, args.lines, args.line_bytes, workdir))
            runs["daemon"].append(through_daemon(args.apps, args.lines, args.line_bytes, workdir))
    load_after = os.getloadavg()
    total = args.apps * args.lines
    rows = {}
    for name, samples in runs.items():
        seconds = statistics.median(s["seconds"] for s in samples)
        row = {
            "lines_per_s": total / seconds,
            "mb_per_s": total * args.line_bytes / seconds / 1e6,
        }
        if name == "daemon":
            cpu = statistics.median(s["daemon_cpu"] for s in samples)
            row["daemon_cpu_s_per_100k_lines"] = cpu / total * 100_000
        rows[name] = row
    print(
        f"{args.apps} app(s) x {args.lines} lines of {args.line_bytes} bytes, "
        f"median of {args.repeats}, zero loss\n"
    )
    print("| path | lines/s | MB/s | daemon CPU s per 100k lines | of direct |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        ratio = row["lines_per_s"] / rows["direct"]["lines_per_s"]
        cpu = row.get("daemon_cpu_s_per_100k_lines")
        print(
            f"| {name} | {row['lines_per_s']:.0f} | {row['mb_per_s']:.1f} | "
            f"{'-' if cpu is None else f'{cpu:.3f}'} | {ratio:.2f} |"
        )
    print(f"\nload average before {load_before}, after {load_after}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": runs, "rows": rows, "load": [load_before, load_after]}, indent=2)
        )


def _p99_bucket(buckets: list[float], counts: list[int]) -> str:
    total, seen = sum(counts), 0
    for bound, count in zip([*buckets, float("inf")], counts, strict=True):
        seen += count
        if seen >= 0.99 * total:
            return f"<= {bound * 1000:g} ms"
    return "-"


def flood(args: argparse.Namespace) -> None:
    from omnitron.rpc.sync_client import connect_unix_sync

    load_before = os.getloadavg()
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="omb-"))
    names = [f"flood{i}" for i in range(args.apps)]
    command = json.dumps(["nice", "-n", "19", sys.executable, "-c", FLOOD_CHILD])
    ticker = (
        '[[apps]]\nname = "ticker"\ncommand = ["sh", "-c", "sleep 0.2; exit 3"]\n'
        "enabled = false\n"
        'restart_policy = { max_restarts = 1000000, window = "1s", '
        'backoff = { initial = "300ms", max = "300ms", factor = 1 } }\n\n'
    )
    config = (
        'project = "flood"\n\n[logging]\nmax_size = "100MB"\nmax_files = 2\n'
        "compress = false\n\n"
        + ticker
        + "".join(
            f'[[apps]]\nname = "{name}"\ncommand = {command}\nenabled = false\n\n' for name in names
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        try:
            daemon = _daemon(home, project, config)
            with connect_unix_sync(str(home / "daemon.sock"), timeout=60) as client:
                time.sleep(1.0)  # the heartbeat's first beats, before the flood
                before = client.call("daemon.metrics")["daemon"]["loop_lag_histogram"]
                rss_before = daemon.memory_info().rss
                cpu_before = sum(daemon.cpu_times()[:2])
                client.call("daemon.start_app", name="ticker")
                floor = subprocess.Popen(
                    [sys.executable, "-c", FLOOR_HEARTBEAT, str(args.seconds)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                started = time.time()
                for name in names:
                    client.call("daemon.start_app", name=name)
                peak = rss_before
                while time.time() - started < args.seconds:
                    peak = max(peak, daemon.memory_info().rss)
                    time.sleep(0.1)
                metrics = client.call("daemon.metrics")["daemon"]
                floor_lag = json.loads(floor.communicate(timeout=60)[0])
                elapsed = time.time() - started
                cpu = sum(daemon.cpu_times()[:2]) - cpu_before
                stats = [client.call("daemon.inspect", name=name)["logs"] for name in names]
                events = client.call("daemon.events", name="ticker")
                client.call("daemon.stop_all")
        finally:
            kept_bytes = sum(
                os.path.getsize(home / "logs" / n)
                for n in os.listdir(home / "logs")
                if n.startswith("flood")
            )
            _kill(home)
    after = metrics["loop_lag_histogram"]
    during = [a - b for a, b in zip(after["counts"], before["counts"], strict=True)]
    suppressed = sum(s["suppressed_lines"] for s in stats)
    dropped = sum(s["dropped_lines"] for s in stats)
    line = 1016  # "flood NNNNNNNN " + 1000 x + newline
    lateness = []
    for event, following in itertools.pairwise(events):
        if event["time"] < started:
            continue
        if event["kind"] == "restarting" and following["kind"] == "online":
            lateness.append(following["time"] - event["time"] - event["delay"])
    result: dict[str, Any] = {
        "apps": args.apps,
        "seconds": round(elapsed, 1),
        "drained_mb_per_s": None,
        "kept_mb_per_s": round(kept_bytes / elapsed / 1e6, 1),
        "suppressed_lines": suppressed,
        "suppressed_mb_per_s": round(suppressed * line / elapsed / 1e6, 1),
        "dropped_lines": dropped,
        "dropped_mb_per_s": round(dropped * line / elapsed / 1e6, 1),
        "daemon_cpu_percent": round(100 * cpu / elapsed, 1),
        "daemon_rss_mb": [round(rss_before / 1e6), round(peak / 1e6)],
        "loop_lag_ms": {
            key: round(1000 * metrics[f"loop_lag_{key}"], 1) for key in ("p50", "p99", "max")
        },
        "loop_lag_beats": sum(during),
        "floor_loop_lag_ms": {
            key: round(1000 * floor_lag[key], 1) for key in ("p50", "p99", "max")
        },
        "floor_beats": floor_lag["beats"],
        "loop_lag_p99_bucket": _p99_bucket(after["buckets"], during),
        "restart_lateness_ms": {
            "count": len(lateness),
            "median": round(1000 * statistics.median(lateness), 1) if lateness else None,
            "max": round(1000 * max(lateness), 1) if lateness else None,
        },
        "load": [load_before, os.getloadavg()],
    }
    result["drained_mb_per_s"] = round(
        result["kept_mb_per_s"] + result["suppressed_mb_per_s"] + result["dropped_mb_per_s"], 1
    )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--line-bytes", type=int, default=92)
    parser.add_argument("--apps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flood", action="store_true")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if args.flood:
        args.apps = args.apps or 10
        flood(args)
    else:
        args.apps = args.apps or 1
        throughput(args)


if __name__ == "__main__":
    main()
