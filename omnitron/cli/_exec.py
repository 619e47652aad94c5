"""``omnitron exec APP SERVICE METHOD [ARG...]``: call a worker's public method.

Each ``ARG`` is read as JSON when it parses (``42``, ``true``, ``{"a": 1}``,
``"u_42"``), else taken as a string (``u_42``); ``--kw key=value`` passes named
arguments the same way. The result is printed as JSON. An error raised in the
worker is printed as ``TYPE: message`` (and, with ``--verbose`` or ``--json``,
the worker's traceback), and the command exits 1.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ._context import EXIT_FAILURE, EXIT_USAGE, Cli, CliError
from ._render import render_json

__all__ = ["EXIT_SLACK", "exec_call", "parse_arg", "parse_kwargs", "render_exec_error"]

EXIT_SLACK = 5.0
"""Seconds the CLI waits beyond the call's own timeout (the daemon answers first)."""


def parse_arg(text: str) -> Any:
    """``text`` as JSON if it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_kwargs(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("key=value", ...)`` → ``{"key": parse_arg(value)}``.

    Raises:
        CliError: A pair without ``=`` or with an empty key (exit 2).
    """
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--kw {pair!r}: write KEY=VALUE", exit_code=EXIT_USAGE)
        kwargs[key] = parse_arg(value)
    return kwargs


def render_exec_error(error: dict[str, Any], *, verbose: bool) -> tuple[str, list[str]]:
    """The one-line reason and the detail lines of a failed ``exec``."""
    kind = error.get("type")
    message = str(error.get("message", ""))
    first = f"{kind}: {message}" if kind else message
    code = error.get("code")
    if code and code != "APP_ERROR":
        first += f" ({code})"
    details: list[str] = []
    traceback = error.get("traceback")
    if verbose and isinstance(traceback, str) and traceback:
        details = traceback.rstrip("\n").splitlines()
    elif isinstance(traceback, str) and traceback:
        details = ["(the worker's traceback: run again with --verbose)"]
    return first, details


def exec_call(
    cli: Cli,
    app: str,
    service: str,
    method: str,
    args: tuple[str, ...],
    kw: tuple[str, ...],
    *,
    timeout: float | None,
    verbose: bool,
) -> None:
    """Call ``service.method`` on ``app`` and print its result (or its error)."""
    from omnitron.rpc._errors import RemoteError, RpcError

    from ._context import rpc_failure

    params: dict[str, Any] = {
        "app": app,
        "service": service,
        "method": method,
        "args": [parse_arg(a) for a in args],
        "kwargs": parse_kwargs(kw),
    }
    if timeout is not None:
        params["timeout"] = timeout
    wait = (timeout or 30.0) + EXIT_SLACK
    with cli.connect(timeout=wait) as client:
        try:
            result = client.call("daemon.exec", **params)
        except RemoteError as exc:
            error = {"code": exc.code, "message": exc.message, **exc.data}
            if exc.code not in _WORKER_CODES:
                raise rpc_failure(exc) from None
            if cli.json:
                click.echo(render_json({"ok": False, "error": error}))
            first, details = render_exec_error(error, verbose=verbose)
            raise CliError(first, exit_code=EXIT_FAILURE, details=details) from None
        except RpcError as exc:
            raise rpc_failure(exc) from None
    if cli.json:
        click.echo(render_json({"ok": True, **result}))
    else:
        # ASCII-only JSON: nothing the worker returns can drive the terminal.
        click.echo(json.dumps(result.get("result"), indent=2, ensure_ascii=True, default=str))


_WORKER_CODES = frozenset(
    {"APP_ERROR", "INVALID_ARGS", "WORKER_EXITED", "TIMEOUT", "METHOD_NOT_FOUND"}
)
"""Errors about the call itself (printed as such), not about reaching the daemon."""
