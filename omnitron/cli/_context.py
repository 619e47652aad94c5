"""The typed context every command receives, and the CLI's error type.

The group callback builds one :class:`Cli` from the global options; commands get
it with ``@pass_cli``, call the daemon through :meth:`Cli.call` and print with
:meth:`Cli.emit`. Everything here is on the ``omnitron status`` fast path: it
imports click, the standard library and the synchronous RPC client only.
"""

from __future__ import annotations

import os

import click

from ._render import escape, render_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

    from omnitron.rpc import RpcError
    from omnitron.rpc.sync_client import SyncClient

__all__ = [
    "ACTION_TIMEOUT",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "QUERY_TIMEOUT",
    "Cli",
    "CliError",
    "pass_cli",
    "resolve_home",
    "rpc_failure",
]

EXIT_FAILURE = 1
"""The command failed (daemon not running, remote error, an app failed to start)."""
EXIT_USAGE = 2
"""Bad usage or an invalid configuration: nothing was done."""

QUERY_TIMEOUT = 10.0
"""Default seconds to wait for a reply to a query (status, list, inspect...)."""
ACTION_TIMEOUT = 120.0
"""Default seconds to wait for an action (start, stop, restart, scale, reload) to finish."""

HOME_ENV = "OMNITRON_HOME"


class CliError(click.ClickException):
    """A failure the user should read: ``omnitron: <reason>`` on stderr, then ``exit_code``.

    Args:
        message: The reason, one line (control characters are escaped on display).
        exit_code: :data:`EXIT_FAILURE` unless the failure is a usage or config error.
        details: Extra lines printed under the reason (e.g. every config problem).
    """

    def __init__(
        self, message: str, *, exit_code: int = EXIT_FAILURE, details: Iterable[str] = ()
    ) -> None:
        super().__init__(message)
        # click declares exit_code on the class; each failure here chooses its own.
        self.exit_code = exit_code  # type: ignore[misc]
        self.details = tuple(details)

    def show(self, file: Any = None) -> None:
        click.echo(f"omnitron: {escape(self.message)}", err=True)
        for line in self.details:
            click.echo(f"  {escape(line)}", err=True)


def resolve_home(value: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The daemon home: ``--home``, else ``$OMNITRON_HOME``, else ``~/.omnitron``.

    Normalised exactly as :class:`omnitron.state.Home` does (``~`` expanded, made
    absolute, symbolic links kept), without importing it: that package pulls in
    Trio, which would cost more than the whole ``omnitron status`` budget.
    """
    env = os.environ if environ is None else environ
    raw = value or env.get(HOME_ENV, "") or "~/.omnitron"
    return os.path.abspath(os.path.expanduser(raw))


def rpc_failure(exc: RpcError) -> CliError:
    """The one-line error for a failed call to the daemon."""
    from omnitron.rpc._errors import DaemonNotRunning, RemoteError, RpcTimeout

    if isinstance(exc, DaemonNotRunning):
        return CliError(
            f"daemon not running: {exc.reason} ({exc.path}); start it with `omnitron up`"
        )
    if isinstance(exc, RemoteError):
        first, *rest = exc.message.splitlines() or [""]
        if exc.correlation_id:
            first += f" (see the daemon log, correlation id {exc.correlation_id})"
        # A bad config or bad arguments are the caller's to fix: exit 2, as `check` does.
        usage = exc.code in {"CONFIG_INVALID", "INVALID_PARAMS"}
        return CliError(
            first,
            exit_code=EXIT_USAGE if usage else EXIT_FAILURE,
            details=[r.strip() for r in rest],
        )
    if isinstance(exc, RpcTimeout):
        return CliError(f"{exc}; the daemon may be overloaded or stuck (`omnitron kill` stops it)")
    return CliError(str(exc))


class Cli:
    """What the global options decided, shared by every command.

    Attributes:
        json: Print results as JSON (``--json``).
        home: The daemon's home directory, absolute.
        timeout: ``--timeout``: seconds to wait for each reply, or ``None`` for the
            per-command default (:data:`QUERY_TIMEOUT` / :data:`ACTION_TIMEOUT`).
    """

    __slots__ = ("fingerprint", "home", "json", "timeout", "token_file", "url")

    def __init__(
        self,
        *,
        json: bool,
        home: str,
        timeout: float | None,
        url: str | None = None,
        token_file: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.json = json
        self.home = home
        self.timeout = timeout
        self.url = url
        self.token_file = token_file
        self.fingerprint = fingerprint

    @property
    def socket_path(self) -> str:
        """The daemon's management socket, ``$OMNITRON_HOME/daemon.sock``."""
        return os.path.join(self.home, "daemon.sock")

    def connect(self, *, timeout: float = QUERY_TIMEOUT) -> SyncClient:
        """A connected client; ``--timeout`` overrides ``timeout``.

        Raises:
            CliError: The daemon is not running or cannot be reached.
        """
        from omnitron.rpc._errors import RpcError
        from omnitron.rpc.sync_client import connect_unix_sync

        if self.url is not None:
            return self._connect_url(self.url, timeout=self.timeout or timeout)
        try:
            return connect_unix_sync(self.socket_path, timeout=self.timeout or timeout)
        except RpcError as exc:
            raise rpc_failure(exc) from None

    def _connect_url(self, url: str, *, timeout: float) -> SyncClient:
        """A client of a daemon's TLS plane, its certificate pinned, logged in with the token."""
        from omnitron.rpc._address import parse_url
        from omnitron.rpc._errors import DaemonNotRunning, RpcError
        from omnitron.rpc.sync_client import connect_tls_sync

        try:
            scheme, host, port = parse_url(url)
        except ValueError as exc:
            raise CliError(str(exc), exit_code=EXIT_USAGE) from None
        if scheme != "tls":
            raise CliError(
                f"--url {url!r}: the CLI connects to tls:// URLs (the TCP plane)",
                exit_code=EXIT_USAGE,
            )
        if self.token_file is None:
            raise CliError("--url needs --token-file FILE (a token from `omnitron auth token`)")
        token = _read_token(self.token_file)
        try:
            client = connect_tls_sync(
                host,
                port,
                known_hosts=os.path.join(self.home, "known_hosts"),
                fingerprint=self.fingerprint,
                confirm=_confirm_certificate,
                timeout=timeout,
            )
        except DaemonNotRunning as exc:
            # Not "start it with `omnitron up`": the daemon is on another machine.
            raise CliError(f"cannot reach the daemon at {url}: {exc.reason}") from None
        except RpcError as exc:
            raise rpc_failure(exc) from None
        try:
            client.call("auth.login", token=token)
        except RpcError as exc:
            client.close()
            raise rpc_failure(exc) from None
        return client

    def call(self, method: str, /, *, timeout: float = QUERY_TIMEOUT, **params: object) -> Any:
        """Call ``method`` on the daemon with named ``params`` and return its result.

        Raises:
            CliError: The daemon is not running, did not answer in time, or
                replied with an error (its message becomes the reason).
        """
        from omnitron.rpc._errors import RpcError

        with self.connect(timeout=timeout) as client:
            try:
                return client.call(method, **params)
            except RpcError as exc:
                raise rpc_failure(exc) from None

    def emit(self, data: object, render: Callable[[Any], str]) -> None:
        """Print a result on stdout: ``render(data)``, or its JSON with ``--json``."""
        click.echo(render_json(data) if self.json else render(data))

    def note(self, text: str) -> None:
        """Print a diagnostic on stderr (never part of the result)."""
        click.echo(escape(text), err=True)


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read(16385).strip()
    except OSError as exc:
        raise CliError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise CliError(f"the token file {path} is empty")
    return token


def _confirm_certificate(where: str, fingerprint: str) -> bool:
    """Trust on first use: ask on a terminal, refuse otherwise."""
    import sys

    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    click.echo(f"The daemon at {where} presents an unknown certificate:", err=True)
    click.echo(f"  {fingerprint}", err=True)
    click.echo("Compare it with the fingerprint the daemon printed when it started.", err=True)
    return click.confirm("Trust it from now on?", default=False, err=True)


pass_cli = click.make_pass_decorator(Cli)
"""Decorator: pass the command the :class:`Cli` built by the group."""
