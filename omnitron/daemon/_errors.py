"""Errors of the daemon's operations; each travels over RPC with its code."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from ..rpc import Busy, InvalidParams, NotFound, RemoteError

__all__ = [
    "DOMAIN_ERRORS",
    "AppNotFound",
    "AppStartFailed",
    "ConfigInvalid",
    "DaemonBusy",
    "InvalidRequest",
]


class AppNotFound(NotFound):
    """No app of that name in the ecosystem."""

    def __init__(self, name: str, *, known: Sequence[str] = ()) -> None:
        message = f"no app named {name!r}"
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        elif known:
            message += f" (apps: {', '.join(known)})"
        super().__init__(message)
        self.name = name


class DaemonBusy(Busy):
    """The daemon cannot do that right now (e.g. still starting its apps)."""


class InvalidRequest(InvalidParams):
    """The request cannot be carried out as asked (the message says why)."""


class AppStartFailed(RemoteError):
    """An app did not come up; the supervisor keeps applying its restart policy."""

    code = "START_FAILED"


class ConfigInvalid(RemoteError, ValueError):
    """The config file has problems; nothing was changed. One problem per line."""

    code = "CONFIG_INVALID"


DOMAIN_ERRORS = (AppStartFailed, ConfigInvalid)
"""The daemon's own error codes, for the dispatcher and for clients."""
