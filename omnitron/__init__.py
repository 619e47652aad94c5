"""omnitron: a process supervisor for Python people, built on Trio.

The daemon, its control plane and the ``omnitron`` CLI. The embeddable
supervision trees are the :mod:`supervision` package. This module stays cheap
to import (the CLI's fast path imports it): the config helpers load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Process", "__version__", "define_ecosystem", "define_system"]

if TYPE_CHECKING:
    from ._system import Process as Process
    from ._system import define_system as define_system
    from .config import define_ecosystem as define_ecosystem


def __getattr__(name: str) -> Any:
    if name == "define_ecosystem":
        from .config import define_ecosystem

        return define_ecosystem
    if name in ("define_system", "Process"):
        from . import _system

        return getattr(_system, name)
    raise AttributeError(f"module 'omnitron' has no attribute {name!r}")
