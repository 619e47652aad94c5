"""``omnitron health`` and ``omnitron events`` (and the registration of ``monit``).

Importing this module costs click only: Trio and the async client are imported
inside the commands that need them; ``monit`` lives in :mod:`._monit`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from ._context import Cli, pass_cli, rpc_failure
from ._monit import monit
from ._render import NONE, escape, render_event, render_table

__all__ = ["register", "render_health"]


# --------------------------------------------------------------------------- health


def _latency(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NONE
    return f"{value * 1000:.0f}ms" if value < 10 else f"{value:.1f}s"


def _target(probe: Mapping[str, Any]) -> str:
    target = probe.get("target")
    if isinstance(target, list):
        return " ".join(str(t) for t in target)
    return str(target)


def render_health(apps: Sequence[Mapping[str, Any]]) -> str:
    """``omnitron health``: one row per probed process, then apps without a probe."""
    rows: list[tuple[object, ...]] = []
    unprobed = []
    for app in apps:
        probe = app.get("probe")
        if not probe:
            unprobed.append(str(app.get("name")))
            continue
        processes = app.get("processes") or []
        if not processes:
            not_running = (NONE, NONE, f"{probe.get('kind')} {_target(probe)}", "not running")
            rows.append((app.get("name"), *not_running, NONE, NONE, NONE, NONE))
        for p in processes:
            rows.append(
                (
                    app.get("name"),
                    p.get("instance"),
                    p.get("pid"),
                    f"{probe.get('kind')} {_target(probe)}",
                    p.get("status"),
                    p.get("last_result") or NONE,
                    _latency(p.get("last_latency")),
                    p.get("failures", 0),
                    p.get("last_failure") or NONE,
                )
            )
    lines = []
    if rows:
        lines.append(
            render_table(
                (
                    "APP",
                    "INSTANCE",
                    "PID",
                    "PROBE",
                    "STATUS",
                    "LAST RESULT",
                    "LATENCY",
                    "FAILURES",
                    "LAST FAILURE",
                ),
                rows,
            )
        )
    if unprobed:
        lines.append("no health probe: " + ", ".join(escape(n) for n in unprobed))
    for app in apps:
        logs = app.get("logs") or {}
        if logs.get("write_errors"):
            now = f"failing: {escape(logs['error'])}" if logs.get("error") else "writing again"
            lines.append(
                f"logs of {escape(app.get('name'))}: {logs['write_errors']} write errors, "
                f"{logs.get('lost_lines', 0)} lines lost, {now}"
            )
    return "\n".join(lines) if lines else "no apps"


@click.argument("app", required=False)
@pass_cli
def health(cli: Cli, app: str | None) -> None:
    """Health probes: status, last result, latency, consecutive failures, last failure.

    Exits 1 if a probed process is unhealthy or failing.
    """
    apps = cli.call("daemon.health", name=app)
    cli.emit(apps, render_health)
    bad = {"unhealthy", "failing"}
    if any(p.get("status") in bad for a in apps for p in a.get("processes") or []):
        raise SystemExit(1)


# --------------------------------------------------------------------------- events


def _event_line(event: Mapping[str, Any], as_json: bool) -> str:
    if as_json:
        import json

        return json.dumps(dict(event), sort_keys=True)
    if event.get("dropped") is not None and event.get("kind") is None:
        return f"-- {event['dropped']} events dropped (this reader was too slow) --"
    return f"{escape(event.get('app', '?'))}: {render_event(dict(event))}"


def _key(event: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, repr(v)) for k, v in event.items()))


async def _follow(cli: Cli, app: str | None, lines: int) -> None:
    from omnitron.rpc import connect_unix
    from omnitron.rpc._wire import CLOSED_METHOD, DROPPED_METHOD

    async with connect_unix(cli.socket_path) as client:
        await client.call("events.subscribe", name=app)
        recent = (await client.call("daemon.events", name=app))[-lines:] if lines else []
        seen = {_key(e) for e in recent}
        for event in recent:
            click.echo(_event_line(event, cli.json))
        async for note in client.notifications():
            if note.method == DROPPED_METHOD:
                click.echo(_event_line({"dropped": note.params.get("dropped")}, cli.json))
            elif note.method == CLOSED_METHOD:
                return
            elif note.method == "events.event":
                event = {k: v for k, v in note.params.items() if k != "stream"}
                if _key(event) in seen:
                    seen.discard(_key(event))
                    continue
                seen.clear()  # only the replayed ones can repeat
                click.echo(_event_line(event, cli.json))


@click.argument("app", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "--lines",
    "-n",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="How many recent events to print first.",
)
@pass_cli
def events(cli: Cli, app: str | None, follow: bool, lines: int) -> None:
    """Lifecycle events (started, online, exited, restarting, health failed, ...).

    With --json, one JSON object per line. --follow streams new events until
    Ctrl-C or until the daemon stops.
    """
    if not follow:
        recent = cli.call("daemon.events", name=app)
        for event in recent[-lines:] if lines else []:
            click.echo(_event_line(event, cli.json))
        return
    import trio

    from omnitron.rpc._errors import RpcError

    try:
        trio.run(_follow, cli, app, lines)
    except KeyboardInterrupt:
        return
    except RpcError as exc:
        raise rpc_failure(exc) from None


# --------------------------------------------------------------------------- register


def register(group: click.Group) -> None:
    """Add this module's commands to ``group`` (as its own command class)."""
    for function in (health, events, monit):
        group.command()(function)
