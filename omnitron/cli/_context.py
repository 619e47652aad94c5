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
    "Target",
    "remote_failure",
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
    """The daemon home: ``--home``, else ``$OMNITRON_HOME``, else ``~/.omnitron``."""
    from omnitron.remotes import default_home

    return default_home(value, environ)


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


class Target:
    """A remote daemon: where it is, the token to log in with, the pin to expect.

    Attributes:
        label: The alias, or the URL given with ``--url``.
        url: ``tls://HOST:PORT``.
        token: The token, or ``None`` (then only ``daemon.ping`` answers).
        fingerprint: The pinned fingerprint, else the one in ``known_hosts`` is used.
    """

    __slots__ = ("fingerprint", "label", "token", "url")

    def __init__(self, label: str, url: str, token: str | None, fingerprint: str | None) -> None:
        self.label = label
        self.url = url
        self.token = token
        self.fingerprint = fingerprint

    @property
    def alias(self) -> str | None:
        """The alias, or ``None`` for ``--url``."""
        return None if self.label == self.url else self.label


class Cli:
    """What the global options decided, shared by every command.

    Attributes:
        json: Print results as JSON (``--json``).
        home: The daemon's home directory, absolute.
        timeout: ``--timeout``: seconds to wait for each reply, or ``None`` for the
            per-command default (:data:`QUERY_TIMEOUT` / :data:`ACTION_TIMEOUT`).
        url, token_file, fingerprint: ``--url`` and its options.
        remote: ``-r/--remote``: one alias, or several separated by commas.
        all_remotes: ``--all-remotes``: every alias of ``remotes.toml``.
    """

    __slots__ = (
        "all_remotes",
        "fingerprint",
        "home",
        "json",
        "remote",
        "timeout",
        "token_file",
        "url",
    )

    def __init__(
        self,
        *,
        json: bool,
        home: str,
        timeout: float | None,
        url: str | None = None,
        token_file: str | None = None,
        fingerprint: str | None = None,
        remote: str | None = None,
        all_remotes: bool = False,
    ) -> None:
        self.json = json
        self.home = home
        self.timeout = timeout
        self.url = url
        self.token_file = token_file
        self.fingerprint = fingerprint
        self.remote = remote
        self.all_remotes = all_remotes

    @property
    def socket_path(self) -> str:
        """The daemon's management socket, ``$OMNITRON_HOME/daemon.sock``."""
        return os.path.join(self.home, "daemon.sock")

    @property
    def known_hosts(self) -> str:
        """Pinned certificates of remote daemons, ``$OMNITRON_HOME/known_hosts``."""
        return os.path.join(self.home, "known_hosts")

    @property
    def is_remote(self) -> bool:
        """Whether commands go to another daemon than this home's (``--url``, ``-r``)."""
        return self.url is not None or self.remote is not None or self.all_remotes

    @property
    def is_fleet(self) -> bool:
        """Whether commands go to several daemons (``-r a,b`` or ``--all-remotes``)."""
        return self.all_remotes or (self.remote is not None and "," in self.remote)

    def aliases(self) -> list[str]:
        """The aliases named by ``-r`` (each once, in order) or every one (``--all-remotes``).

        Raises:
            CliError: An empty or malformed list, or no alias at all.
        """
        from omnitron.remotes import RemotesError, check_name, load_remotes

        try:
            if self.all_remotes:
                names = list(load_remotes(self.home))
                if not names:
                    raise CliError(
                        "--all-remotes: no remotes yet; add one with "
                        "`omnitron remote add NAME tls://HOST:PORT --token-file FILE`"
                    )
                return names
            given = dict.fromkeys(name.strip() for name in (self.remote or "").split(","))
            return [check_name(name) for name in given]
        except RemotesError as exc:
            raise CliError(f"-r: {exc}", exit_code=EXIT_USAGE) from None

    def target(self, alias: str | None = None) -> Target | None:
        """The remote daemon of ``alias``, or of ``--url``/``-r``; ``None`` for the local one.

        Raises:
            CliError: Unknown alias, unusable remotes file, unreadable token file.
        """
        from omnitron.remotes import RemotesError, lookup_remote

        if alias is None and self.remote is None:
            if self.url is None:
                return None
            _check_url(self.url)
            if self.token_file is None:
                raise CliError("--url needs --token-file FILE (a token from `omnitron auth token`)")
            return Target(self.url, self.url, _read_token(self.token_file), self.fingerprint)
        name = alias if alias is not None else self.aliases()[0]
        try:
            remote = lookup_remote(self.home, name)
            return Target(name, remote.url, remote.resolve_token(), remote.fingerprint)
        except RemotesError as exc:
            raise CliError(str(exc)) from None

    def connect(self, *, timeout: float = QUERY_TIMEOUT) -> SyncClient:
        """A connected client; ``--timeout`` overrides ``timeout``.

        Raises:
            CliError: The daemon is not running or cannot be reached.
        """
        from omnitron.rpc._errors import RpcError
        from omnitron.rpc.sync_client import connect_unix_sync

        target = self.target()
        if target is not None:
            return self._connect_remote(target, timeout=self.timeout or timeout)
        try:
            return connect_unix_sync(self.socket_path, timeout=self.timeout or timeout)
        except RpcError as exc:
            raise rpc_failure(exc) from None

    def _connect_remote(self, target: Target, *, timeout: float) -> SyncClient:
        """A client of a daemon's TLS plane, its certificate pinned, logged in with the token."""
        from omnitron.rpc._errors import RpcError
        from omnitron.rpc.sync_client import connect_url_sync

        try:
            return connect_url_sync(
                target.url,
                token=target.token,
                known_hosts=self.known_hosts,
                fingerprint=target.fingerprint,
                confirm=_confirm_certificate,
                timeout=timeout,
            )
        except RpcError as exc:
            raise remote_failure(exc, target.url, target.alias) from None

    def open_async(self) -> Any:
        """An async context manager: a Trio client of the daemon (``logs --follow``).

        Raises:
            CliError: (on entering) as :meth:`connect`.
        """
        from omnitron.rpc import connect_unix, connect_url

        target = self.target()
        if target is None:
            return connect_unix(self.socket_path)
        return connect_url(
            target.url,
            token=target.token,
            fingerprint=target.fingerprint,
            known_hosts=self.known_hosts,
            confirm=_confirm_certificate,
            connect_timeout=self.timeout or QUERY_TIMEOUT,
        )

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


def _check_url(url: str) -> str:
    from omnitron.rpc._address import parse_url

    try:
        scheme, _, _ = parse_url(url)
    except ValueError as exc:
        raise CliError(str(exc), exit_code=EXIT_USAGE) from None
    if scheme != "tls":
        raise CliError(
            f"--url {url!r}: the CLI connects to tls:// URLs (the TCP plane)",
            exit_code=EXIT_USAGE,
        )
    return url


def remote_failure(exc: RpcError, url: str, alias: str | None = None) -> CliError:
    """The one-line error for a failure to reach, or log in to, a remote daemon
    (``alias``: how to re-pin its certificate is added under a pin failure)."""
    from omnitron.rpc._errors import DaemonNotRunning
    from omnitron.rpc.sync_client import CertificateMismatch, UnknownCertificate

    if isinstance(exc, DaemonNotRunning):
        # Not "start it with `omnitron up`": the daemon is on another machine.
        return CliError(f"cannot reach the daemon at {url}: {exc.reason}")
    failure = rpc_failure(exc)
    if alias is not None and isinstance(exc, CertificateMismatch | UnknownCertificate):
        failure.details += (
            f"for the alias, pin it with `omnitron remote add {alias} {url} "
            "--token-file FILE --fingerprint SHA256:... --replace`",
        )
    return failure


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
