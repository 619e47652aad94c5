"""Plots of a ``benchmarks/compare.py`` run (PNG and SVG).

``figures(results)`` turns the results into the series each plot shows; it needs
nothing but the standard library and is what the tests check.  ``render`` draws
them with matplotlib (the ``bench`` extra) and writes the files::

    python benchmarks/plots.py RESULTS.json OUTDIR
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def ecdf(samples: Sequence[float]) -> tuple[list[float], list[float]]:
    """The empirical distribution: sorted values and the share of samples at or below each."""
    xs = sorted(samples)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def figures(results: Mapping[str, Any]) -> dict[str, Any]:
    """The data of every plot, by file stem; a plot without data is left out.

    - ``restart_latency``: per child kind, per peer label, an ECDF in milliseconds;
    - ``storm``: per peer label, restarts/s and the status API's p50/p99 in ms (None
      where the peer has no API);
    - ``memory``: per peer label, RSS with no children and with 100, in MiB.
    """
    labels = {name: peer["label"] for name, peer in results["peers"].items()}
    out: dict[str, Any] = {}
    restart = {}
    for scenario in results.get("restart", {}).values():
        if "samples_s" not in scenario:
            continue
        restart[scenario["child"]] = {
            labels[name]: ecdf([s * 1e3 for s in samples])
            for name, samples in scenario["samples_s"].items()
            if samples
        }
    if restart:
        out["restart_latency"] = restart
    storm = {}
    for name, s in results.get("storm", {}).items():
        if "restarts_per_s" not in s:
            continue
        status = s.get("status") or {}
        storm[labels[name]] = {
            "restarts_per_s": s["restarts_per_s"],
            "status_p50": status.get("p50"),
            "status_p99": status.get("p99"),
        }
    if storm:
        out["storm"] = storm
    memory = {}
    zero = results.get("zero", {}).get("memory", {})
    hundred = results.get("hundred", {}).get("memory", {})
    for name, label in labels.items():
        if name in zero or name in hundred:
            memory[label] = {
                "no children": zero[name]["rss"] / 2**20 if name in zero else None,
                "100 children": hundred[name]["rss"] / 2**20 if name in hundred else None,
            }
    if memory:
        out["memory"] = memory
    return out


def render(results: Mapping[str, Any], outdir: Path) -> list[Path]:
    """Draw the plots into ``outdir`` as PNG and SVG; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = figures(results)
    written: list[Path] = []

    def save(fig: Any, stem: str) -> None:
        fig.tight_layout()
        for ext in ("png", "svg"):
            path = outdir / f"{stem}.{ext}"
            fig.savefig(path, dpi=80, metadata={"Date": None} if ext == "svg" else None)
            written.append(path)
        plt.close(fig)

    if "restart_latency" in data:
        kinds = data["restart_latency"]
        fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
        for ax, (child, peers) in zip(axes[0], kinds.items(), strict=True):
            for label, (xs, ys) in peers.items():
                ax.step(xs, ys, where="post", label=label)
            ax.set_xscale("log")
            ax.set_xlabel("SIGKILL to replacement's hello (ms, log)")
            ax.set_ylabel("share of restarts")
            ax.set_title(f"Restart latency: {child}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][-1].legend(fontsize="small", loc="lower right")
        save(fig, "restart_latency")

    if "storm" in data:
        storm = data["storm"]
        names = list(storm)
        fig, (rate, status) = plt.subplots(1, 2, figsize=(12, 4))
        rate.barh(names, [storm[n]["restarts_per_s"] for n in names])
        rate.set_xlabel("restarts per second (20 children exiting 50 ms after start)")
        rate.invert_yaxis()
        with_api = [n for n in names if storm[n]["status_p50"] is not None]
        ys = range(len(with_api))
        status.barh([y - 0.2 for y in ys], [storm[n]["status_p50"] for n in with_api],
                    height=0.4, label="p50")  # fmt: skip
        status.barh([y + 0.2 for y in ys], [storm[n]["status_p99"] for n in with_api],
                    height=0.4, label="p99")  # fmt: skip
        status.set_yticks(list(ys), with_api)
        status.set_xscale("log")
        status.set_xlabel("status API call during the storm (ms, log)")
        status.invert_yaxis()
        status.legend(fontsize="small")
        save(fig, "storm")

    if "memory" in data:
        memory = data["memory"]
        names = list(memory)
        ys = range(len(names))
        fig, ax = plt.subplots(figsize=(7, 4))
        for offset, key in ((-0.2, "no children"), (0.2, "100 children")):
            ax.barh([y + offset for y in ys], [memory[n][key] or 0 for n in names],
                    height=0.4, label=key)  # fmt: skip
        ax.set_yticks(list(ys), names)
        ax.set_xlabel("supervisor RSS (MiB)")
        ax.invert_yaxis()
        ax.legend(fontsize="small")
        save(fig, "memory")
    return written


if __name__ == "__main__":
    for path in render(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])):
        print(path)
