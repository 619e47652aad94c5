"""The omnitron daemon: orchestrator, control plane, persistence and logs.

``python -m omnitron.daemon`` runs it (see :mod:`omnitron.daemon._entry`). Importing
this package is cheap: the daemon's modules load on first use of a name below, so
the entry point can prepare the interpreter before Trio is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["EXIT_CONFIG", "EXIT_CRITICAL", "DaemonOptions", "run_daemon"]

if TYPE_CHECKING:
    from ._main import EXIT_CONFIG as EXIT_CONFIG
    from ._main import EXIT_CRITICAL as EXIT_CRITICAL
    from ._main import DaemonOptions as DaemonOptions
    from ._main import run_daemon as run_daemon


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import _main

        return getattr(_main, name)
    raise AttributeError(f"module 'omnitron.daemon' has no attribute {name!r}")
