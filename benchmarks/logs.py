"""Log throughput through the daemon, next to the same child writing to a file directly.

Usage::

    python benchmarks/logs.py [--lines 500000] [--repeats 3] [--json out.json]

One child, ``python -c``, prints ``--lines`` lines of 92 bytes as fast as it can
(a print loop, stdout block-buffered as it is on a pipe or a file), then sleeps.

direct
    The child's stdout is a file in a temporary directory. The floor: the time
    the child takes to write everything, measured by the child itself.
daemon
    A real daemon (``omnitron up`` in a temporary home) runs the child as an
    app; its stdout is a pipe the daemon drains into ``logs/<app>.log``. The time
    is from the child's first line to the moment the last line is in the file
    (the file is polled every 5 ms). Every line must be there, in order, with no
    ``dropped`` or ``suppressed`` marker, or the run fails.

The table gives the median lines/s and MB/s of the repeats, the daemon's CPU
seconds per 100,000 lines (from ``psutil``, between ``omnitron start`` and the
last line) and the ratio of the daemon's rate to the direct one. Linux only.
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

import psutil

LINE_BYTES = 92
CHILD = """
import sys, time
n = int(sys.argv[1])
start = time.time()
write = sys.stdout.write
write(f"START {start!r}\\n")
pad = "x" * 78
for i in range(n):
    write(f"line {i:08d} {pad}\\n")
sys.stdout.flush()
sys.stderr.write(f"{time.time() - start!r}\\n")
time.sleep(3600)
"""


def direct(lines: int, workdir: Path) -> dict[str, float]:
    out = workdir / "direct.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(lines)],
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        elapsed = float(proc.stderr.readline())
        proc.kill()
        proc.wait()
    out.unlink()
    return {"seconds": elapsed}


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


def through_daemon(lines: int, workdir: Path) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="omb-"))
    project = workdir / "project"
    project.mkdir(exist_ok=True)
    command = json.dumps([sys.executable, "-c", CHILD, str(lines)])
    (project / "omnitron.toml").write_text(
        f'project = "bench"\n\n[[apps]]\nname = "spew"\ncommand = {command}\nenabled = false\n'
        '\n[logging]\nmax_size = "10GB"\n'
    )
    try:
        cli(home, project, "up")
        daemon = psutil.Process(
            json.loads(cli(home, project, "--json", "status").stdout)["daemon"]["pid"]
        )
        cpu_before = sum(daemon.cpu_times()[:2])
        cli(home, project, "start", "spew")
        log = home / "logs" / "spew.log"
        last = f"line {lines - 1:08d} ".encode()
        expected = lines * LINE_BYTES
        while True:
            size = log.stat().st_size if log.exists() else 0
            if size >= expected:
                with log.open("rb") as f:
                    f.seek(max(0, size - 4096))
                    if last in f.read():
                        break
            time.sleep(0.005)
        done = time.time()
        cpu = sum(daemon.cpu_times()[:2]) - cpu_before
        data = log.read_text()
        start = float(data.split("START ", 1)[1].split("\n", 1)[0])
        got = [line for line in data.splitlines() if " spew[0] out | line " in line]
        if len(got) != lines or "dropped" in data or "suppressed" in data:
            raise SystemExit(f"lines lost: {len(got)} of {lines} in the file")
        return {"seconds": done - start, "daemon_cpu": cpu}
    finally:
        subprocess.run(
            [sys.executable, "-m", "omnitron", "--home", str(home), "kill"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "daemon": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for _ in range(args.repeats):
            runs["direct"].append(direct(args.lines, workdir))
            runs["daemon"].append(through_daemon(args.lines, workdir))
    load_after = os.getloadavg()
    rows = {}
    for name, samples in runs.items():
        seconds = statistics.median(s["seconds"] for s in samples)
        row = {
            "lines_per_s": args.lines / seconds,
            "mb_per_s": args.lines * LINE_BYTES / seconds / 1e6,
        }
        if name == "daemon":
            cpu = statistics.median(s["daemon_cpu"] for s in samples)
            row["daemon_cpu_s_per_100k_lines"] = cpu / args.lines * 100_000
        rows[name] = row
    print(f"{args.lines} lines of {LINE_BYTES} bytes, median of {args.repeats}, zero loss\n")
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


if __name__ == "__main__":
    main()
