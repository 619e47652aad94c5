"""Loading a bootstrap file and the ``describe`` answer.

A bootstrap file is run as a module named ``__omnitron_bootstrap__`` with its
directory first on ``sys.path`` (so ``shop.http`` resolves next to it); it must
bind a module-level ``system`` made by ``define_system``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Final

from .. import __version__
from .._system import PROTOCOL_VERSION, System
from ..errors import SystemDefinitionError

__all__ = ["BootstrapError", "describe", "identity", "load_bootstrap", "resolve_access"]

BOOTSTRAP_MODULE: Final = "__omnitron_bootstrap__"


class BootstrapError(Exception):
    """The bootstrap file cannot be used; ``issues`` are ``(path, message)`` pairs."""

    def __init__(self, issues: list[tuple[str, str]]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{path}: {message}" for path, message in issues))


def identity() -> dict[str, object]:
    """What every answer of the worker entry point starts with."""
    return {"protocol": PROTOCOL_VERSION, "omnitron": __version__, "python": sys.executable}


def _where(exc: BaseException, bootstrap: Path) -> str:
    """``file:line`` of the failure: the syntax error's place, else the deepest frame
    in the project (the bootstrap's directory), else the deepest frame."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    project = str(bootstrap.parent)
    ours = [f for f in frames if f.filename.startswith(project + os.sep)]
    chosen = ours[-1] if ours else (frames[-1] if frames else None)
    return f"{chosen.filename}:{chosen.lineno}" if chosen is not None else str(bootstrap)


def load_bootstrap(path: str | os.PathLike[str]) -> System:
    """Run the bootstrap file and return its ``system``.

    Raises:
        BootstrapError: The file is missing, fails to import (path ``bootstrap``,
            with the exception and ``file:line``), has no ``system``, or its
            ``system`` is not made by ``define_system``; or the definition is
            invalid (the paths of :class:`SystemDefinitionError`).
    """
    bootstrap = Path(path).absolute()
    if not bootstrap.is_file():
        raise BootstrapError([("bootstrap", f"file not found: {bootstrap}")])
    directory = str(bootstrap.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(BOOTSTRAP_MODULE, bootstrap)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[BOOTSTRAP_MODULE] = module
    try:
        # Whatever the file prints must not mix with describe's JSON on stdout.
        with contextlib.redirect_stdout(sys.stderr):
            spec.loader.exec_module(module)
    except SystemDefinitionError as exc:
        raise BootstrapError(list(exc.issues)) from None
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise BootstrapError([("bootstrap", f"{text} ({_where(exc, bootstrap)})")]) from None
    system = getattr(module, "system", None)
    if system is None:
        raise BootstrapError(
            [
                (
                    "bootstrap",
                    f"{bootstrap} defines no module-level `system`; "
                    "write `system = define_system(...)`",
                )
            ]
        )
    if not isinstance(system, System):
        raise BootstrapError(
            [
                (
                    "bootstrap",
                    f"`system` in {bootstrap} is a {type(system).__name__}, "
                    "not the result of define_system(...)",
                )
            ]
        )
    return system


def _services(system: System, bootstrap: Path) -> dict[str, list[str]]:
    """The service names of each process's module, imported for it (only when an
    ``access`` entry names a service rather than a process).

    Raises:
        BootstrapError: A module fails to import (with the exception and ``file:line``).
    """
    from ._discover import service_names

    services: dict[str, list[str]] = {}
    issues: list[tuple[str, str]] = []
    for index, process in enumerate(system.processes):
        try:
            with contextlib.redirect_stdout(sys.stderr):
                module = importlib.import_module(process.module)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            issues.append(
                (
                    f"processes[{index}].module",
                    "imported to find the services named in topology access, and it "
                    f"failed: {text} ({_where(exc, bootstrap)}); name processes in access "
                    "to avoid the import",
                )
            )
            continue
        services[process.name] = service_names(module)
    if issues:
        raise BootstrapError(issues)
    return services


def resolve_access(system: System, path: str | os.PathLike[str]) -> System:
    """``system`` with its service names in ``access`` replaced by the processes
    serving them (the process modules are imported only if there are any).

    Raises:
        BootstrapError: A module fails to import, or a name cannot be resolved.
    """
    if not system.service_access():
        return system
    try:
        return system.resolve_access(_services(system, Path(path).absolute()))
    except SystemDefinitionError as exc:
        raise BootstrapError(list(exc.issues)) from None


def describe(path: str | os.PathLike[str]) -> tuple[int, dict[str, object]]:
    """The ``describe`` answer and exit code: 0 with ``system``, 2 with ``errors``.

    ``access`` entries naming services are resolved to the processes serving them.
    """
    answer = identity()
    try:
        system = resolve_access(load_bootstrap(path), path)
    except BootstrapError as exc:
        answer["errors"] = [{"path": p, "message": m} for p, m in exc.issues]
        return 2, answer
    answer["system"] = system.to_json()
    return 0, answer
