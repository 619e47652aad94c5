"""The ``omnitron`` command line: a thin shell over the daemon's RPC client.

``main()`` is the console script. Commands render the daemon's replies with the
pure functions of :mod:`omnitron.cli._render` (human tables, or stable JSON with
``--json``); diagnostics go to stderr, failures exit non-zero with one line
``omnitron: <reason>``.
"""

from __future__ import annotations

from ._main import cli as cli
from ._main import main as main

__all__ = ["cli", "main"]
