"""``omnitron monit``: a live table of the apps, a cpu sparkline per process, and the
log tail of the selected app.

Importing this module costs click only: ``rich`` (and the RPC client's errors) are
imported when the command runs, so no other command pays for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import click

from ._context import Cli, pass_cli, rpc_failure
from ._render import NONE, render_event

__all__ = ["monit", "sparkline"]

MONIT_INTERVAL = 1.0
"""Seconds between two refreshes of ``monit``."""
SPARK_SAMPLES = 20
"""CPU samples drawn per process (the daemon's last ones)."""
TAIL_LINES = 10
"""Lines of the selected app's log shown under the table."""
_BARS = "▁▂▃▄▅▆▇█"
_CPU = 1  # the index of "cpu" in a metrics sample (omnitron.daemon._metrics.FIELDS)

_UP = ("\x1b[A", "\x1bOA", "k")
_DOWN = ("\x1b[B", "\x1bOB", "j")


def sparkline(values: Sequence[float], *, top: float = 100.0) -> str:
    """One bar per value, from ``▁`` (0) to ``█`` (``top`` or the largest value)."""
    if not values:
        return ""
    scale = max(top, *values)
    last = len(_BARS) - 1
    return "".join(_BARS[min(last, max(0, round(v / scale * last)))] for v in values)


def keys(data: str) -> list[str]:
    """The keys in what the terminal sent: arrow sequences whole, other characters one by one."""
    found = []
    i = 0
    while i < len(data):
        sequence = next((s for s in (*_UP[:2], *_DOWN[:2]) if data.startswith(s, i)), None)
        if sequence is not None:
            found.append(sequence)
            i += len(sequence)
        else:
            found.append(data[i])
            i += 1
    return found


class _View:
    """What ``monit`` shows: the apps and which one is selected."""

    def __init__(self) -> None:
        self.selected: str | None = None

    def move(self, names: Sequence[str], step: int) -> None:
        if not names:
            self.selected = None
            return
        if self.selected not in names:
            self.selected = names[0]
            return
        index = names.index(self.selected) + step
        self.selected = names[max(0, min(len(names) - 1, index))]

    def render(
        self,
        status: Mapping[str, Any],
        metrics: Mapping[str, Any],
        recent: Sequence[Mapping[str, Any]],
        tail: Sequence[Mapping[str, Any]],
    ) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        from ._render import escape, format_cpu, format_size

        last: dict[str, str] = {}
        for event in recent:
            last[str(event.get("app"))] = render_event(dict(event))
        history: dict[tuple[str, int], list[float]] = {}
        for app in metrics.get("apps") or []:
            for p in app.get("processes") or []:
                samples = p.get("history") or []
                history[(app["name"], p["instance"])] = [s[_CPU] for s in samples]
        daemon = status.get("daemon") or {}
        table = Table(
            title=(
                f"omnitron monit · daemon pid {daemon.get('pid')} · "
                "↑/↓ or j/k select · q or Ctrl-C to quit"
            ),
            expand=True,
        )
        for header in ("APP", "INSTANCE", "PID", "STATUS", "CPU", "CPU HISTORY", "MEMORY"):
            table.add_column(header, no_wrap=True)
        table.add_column("RESTARTS", no_wrap=True)
        # The other columns keep their natural width; this one takes what is left.
        table.add_column("LAST EVENT", overflow="ellipsis", no_wrap=True, ratio=1)
        colours = {"online": "green", "crashed": "red", "errored": "red", "stopped": "dim"}
        for app in status.get("apps") or []:
            name = str(app.get("name"))
            chosen = name == self.selected
            processes = app.get("processes") or [{}]
            for index, p in enumerate(processes):
                state = str(p.get("status", app.get("status", NONE)))
                running = p.get("pid") is not None
                spark = sparkline(history.get((name, p.get("instance", -1)), []))
                table.add_row(
                    Text(("▶ " if chosen else "  ") + name) if index == 0 else "",
                    str(p.get("instance", NONE)),
                    str(p.get("pid") or NONE),
                    Text(state, style=colours.get(state, "yellow")),
                    format_cpu(p.get("cpu")) if running else NONE,
                    Text(spark, style="cyan") if running else NONE,
                    format_size(p.get("memory")) if running else NONE,
                    str(p.get("restarts", app.get("restarts", 0))),
                    Text(last.get(name, "")) if index == 0 else "",
                    style="reverse" if chosen else None,
                )
        if self.selected is None:
            return table
        lines = Text()
        for entry in tail[-TAIL_LINES:]:
            instance = "-" if entry.get("instance") is None else entry["instance"]
            lines.append(f"[{instance}] {entry.get('output')} | ", style="dim")
            lines.append(escape(entry.get("line", "")) + "\n")
        lines.rstrip()
        if not tail:
            lines.append("(no lines yet)", style="dim")
        pane = Panel(lines, title=f"log tail · {self.selected}", title_align="left")
        return Group(table, pane)


def _wait_for_key(timeout: float) -> str | None:
    """What was typed within ``timeout`` seconds (stdin a terminal), else ``None``."""
    import os
    import select
    import sys

    if not sys.stdin.isatty():
        select.select([], [], [], timeout)
        return None
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return None
    return os.read(sys.stdin.fileno(), 32).decode("utf-8", "replace")


def _monit(cli: Cli, interval: float) -> None:
    import sys

    from rich.console import Console
    from rich.live import Live

    from omnitron.rpc._errors import RpcError

    raw: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if sys.stdin.isatty():
        raw = _cbreak(sys.stdin.fileno())
    view = _View()
    with cli.connect() as client, raw:

        def screen() -> Any:
            status = client.call("daemon.status")
            names = [str(app.get("name")) for app in status.get("apps") or []]
            if view.selected not in names:
                view.move(names, 0)
            metrics = client.call("daemon.metrics", history=SPARK_SAMPLES)
            tail: list[Mapping[str, Any]] = []
            if view.selected is not None:
                reply = client.call("daemon.logs", apps=[view.selected], lines=TAIL_LINES)
                tail = reply["lines"]
            return view.render(status, metrics, client.call("daemon.events"), tail), names

        try:
            shown, names = screen()
            with Live(shown, console=Console(), auto_refresh=False, screen=False) as live:
                while True:
                    typed = _wait_for_key(interval)
                    for key in keys(typed or ""):
                        if key.lower() == "q":
                            return
                        if key in _UP:
                            view.move(names, -1)
                        elif key in _DOWN:
                            view.move(names, 1)
                    shown, names = screen()
                    live.update(shown, refresh=True)
        except RpcError as exc:
            raise rpc_failure(exc) from None


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one by one, unechoed; Ctrl-C still interrupts. Restored on exit."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=MONIT_INTERVAL,
    show_default=True,
    help="Seconds between refreshes.",
)
@pass_cli
def monit(cli: Cli, interval: float) -> None:
    """A live table of apps, instances, status, cpu (with its recent history), memory,
    restarts and last event; the selected app's log tail below.

    ↑/↓ (or j/k) select an app; q or Ctrl-C quits.
    """
    try:
        _monit(cli, interval)
    except KeyboardInterrupt:
        return
