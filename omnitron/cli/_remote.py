"""Remote daemons: ``omnitron remote add|ls|rm``, ``-r ALIAS``, and fleet fan-out.

One alias (``omnitron -r prod status``) goes through the same blocking client as a
local command, so its output and exit codes are the local ones. Several
(``-r prod,staging`` or ``--all-remotes``) run the command on every daemon at
once, in a Trio nursery with a deadline per host, and print one table with a
HOST column (``--json``: one object keyed by host, each value the command's own
JSON or ``{"error": ...}``). ``restart --rolling`` goes one host at a time and
stops at the first failure.

Imported only when a remote is involved: the local fast path never pays for it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import click

from . import _render as render
from ._context import ACTION_TIMEOUT, EXIT_USAGE, QUERY_TIMEOUT, Cli, CliError, remote_failure

__all__ = ["FLEET_COMMANDS", "LOCAL_ONLY", "add", "down", "list_remotes", "remove", "route"]

LOCAL_ONLY = frozenset(
    {"up", "kill", "check", "startup systemd", "remote add", "remote ls", "remote rm"}
)
"""Commands about this machine: refused with ``-r``/``--url``."""
FLEET_COMMANDS = (
    "ping",
    "status",
    "list",
    "start",
    "stop",
    "restart",
    "reload",
    "reset",
    "metrics",
)
"""Commands that run on several daemons at once."""
_VERBS = {"start": "started", "stop": "stopped", "restart": "restarted", "reload": "reloaded"}


def route(cli: Cli, name: str, params: Mapping[str, Any]) -> None:
    """Before a command runs against a remote: refuse what cannot, run a fleet command.

    Returns when the command should run as usual (one daemon); raises
    :class:`SystemExit` with the exit code after running a fleet command.
    """
    if cli.url is not None and (cli.remote is not None or cli.all_remotes):
        raise CliError("--url and -r/--all-remotes exclude each other", exit_code=EXIT_USAGE)
    if cli.remote is not None and cli.all_remotes:
        raise CliError("-r and --all-remotes exclude each other", exit_code=EXIT_USAGE)
    if name in LOCAL_ONLY:
        raise CliError(
            f"`omnitron {name}` acts on this machine only; it does not go with "
            f"{'--url' if cli.url else '-r/--all-remotes'} (run it on the daemon's host)",
            exit_code=EXIT_USAGE,
        )
    rolling = bool(params.get("rolling"))
    if cli.is_fleet or (rolling and cli.remote is not None):
        if name not in FLEET_COMMANDS:
            raise CliError(
                f"`omnitron {name}` runs against one daemon at a time; several "
                f"(-r A,B or --all-remotes) run only {', '.join(FLEET_COMMANDS)}",
                exit_code=EXIT_USAGE,
            )
        raise SystemExit(fleet(cli, name, dict(params)))


# --------------------------------------------------------------------------- remote add|ls|rm


def add(
    cli: Cli,
    name: str,
    url: str,
    *,
    token_file: str | None,
    token_env: str | None,
    fingerprint: str | None,
    verify: bool,
    replace: bool,
) -> None:
    """Record an alias; unless ``verify`` is off, first connect, pin, ping and log in."""
    from omnitron.remotes import Remote, RemotesError, load_remotes, save_remotes

    from ._context import _read_token

    if token_file is not None and token_env is not None:
        raise CliError("--token-file and --token-env exclude each other", exit_code=EXIT_USAGE)
    try:
        remotes = load_remotes(cli.home)
        token = None if token_file is None else _read_token(token_file)
        remote = Remote(name, url, token=token, token_env=token_env, fingerprint=fingerprint)
        if name in remotes and not replace:
            raise CliError(
                f"remote {name!r} exists ({remotes[name].url}); pass --replace to change it, "
                f"or `omnitron remote rm {name}` first",
                exit_code=EXIT_USAGE,
            )
        if verify:
            remote.fingerprint = _verify(cli, remote)
    except RemotesError as exc:
        raise CliError(str(exc), exit_code=EXIT_USAGE) from None
    remotes[name] = remote
    save_remotes(cli.home, remotes.values())
    token_text = (
        "token stored"
        if remote.token
        else f"token from ${remote.token_env}"
        if remote.token_env
        else "no token"
    )
    pin = (
        f"fingerprint {remote.fingerprint}" if remote.fingerprint else "certificate not pinned yet"
    )
    cli.emit(remote.to_json(), lambda r: f"remote {name!r}: {r['url']} ({token_text}, {pin})")


def _verify(cli: Cli, remote: Any) -> str:
    """Connect (pinning the certificate), ping and log in; the fingerprint pinned."""
    from omnitron.rpc._address import parse_url
    from omnitron.rpc._errors import RpcError
    from omnitron.rpc.sync_client import connect_url_sync, read_known_hosts

    from ._context import _confirm_certificate

    token = remote.resolve_token()
    try:
        with connect_url_sync(
            remote.url,
            known_hosts=cli.known_hosts,
            fingerprint=remote.fingerprint,
            confirm=_confirm_certificate,
            timeout=cli.timeout or QUERY_TIMEOUT,
        ) as client:
            client.call("daemon.ping")
            if token is not None:
                client.call("auth.login", token=token)
    except RpcError as exc:
        failure = remote_failure(exc, remote.url)
        raise CliError(
            f"remote {remote.name!r} not added: {failure.message}",
            details=(*failure.details, "(--no-verify adds it without connecting)"),
        ) from None
    _, host, port = parse_url(remote.url)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    pinned: str = read_known_hosts(cli.known_hosts)[where]
    return pinned


def list_remotes(cli: Cli) -> None:
    from omnitron.remotes import RemotesError, load_remotes

    try:
        remotes = load_remotes(cli.home)
    except RemotesError as exc:
        raise CliError(str(exc)) from None
    cli.emit([r.to_json() for r in remotes.values()], render_remotes)


def render_remotes(remotes: list[dict[str, Any]]) -> str:
    if not remotes:
        return "no remotes (add one with `omnitron remote add NAME tls://HOST:PORT`)"
    rows = []
    for r in remotes:
        token = "yes" if r["token"] else "no"
        if r["token_env"]:
            token += f" (${r['token_env']})"
        rows.append((r["name"], r["url"], r["fingerprint"] or render.NONE, token))
    return render.render_table(("NAME", "URL", "FINGERPRINT", "TOKEN"), rows)


def remove(cli: Cli, name: str) -> None:
    from omnitron.remotes import RemotesError, load_remotes, save_remotes

    try:
        remotes = load_remotes(cli.home)
    except RemotesError as exc:
        raise CliError(str(exc)) from None
    removed = remotes.pop(name, None)
    if removed is None:
        raise CliError(f"no remote named {name!r} (known: {', '.join(remotes) or 'none'})")
    save_remotes(cli.home, remotes.values())
    cli.emit({"name": name, "removed": True}, lambda _: f"remote {name!r} removed")


# --------------------------------------------------------------------------- down


def down(cli: Cli, *, force: bool, timeout: float) -> int:
    """Ask a remote daemon to stop; wait (bounded) until it hangs up."""
    from omnitron.rpc._errors import ConnectionLost, RpcError

    from ._context import rpc_failure

    if force:
        raise CliError(
            "down --force kills processes on this machine; it does not go with -r/--url",
            exit_code=EXIT_USAGE,
        )
    with cli.connect() as client:
        try:
            reply = client.call("daemon.shutdown")
        except ConnectionLost:
            reply = {"pid": None}
        except RpcError as exc:
            raise rpc_failure(exc) from None
        pid = reply.get("pid")
        cli.note(f"stopping the daemon (pid {pid})")
        deadline = time.monotonic() + timeout
        while not client.closed:
            if time.monotonic() > deadline:
                raise CliError(f"the daemon (pid {pid}) did not stop within {timeout:g}s")
            try:
                client.call("daemon.ping")
            except RpcError:
                break
            time.sleep(0.1)
    cli.emit({"stopped": True, "pid": pid}, lambda data: f"daemon stopped (pid {data['pid']})")
    return 0


# --------------------------------------------------------------------------- fleet


class HostError(Exception):
    """A host's failure, already worded for its row."""

    def __init__(self, reason: str, *, unreachable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unreachable = unreachable


Job = Callable[[Any], Awaitable[Any]]


def fleet(cli: Cli, name: str, params: dict[str, Any]) -> int:
    """Run command ``name`` on every host of ``-r``/``--all-remotes``; the exit code."""
    hosts = cli.aliases()
    job, timeout = _job(name, params)
    targets = {host: _target(cli, host) for host in hosts}
    if params.get("rolling"):
        return _rolling(cli, hosts, targets, job, timeout)
    import trio

    results: dict[str, Any] = {}

    async def one(host: str) -> None:
        results[host] = await _run_on(cli, targets[host], job, timeout)

    async def everything() -> None:
        async with trio.open_nursery() as nursery:
            for host in hosts:
                nursery.start_soon(one, host)

    trio.run(everything)
    ordered = {host: results[host] for host in hosts}
    failed = [host for host, result in ordered.items() if isinstance(result, HostError)]
    if cli.json:
        click.echo(render.render_json({h: _json(r) for h, r in ordered.items()}))
    else:
        click.echo(_RENDER[name](ordered))
    troubled = _troubled(name, ordered)
    if failed:
        raise CliError(f"failed on {len(failed)} of {len(hosts)} hosts: {', '.join(failed)}")
    if troubled:
        raise CliError(f"not healthy: {', '.join(troubled)}")
    return 0


def _target(cli: Cli, host: str) -> Any:
    """The host's target; an unknown alias fails the command, an unset token the host."""
    from omnitron.remotes import RemotesError, lookup_remote

    from ._context import Target

    try:
        remote = lookup_remote(cli.home, host)
    except RemotesError as exc:
        raise CliError(str(exc)) from None
    try:
        return Target(host, remote.url, remote.resolve_token(), remote.fingerprint)
    except RemotesError as exc:
        return HostError(str(exc), unreachable=False)


async def _run_on(cli: Cli, target: Any, job: Job, limit: float) -> Any:
    """``job(client)`` on one host within ``limit`` s; its result or a :class:`HostError`."""
    import trio

    if isinstance(target, HostError):
        return target

    from omnitron.rpc import connect_url
    from omnitron.rpc._errors import RemoteError, RpcError

    limit = cli.timeout or limit
    with trio.move_on_after(limit):
        try:
            async with connect_url(
                target.url,
                token=target.token,
                fingerprint=target.fingerprint,
                known_hosts=cli.known_hosts,
                connect_timeout=limit,
            ) as client:
                return await job(client)
        except HostError as exc:
            return exc
        except RemoteError as exc:
            return HostError(remote_failure(exc, target.url).message, unreachable=False)
        except (RpcError, OSError) as exc:
            reason = (
                remote_failure(exc, target.url).message if isinstance(exc, RpcError) else str(exc)
            )
            return HostError(reason, unreachable=True)
    return HostError(f"no reply from {target.url} within {limit:g}s", unreachable=True)


def _rolling(
    cli: Cli, hosts: list[str], targets: Mapping[str, Any], job: Job, timeout: float
) -> int:
    """One host at a time; stop at the first failure."""
    import trio

    results: dict[str, Any] = {}
    for host in hosts:
        result = trio.run(_run_on, cli, targets[host], job, timeout)
        results[host] = result
        if not cli.json:
            click.echo(_rolling_line(host, result))
            sys.stdout.flush()
        if isinstance(result, HostError):
            break
    untouched = [host for host in hosts if host not in results]
    if cli.json:
        shown = {h: _json(r) for h, r in results.items()}
        shown.update({h: {"skipped": "not touched: an earlier host failed"} for h in untouched})
        click.echo(render.render_json(shown))
    else:
        for host in untouched:
            click.echo(f"{host}: not touched")
    failed = [h for h, r in results.items() if isinstance(r, HostError)]
    if failed:
        done = [h for h in results if h not in failed]
        raise CliError(
            f"rolling restart stopped at {failed[0]}: {results[failed[0]].reason}",
            details=[
                f"done: {', '.join(done) or 'none'}",
                f"not touched: {', '.join(untouched) or 'none'}",
            ],
        )
    return 0


def _rolling_line(host: str, result: Any) -> str:
    if isinstance(result, HostError):
        return f"{host}: failed: {render.escape(result.reason)}"
    return f"{host}: restarted: {', '.join(result['restarted']) or 'nothing'}"


def _json(result: Any) -> Any:
    return {"error": result.reason} if isinstance(result, HostError) else result


# --------------------------------------------------------------------------- jobs


def _job(name: str, params: Mapping[str, Any]) -> tuple[Job, float]:
    """The per-host coroutine of a fleet command, and its default deadline."""
    if name == "ping":

        async def ping(client: Any) -> Any:
            started = time.perf_counter()
            result = await client.call("daemon.ping")
            return {**result, "ms": round((time.perf_counter() - started) * 1000, 3)}

        return ping, QUERY_TIMEOUT
    if name in ("status", "list"):
        apps = list(dict.fromkeys(params.get("apps") or ()))

        async def status(client: Any) -> Any:
            result = await client.call("daemon.status" if name == "status" else "daemon.list")
            listed = result["apps"] if name == "status" else result
            if apps:
                await _check_known(client, apps, {app["name"] for app in listed})
                listed = [app for app in listed if app["name"] in apps]
                if name == "status":
                    result["apps"] = listed
                else:
                    result = listed
            return result

        return status, QUERY_TIMEOUT
    if name == "metrics":
        if params.get("prometheus") or params.get("enable") is not None:
            raise CliError(
                "metrics --prometheus/--enable/--disable go to one daemon at a time",
                exit_code=EXIT_USAGE,
            )
        app = params.get("app")

        async def metrics(client: Any) -> Any:
            return await client.call("daemon.metrics", **({} if app is None else {"name": app}))

        return metrics, QUERY_TIMEOUT
    names = list(dict.fromkeys(params["apps"]))
    if "all" in names and len(names) > 1:
        raise CliError("'all' cannot be combined with app names", exit_code=EXIT_USAGE)
    if params.get("rolling") and name != "restart":
        raise CliError("--rolling goes with restart only", exit_code=EXIT_USAGE)
    key = "reset" if name == "reset" else _VERBS[name]
    method = {"reset": "daemon.reset", "reload": "daemon.reload"}.get(name, f"daemon.{name}_app")

    async def act(client: Any) -> Any:
        if len(names) > 1:
            listed = await client.call("daemon.list")
            await _check_known(client, names, {app["name"] for app in listed})
        done: list[str] = []
        for target in names:
            result = await client.call(method, name=target)
            done += [n for n in result.get(key) or [] if n not in done]
        return {key: done}

    return act, ACTION_TIMEOUT


async def _check_known(client: Any, names: list[str], known: set[str]) -> None:
    """An unknown name fails with the daemon's own error ("no app named ...")."""
    for name in names:
        if name not in known:
            await client.call("daemon.get_app", name=name)


# --------------------------------------------------------------------------- rendering


def _error_rows(results: Mapping[str, Any]) -> list[str]:
    return [
        f"{host}: {render.escape(r.reason)}"
        for host, r in results.items()
        if isinstance(r, HostError)
    ]


def _state(error: HostError) -> str:
    return "unreachable" if error.unreachable else "error"


def _with_errors(table: str, results: Mapping[str, Any], extra: list[str] | None = None) -> str:
    below = (extra or []) + _error_rows(results)
    return table + ("\n\n" + "\n".join(below) if below else "")


def _render_apps(results: Mapping[str, Any], *, status: bool) -> str:
    rows: list[tuple[str, ...]] = []
    issues: list[str] = []
    width = len(render.STATUS_HEADERS)
    for host, result in results.items():
        if isinstance(result, HostError):
            rows.append((host, render.NONE, _state(result), *[render.NONE] * (width - 2)))
            continue
        apps = result["apps"] if status else result
        if not apps:
            rows.append((host, render.NONE, "no apps", *[render.NONE] * (width - 2)))
        rows += [(host, *row) for row in render.status_rows(apps)]
        issues += [f"{host}: {line}" for line in render.render_app_issues(apps)]
    table = render.render_table(("HOST", *render.STATUS_HEADERS), rows)
    return _with_errors(table, results, issues)


def _render_actions(key: str) -> Callable[[Mapping[str, Any]], str]:
    def show(results: Mapping[str, Any]) -> str:
        rows = []
        for host, result in results.items():
            if isinstance(result, HostError):
                rows.append((host, _state(result)))
            else:
                done = result[key]
                rows.append((host, f"{key}: {', '.join(done)}" if done else "nothing done"))
        return _with_errors(render.render_table(("HOST", "RESULT"), rows), results)

    return show


def _render_ping(results: Mapping[str, Any]) -> str:
    rows = [
        (host, _state(r) if isinstance(r, HostError) else f"pong ({r['ms']:.1f} ms)")
        for host, r in results.items()
    ]
    return _with_errors(render.render_table(("HOST", "PING"), rows), results)


def _render_metrics(results: Mapping[str, Any]) -> str:
    from ._metrics import HEADERS, metric_rows

    rows: list[tuple[str, ...]] = []
    for host, result in results.items():
        if isinstance(result, HostError):
            rows.append((host, render.NONE, _state(result), *[render.NONE] * (len(HEADERS) - 2)))
        else:
            rows += [(host, *row) for row in metric_rows(result)]
    return _with_errors(render.render_table(("HOST", *HEADERS), rows), results)


_RENDER: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "ping": _render_ping,
    "status": lambda results: _render_apps(results, status=True),
    "list": lambda results: _render_apps(results, status=False),
    "start": _render_actions("started"),
    "stop": _render_actions("stopped"),
    "restart": _render_actions("restarted"),
    "reload": _render_actions("reloaded"),
    "reset": _render_actions("reset"),
    "metrics": _render_metrics,
}


def _troubled(name: str, results: Mapping[str, Any]) -> list[str]:
    """``host/app (crashed)`` for every crashed or errored app ``status`` shows."""
    if name != "status":
        return []
    return [
        f"{host}/{app['name']} ({app['status']})"
        for host, result in results.items()
        if not isinstance(result, HostError)
        for app in result["apps"]
        if app.get("status") in ("crashed", "errored")
    ]
