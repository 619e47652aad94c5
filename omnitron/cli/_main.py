"""The ``omnitron`` command group and its commands.

Commands are thin: parse, call the daemon (or the config loader), render. The
group builds one :class:`~omnitron.cli._context.Cli` from the global options.
Importing this module costs click plus the standard library: anything heavier
(config, state, Trio, the daemon) is imported inside the commands that need it,
so ``omnitron status`` stays within its start-up budget.
"""

from __future__ import annotations

import time
from typing import Any

import click

from omnitron import __version__

from . import _observe
from . import _render as render
from ._context import (
    ACTION_TIMEOUT,
    EXIT_USAGE,
    Cli,
    CliError,
    pass_cli,
    resolve_home,
)

__all__ = ["cli", "main"]

_SECONDS = click.FloatRange(min=0, min_open=True)
_JSON_HELP = "Print results as JSON on stdout."
_HOME_HELP = "The daemon's home directory (overrides $OMNITRON_HOME; default ~/.omnitron)."
_TIMEOUT_HELP = (
    f"Wait at most this long for each reply (default 10; {ACTION_TIMEOUT:g} for actions)."
)
_REMOTE_HELP = (
    "Run the command on the daemon added as ALIAS (`omnitron remote add`); "
    "several, comma-separated, run it on each at once."
)
_ALL_REMOTES_HELP = "Run the command on every remote daemon (`omnitron remote ls`)."
TROUBLE = frozenset({"crashed", "errored"})
"""App statuses that make ``status`` exit 1."""


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the command: it updates the group's :class:`Cli`."""
    if value is None or value is False:
        return
    options = ctx.find_object(Cli)
    assert options is not None
    if param.name == "json":
        options.json = True
    elif param.name == "home":
        options.home = resolve_home(value)
    elif param.name == "remote":
        options.remote = value
    elif param.name == "all_remotes":
        options.all_remotes = True
    else:
        options.timeout = value


class _Command(click.Command):
    """A command that also accepts the global options after its name
    (``omnitron status --json``, as kubectl and pm2 users type)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params += [
            click.Option(
                ["--json"], is_flag=True, help=_JSON_HELP, callback=_set_global, expose_value=False
            ),
            click.Option(
                ["--home"],
                metavar="PATH",
                help=_HOME_HELP,
                callback=_set_global,
                expose_value=False,
            ),
            click.Option(
                ["--timeout"],
                type=_SECONDS,
                metavar="SECONDS",
                help=_TIMEOUT_HELP,
                callback=_set_global,
                expose_value=False,
            ),
            click.Option(
                ["-r", "--remote"],
                metavar="ALIAS[,ALIAS...]",
                help=_REMOTE_HELP,
                callback=_set_global,
                expose_value=False,
            ),
            click.Option(
                ["--all-remotes"],
                is_flag=True,
                help=_ALL_REMOTES_HELP,
                callback=_set_global,
                expose_value=False,
            ),
        ]

    def invoke(self, ctx: click.Context) -> Any:
        options = ctx.find_object(Cli)
        if options is not None and options.is_remote:
            from . import _remote

            names = []
            current: click.Context | None = ctx
            while current is not None and current.parent is not None:
                names.append(current.info_name or "")
                current = current.parent
            _remote.route(options, " ".join(reversed(names)), ctx.params)
        return super().invoke(ctx)


class _Group(click.Group):
    command_class = _Command
    group_class = type  # subgroups (startup) are _Group too


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.option("--home", metavar="PATH", help=_HOME_HELP)
@click.option("--timeout", type=_SECONDS, metavar="SECONDS", help=_TIMEOUT_HELP)
@click.option(
    "--url",
    metavar="tls://HOST:PORT",
    help="Talk to the daemon at this TLS address instead of the local socket.",
)
@click.option(
    "--token-file",
    metavar="FILE",
    help="With --url: the file holding the token (from `omnitron auth token`).",
)
@click.option(
    "--fingerprint",
    metavar="SHA256:...",
    help="With --url: the daemon's certificate fingerprint (pinned in HOME/known_hosts).",
)
@click.option("-r", "--remote", metavar="ALIAS[,ALIAS...]", help=_REMOTE_HELP)
@click.option("--all-remotes", is_flag=True, help=_ALL_REMOTES_HELP)
@click.version_option(__version__, prog_name="omnitron")
@click.pass_context
def cli(
    ctx: click.Context,
    as_json: bool,
    home: str | None,
    timeout: float | None,
    url: str | None,
    token_file: str | None,
    fingerprint: str | None,
    remote: str | None,
    all_remotes: bool,
) -> None:
    """omnitron: a process supervisor for Python people, built on Trio."""
    if (token_file is not None or fingerprint is not None) and url is None:
        raise CliError("--token-file and --fingerprint go with --url", exit_code=EXIT_USAGE)
    ctx.obj = Cli(
        json=as_json,
        home=resolve_home(home),
        timeout=timeout,
        url=url,
        token_file=token_file,
        fingerprint=fingerprint,
        remote=remote,
        all_remotes=all_remotes,
    )


def main(argv: list[str] | None = None) -> int:
    """The console script: run the CLI and exit with its code."""
    return cli.main(args=argv, prog_name="omnitron")


# --------------------------------------------------------------------------- daemon


@cli.command()
@click.option("--config", "-c", "config", metavar="PATH", help="The ecosystem file.")
@click.option("--foreground", is_flag=True, help="Run the daemon in this process.")
@click.option("--stack", metavar="NAME", help="Apply the [stacks.NAME] overrides.")
@click.option(
    "--reset-state", is_flag=True, help="Set state.json aside and start from the config alone."
)
@click.option(
    "--wait-timeout",
    type=_SECONDS,
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the daemon and its apps to come up.",
)
@click.option(
    "--tcp",
    metavar="HOST:PORT",
    help="Also serve the TCP plane here: TLS, token auth (e.g. 0.0.0.0:9700).",
)
@click.option(
    "--http",
    metavar="HOST:PORT",
    help="Also serve the WebSocket plane at /rpc and /metrics (ws:// on loopback, else wss://).",
)
@click.option(
    "--tls-cert", metavar="FILE", help="Serve this certificate (PEM) instead of the daemon's own."
)
@click.option("--tls-key", metavar="FILE", help="The private key (PEM) of --tls-cert.")
@click.option(
    "--max-connections",
    type=click.IntRange(1, 65536),
    metavar="N",
    help="Connections each of --tcp and --http serves at once (default 256).",
)
@click.option(
    "--watch/--no-watch",
    "watch",
    default=None,
    help="Reload every app when its files change / watch none (default: the config's).",
)
@click.option("--daemonized", is_flag=True, hidden=True)
@pass_cli
def up(
    cli: Cli,
    config: str | None,
    foreground: bool,
    stack: str | None,
    reset_state: bool,
    wait_timeout: float,
    tcp: str | None,
    http: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    max_connections: int | None,
    watch: bool | None,
    daemonized: bool,
) -> None:
    """Start the daemon and its apps (detached unless --foreground).

    The config is validated first; without --config it is found from the
    current directory upward. Exits 0 once every app that should run is online
    (stopped and disabled apps are fine), 1 naming the apps that are not, 2 for
    an invalid config.
    """
    from . import _auth, _daemon

    code = _daemon.up(
        cli,
        config=config,
        foreground=foreground,
        stack=stack,
        reset_state=reset_state,
        wait_timeout=wait_timeout,
        daemonized=daemonized,
        planes=_auth.plane_argv(
            tcp=tcp,
            http=http,
            tls_cert=tls_cert,
            tls_key=tls_key,
            max_connections=max_connections,
        ),
        watch=watch,
    )
    raise SystemExit(code)


@cli.command()
@click.option("--force", is_flag=True, help="Kill the daemon and its apps at once (SIGKILL).")
@click.option(
    "--wait-timeout",
    type=_SECONDS,
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How long the apps may take to stop before everything is killed.",
)
@pass_cli
def down(cli: Cli, force: bool, wait_timeout: float) -> None:
    """Stop every app gracefully, then the daemon."""
    if cli.is_remote:
        from . import _remote

        raise SystemExit(_remote.down(cli, force=force, timeout=wait_timeout))
    from . import _daemon

    raise SystemExit(_daemon.down(cli, force=force, timeout=wait_timeout))


@cli.command()
@pass_cli
def kill(cli: Cli) -> None:
    """SIGKILL the daemon and every process of its apps; clean up its files."""
    from . import _daemon

    raise SystemExit(_daemon.kill(cli))


@cli.command()
@pass_cli
def ping(cli: Cli) -> None:
    """Check that the daemon answers."""
    started = time.perf_counter()
    result = cli.call("daemon.ping")
    elapsed = (time.perf_counter() - started) * 1000
    cli.emit(result, lambda _: f"pong ({elapsed:.1f} ms)")


# --------------------------------------------------------------------------- views


@cli.command()
@click.argument("apps", metavar="[APP]...", nargs=-1)
@pass_cli
def status(cli: Cli, apps: tuple[str, ...]) -> None:
    """The daemon and every app (or only the APPs named) with its processes.

    Exits 1 when an app shown is crashed or errored.
    """
    result = _status(cli)
    if apps:
        names = _known(cli, apps, {app["name"] for app in result["apps"]})
        result["apps"] = [app for app in result["apps"] if app["name"] in names]
    cli.emit(result, render.render_status)
    troubled = [
        f"{app['name']} ({app['status']})" for app in result["apps"] if app.get("status") in TROUBLE
    ]
    if troubled:
        raise CliError(f"not healthy: {', '.join(troubled)}")


def _status(cli: Cli) -> Any:
    """``daemon.status``; a daemon that is not running because a critical app made it
    stop says so (the reason it recorded in ``state.json``)."""
    from omnitron.rpc._errors import DaemonNotRunning, RpcError
    from omnitron.rpc.sync_client import connect_unix_sync

    from ._context import QUERY_TIMEOUT, rpc_failure

    if cli.is_remote:  # a remote daemon: its state file is not ours to read
        return cli.call("daemon.status")
    try:
        with connect_unix_sync(cli.socket_path, timeout=cli.timeout or QUERY_TIMEOUT) as client:
            return client.call("daemon.status")
    except DaemonNotRunning as exc:
        stopped = _stop_reason(cli.home)
        if stopped is None:
            raise rpc_failure(exc) from None
        reason, when = stopped
        raise CliError(
            f"daemon not running: it stopped at {when} because {reason}; "
            "fix the app, then `omnitron up`"
        ) from None
    except RpcError as exc:
        raise rpc_failure(exc) from None


def _stop_reason(home: str) -> tuple[str, str] | None:
    """``(reason, written_at)`` if the last daemon of ``home`` stopped on its own."""
    import json
    import os

    try:
        with open(os.path.join(home, "state.json"), "rb") as f:
            doc = json.load(f)
        reason, when = doc["state"].get("stop_reason"), doc["written_at"]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # no readable state: nothing more to say than "not running"
    if not isinstance(reason, str) or not isinstance(when, str):
        return None
    return reason, when


def _names(apps: tuple[str, ...]) -> list[str]:
    """The names given, each once, in order; ``all`` only alone."""
    names = list(dict.fromkeys(apps))
    if "all" in names and len(names) > 1:
        raise CliError("'all' cannot be combined with app names", exit_code=EXIT_USAGE)
    return names


def _known(cli: Cli, apps: tuple[str, ...], known: set[str]) -> list[str]:
    """``apps`` (each once, in order); an unknown one fails with the daemon's own error."""
    names = list(dict.fromkeys(apps))
    for name in names:
        if name not in known:
            cli.call("daemon.get_app", name=name)  # raises the daemon's "no app named ..."
    return names


@cli.command("list")
@pass_cli
def list_apps(cli: Cli) -> None:
    """Every app with its processes (the table of `status`)."""
    cli.emit(cli.call("daemon.list"), render.render_apps)


@cli.command()
@click.argument("app")
@pass_cli
def inspect(cli: Cli, app: str) -> None:
    """One app: spec, processes, last exits, recent events."""
    cli.emit(cli.call("daemon.inspect", name=app), render.render_inspect)


@cli.command()
@click.argument("app")
@click.option("--reveal", is_flag=True, help="Show secret-looking values too.")
@pass_cli
def env(cli: Cli, app: str, reveal: bool) -> None:
    """An app's configured environment (secret-looking values redacted)."""
    cli.emit(cli.call("daemon.env", name=app, reveal=reveal), render.render_env)


@cli.command()
@pass_cli
def graph(cli: Cli) -> None:
    """The dependency tree and the start order."""
    cli.emit(cli.call("daemon.graph"), render.render_graph)


# --------------------------------------------------------------------------- metrics


@cli.command()
@click.argument("app", required=False)
@click.option(
    "--prometheus", is_flag=True, help="Print the Prometheus text exposition of every app."
)
@click.option(
    "--enable/--disable",
    "enable",
    default=None,
    help="Turn the daemon's sampling on or off (admin).",
)
@pass_cli
def metrics(cli: Cli, app: str | None, prometheus: bool, enable: bool | None) -> None:
    """CPU, memory, threads and open files of every process (or of APP's), sampled
    by the daemon every `[monitoring] metrics.interval`."""
    from . import _metrics

    _metrics.metrics(cli, app, prometheus=prometheus, enable=enable)


# --------------------------------------------------------------------------- actions


def _act(cli: Cli, method: str, /, **params: object) -> Any:
    """Call an action; a start failure shows the app's last stderr lines and log file."""
    from omnitron.rpc._errors import RemoteError, RpcError

    from ._context import rpc_failure

    with cli.connect(timeout=ACTION_TIMEOUT) as client:
        try:
            return client.call(method, **params)
        except RpcError as exc:
            failure = rpc_failure(exc)
            if isinstance(exc, RemoteError):
                failure.details += tuple(render.render_start_failure(exc.data))
            raise failure from None


def _targets(cli: Cli, apps: tuple[str, ...]) -> list[str]:
    """The APP...|all arguments of an action, each once; several names are all checked
    first, so a typo among them changes nothing."""
    names = _names(apps)
    if len(names) > 1:
        _known(cli, apps, {app["name"] for app in cli.call("daemon.list")})
    return names


def _action(verb: str, key: str, summary: str, *options: Any, method: str | None = None) -> None:
    @pass_cli
    def command(cli: Cli, apps: tuple[str, ...], rolling: bool = False) -> None:
        if rolling:  # with -r, the remote module runs it host by host
            raise CliError(
                "--rolling restarts one host at a time: it goes with -r HOST,HOST... "
                "or --all-remotes",
                exit_code=EXIT_USAGE,
            )
        names = _targets(cli, apps)
        done: list[str] = []
        lines = []
        for name in names:
            result = _act(cli, method or f"daemon.{verb}_app", name=name)
            handled = result.get(key) or []
            done += [n for n in handled if n not in done]
            lines.append(render.render_actions(verb, name, handled))
        cli.emit({key: done}, lambda _: "\n".join(lines))

    for option in options:
        command = option(command)
    command = click.argument("apps", metavar="APP...|all", nargs=-1, required=True)(command)
    cli.command(verb, help=summary + " Several APPs are handled one after the other.")(command)


_action("start", "started", "Start an app (and what it depends on), or all enabled apps.")
_action("stop", "stopped", "Stop an app (only that app), or all apps (dependents first).")
_action(
    "restart",
    "restarted",
    "Restart an app's processes one by one, or all apps.",
    click.option(
        "--rolling",
        is_flag=True,
        help="With several remotes: one host at a time, stopping at the first failure.",
    ),
)
_action(
    "reload",
    "reloaded",
    "Replace an app's processes with zero downtime (each new one ready before its old "
    "one stops), or those of all running apps.",
    method="daemon.reload",
)

MAX_INSTANCES = 1024


def _count(value: str) -> tuple[str, int]:
    """``N``, ``+N`` or ``-N``: an absolute count, or a change to the current one."""
    text = value.strip()
    sign = text[:1] if text[:1] in ("+", "-") else ""
    digits = text[len(sign) :]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 6:
        raise click.BadParameter(f"{value!r} is not N, +N or -N (N a whole number)")
    number = int(digits)
    if sign and number == 0:
        raise click.BadParameter(f"{value!r} changes nothing; use a non-zero +N or -N")
    if not sign and not 1 <= number <= MAX_INSTANCES:
        raise click.BadParameter(f"{number} is not in the range 1<=x<={MAX_INSTANCES}.")
    return sign, number


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("app")
@click.argument("count", metavar="N|+N|-N", callback=lambda ctx, param, value: _count(value))
@pass_cli
def scale(cli: Cli, app: str, count: tuple[str, int]) -> None:
    """Run N processes of APP, or N more (+N) or fewer (-N) than now."""
    sign, number = count
    instances = number
    if sign:
        current = cli.call("daemon.get_app", name=app)["instances"]
        instances = current + number if sign == "+" else current - number
        if not 1 <= instances <= MAX_INSTANCES:
            raise CliError(
                f"{app} runs {current} instance{'s' if current != 1 else ''}; {sign}{number} "
                f"would make {instances}, outside 1..{MAX_INSTANCES}",
                exit_code=EXIT_USAGE,
            )
    result = _act(cli, "daemon.scale", name=app, instances=instances)
    cli.emit(result, render.render_scale)


# --------------------------------------------------------------------------- exec


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("app")
@click.argument("service")
@click.argument("method")
@click.argument("args", metavar="[ARG]...", nargs=-1)
@click.option("--kw", multiple=True, metavar="KEY=VALUE", help="A named argument (repeatable).")
@click.option(
    "--call-timeout",
    type=_SECONDS,
    metavar="SECONDS",
    help="How long the method may run (default 30; the daemon answers TIMEOUT after it).",
)
@click.option("--verbose", "-v", is_flag=True, help="On an error, show the worker's traceback.")
@pass_cli
def exec_(cli: Cli, /, **options: Any) -> None:
    """Call METHOD of SERVICE in module-worker app APP; print the result as JSON.

    Each ARG is JSON when it parses (42, true, '{"a": 1}'), else a string.
    Calls go round-robin to the online workers that serve SERVICE. Exits 1 when
    the method raised (TYPE: message), timed out or its worker exited.
    """
    from . import _exec

    _exec.exec_call(cli, **options)


# --------------------------------------------------------------------------- reset, signal


@cli.command(help="Set the restart counters of APPs (or all apps) to zero, as `pm2 reset`.")
@click.argument("apps", metavar="APP...|all", nargs=-1, required=True)
@pass_cli
def reset(cli: Cli, apps: tuple[str, ...]) -> None:
    names = _targets(cli, apps)
    done: list[str] = []
    for name in names:
        done += [n for n in cli.call("daemon.reset", name=name)["reset"] if n not in done]
    cli.emit({"reset": done}, lambda _: f"reset: {', '.join(done)}")


@cli.command("signal", context_settings={"ignore_unknown_options": True})
@click.argument("sig", metavar="SIGNAL")
@click.argument("apps", metavar="APP...|all", nargs=-1, required=True)
@pass_cli
def signal_apps(cli: Cli, sig: str, apps: tuple[str, ...]) -> None:
    """Send SIGNAL (HUP, SIGUSR1, 10...) to every running process of APPs.

    Exits 1 when an APP named has no running process.
    """
    names = _targets(cli, apps)
    sent: dict[str, list[int]] = {}
    name = sig
    for target in names:
        result = cli.call("daemon.signal", name=target, signal=sig)
        name = result["signal"]
        sent.update(result["sent"])
    cli.emit({"signal": name, "sent": sent}, render.render_signal)
    idle = [app for app, pids in sent.items() if not pids]
    if idle and "all" not in names:
        raise CliError(f"not signalled (no running process): {', '.join(idle)}")


@cli.command("reload-config")
@click.option("--dry-run", is_flag=True, help="Only show what would change.")
@pass_cli
def reload_config(cli: Cli, dry_run: bool) -> None:
    """Re-read the config file and apply the difference."""
    result = cli.call("daemon.reload_config", dry_run=dry_run, timeout=ACTION_TIMEOUT)
    for warning in result.get("warnings") or ():
        cli.note(f"warning: {warning}")
    cli.emit(result, render.render_reload)


# --------------------------------------------------------------------------- watch


@cli.group()
def watch() -> None:
    """Hot reload in development: reload an app (zero downtime) when its files change."""


@watch.command("on")
@click.argument("app", required=False)
@pass_cli
def watch_on(cli: Cli, app: str | None) -> None:
    """Watch APP's files (its `watch` settings, or its cwd), or every app's."""
    from . import _watch

    _watch.switch(cli, app, on=True)


@watch.command("off")
@click.argument("app", required=False)
@pass_cli
def watch_off(cli: Cli, app: str | None) -> None:
    """Stop watching APP's files, or every app's."""
    from . import _watch

    _watch.switch(cli, app, on=False)


@watch.command("status")
@click.argument("app", required=False)
@pass_cli
def watch_status(cli: Cli, app: str | None) -> None:
    """What is watched, and each app's last change and reload."""
    from . import _watch

    _watch.status(cli, app)


# --------------------------------------------------------------------------- config


@cli.command()
@click.option("--config", "-c", "config", metavar="PATH", help="The ecosystem file.")
@click.option("--stack", metavar="NAME", help="Check with the [stacks.NAME] overrides applied.")
@pass_cli
def check(cli: Cli, config: str | None, stack: str | None) -> None:
    """Validate the config and print the start order (no daemon needed).

    Exits 2 listing every problem when the config is invalid.
    """
    from omnitron.config import ConfigError

    from . import _config

    try:
        ecosystem, systems = _config.load_systems(config, stack=stack)
    except ConfigError as exc:
        if cli.json:
            files = [str(issue.file) for issue in exc.issues if issue.file is not None]
            report: dict[str, Any] = {
                "config": files[0] if files else config,
                "ok": False,
                "issues": [_config.issue_record(issue) for issue in exc.issues],
            }
            click.echo(render.render_json(report))
        raise _config.config_failure(exc) from None
    _config.warn(cli, ecosystem)
    cli.emit(_config.summary(ecosystem, systems), render.render_check)


# --------------------------------------------------------------------------- observe

_observe.register(cli)


@cli.group()
def startup() -> None:
    """Start the daemon at boot."""


@startup.command()
@click.option("--user", is_flag=True, help="A `systemctl --user` unit instead of a system one.")
@click.option("--print", "print_only", is_flag=True, help="Print the unit instead of writing it.")
@click.option("--config", "-c", "config", metavar="PATH", help="The ecosystem file.")
@click.option("--name", default="omnitron", show_default=True, help="The unit's name.")
@pass_cli
def systemd(cli: Cli, user: bool, print_only: bool, config: str | None, name: str) -> None:
    """Write a systemd unit that runs `omnitron up --foreground`."""
    from . import _startup

    _startup.systemd(cli, user=user, print_only=print_only, config=config, name=name)


# --------------------------------------------------------------------------- secrets


@cli.group()
def secret() -> None:
    """The encrypted secret store: apps read a secret through env = { VAR = "secret:NAME" }."""


@secret.command("set")
@click.argument("name")
@click.argument("extra", nargs=-1, metavar="")
@pass_cli
def secret_set(cli: Cli, name: str, extra: tuple[str, ...]) -> None:
    """Store secret NAME; its value is read from stdin, or a hidden prompt on a terminal.

    Never give the value on the command line: it is refused.
    """
    from . import _secret

    _secret.set_secret(cli, name, extra)


@secret.command("get")
@click.argument("name")
@pass_cli
def secret_get(cli: Cli, name: str) -> None:
    """Print the value of secret NAME."""
    from . import _secret

    _secret.get_secret(cli, name)


@secret.command("ls")
@pass_cli
def secret_ls(cli: Cli) -> None:
    """The names of the stored secrets (never their values)."""
    from . import _secret

    _secret.list_secrets(cli)


@secret.command("rm")
@click.argument("name")
@pass_cli
def secret_rm(cli: Cli, name: str) -> None:
    """Remove secret NAME (apps using it fail to start until it is set again)."""
    from . import _secret

    _secret.remove_secret(cli, name)


# --------------------------------------------------------------------------- logs


@cli.command()
@click.argument("apps", metavar="[APP]...", nargs=-1)
@click.option(
    "--lines",
    "-n",
    type=click.IntRange(0, 100_000),
    default=20,
    show_default=True,
    help="Lines per app to show first (from the last 1,000 kept in memory).",
)
@click.option(
    "--follow", "-f", is_flag=True, help="Then print new lines as they come (Ctrl-C stops)."
)
@click.option(
    "--since", metavar="DURATION", help="Only lines of the last DURATION (30s, 10m, 2h, 1d)."
)
@click.option("--grep", metavar="REGEX", help="Only lines matching this regular expression.")
@click.option("--stream", type=click.Choice(["stdout", "stderr"]), help="Only this stream.")
@click.option("--daemon", is_flag=True, help="The daemon's own log (daemon.log) instead.")
@pass_cli
def logs(cli: Cli, /, apps: tuple[str, ...], **options: Any) -> None:
    """Show the output of the apps (all, or the APPs named), in time order."""
    from . import _logs

    _logs.logs(cli, apps, **options)


@cli.command()
@click.argument("apps", metavar="[APP]...", nargs=-1)
@pass_cli
def flush(cli: Cli, apps: tuple[str, ...]) -> None:
    """Empty the log files of the APPs named (or of every app)."""
    from . import _logs

    _logs.flush(cli, apps)


@cli.group()
def auth() -> None:
    """Tokens for the TCP and WebSocket planes (admin)."""


@auth.command()
@click.option(
    "--role",
    type=click.Choice(["viewer", "operator", "admin"]),
    required=True,
    help="What the token may do.",
)
@click.option("--ttl", default="1h", show_default=True, help="Lifetime: 90s, 15m, 1h, 30d, 2w.")
@click.option("--subject", metavar="NAME", help="Who the token is for (shown in `auth ls`).")
@pass_cli
def token(cli: Cli, role: str, ttl: str, subject: str | None) -> None:
    """Issue a token and print it (it is shown only this once)."""
    from . import _auth

    _auth.issue(cli, role=role, ttl=ttl, subject=subject)


@auth.command()
@click.argument("token_id", metavar="ID")
@pass_cli
def revoke(cli: Cli, token_id: str) -> None:
    """Revoke a token by id; connections using it fail their next call."""
    from . import _auth

    _auth.revoke(cli, token_id)


@auth.command(name="ls")
@pass_cli
def auth_ls(cli: Cli) -> None:
    """Issued tokens that have not expired (ids, subjects, roles; never the tokens)."""
    from . import _auth

    _auth.list_tokens(cli)


# --------------------------------------------------------------------------- remotes


@cli.group()
def remote() -> None:
    """Remote daemons by alias, for `omnitron -r ALIAS COMMAND` (in HOME/remotes.toml)."""


@remote.command("add")
@click.argument("name")
@click.argument("url", metavar="tls://HOST:PORT")
@click.option("--token-file", metavar="FILE", help="Store the token read from FILE.")
@click.option(
    "--token-env", metavar="VAR", help="Read the token from $VAR at each use (nothing stored)."
)
@click.option(
    "--fingerprint",
    metavar="SHA256:...",
    help="The daemon's certificate fingerprint, as `omnitron up --tcp` printed it.",
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Connect first: pin the certificate, ping, log in with the token.",
)
@click.option("--replace", is_flag=True, help="Replace an alias of the same name.")
@pass_cli
def remote_add(
    cli: Cli,
    name: str,
    url: str,
    token_file: str | None,
    token_env: str | None,
    fingerprint: str | None,
    verify: bool,
    replace: bool,
) -> None:
    """Add the daemon at tls://HOST:PORT as NAME (its TCP plane: `omnitron up --tcp`)."""
    from . import _remote

    _remote.add(
        cli,
        name,
        url,
        token_file=token_file,
        token_env=token_env,
        fingerprint=fingerprint,
        verify=verify,
        replace=replace,
    )


@remote.command("ls")
@pass_cli
def remote_ls(cli: Cli) -> None:
    """The aliases: URL, pinned fingerprint, whether a token is there (never the token)."""
    from . import _remote

    _remote.list_remotes(cli)


@remote.command("rm")
@click.argument("name")
@pass_cli
def remote_rm(cli: Cli, name: str) -> None:
    """Forget the alias NAME (its certificate pin stays in HOME/known_hosts)."""
    from . import _remote

    _remote.remove(cli, name)
