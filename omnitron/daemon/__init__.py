"""The omnitron daemon: orchestrator, control plane, persistence and logs."""

from ._main import EXIT_CONFIG as EXIT_CONFIG
from ._main import EXIT_CRITICAL as EXIT_CRITICAL
from ._main import DaemonOptions as DaemonOptions
from ._main import run_daemon as run_daemon

__all__ = ["EXIT_CONFIG", "EXIT_CRITICAL", "DaemonOptions", "run_daemon"]
