"""Development sessions: ``nox`` runs tests, lint and typecheck; ``nox -s tests -- -k x``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck"]

# Tool versions come from the `dev` extra in pyproject.toml, the one place they are pinned.
_DEV = nox.project.load_toml("pyproject.toml")["project"]["optional-dependencies"]["dev"]


def _dev(name: str) -> str:
    """The `dev` extra's requirement for ``name`` (e.g. ``"ruff>=0.6"``)."""
    for requirement in _DEV:
        if re.match(rf"{re.escape(name)}\b(?!-)", requirement):
            return str(requirement)
    raise LookupError(f"{name} is not in the dev extra of pyproject.toml")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite; arguments after ``--`` go to pytest."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff (configured in pyproject.toml)."""
    session.install(_dev("ruff"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check with mypy (strict on ``supervision``; see pyproject.toml)."""
    session.install("-e", ".", _dev("mypy"))
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Compare omnitron with other supervisors (``benchmarks/compare.py``).

    Installs the peers first (``benchmarks/peers/install.sh``: PyPI, npm, and
    Debian's erlang-nox when run as root); arguments after ``--`` go to the
    harness, e.g. ``nox -s bench -- --quick``.
    """
    session.install("-e", ".[bench]")
    session.run("sh", "benchmarks/peers/install.sh", external=True)
    session.run("python", "benchmarks/compare.py", *session.posargs)


# Mutation testing: the critical modules, each as mutmut mutant-name globs. Stop escalation
# is the runner's stop and what it calls to signal and to kill (`?` stands for mutmut's
# class separator in method names).
_MUTATE = {
    "stop": (
        "supervision._process.x?ProcessRunner?_stop*",
        "supervision._process.x?_Child?signal_group*",
        "supervision._procfs.x?PinnedProcess?send*",
    ),
    "lock": ("omnitron.state._lock.*",),
    "identity": ("supervision._procfs.x?ProcessIdentity?*",),
    "store": ("omnitron.state._store.*",),
    "fs": ("omnitron.state._fs.*",),
}


@nox.session
def mutate(session: nox.Session) -> None:
    """Mutation-test the critical modules with mutmut (slow: never in CI nor plain ``nox``).

    ``nox -s mutate`` covers every module of ``_MUTATE``; ``nox -s mutate -- lock store``
    some of them. The configuration (files, test selection) is ``[tool.mutmut]`` in
    pyproject.toml; ``mutmut results`` and ``mutmut show NAME`` read the outcome.
    """
    unknown = sorted(set(session.posargs) - _MUTATE.keys())
    if unknown:
        session.error(f"unknown module {', '.join(unknown)}; choose from {', '.join(_MUTATE)}")
    session.install("-e", ".[test]", _dev("mutmut"))
    # A fresh copy each time, its directory made before mutmut starts: an entry of
    # PYTHONPATH that does not exist when Python starts is never searched again.
    shutil.rmtree("mutants", ignore_errors=True)
    Path("mutants").mkdir()
    names = [glob for module in session.posargs or _MUTATE for glob in _MUTATE[module]]
    # The tests' own subprocesses (lock holders, daemons) import the mutated copy too.
    env = {"PYTHONPATH": str(Path("mutants").resolve())}
    session.run("mutmut", "run", "--max-children", "2", *names, env=env)
    session.run("mutmut", "results", env=env)
