"""Finding, validating and summarising the ecosystem config for ``up``, ``check``, ``startup``.

Imported only by those commands: the config package costs tens of milliseconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._context import EXIT_USAGE, CliError

if TYPE_CHECKING:
    from omnitron.config import ConfigError, ConfigIssue, Ecosystem

    from ._context import Cli

__all__ = ["config_failure", "issue_record", "load", "summary", "warn"]


def load(path: str | None, *, stack: str | None = None) -> Ecosystem:
    """The validated ecosystem from ``path`` or, without one, found from the cwd upward.

    Raises:
        ConfigError: Not found, unreadable, invalid, or an unknown stack; every
            problem is listed in ``issues``.
    """
    from omnitron.config import find_config, load_config

    source = Path(os.path.abspath(path)) if path else find_config()
    ecosystem = load_config(source)
    if stack is not None:
        ecosystem = ecosystem.with_stack(stack)
    return ecosystem


def config_failure(exc: ConfigError) -> CliError:
    """Exit 2 with every problem: one line if there is one, else a summary and a line each."""
    issues = exc.issues
    if len(issues) == 1:
        return CliError(str(issues[0]), exit_code=EXIT_USAGE)
    files = {str(issue.file) for issue in issues if issue.file is not None}
    where = f" in {files.pop()}" if len(files) == 1 else ""
    return CliError(
        f"{len(issues)} configuration problems{where}:",
        exit_code=EXIT_USAGE,
        details=[str(issue) for issue in issues],
    )


def issue_record(issue: ConfigIssue) -> dict[str, Any]:
    """A config problem as JSON data."""
    return {
        "file": None if issue.file is None else str(issue.file),
        "line": issue.line,
        "column": issue.column,
        "path": issue.path,
        "message": issue.message,
        "text": str(issue),
    }


def warn(cli: Cli, ecosystem: Ecosystem) -> None:
    """Print the config's warnings on stderr, then each key that has no effect yet."""
    for warning in (*ecosystem.warnings, *ecosystem.inert):
        cli.note(f"warning: {warning}")


def summary(ecosystem: Ecosystem) -> dict[str, Any]:
    """What ``omnitron check`` reports: the file, the settings that matter, the start order."""
    return {
        "config": None if ecosystem.source is None else str(ecosystem.source),
        "ok": True,
        "project": ecosystem.project,
        "stack": ecosystem.stack,
        "strategy": ecosystem.supervision.strategy.value,
        "apps": [
            {
                "name": app.name,
                "mode": app.mode,
                "instances": app.instances,
                "depends_on": list(app.depends_on),
                "critical": app.critical,
                "enabled": app.enabled,
            }
            for app in ecosystem.start_order()
        ],
        "warnings": [str(warning) for warning in ecosystem.warnings],
        "inert": [issue_record(issue) for issue in ecosystem.inert],
    }
