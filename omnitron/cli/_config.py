"""Finding, validating and summarising the ecosystem config for ``up``, ``check``, ``startup``.

Imported only by those commands: the config package costs tens of milliseconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._context import EXIT_USAGE, CliError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from omnitron.config import ConfigError, ConfigIssue, Ecosystem
    from omnitron.config._bootstrap import WorkerSystem

    from ._context import Cli

__all__ = ["config_failure", "issue_record", "load", "load_systems", "summary", "warn"]


def load(path: str | None, *, stack: str | None = None) -> Ecosystem:
    """The validated ecosystem from ``path`` or, without one, found from the cwd upward,
    its bootstraps described (see :func:`load_systems`).

    Raises:
        ConfigError: Not found, unreadable, invalid, an unknown stack, or an
            invalid bootstrap; every problem is listed in ``issues``.
    """
    return load_systems(path, stack=stack)[0]


def load_systems(
    path: str | None, *, stack: str | None = None
) -> tuple[Ecosystem, dict[str, WorkerSystem]]:
    """:func:`load`, and the system each bootstrap app defines.

    Each bootstrap is described by the app's own interpreter; a worker whose
    omnitron speaks another protocol is a warning (that app will not start).
    """
    import attrs

    from omnitron.config import find_config, load_config
    from omnitron.config._bootstrap import describe_sync

    source = Path(os.path.abspath(path)) if path else find_config()
    ecosystem = load_config(source)
    if stack is not None:
        ecosystem = ecosystem.with_stack(stack)
    systems, mismatches = describe_sync(ecosystem)
    if mismatches:
        ecosystem = attrs.evolve(ecosystem, warnings=(*ecosystem.warnings, *mismatches))
    return ecosystem, systems


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


def summary(
    ecosystem: Ecosystem, systems: Mapping[str, WorkerSystem] | None = None
) -> dict[str, Any]:
    """What ``omnitron check`` reports: the file, the settings that matter, the start
    order, and each bootstrap app's processes in their start order."""
    systems = systems or {}
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
                **({"processes": _processes(systems[app.name])} if app.name in systems else {}),
            }
            for app in ecosystem.start_order()
        ],
        "warnings": [str(warning) for warning in ecosystem.warnings],
        "inert": [issue_record(issue) for issue in ecosystem.inert],
    }


def _processes(system: WorkerSystem) -> list[dict[str, Any]]:
    return [
        {
            "name": p.name,
            "module": p.module,
            "instances": p.instances,
            "expose": p.expose,
            "access": list(p.access),
        }
        for p in system.processes
    ]
