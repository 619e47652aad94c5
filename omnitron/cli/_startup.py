"""``omnitron startup systemd``: a unit that runs the daemon at boot (or login)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from ._context import Cli, CliError

__all__ = ["systemd"]


def _executable() -> Path:
    """The absolute path of the ``omnitron`` command: next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "omnitron"
    if os.access(beside, os.X_OK) and beside.is_file():
        return beside
    found = shutil.which("omnitron")
    if found is None:
        raise CliError(
            "cannot find the `omnitron` command next to this Python or on PATH; "
            "install omnitron in the environment the unit should run"
        )
    return Path(os.path.abspath(found))


def systemd(cli: Cli, *, user: bool, print_only: bool, config: str | None, name: str) -> None:
    """Render the unit; print it (``--print``) or install it; say what to run next."""
    from omnitron.config import ConfigError, DaemonDeath
    from omnitron.daemon._systemd import (
        DEFAULT_STOP_TIMEOUT,
        enable_command,
        install_unit,
        render_unit,
        unit_directory,
    )

    from . import _config

    try:
        ecosystem = _config.load(config)
    except ConfigError as exc:
        raise _config.config_failure(exc) from None
    assert ecosystem.source is not None
    cli.note(f"config: {ecosystem.source}")
    # Apps stop one process at a time, dependents first: the bound is the sum.
    needed = sum(app.stop_timeout * app.instances for app in ecosystem.apps if app.enabled)
    try:
        text = render_unit(
            executable=_executable(),
            config=ecosystem.source,
            home=Path(cli.home),
            user=user,
            stop_timeout=max(DEFAULT_STOP_TIMEOUT, needed),
            keep_apps=ecosystem.supervision.on_daemon_death is DaemonDeath.KEEP,
        )
        command = enable_command(name, user=user)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if print_only:
        target = unit_directory(user=user) / f"{name.removesuffix('.service')}.service"
        if cli.json:
            cli.emit({"unit": text, "path": str(target), "enable": command}, str)
        else:
            click.echo(text, nl=False)
            cli.note(f"# save it as {target}, then run: {command}")
        return
    try:
        path = install_unit(text, name=name, user=user)
    except OSError as exc:
        hint = "" if user else " (system units need root: use sudo, or --user)"
        raise CliError(f"cannot write {exc.filename}: {exc.strerror}{hint}") from None
    cli.emit(
        {"unit": text, "path": str(path), "enable": command},
        lambda data: f"wrote {data['path']}\nnow run: {data['enable']}",
    )
