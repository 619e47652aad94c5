"""Pure rendering: the daemon's replies (plain data) in, text for the terminal out.

Every function here is a pure function of its arguments (and of the local time
zone, for times of day): no I/O, no clock, no terminal detection, so each is
unit-tested on literal data. Text that comes from
outside (app names, errors, environment values, paths) goes through
:func:`escape` before it reaches the terminal, so a name holding ``ESC [2J`` or a
bidi override is shown as ``\\x1b[2J`` / ``\\u202e`` rather than acted upon (RP-23).

This module is on the ``omnitron status`` fast path: standard library only.
"""

from __future__ import annotations

import time

from .._eventtext import describe

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing import at run time (start-up cost)
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

__all__ = [
    "APP_STATUSES",
    "escape",
    "format_cpu",
    "format_duration",
    "format_size",
    "render_actions",
    "render_app_issues",
    "render_check",
    "render_daemon_line",
    "render_env",
    "render_event",
    "render_graph",
    "render_inspect",
    "render_json",
    "render_kill",
    "render_reload",
    "render_scale",
    "render_status",
    "render_table",
    "status_rows",
]

APP_STATUSES = ("starting", "online", "stopping", "stopped", "errored", "crashed")
"""Every app and process status the daemon reports."""

NONE = "-"
"""What a cell shows when there is no value (no pid, not running)."""

_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


# --------------------------------------------------------------------------- atoms


def escape(value: object) -> str:
    """``str(value)`` with every non-printable character written as an escape.

    Control characters (C0, DEL, C1), format characters (bidi overrides,
    zero-width joiners), line and paragraph separators and unassigned code points
    become ``\\n``, ``\\x1b``, ``\\u202e``...; ordinary text, spaces included, is
    unchanged. The result is always one line.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        else:
            code = ord(ch)
            if code <= 0xFF:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    return "".join(out)


def format_duration(seconds: float | None) -> str:
    """A short, human duration: ``"12s"``, ``"3m"``, ``"2h"``, ``"4d"`` (rounded down).

    ``None`` and negative values give ``"-"``.
    """
    if seconds is None or seconds != seconds or seconds < 0:
        return NONE
    whole = int(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def format_size(size: int | None) -> str:
    """Bytes in decimal units with one decimal: ``"512B"``, ``"31.5MB"``, ``"1.2GB"``.

    Units are powers of 1000, as the config's ``"50MB"`` is. ``None`` gives ``"-"``.
    """
    if size is None or size < 0:
        return NONE
    if size < 1000:
        return f"{size}B"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if round(value, 1) < 1000 or unit == "PB":
            return f"{value:.1f}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_cpu(percent: float | None) -> str:
    """``"0.4%"``; ``None`` gives ``"-"``."""
    if percent is None:
        return NONE
    return f"{percent:.1f}%"


def render_json(data: object) -> str:
    """The stable JSON form of a reply: the daemon's data as it came, one line.

    Keys keep the daemon's order; everything outside ASCII is ``\\u``-escaped,
    so the output is safe on any terminal and in any pipe.
    """
    import json  # only --json pays for it

    return json.dumps(data, ensure_ascii=True, separators=(", ", ": "), default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A left-aligned table with two spaces between columns; every cell escaped.

    The last column is not padded, so lines carry no trailing spaces.
    """
    cells = [[escape(h) for h in headers]] + [[escape(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- status


STATUS_HEADERS = ("NAME", "STATUS", "PID", "UPTIME", "RESTARTS", "CPU", "MEMORY")


def _pids(app: Mapping[str, Any]) -> list[int]:
    return [p["pid"] for p in app.get("processes") or () if p.get("pid") is not None]


def status_rows(apps: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """One row per app: its processes' pids, the youngest uptime, total CPU and memory.

    An app scaled to several instances shows ``online 2/3`` when only some of its
    processes are online, so a partly failed pool is visible in the table.
    """
    rows: list[tuple[str, ...]] = []
    for app in apps:
        processes = list(app.get("processes") or ())
        running = [p for p in processes if p.get("pid") is not None]
        online = [p for p in processes if p.get("status") == "online"]
        status = str(app.get("status", NONE))
        if status == "online" and processes and len(online) < len(processes):
            status = f"online {len(online)}/{len(processes)}"
        pids = _pids(app)
        uptimes = [p.get("uptime") for p in online if p.get("uptime") is not None]
        rows.append(
            (
                str(app.get("name", "?")),
                status,
                ",".join(map(str, pids)) if pids else NONE,
                format_duration(min(uptimes)) if uptimes else NONE,
                str(app.get("restarts", 0)),
                format_cpu(sum(p.get("cpu") or 0.0 for p in running)) if running else NONE,
                format_size(sum(p.get("memory") or 0 for p in running)) if running else NONE,
            )
        )
    return rows


def render_app_issues(apps: Sequence[Mapping[str, Any]]) -> list[str]:
    """``name: last error`` for every app that is errored or crashed."""
    lines = []
    for app in apps:
        if app.get("status") in ("errored", "crashed") and app.get("last_error"):
            lines.append(f"{escape(app['name'])} ({app['status']}): {escape(app['last_error'])}")
    return lines


def render_apps(apps: Sequence[Mapping[str, Any]]) -> str:
    """The app table (``omnitron list``), with the last error of failing apps below it."""
    if not apps:
        return "no apps"
    text = render_table(STATUS_HEADERS, status_rows(apps))
    issues = render_app_issues(apps)
    if issues:
        text += "\n\n" + "\n".join(issues)
    return text


def render_daemon_line(daemon: Mapping[str, Any]) -> str:
    """``daemon pid 4242 · v0.1.0 · up 3m · /home/me/.omnitron``, plus persistence trouble."""
    parts = [
        f"daemon pid {daemon.get('pid', '?')}",
        f"v{escape(daemon.get('version', '?'))}",
        f"up {format_duration(daemon.get('uptime'))}",
        escape(daemon.get("home", "?")),
    ]
    persistence = daemon.get("persistence")
    if persistence and persistence != "ok":
        parts.append(f"persistence: {escape(persistence)}")
    logs = daemon.get("logs")
    if logs and logs != "ok":
        parts.append(f"logs: {escape(logs)} ({daemon.get('log_write_errors', 0)} write errors)")
    if daemon.get("daemon_log_errors"):
        parts.append(f"daemon log: {daemon['daemon_log_errors']} records not written")
    return " · ".join(parts)


def render_status(status: Mapping[str, Any]) -> str:
    """``omnitron status``: the daemon line, the config in force, then the app table."""
    daemon = status.get("daemon") or {}
    lines = [render_daemon_line(daemon)]
    if daemon.get("config"):
        lines.append(f"config {escape(daemon['config'])}")
    return "\n".join(lines) + "\n\n" + render_apps(status.get("apps") or [])


# --------------------------------------------------------------------------- actions


_PAST = {"start": "started", "stop": "stopped", "restart": "restarted", "reload": "reloaded"}
_ALREADY = {
    "start": "already running",
    "stop": "already stopped",
    "restart": "not running",
    "reload": "not running",
}


def render_actions(verb: str, target: str, names: Sequence[str]) -> str:
    """What ``start|stop|restart`` did: ``started: cache, api`` or why nothing happened."""
    if names:
        return f"{_PAST[verb]}: {', '.join(escape(n) for n in names)}"
    if target == "all":
        return f"nothing to {verb}"
    return f"{escape(target)}: {_ALREADY[verb]}"


def render_start_failure(data: Mapping[str, Any]) -> list[str]:
    """The detail lines of an app that did not come up: its last stderr lines and
    its log file (from a ``START_FAILED`` error's ``data``); none if ``data`` has none."""
    app, log = data.get("app"), data.get("log")
    if not isinstance(app, str) or not isinstance(log, str):
        return []
    tail = [str(line) for line in data.get("stderr_tail") or ()]
    lines = [f"last stderr lines of {app}:", *(f"  {line}" for line in tail)] if tail else []
    return [*lines, f"log: {log}"]


def render_signal(result: Mapping[str, Any]) -> str:
    """``SIGHUP -> web: 101, 102`` per app (``-`` for an app with no running process)."""
    name = escape(result.get("signal"))
    return "\n".join(
        f"{name} -> {escape(app)}: {', '.join(map(str, pids)) if pids else '- (not running)'}"
        for app, pids in (result.get("sent") or {}).items()
    )


def render_scale(result: Mapping[str, Any]) -> str:
    """``api: 1 -> 3 instances``."""
    name = escape(result.get("name", "?"))
    previous, instances = result.get("previous"), result.get("instances")
    if previous == instances:
        return f"{name}: already {instances} instance{'s' if instances != 1 else ''}"
    return f"{name}: {previous} -> {instances} instance{'s' if instances != 1 else ''}"


# --------------------------------------------------------------------------- inspect, env


def _value(value: object) -> str:
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return " ".join(escape(_quote(v)) for v in value) if value else NONE
    if isinstance(value, dict):
        return ", ".join(f"{escape(k)}={_value(v)}" for k, v in value.items()) or NONE
    return escape(value)


def _quote(word: object) -> str:
    text = str(word)
    if text and not any(ch.isspace() or ch in "'\"\\" for ch in text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def _fields(pairs: Iterable[tuple[str, object]], indent: str = "") -> list[str]:
    items = list(pairs)
    width = max((len(key) for key, _ in items), default=0)
    return [f"{indent}{key.ljust(width)}  {_value(value)}".rstrip() for key, value in items]


def render_inspect(app: Mapping[str, Any]) -> str:
    """``omnitron inspect APP``: status, spec, processes, last exits and recent events."""
    lines = [f"{escape(app.get('name', '?'))} ({escape(app.get('status', NONE))})"]
    lines += _fields(
        [
            ("mode", app.get("mode")),
            ("instances", app.get("instances")),
            ("restarts", app.get("restarts")),
            ("critical", app.get("critical")),
            ("enabled", app.get("enabled")),
            ("last error", app.get("last_error")),
            ("log file", app.get("log_file")),
        ],
        indent="  ",
    )
    spec = app.get("spec") or {}
    if spec:
        lines += ["", "spec"]
        lines += _fields(((key.replace("_", " "), value) for key, value in spec.items()), "  ")
    processes = app.get("processes") or []
    if processes:
        lines += ["", "processes"]
        table = render_table(
            ("INSTANCE", "PID", "STATUS", "UPTIME", "RESTARTS", "CPU", "MEMORY"),
            [
                (
                    p.get("instance", "?"),
                    NONE if p.get("pid") is None else p["pid"],
                    p.get("status", NONE),
                    format_duration(p.get("uptime")) if p.get("pid") is not None else NONE,
                    p.get("restarts", 0),
                    format_cpu(p.get("cpu")) if p.get("pid") is not None else NONE,
                    format_size(p.get("memory")) if p.get("pid") is not None else NONE,
                )
                for p in processes
            ],
        )
        lines += ["  " + line for line in table.splitlines()]
    exits = app.get("last_exits") or {}
    if exits:
        lines += ["", "last exits"]
        lines += _fields(((f"instance {k}", v) for k, v in exits.items()), "  ")
    lines += _health_lines(app.get("health"), app.get("dependencies_health") or {})
    lines += _log_lines(app.get("logs"))
    events = app.get("recent_events") or []
    if events:
        lines += ["", "recent events"]
        lines += [f"  {render_event(event)}" for event in events]
    return "\n".join(lines)


def _log_lines(logs: object) -> list[str]:
    """The ``logs`` section of ``inspect``: what was not kept, and a failing file."""
    if not isinstance(logs, dict):
        return []
    lines = ["", "logs"]
    lines += _fields(
        [
            ("suppressed lines", logs.get("suppressed_lines", 0)),
            ("dropped lines", logs.get("dropped_lines", 0)),
            ("write errors", logs.get("write_errors", 0)),
            ("lost lines", logs.get("lost_lines", 0)),
            ("error", logs.get("error")),
        ],
        indent="  ",
    )
    return lines


def _health_lines(health: object, dependencies: Mapping[str, Any]) -> list[str]:
    """The ``health`` section of ``inspect``: the probe, each process, the dependencies'."""
    lines: list[str] = []
    if not isinstance(health, dict):
        health = {}
    probe = health.get("probe")
    if probe:
        target = probe.get("target")
        target = " ".join(map(str, target)) if isinstance(target, list) else target
        lines += ["", "health", f"  probe  {escape(probe.get('kind'))} {escape(target)}"]
        for p in health.get("processes") or []:
            failure = f", last failure: {p['last_failure']}" if p.get("last_failure") else ""
            lines.append(
                f"  instance {p.get('instance')}  {p.get('status')} "
                f"({p.get('failures', 0)} consecutive failures{escape(failure)})"
            )
    if dependencies:
        lines += ["", "dependencies' health"]
        lines += _fields(dependencies.items(), "  ")
    return lines


def render_event(event: object) -> str:
    """``12:00:01 instance 0 online (pid 4302)``: an app event, at its local time of day.

    ``event`` is the daemon's ``{"time", "kind", ...}`` map; a line of text (from
    an older daemon) is shown as it is.
    """
    if not isinstance(event, dict):
        return escape(event)
    stamp = event.get("time")
    when = (
        time.strftime("%H:%M:%S", time.localtime(stamp))
        if isinstance(stamp, int | float) and not isinstance(stamp, bool)
        else NONE
    )
    return f"{when} {escape(describe(event))}"


def render_env(env: Mapping[str, str]) -> str:
    """``KEY=value`` lines, as configured (secret-looking values arrive redacted)."""
    if not env:
        return "(no environment variables configured)"
    return "\n".join(f"{escape(key)}={escape(value)}" for key, value in env.items())


# --------------------------------------------------------------------------- graph


def render_graph(graph: Mapping[str, Any]) -> str:
    """The strategy, the start order, and the dependency tree (dependents under deps).

    An app that depends on several apps appears under each of them; it is expanded
    only the first time (later occurrences end in ``...``), so the output stays
    linear in the size of the graph.
    """
    apps: Mapping[str, Sequence[str]] = graph.get("apps") or {}
    order: list[str] = list(graph.get("order") or apps)
    lines = [
        f"strategy: {escape(graph.get('strategy', NONE))}",
        f"start order: {' -> '.join(escape(n) for n in order) if order else NONE}",
    ]
    if not order:
        return "\n".join(lines)
    position = {name: i for i, name in enumerate(order)}
    dependents: dict[str, list[str]] = {name: [] for name in order}
    for name in order:
        for dep in apps.get(name, ()):
            dependents.setdefault(dep, []).append(name)
    for children in dependents.values():
        children.sort(key=lambda n: position.get(n, len(position)))
    roots = [name for name in order if not apps.get(name)]
    lines.append("")
    expanded: set[str] = set()

    def walk(name: str, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└── " if last else "├── ")
        children = dependents.get(name, [])
        again = name in expanded and bool(children)
        lines.append(f"{prefix}{branch}{escape(name)}{' ...' if again else ''}")
        if again:
            return
        expanded.add(name)
        inner = prefix if top else prefix + ("    " if last else "│   ")
        for i, child in enumerate(children):
            walk(child, inner, i == len(children) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return "\n".join(lines)


# --------------------------------------------------------------------------- config


def render_check(report: Mapping[str, Any]) -> str:
    """``omnitron check``: the file, the apps in start order with what they wait for."""
    apps = report.get("apps") or []
    lines = [f"{escape(report.get('config', '?'))}: ok, {len(apps)} app{_s(len(apps))}"]
    if report.get("stack"):
        lines.append(f"stack: {escape(report['stack'])}")
    lines.append(f"strategy: {escape(report.get('strategy', NONE))}")
    if apps:
        lines += ["", "start order"]
        width = len(str(len(apps)))
        for i, app in enumerate(apps, start=1):
            notes = []
            if app.get("instances", 1) != 1:
                notes.append(f"x{app['instances']}")
            if app.get("depends_on"):
                notes.append("after " + ", ".join(escape(d) for d in app["depends_on"]))
            if app.get("critical"):
                notes.append("critical")
            if app.get("enabled") is False:
                notes.append("disabled")
            suffix = f"  ({'; '.join(notes)})" if notes else ""
            lines.append(f"  {str(i).rjust(width)}. {escape(app.get('name', '?'))}{suffix}")
            for process in app.get("processes") or ():  # a module-worker app's, in start order
                about = [escape(process.get("module", "?"))]
                if process.get("instances", 1) != 1:
                    about.append(f"x{process['instances']}")
                if process.get("access"):
                    about.append("after " + ", ".join(escape(a) for a in process["access"]))
                name = escape(process.get("name", "?"))
                lines.append(f"  {' ' * width}  - {name}  ({'; '.join(about)})")
    return "\n".join(lines)


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def render_reload(diff: Mapping[str, Any]) -> str:
    """``omnitron reload-config``: what was (or, with ``--dry-run``, would be) changed."""
    applied = bool(diff.get("applied"))
    added = diff.get("added") or []
    removed = diff.get("removed") or []
    changed: Mapping[str, Sequence[str]] = diff.get("changed") or {}
    settings = diff.get("settings") or []
    if not (added or removed or changed or settings):
        return "no changes: the running config matches the file"
    lines = ["applied:" if applied else "would apply (dry run):"]
    lines += [f"  + {escape(name)} (added)" for name in added]
    lines += [f"  - {escape(name)} (removed)" for name in removed]
    for name, fields in changed.items():
        lines.append(f"  ~ {escape(name)} (changed)")
        lines += [f"      {escape(field)}" for field in fields]
    if settings:
        lines.append("  settings:")
        lines += [f"      {escape(setting)}" for setting in settings]
    return "\n".join(lines)


# --------------------------------------------------------------------------- kill


def render_kill(report: Mapping[str, Any]) -> str:
    """``omnitron kill``: what was killed and which files were removed."""
    lines = []
    daemon = report.get("daemon")
    if daemon is not None:
        lines.append(f"killed daemon (pid {daemon})")
    processes = report.get("processes") or []
    if processes:
        described = ", ".join(
            f"{escape(p.get('app', '?'))}[{p.get('instance', '?')}] pid {p.get('pid')}"
            for p in processes
        )
        lines.append(
            f"killed {len(processes)} app process{'es' if len(processes) != 1 else ''}: {described}"
        )
    escaped = report.get("escaped") or []
    if escaped:
        lines.append(f"still running after SIGKILL: {', '.join(map(str, escaped))}")
    lines += [f"removed {escape(path)}" for path in report.get("removed") or ()]
    if not lines:
        return "nothing to kill: no daemon and no app process for this home"
    return "\n".join(lines)
