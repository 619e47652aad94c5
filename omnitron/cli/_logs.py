"""``omnitron logs`` and ``omnitron flush``.

``logs`` without ``--follow`` is one call on the synchronous client (the fast
path). ``--follow`` needs the daemon's notifications, so it runs the Trio client:
the reply carries the last lines, then each new line arrives as a ``logs.line``
notification until Ctrl-C (exit 0) or until the daemon closes the connection
(it stopped: exit 0 too, after a note on stderr).
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import time
import zlib
from typing import Any

import click

from ._context import EXIT_USAGE, Cli, CliError, rpc_failure
from ._render import escape, render_json

__all__ = ["flush", "logs", "parse_since"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_COLOURS = ("cyan", "green", "yellow", "blue", "magenta", "bright_cyan", "bright_green")


def parse_since(text: str, now: float) -> float:
    """``10m``, ``30s``, ``2h``, ``1d``, or a combination (``1h30m``) → a Unix time."""
    value = text.strip()
    parts = _SINCE.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise CliError(
            f"--since {text!r}: expected a duration such as 30s, 10m, 2h or 1d",
            exit_code=EXIT_USAGE,
        )
    return now - sum(float(n) * _UNITS[u] for n, u in parts)


def _formatter(cli: Cli, colour: bool) -> Any:
    def line(entry: dict[str, Any]) -> str:
        if cli.json:
            return render_json(entry)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry["time"]))
        stamp += f".{int(entry['time'] % 1 * 1000):03d}Z"
        instance = "-" if entry["instance"] is None else entry["instance"]
        prefix = f"{entry['app']}[{instance}] {entry['output']}"
        if colour:
            hue = _COLOURS[zlib.crc32(entry["app"].encode()) % len(_COLOURS)]
            prefix = click.style(prefix, fg="red" if entry["output"] == "err" else hue)
        if entry["app"] == "daemon":
            return escape(entry["line"])
        return f"{stamp} {prefix} | {escape(entry['line'])}"

    return line


def logs(
    cli: Cli,
    apps: tuple[str, ...],
    *,
    lines: int,
    follow: bool,
    since: str | None,
    grep: str | None,
    stream: str | None,
    daemon: bool,
) -> None:
    """Print the last lines, then (``follow``) every new one (``stream``: stdout|stderr)."""
    params: dict[str, Any] = {"apps": list(dict.fromkeys(apps)), "lines": lines, "daemon": daemon}
    if since is not None:
        params["since"] = parse_since(since, time.time())
    if grep is not None:
        params["grep"] = grep
    if stream is not None:
        params["stream"] = {"stdout": "out", "stderr": "err"}[stream]
    show = _formatter(cli, colour=sys.stdout.isatty() and not cli.json)
    if not follow:
        for entry in cli.call("daemon.logs", **params)["lines"]:
            click.echo(show(entry))
        return
    with contextlib.suppress(KeyboardInterrupt):
        _follow(cli, params, show)


def _follow(cli: Cli, params: dict[str, Any], show: Any) -> None:
    import trio

    from omnitron.rpc import RpcError

    from ._context import remote_failure

    opened = cli.open_async()
    target = cli.target()

    async def follow() -> None:
        async with opened as client:
            reply = await client.call("daemon.logs", follow=True, **params)
            for entry in reply["lines"]:
                click.echo(show(entry))
            sys.stdout.flush()
            async for note in client.notifications():
                if note.method == "logs.line":
                    click.echo(show(note.params))
                    sys.stdout.flush()  # a pipe (| grep) sees each line as it comes
                elif note.method == "rpc.dropped":
                    cli.note(f"omnitron: {note.params.get('dropped')} lines not shown (too slow)")
        cli.note("omnitron: the daemon closed the connection (stopped)")

    async def run() -> None:
        # Ctrl-C cancels the follow (the connection is closed at once) rather than
        # raising KeyboardInterrupt wherever the main task happens to be.
        failure: Exception | None = None
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def on_interrupt() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(on_interrupt)
                try:
                    await follow()
                except Exception as exc:  # raised as itself, not in an exception group
                    failure = exc
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    try:
        trio.run(run)
    except RpcError as exc:
        if target is None:
            raise rpc_failure(exc) from None
        raise remote_failure(exc, target.url, target.alias) from None


def flush(cli: Cli, apps: tuple[str, ...]) -> None:
    """Empty the log files of ``apps`` (every app if none)."""
    result = cli.call("daemon.flush_logs", apps=list(dict.fromkeys(apps)))
    cli.emit(result, lambda r: "\n".join(f"emptied {path}" for path in r["emptied"]))
