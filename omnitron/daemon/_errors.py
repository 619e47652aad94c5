"""Errors of the daemon's operations; each travels over RPC with its code.

Every one derives from :class:`DaemonError` and, for the wire, from the
:mod:`omnitron.rpc` class whose code it travels with; except the two of calls to
module workers (:class:`WorkerCallError`, :class:`DescribeError`), which never
travel as they are (the router and the config checks turn them into those). They
are here, not with the worker client, so that a daemon without module workers
never loads that client.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from ..errors import OmnitronError
from ..rpc import Busy, InvalidParams, NotFound, RemoteError

__all__ = [
    "DOMAIN_ERRORS",
    "AppNotFound",
    "AppStartFailed",
    "ConfigInvalid",
    "DaemonBusy",
    "DaemonError",
    "DescribeError",
    "RequestRefused",
    "UnsupportedApp",
    "WorkerCallError",
]


class DaemonError(OmnitronError):
    """Base class of every error raised by :mod:`omnitron.daemon`."""


class UnsupportedApp(DaemonError, ValueError):
    """The app cannot be run by this daemon (the message says why).

    Raised while building an app's supervision spec; the daemon answers a request
    that needs the app with :class:`RequestRefused`.
    """


class AppNotFound(DaemonError, NotFound):
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


class DaemonBusy(DaemonError, Busy):
    """The daemon cannot do that right now (e.g. still starting its apps)."""


class RequestRefused(DaemonError, InvalidParams):
    """The daemon refuses the request as asked (the message says why); wire code
    ``INVALID_PARAMS``.

    Not :class:`omnitron.rpc.InvalidRequest`, which is a malformed message
    (``INVALID_REQUEST``).
    """


class AppStartFailed(DaemonError, RemoteError):
    """An app did not come up; the supervisor keeps applying its restart policy.

    Attributes:
        app: The app that did not come up (the first one, when several did not);
            the control plane adds its log file and stderr tail to ``data``.
    """

    code = "START_FAILED"

    def __init__(self, message: str, *, app: str | None = None) -> None:
        super().__init__(message)
        self.app = app


class ConfigInvalid(DaemonError, RemoteError, ValueError):
    """The config file has problems; nothing was changed. One problem per line."""

    code = "CONFIG_INVALID"


DOMAIN_ERRORS = (AppStartFailed, ConfigInvalid)
"""The daemon's own error codes, for the dispatcher and for clients."""


class WorkerCallError(OmnitronError):
    """A call to a worker failed.

    Attributes:
        code: See the module's table (``APP_ERROR``, ``TIMEOUT``, ``WORKER_EXITED``...).
        message: One line saying what went wrong.
        type: For ``APP_ERROR``: the name of the exception the method raised.
        traceback: For ``APP_ERROR``: the worker's traceback text, for operators.
    """

    def __init__(
        self,
        code: str,
        message: str,
        type: str | None = None,
        traceback: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.type = type
        self.traceback = traceback

    def to_wire(self) -> dict[str, object]:
        """``{"code", "message", "type", "traceback"}`` (for ``daemon.exec``'s reply)."""
        return {
            "code": self.code,
            "message": self.message,
            "type": self.type,
            "traceback": self.traceback,
        }


class DescribeError(OmnitronError):
    """``describe`` could not run or gave no usable answer (not an invalid definition)."""
