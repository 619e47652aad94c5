"""Development sessions: ``nox`` runs tests, lint and typecheck; ``nox -s tests -- -k x``."""

from __future__ import annotations

import re

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
