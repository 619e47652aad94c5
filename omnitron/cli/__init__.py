"""The ``omnitron`` command line: a thin shell over the daemon's RPC client.

``main()`` is the console script. Commands render the daemon's replies with the
pure functions of :mod:`omnitron.cli._render` (human tables, or stable JSON with
``--json``); diagnostics go to stderr, failures exit non-zero with one line
``omnitron: <reason>``.

A plain detached ``omnitron up`` launches the daemon before click and the
commands are imported (:mod:`omnitron.cli._launch`); ``up`` then takes it over.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._main import cli as cli

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> int:
    """The console script: run the CLI and exit with its code."""
    from ._launch import launch_early

    launch_early(sys.argv[1:] if argv is None else argv)
    from ._main import main as run

    return run(argv)


def __getattr__(name: str) -> Any:
    if name == "cli":
        from ._main import cli

        return cli
    raise AttributeError(f"module 'omnitron.cli' has no attribute {name!r}")
