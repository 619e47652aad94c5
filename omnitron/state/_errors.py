"""Every exception the :mod:`omnitron.state` package raises.

Each error derives from :class:`StateError` (an :class:`~omnitron.errors.OmnitronError`)
and from the builtin that fits, so callers can catch either; the exceptions are
:class:`SocketInUse` and :class:`SocketPathTooLong`, which are :mod:`omnitron.rpc`'s
(the socket belongs to it) and are only re-exported here. Messages are one
line, name the path involved and say what to do about it.
"""

from __future__ import annotations

from ..errors import OmnitronError

# The socket's errors are the RPC layer's.
from ..rpc._errors import SocketInUse as SocketInUse
from ..rpc._errors import SocketPathTooLong as SocketPathTooLong


class StateError(OmnitronError):
    """Base class of every error raised by :mod:`omnitron.state`."""


class _MessageOSError(StateError, OSError):
    """An ``OSError`` whose ``str()`` is our own message, not ``[Errno N] ...``."""

    def __init__(self, message: str, *, errno: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.message = message
        self.errno = errno
        self.filename = filename

    def __str__(self) -> str:
        return self.message


class HomeUnavailable(_MessageOSError):
    """The home directory, or a file the daemon must create in it, cannot be created.

    Attributes:
        errno: The OS error number, when the OS gave one.
        filename: The path that could not be created.
    """


class UnsafeHome(_MessageOSError, PermissionError):
    """The home directory or a file in it is not private to this user (PC-15).

    Raised for a home that is a symbolic link, owned by another uid, or group- or
    world-writable, and for lock or state files that are symbolic links.
    """


class DaemonAlreadyRunning(StateError, RuntimeError):
    """Another daemon holds this home's pid lock.

    Attributes:
        pid: The pid of the running daemon, or ``None`` if it could not be read.
        since: When that daemon started (ISO 8601, UTC), if recorded.
        path: The lock file.
    """

    def __init__(self, pid: int | None, *, since: str | None = None, path: str | None = None):
        who = f"pid {pid}" if pid is not None else "pid unknown"
        details = "".join(
            [
                f", started {since}" if since else "",
                f", lock {path}" if path else "",
            ]
        )
        super().__init__(f"daemon already running ({who}){details}")
        self.pid = pid
        self.since = since
        self.path = path


class CorruptStateFile(StateError, ValueError):
    """A state file could not be interpreted (truncated, bad JSON, checksum, field types).

    Attributes:
        reason: Why, e.g. ``"truncated at byte 412"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NewerStateSchema(StateError, ValueError):
    """A state file was written with a schema version this omnitron does not know.

    Attributes:
        schema_version: The version found in the file.
        written_by: The ``written_by`` field of the file, if readable.
    """

    def __init__(self, schema_version: int, written_by: str | None) -> None:
        super().__init__(f"schema {schema_version}")
        self.schema_version = schema_version
        self.written_by = written_by
