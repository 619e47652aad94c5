"""``omnitron metrics``: the last sample of every process, as a table, JSON or
Prometheus text.

Imported only by the ``metrics`` command. The Prometheus text is rendered by the
daemon (``daemon.metrics`` with ``format="prometheus"``), so the CLI never
imports ``prometheus_client``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from ._context import ACTION_TIMEOUT, EXIT_USAGE, Cli, CliError
from ._render import NONE, format_cpu, format_duration, format_size, render_table

__all__ = ["metric_rows", "metrics", "render_metrics"]

HEADERS = (
    "APP",
    "INSTANCE",
    "PID",
    "CPU",
    "MEMORY",
    "USS",
    "THREADS",
    "FDS",
    "TREE CPU",
    "TREE MEMORY",
)


def _lag(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NONE
    return f"{value * 1000:.1f}ms"


def metrics(cli: Cli, app: str | None, *, prometheus: bool, enable: bool | None) -> None:
    """Print the metrics of every app (or of ``app``); or turn sampling on or off."""
    if enable is not None:
        if app is not None or prometheus:
            raise CliError(
                "--enable/--disable take no APP and no --prometheus", exit_code=EXIT_USAGE
            )
        result = cli.call("daemon.set_metrics_enabled", enabled=enable, timeout=ACTION_TIMEOUT)
        cli.emit(result, lambda r: f"metrics sampling {'on' if r['enabled'] else 'off'}")
        return
    if prometheus:
        if cli.json:
            raise CliError("--prometheus and --json exclude each other", exit_code=EXIT_USAGE)
        if app is not None:
            raise CliError("--prometheus covers every app; omit APP", exit_code=EXIT_USAGE)
        click.echo(cli.call("daemon.metrics", format="prometheus"), nl=False)
        return
    params: dict[str, Any] = {} if app is None else {"name": app}
    cli.emit(cli.call("daemon.metrics", **params), render_metrics)


def _size(value: int | None) -> str:
    return format_size(value) if value is not None else NONE


def _count(value: int | None) -> str:
    return str(value) if value is not None else NONE


def _row(app: str, instance: str, pid: object, figures: Mapping[str, Any]) -> tuple[str, ...]:
    descendants = figures.get("descendants")
    tree_memory = _size(figures.get("tree_rss"))
    if descendants:
        tree_memory += f" ({descendants} descendant{'s' if descendants != 1 else ''})"
    return (
        app,
        instance,
        NONE if pid is None else str(pid),
        format_cpu(figures.get("cpu")),
        _size(figures.get("rss")),
        _size(figures.get("uss")),
        _count(figures.get("threads")),
        _count(figures.get("fds")),
        format_cpu(figures.get("tree_cpu")),
        tree_memory,
    )


def metric_rows(result: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row per process, and a total row per app with several processes."""
    rows: list[tuple[str, ...]] = []
    for app in result["apps"]:
        for process in app["processes"]:
            rows.append(_row(app["name"], str(process["instance"]), process["pid"], process))
        if len(app["processes"]) > 1:
            rows.append(_row(app["name"], "total", None, app))
    return rows


def render_metrics(result: Mapping[str, Any]) -> str:
    """The daemon's line, then one row per process and a total row per app with
    several processes."""
    daemon = result["daemon"]
    if not result["enabled"]:
        state = "sampling off (`omnitron metrics --enable` turns it on)"
    else:
        state = (
            f"sampled every {result['interval']:g}s, kept {format_duration(result['retention'])}"
        )
    head = (
        f"daemon pid {daemon['pid']}  cpu {format_cpu(daemon.get('cpu'))}  "
        f"memory {_size(daemon.get('rss'))}  threads {_count(daemon.get('threads'))}  "
        f"fds {_count(daemon.get('fds'))}  rpc calls {_count(daemon.get('rpc_calls'))}  "
        f"loop lag p99 {_lag(daemon.get('loop_lag_p99'))} max {_lag(daemon.get('loop_lag_max'))}  "
        f"{state}"
    )
    rows = metric_rows(result)
    if not rows:
        return head + "\nno processes"
    return head + "\n" + render_table(HEADERS, rows)
