"""omnitron: a process supervisor for Python people, built on Trio.

The daemon, its control plane and the ``omnitron`` CLI. The embeddable
supervision trees are the :mod:`supervision` package. This module stays cheap
to import (the CLI's fast path imports it): the config helpers load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "define_ecosystem"]

if TYPE_CHECKING:
    from .config import define_ecosystem as define_ecosystem


def __getattr__(name: str) -> Any:
    if name == "define_ecosystem":
        from .config import define_ecosystem

        return define_ecosystem
    raise AttributeError(f"module 'omnitron' has no attribute {name!r}")
