"""``omnitron secret set|get|ls|rm``: the daemon's encrypted secret store.

The daemon keeps the store (``secrets.enc``) and does the cryptography; the CLI
only reads a value (from stdin, or a hidden prompt on a terminal) and calls the
``secret.*`` methods (admin). A value is never taken from the command line, where
``ps`` and the shell history would show it.
"""

from __future__ import annotations

import sys

import click

from ._context import EXIT_USAGE, Cli, CliError

__all__ = ["get_secret", "list_secrets", "read_value", "remove_secret", "set_secret"]

MAX_VALUE = 64 * 1024
"""Characters of one value (the daemon's limit, checked before sending)."""


def refuse_argv_value(name: str, extra: tuple[str, ...]) -> None:
    """Fail when a value was given after the name."""
    if extra:
        raise CliError(
            "refusing to read a secret value from the command line (ps and the shell "
            f"history would show it); pipe it in: `... | omnitron secret set {name}`, "
            f"or type it at the prompt of `omnitron secret set {name}`",
            exit_code=EXIT_USAGE,
        )


def read_value(name: str) -> str:
    """The value: a hidden prompt (typed twice) on a terminal, else all of stdin
    without one trailing newline.

    Raises:
        CliError: Nothing was read, the value is too long or not UTF-8 text.
    """
    if sys.stdin.isatty():
        value: str = click.prompt(
            f"value of secret {name!r}",
            hide_input=True,
            confirmation_prompt=True,
            err=True,
        )
    else:
        raw = sys.stdin.buffer.read(4 * MAX_VALUE + 3)
        if raw.endswith(b"\r\n"):
            raw = raw[:-2]
        elif raw.endswith(b"\n"):
            raw = raw[:-1]
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CliError(
                "the value read from stdin is not UTF-8 text", exit_code=EXIT_USAGE
            ) from None
    if not value:
        raise CliError(
            f"no value for secret {name!r} (stdin was empty); nothing was stored",
            exit_code=EXIT_USAGE,
        )
    if len(value) > MAX_VALUE:
        raise CliError(
            f"a secret value must be at most {MAX_VALUE} characters", exit_code=EXIT_USAGE
        )
    if "\0" in value:
        raise CliError("a secret value must not contain a NUL character", exit_code=EXIT_USAGE)
    return value


def set_secret(cli: Cli, name: str, extra: tuple[str, ...]) -> None:
    refuse_argv_value(name, extra)
    value = read_value(name)
    result = cli.call("secret.set", name=name, value=value)
    cli.emit(
        result,
        lambda r: (
            f"secret {r['name']!r} {'stored' if r['created'] else 'replaced'}; apps using "
            "it get the value at their next start (omnitron restart APP)"
        ),
    )


def get_secret(cli: Cli, name: str) -> None:
    result = cli.call("secret.get", name=name)
    cli.emit(result, lambda r: str(r["value"]))


def list_secrets(cli: Cli) -> None:
    result = cli.call("secret.list")
    cli.emit(result, lambda r: "\n".join(r["names"]) if r["names"] else "(no secrets)")


def remove_secret(cli: Cli, name: str) -> None:
    result = cli.call("secret.remove", name=name)
    cli.emit(result, lambda r: f"secret {r['name']!r} removed")
