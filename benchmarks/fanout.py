"""Fleet fan-out: ``omnitron -r d0,...,d9 status`` against one daemon, in one run.

Usage::

    python benchmarks/fanout.py [--daemons 10] [--repeats 7] [--json out.json]

Starts ``--daemons`` daemons, each in its own home with one app and its TCP plane
(TLS) on a free loopback port, with the real CLI; a separate client home gets an
alias per daemon (``remote add --fingerprint``, a viewer token each). Then, in
each repeat and in alternating order, it times these CLI runs (wall time of the
whole ``python -m omnitron`` process, as a user sees it):

local
    ``omnitron status`` on the first daemon's Unix socket: the floor.
one remote
    ``omnitron -r d0 status``: the blocking client over TLS (no Trio import).
fan-out K
    ``omnitron -r d0,...,dK-1 status`` for K = 1, 3 and ``--daemons``: the
    Trio fan-out, every host at once, one table.

Modules are byte-compiled once, into a temporary ``PYTHONPYCACHEPREFIX``, as an
installed package has them (an environment with ``PYTHONDONTWRITEBYTECODE`` would
otherwise compile every module on every run, which weighs on the Trio path most).

The table gives the median of each over the repeats and its ratio to ``one
remote`` (the target: fan-out to 10 within 2x of one remote) and to ``local``.
The load average before and after is printed; everything goes to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG = """\
[[apps]]
name = "web"
command = ["{python}", "-c", "import time; time.sleep(3600)"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PYCACHE = tempfile.mkdtemp(prefix="omt-fanout-pyc-")


def omnitron(home: str, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")}
    env["OMNITRON_HOME"] = home
    # Byte-compiled modules, as an installed package has them (kept out of the tree).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = PYCACHE
    return subprocess.run(
        [sys.executable, "-m", "omnitron", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def must(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if result.returncode != 0:
        raise SystemExit(f"failed: {result.args}\n{result.stdout}\n{result.stderr}")
    return result


def timed(home: str, *args: str) -> float:
    started = time.perf_counter()
    must(omnitron(home, *args))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemons", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", metavar="FILE")
    options = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="omt-fanout-"))
    homes: list[str] = []
    client = str(root / "client")
    project = root / "project"
    project.mkdir()
    (project / "omnitron.toml").write_text(CONFIG.format(python=sys.executable))
    try:
        for index in range(options.daemons):
            home = tempfile.mkdtemp(dir="/tmp", prefix=f"omt-fan{index}-")
            homes.append(home)
            port = free_port()
            started = must(omnitron(home, "up", "--tcp", f"127.0.0.1:{port}", cwd=str(project)))
            found = re.search(r"certificate fingerprint: (SHA256:\S+)", started.stderr)
            assert found, started.stderr
            token = root / f"d{index}.token"
            token.write_text(must(omnitron(home, "auth", "token", "--role", "viewer")).stdout)
            must(
                omnitron(
                    client,
                    "remote",
                    "add",
                    f"d{index}",
                    f"tls://127.0.0.1:{port}",
                    "--token-file",
                    str(token),
                    "--fingerprint",
                    found.group(1),
                )
            )
        names = [f"d{i}" for i in range(options.daemons)]
        sizes = sorted({1, min(3, options.daemons), options.daemons})
        variants: dict[str, tuple[str, ...]] = {
            "local": (homes[0], "status"),
            "one remote": (client, "-r", "d0", "status"),
        }
        for size in sizes:
            # "-r d0,d0" names one host through the fan-out path (duplicates are dropped).
            hosts = ",".join(names[:size]) if size > 1 else "d0,d0"
            variants[f"fan-out {size}"] = (client, "-r", hosts, "status")
        for args in variants.values():  # warm the page cache and the pins once
            timed(*args)
        load_before = os.getloadavg()
        samples: dict[str, list[float]] = {name: [] for name in variants}
        order = list(variants)
        for repeat in range(options.repeats):
            for name in order if repeat % 2 == 0 else reversed(order):
                samples[name].append(timed(*variants[name]))
        load_after = os.getloadavg()
    finally:
        for home in homes:
            omnitron(home, "kill")
            shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(PYCACHE, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in samples.items()}
    one, local = medians["one remote"], medians["local"]
    print(f"{options.daemons} daemons, {options.repeats} repeats, CPUs {os.cpu_count()}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print()
    print(f"{'run':<14} {'median ms':>10} {'vs one remote':>14} {'vs local':>9}")
    for name, value in medians.items():
        print(f"{name:<14} {value * 1000:>10.1f} {value / one:>13.2f}x {value / local:>8.2f}x")
    widest = f"fan-out {options.daemons}"
    ratio = medians[widest] / one
    print()
    print(
        f"{widest} / one remote = {ratio:.2f}x (target <= 2x; "
        f"one after the other would be about {options.daemons}x)"
    )
    if options.json:
        report: dict[str, Any] = {
            "daemons": options.daemons,
            "repeats": options.repeats,
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": load_after,
            "samples": samples,
            "medians": medians,
            "ratio_fanout_to_one": ratio,
        }
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
