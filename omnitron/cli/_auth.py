"""``omnitron auth token|revoke|ls`` and the network-plane options of ``up``.

Tokens are issued by the daemon (its key never leaves the home); these commands
call it over the Unix socket, or over ``--url`` with an admin token.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

from ._context import EXIT_USAGE, QUERY_TIMEOUT, Cli, CliError
from ._render import escape, render_table

__all__ = ["issue", "list_tokens", "note_planes", "plane_argv", "revoke"]


def plane_argv(
    *,
    tcp: str | None,
    http: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    max_connections: int | None = None,
) -> list[str]:
    """The daemon's arguments for ``up --tcp/--http/--tls-cert/--tls-key/--max-connections``
    (checked here)."""
    from omnitron.rpc._address import DEFAULT_HTTP_PORT, DEFAULT_TCP_PORT, parse_host_port

    argv: list[str] = []
    for flag, value, port in (
        ("--tcp", tcp, DEFAULT_TCP_PORT),
        ("--http", http, DEFAULT_HTTP_PORT),
    ):
        if value is None:
            continue
        try:
            parse_host_port(value, default_port=port)
        except ValueError as exc:
            raise CliError(f"{flag}: {exc}", exit_code=EXIT_USAGE) from None
        argv += [flag, value]
    if (tls_cert is None) != (tls_key is None):
        raise CliError("--tls-cert and --tls-key must be given together", exit_code=EXIT_USAGE)
    if tls_cert is not None and tls_key is not None:
        if not argv:
            raise CliError("--tls-cert/--tls-key need --tcp or --http", exit_code=EXIT_USAGE)
        argv += ["--tls-cert", os.path.abspath(tls_cert), "--tls-key", os.path.abspath(tls_key)]
    if max_connections is not None:
        if not argv:
            raise CliError("--max-connections needs --tcp or --http", exit_code=EXIT_USAGE)
        argv += ["--max-connections", str(max_connections)]
    return argv


def _pem_fingerprint(path: str) -> str | None:
    """``SHA256:...`` of the first certificate in a PEM file (no ``ssl`` import)."""
    from omnitron.rpc._address import fingerprint_of_der

    try:
        with open(path, encoding="ascii") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError):
        return None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return None
    body = "".join(text[start + len(begin) : stop].split())
    try:
        return fingerprint_of_der(base64.b64decode(body, validate=True))
    except ValueError:
        return None


def note_planes(cli: Cli, argv: list[str]) -> None:
    """After a detached start: where the network planes listen, and the certificate pin."""
    for flag, scheme in (("--tcp", "tls"), ("--http", "ws")):
        if flag in argv:
            cli.note(f"{flag[2:]} plane: {scheme}://{argv[argv.index(flag) + 1]}")
    cert = (
        argv[argv.index("--tls-cert") + 1]
        if "--tls-cert" in argv
        else os.path.join(cli.home, "tls", "cert.pem")
    )
    fingerprint = _pem_fingerprint(cert)
    if fingerprint is not None:
        cli.note(f"certificate fingerprint: {fingerprint}")


def issue(cli: Cli, *, role: str, ttl: str, subject: str | None) -> None:
    """Print a new token on stdout (its id and expiry on stderr)."""
    from omnitron.rpc._address import parse_ttl

    try:
        seconds = parse_ttl(ttl)
    except ValueError as exc:
        raise CliError(f"--ttl: {exc}", exit_code=EXIT_USAGE) from None
    params: dict[str, Any] = {"role": role, "ttl": seconds}
    if subject is not None:
        params["subject"] = subject
    result = cli.call("auth.token", timeout=QUERY_TIMEOUT, **params)
    if cli.json:
        cli.emit(result, str)
        return
    cli.note(
        f"token {result['token_id']} for {result['subject']} ({result['role']}), "
        f"expires {_when(result['expires_at'])}"
    )
    print(result["token"])


def revoke(cli: Cli, token_id: str) -> None:
    result = cli.call("auth.revoke", token_id=token_id)
    cli.emit(result, lambda r: f"revoked {r['token_id']} ({r['subject']}, {r['role']})")


def list_tokens(cli: Cli) -> None:
    result = cli.call("auth.ls")
    cli.emit(result, render_tokens)


def render_tokens(tokens: list[dict[str, Any]]) -> str:
    if not tokens:
        return "no unexpired tokens"
    rows = [
        (
            t["token_id"],
            escape(t["subject"]),
            t["role"],
            _when(t["expires_at"]),
            "revoked" if t["revoked"] else "valid",
        )
        for t in tokens
    ]
    return render_table(("ID", "SUBJECT", "ROLE", "EXPIRES", "STATE"), rows)


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))
