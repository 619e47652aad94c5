"""``omnitron watch on|off|status [APP]``: hot reload in development.

Imported only by the ``watch`` commands. The rendering is a pure function of the
daemon's ``daemon.watch_*`` replies.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._context import ACTION_TIMEOUT, Cli
from ._render import NONE, escape, format_duration, render_table

__all__ = ["render_switch", "render_watch_status", "switch", "status"]

HEADERS = ("APP", "WATCHING", "DIRECTORY", "DEBOUNCE", "CHANGES", "RELOADS", "FAILED", "LAST")


def switch(cli: Cli, app: str | None, *, on: bool) -> None:
    """``watch on|off [APP]``."""
    params: dict[str, Any] = {} if app is None else {"app": app}
    method = "daemon.watch_on" if on else "daemon.watch_off"
    result = cli.call(method, timeout=ACTION_TIMEOUT, **params)
    cli.emit(result, lambda r: render_switch(r, on=on))


def status(cli: Cli, app: str | None) -> None:
    """``watch status [APP]``."""
    params: dict[str, Any] = {} if app is None else {"app": app}
    cli.emit(cli.call("daemon.watch_status", **params), render_watch_status)


def render_switch(result: Mapping[str, Any], *, on: bool) -> str:
    """``watching: api, web`` (or ``not watching: ...``), then the status table."""
    changed = result["changed"]
    if changed:
        head = f"{'watching' if on else 'not watching'}: {', '.join(changed)}"
    else:
        head = "nothing changed: " + ("already watched" if on else "not watched")
    return head + "\n" + render_watch_status(result)


def _last(record: Mapping[str, Any], now: float) -> str:
    result = record.get("last_result")
    if result is None:
        return NONE
    when = record.get("last_change")
    ago = f" {format_duration(now - when)} ago" if isinstance(when, int | float) else ""
    return f"{result}{ago}"


def render_watch_status(result: Mapping[str, Any], *, now: float | None = None) -> str:
    """One row per app, then the error of each app whose last reload failed (or
    whose watcher stopped) and the files of the last change."""
    now = time.time() if now is None else now
    apps: Sequence[Mapping[str, Any]] = result["apps"]
    if not apps:
        return "no apps"
    rows = []
    details = []
    for record in apps:
        debounce = record.get("debounce")
        rows.append(
            (
                record["app"],
                "yes" if record["watching"] else "no",
                record.get("directory") or NONE,
                NONE if debounce is None else f"{debounce:g}s",
                str(record["changes"]),
                str(record["reloads"]),
                str(record["failures"]),
                _last(record, now),
            )
        )
        if record.get("last_paths"):
            details.append(f"{record['app']}: changed: {', '.join(record['last_paths'])}")
        if record.get("last_error"):
            details.append(f"{record['app']}: error: {record['last_error']}")
        if record.get("watch_error"):
            details.append(f"{record['app']}: watching stopped: {record['watch_error']}")
    table = render_table(HEADERS, rows)
    return table + "".join("\n" + escape(line) for line in details)
