"""What a bootstrap file defines, as the daemon plans it: processes in topology order.

A module-worker app's ``bootstrap`` is Python: it is not read here but *described*
by the app's own interpreter (``python -m omnitron.worker describe FILE``, which
imports the bootstrap and nothing else) and the JSON it prints is turned into a
:class:`WorkerSystem` by :func:`read_description`. Errors in the bootstrap, in its
topology or in the worker's identity become :class:`ConfigIssue`\\ s with the
bootstrap file and the app's field path (``apps[2].bootstrap: processes[1].module:
is required``), so ``check``, ``up`` and ``reload-config`` report them as config
errors.

This module runs no process itself except :func:`describe_sync` (for the CLI); the
daemon runs the same command under Trio and hands the output here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ._errors import ConfigError, ConfigIssue
from ._model import AppConfig, Ecosystem

__all__ = [
    "DESCRIBE_TIMEOUT",
    "BootstrapInvalid",
    "WorkerProcess",
    "WorkerSlot",
    "WorkerSystem",
    "cannot_run",
    "describe_command",
    "describe_environ",
    "describe_sync",
    "inert_for_workers",
    "interpreter",
    "read_answer",
    "read_description",
]

DESCRIBE_TIMEOUT = 30.0
"""Seconds a bootstrap may take to be described (its imports included)."""


@attrs.frozen(kw_only=True)
class WorkerProcess:
    """One ``Process(...)`` entry of a bootstrap.

    Attributes:
        name: The process entry's name (``http``).
        module: The module its workers import (``shop.http``).
        instances: How many workers run it.
        expose: Its services are reachable by the other processes of the app.
        access: The processes whose services it calls.
        env: Extra environment of its workers (the system's, then its own).
        python: Its own interpreter, when it is not the app's.
    """

    name: str
    module: str
    instances: int = 1
    expose: bool = False
    access: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict)
    python: str | None = None


@attrs.frozen
class WorkerSlot:
    """Which worker a flat instance index of an app stands for: ``index`` of ``process``.

    ``socket`` is where that worker listens, once the daemon built its process.
    """

    process: str
    index: int
    socket: str | None = None


@attrs.frozen(kw_only=True)
class WorkerSystem:
    """A described bootstrap: its processes in start order (providers first, as
    ``define_system`` ordered them: consumers name in ``access`` the processes they
    call, and cycles are rejected there).

    The app's processes are numbered ``0..N-1`` across its entries, in that order
    (``http`` x2 and ``billing`` x1 are instances 0, 1 and 2): :attr:`slots` maps
    that number to the process entry and the index within it.
    """

    name: str
    version: str
    processes: tuple[WorkerProcess, ...]
    protocol: int | None = None
    omnitron: str | None = None
    python: str | None = None

    @property
    def slots(self) -> tuple[WorkerSlot, ...]:
        return tuple(WorkerSlot(p.name, i) for p in self.processes for i in range(p.instances))

    @property
    def size(self) -> int:
        """How many worker processes the app runs."""
        return sum(p.instances for p in self.processes)

    def process(self, name: str) -> WorkerProcess:
        """The entry called ``name``.

        Raises:
            KeyError: No such entry.
        """
        for process in self.processes:
            if process.name == name:
                return process
        raise KeyError(name)


class BootstrapInvalid(ConfigError):
    """A bootstrap cannot be run: invalid, unimportable, a topology cycle, or a
    worker whose omnitron speaks another protocol (:attr:`identity`)."""

    def __init__(self, issues: Sequence[ConfigIssue], *, identity: bool = False) -> None:
        super().__init__(issues)
        self.identity = identity


_INERT_FOR_WORKERS: dict[str, str] = {
    "instances": (
        "on a module-worker app: each process's number of workers is its "
        "Process(..., instances=N) in the bootstrap"
    ),
    "ready": (
        "on a module-worker app: its workers report ready themselves once they serve (sd_notify)"
    ),
    "sockets": (
        "on a module-worker app: its workers serve the daemon on their own sockets "
        "and are not handed listening sockets"
    ),
}


def inert_for_workers(table: Mapping[str, object]) -> list[tuple[str, str]]:
    """``(key, why)`` for each key set in a module-worker app's table that does
    nothing there (``instances``, ``ready``, ``sockets``): config warnings."""
    return [(key, why) for key, why in _INERT_FOR_WORKERS.items() if table.get(key) is not None]


def interpreter(app: AppConfig) -> str:
    """The Python that runs ``app``'s workers: its ``python`` key, else the daemon's own."""
    return app.python or sys.executable


def describe_command(app: AppConfig) -> list[str]:
    """The argv that describes ``app``'s bootstrap with its own interpreter."""
    assert app.bootstrap is not None
    return [interpreter(app), "-m", "omnitron.worker", "describe", os.fspath(app.bootstrap)]


def _issue(app: AppConfig, index: int, message: str, *, where: str = "bootstrap") -> ConfigIssue:
    return ConfigIssue(file=app.bootstrap, path=f"apps[{index}].{where}", message=message)


def read_description(
    app: AppConfig,
    index: int,
    returncode: int,
    stdout: bytes,
    stderr: bytes,
    *,
    check_identity: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> WorkerSystem:
    """The system ``describe`` printed for app ``index`` of the config.

    Args:
        app: The bootstrap app.
        index: Its position in ``[[apps]]`` (for the field path of problems).
        returncode, stdout, stderr: How ``describe`` ended and what it printed.
        check_identity: Returns why the worker's omnitron cannot work with this
            daemon (protocol versions, interpreter), or ``None``; the worker
            package's own check by default.

    Raises:
        BootstrapInvalid: Every problem, each with the bootstrap file and a path.
    """
    doc: Any = None
    try:
        doc = json.loads(stdout.decode("utf-8", "replace") or "null")
    except ValueError:
        doc = None
    if returncode not in (0, 2) or not isinstance(doc, dict):
        lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {returncode}"
        raise BootstrapInvalid(
            [_issue(app, index, f"cannot be described with {interpreter(app)}: {last}")]
        )
    return read_answer(app, index, doc, check_identity=check_identity)


def read_answer(
    app: AppConfig,
    index: int,
    doc: Mapping[str, Any],
    *,
    check_identity: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> WorkerSystem:
    """The system in ``describe``'s JSON answer ``doc`` (see :func:`read_description`).

    Raises:
        BootstrapInvalid: The identity check failed (``identity`` is set), or the
            answer lists errors, or holds no system.
    """
    check: Callable[[Mapping[str, Any]], str | None]
    if check_identity is None:
        from omnitron._system import check_identity as worker_check

        check = worker_check
    else:
        check = check_identity
    mismatch = check(doc)
    if mismatch is not None:
        where = "python" if app.python else "bootstrap"
        raise BootstrapInvalid([_issue(app, index, mismatch, where=where)], identity=True)
    errors = doc.get("errors")
    if isinstance(errors, list):
        issues = [
            _issue(
                app,
                index,
                f"{e.get('path')}: {e.get('message')}" if e.get("path") else str(e.get("message")),
            )
            for e in errors
            if isinstance(e, dict)
        ]
        raise BootstrapInvalid(issues or [_issue(app, index, "invalid (no detail given)")])
    if not isinstance(doc.get("system"), dict):
        raise BootstrapInvalid([_issue(app, index, "described without a system")])
    system = doc["system"]
    shared = {str(k): str(v) for k, v in (system.get("env") or {}).items()}
    entries = {
        str(p["name"]): WorkerProcess(
            name=str(p["name"]),
            module=str(p["module"]),
            instances=int(p.get("instances", 1)),
            expose=bool((p.get("topology") or {}).get("expose", False)),
            access=tuple(str(a) for a in (p.get("topology") or {}).get("access") or ()),
            env={**shared, **{str(k): str(v) for k, v in (p.get("env") or {}).items()}},
            python=str(p["python"]) if p.get("python") else None,
        )
        for p in system.get("processes", ())
    }
    # define_system has checked the topology (no cycle, access to exposed
    # processes only) and orders it: providers first.
    order = [str(name) for name in system.get("start_order") or entries]
    return WorkerSystem(
        name=str(system.get("name", "")),
        version=str(system.get("version", "")),
        processes=tuple(entries[name] for name in order if name in entries),
        protocol=doc.get("protocol"),
        omnitron=doc.get("omnitron"),
        python=doc.get("python"),
    )


def describe_sync(
    ecosystem: Ecosystem, *, within: float = DESCRIBE_TIMEOUT
) -> tuple[dict[str, WorkerSystem], list[ConfigIssue]]:
    """Describe every bootstrap app of ``ecosystem`` (blocking; for the CLI).

    Returns:
        ``(systems, mismatches)``: the systems, and one issue per app whose
        interpreter's omnitron speaks another protocol (that app cannot start; the
        others can).

    Raises:
        BootstrapInvalid: Every problem of every bootstrap.
    """
    systems: dict[str, WorkerSystem] = {}
    issues: list[ConfigIssue] = []
    mismatches: list[ConfigIssue] = []
    for index, app in enumerate(ecosystem.apps):
        if app.bootstrap is None:
            continue
        try:
            done = subprocess.run(
                describe_command(app),
                capture_output=True,
                timeout=within,
                cwd=bootstrap_dir(app),
                env=describe_environ(app),
                check=False,
            )
        except subprocess.TimeoutExpired:
            issues.append(_issue(app, index, f"not described within {within:g}s"))
            continue
        except OSError as exc:
            issues.append(cannot_run(app, index, exc))
            continue
        try:
            systems[app.name] = read_description(
                app, index, done.returncode, done.stdout, done.stderr
            )
        except BootstrapInvalid as exc:
            (mismatches if exc.identity else issues).extend(exc.issues)
    if issues:
        raise BootstrapInvalid(issues)
    return systems, mismatches


def bootstrap_dir(app: AppConfig) -> str:
    """Where ``describe`` runs: the bootstrap file's directory."""
    assert app.bootstrap is not None
    return os.fspath(app.bootstrap.parent)


def describe_environ(app: AppConfig) -> dict[str, str]:
    """The environment ``describe`` runs in: the caller's, and the app's literal
    values (a ``secret:`` reference is not resolved for describing)."""
    from ._fields import secret_reference

    own = {key: value for key, value in app.env.items() if secret_reference(value) is None}
    return {**os.environ, **own, "PYTHONDONTWRITEBYTECODE": "1"}


def cannot_run(app: AppConfig, index: int, exc: OSError) -> ConfigIssue:
    where = "python" if app.python else "bootstrap"
    message = f"cannot run {interpreter(app)}: {exc.strerror or exc}"
    return _issue(app, index, message, where=where)


def app_index(ecosystem: Ecosystem, name: str) -> int:
    """The position of app ``name`` in ``[[apps]]``."""
    return next(i for i, app in enumerate(ecosystem.apps) if app.name == name)
