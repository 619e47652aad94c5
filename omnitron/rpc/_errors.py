"""Every error the RPC layer raises, on both sides of the wire.

Errors a handler raises travel as data (``{"code": ..., "message": ...}``) and come
back on the caller's side as the :class:`RemoteError` subclass mapped from the code,
so ``except NotFound`` works the same in the daemon and in a client.

This module imports only the standard library: the synchronous CLI client uses it.
"""

from __future__ import annotations

import enum
import errno
import os
import re
from collections.abc import Iterable, Mapping

from omnitron.errors import OmnitronError

__all__ = [
    "ErrorCode",
    "RpcError",
    "ProtocolError",
    "RemoteError",
    "InvalidRequest",
    "MethodNotFound",
    "InvalidParams",
    "Unauthenticated",
    "Forbidden",
    "NotFound",
    "Conflict",
    "Busy",
    "RemoteTimeout",
    "Unavailable",
    "InternalError",
    "DaemonNotRunning",
    "DaemonUnreachable",
    "ConnectionLost",
    "RpcTimeout",
    "SocketInUse",
    "InsecureSocketPath",
    "SocketPathTooLong",
    "error_class_for",
    "connect_error",
    "DOMAIN_CODE_PATTERN",
]


class ErrorCode(enum.StrEnum):
    """The closed set of protocol error codes (domain codes are registered separately)."""

    PARSE_ERROR = "PARSE_ERROR"
    """The bytes are not valid msgpack, or break a decoder limit (depth, items, ext)."""
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    """A single message is larger than the frame limit."""
    INVALID_REQUEST = "INVALID_REQUEST"
    """Valid msgpack, but not a msgpack-rpc request of the expected shape."""
    METHOD_NOT_FOUND = "METHOD_NOT_FOUND"
    INVALID_PARAMS = "INVALID_PARAMS"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    BUSY = "BUSY"
    TIMEOUT = "TIMEOUT"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


DOMAIN_CODE_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{2,47}")
"""What a domain error code (registered by the daemon) must look like."""


class RpcError(OmnitronError):
    """Base class of every error raised by :mod:`omnitron.rpc`."""


class ProtocolError(RpcError, ValueError):
    """The peer sent bytes that break the protocol or a decoder limit.

    Raised locally by the decoder (server and client side alike); the connection
    cannot be trusted afterwards and is closed.

    Attributes:
        code: :attr:`ErrorCode.PARSE_ERROR`, :attr:`ErrorCode.FRAME_TOO_LARGE` or
            :attr:`ErrorCode.INVALID_REQUEST`.
        msgid: The request id, when it could be read and is a valid msgpack-rpc id.
    """

    def __init__(self, code: ErrorCode, message: str, *, msgid: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.msgid = msgid


class RemoteError(RpcError):
    """An error reply: raised by handlers in the daemon, re-raised in clients.

    Handlers raise a subclass (``raise NotFound(f"no app named {name!r}")``); the
    dispatcher sends it as ``{"code": ..., "message": ...}`` and the client raises
    the subclass mapped from the code. A domain error is a subclass with its own
    ``code`` (``[A-Z][A-Z0-9_]{2,47}``), registered with the dispatcher and passed to
    the client as ``error_types``; unknown codes arrive as a plain ``RemoteError``.

    Attributes:
        code: The wire code (an :class:`ErrorCode` value or a domain code).
        message: One line, secret-free, saying what was wrong.
        correlation_id: For ``INTERNAL_ERROR``: the id to find in the daemon's log.
        data: Small machine-readable details (e.g. ``{"param": "timeout"}``).
    """

    code: str = ErrorCode.INTERNAL_ERROR.value

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        correlation_id: str | None = None,
        data: Mapping[str, object] | None = None,
    ) -> None:
        # One positional arg only: OSError-derived subclasses would read two as errno.
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.correlation_id = correlation_id
        self.data: dict[str, object] = dict(data) if data else {}

    def __str__(self) -> str:
        text = f"{self.message} ({self.code})"
        if self.correlation_id:
            text += f" [correlation id {self.correlation_id}]"
        return text


class InvalidRequest(RemoteError, ValueError):
    """The peer rejected what we sent as malformed (also ``PARSE_ERROR``, ``FRAME_TOO_LARGE``)."""

    code = ErrorCode.INVALID_REQUEST.value


class MethodNotFound(RemoteError, LookupError):
    """No such method (never says whether a method exists when you may not call it)."""

    code = ErrorCode.METHOD_NOT_FOUND.value


class InvalidParams(RemoteError, ValueError):
    """A parameter was missing, unknown, or of the wrong type; ``data["param"]`` names it."""

    code = ErrorCode.INVALID_PARAMS.value


class Unauthenticated(RemoteError, PermissionError):
    """The connection has not authenticated; same reply for every method."""

    code = ErrorCode.UNAUTHENTICATED.value


class Forbidden(RemoteError, PermissionError):
    """The caller's role is below the method's declared role."""

    code = ErrorCode.FORBIDDEN.value


class NotFound(RemoteError, LookupError):
    """The named object (app, process, secret, ...) does not exist."""

    code = ErrorCode.NOT_FOUND.value


class Conflict(RemoteError):
    """The request conflicts with the current state (already running, already exists)."""

    code = ErrorCode.CONFLICT.value


class Busy(RemoteError):
    """The server is at a capacity limit; try again later."""

    code = ErrorCode.BUSY.value


class RemoteTimeout(RemoteError, TimeoutError):
    """The server gave up waiting (for the request bytes, or for an operation)."""

    code = ErrorCode.TIMEOUT.value


class Unavailable(RemoteError):
    """The server is shutting down and takes no new work."""

    code = ErrorCode.UNAVAILABLE.value


class InternalError(RemoteError):
    """The handler failed unexpectedly; the daemon logged it under ``correlation_id``."""

    code = ErrorCode.INTERNAL_ERROR.value


_STANDARD: dict[str, type[RemoteError]] = {
    ErrorCode.PARSE_ERROR: InvalidRequest,
    ErrorCode.FRAME_TOO_LARGE: InvalidRequest,
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.METHOD_NOT_FOUND: MethodNotFound,
    ErrorCode.INVALID_PARAMS: InvalidParams,
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.BUSY: Busy,
    ErrorCode.TIMEOUT: RemoteTimeout,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.INTERNAL_ERROR: InternalError,
}


def check_domain_error_types(
    error_types: Iterable[type[RemoteError]],
) -> dict[str, type[RemoteError]]:
    """Validate domain error classes and map their codes to them.

    Raises:
        TypeError: An entry is not a :class:`RemoteError` subclass.
        ValueError: A code is malformed, standard, or given twice.
    """
    mapping: dict[str, type[RemoteError]] = {}
    for error_type in error_types:
        if not (isinstance(error_type, type) and issubclass(error_type, RemoteError)):
            raise TypeError(f"error_types: {error_type!r} is not a RemoteError subclass")
        code = error_type.code
        if not DOMAIN_CODE_PATTERN.fullmatch(code):
            raise ValueError(
                f"error_types: {error_type.__name__}.code {code!r} must match "
                f"{DOMAIN_CODE_PATTERN.pattern}"
            )
        if code in _STANDARD:
            raise ValueError(
                f"error_types: {error_type.__name__}.code {code!r} is a standard code; "
                "raise the standard class instead"
            )
        if code in mapping:
            raise ValueError(f"error_types: code {code!r} is given twice")
        mapping[code] = error_type
    return mapping


def error_class_for(
    code: str, domain: Mapping[str, type[RemoteError]] | None = None
) -> type[RemoteError]:
    """The exception class a client raises for an error reply with ``code``."""
    standard = _STANDARD.get(code)
    if standard is not None:
        return standard
    if domain is not None:
        return domain.get(code, RemoteError)
    return RemoteError


def is_known_code(code: str, domain: Mapping[str, type[RemoteError]]) -> bool:
    return code in _STANDARD or code in domain


class DaemonNotRunning(RpcError, ConnectionError):
    """Nothing is listening on the daemon's socket (missing, or refusing connections)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"the omnitron daemon is not running: {reason} ({path}); start it with `omnitron up`"
        )
        self.path = path
        self.reason = reason


class DaemonUnreachable(RpcError, ConnectionError):
    """The daemon's socket exists but connecting failed (permissions, backlog full, ...)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot connect to the omnitron daemon at {path}: {reason}")
        self.path = path
        self.reason = reason


class ConnectionLost(RpcError, ConnectionError):
    """The connection closed (or was closed by us) before the reply arrived."""


class RpcTimeout(RpcError, TimeoutError):
    """The synchronous client got no (complete) reply within its timeout."""


class SocketInUse(RpcError, OSError):
    """Another server answers on the socket path; it is never unlinked.

    The one definition: :mod:`omnitron.state` raises it too (a live socket found
    while removing a stale one) and re-exports it.

    Attributes:
        path: The socket path.
    """

    def __init__(self, path: str, message: str | None = None) -> None:
        super().__init__(
            message or f"another server is already listening on {path}; refusing to replace it"
        )
        self.path = path


class InsecureSocketPath(RpcError, PermissionError):
    """The socket path or its directory is unsafe (wrong owner, mode, type or length)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}; refusing")
        self.path = path
        self.reason = reason


class SocketPathTooLong(RpcError, ValueError):
    """The Unix socket path exceeds the kernel's limit (107 bytes on Linux).

    Raised by the client and the server of the socket, and by
    :meth:`omnitron.state.Home.ensure` before anything is created (it re-exports
    this class).

    Attributes:
        path: The socket path.
        length: Its length in bytes.
    """

    def __init__(self, path: str, length: int, limit: int) -> None:
        super().__init__(
            f"socket path {path} is {length} bytes long, but a Unix socket allows at most "
            f"{limit}; set OMNITRON_HOME to a shorter directory"
        )
        self.path = path
        self.length = length


def connect_error(path: str, exc: OSError) -> RpcError:
    """The error to raise when connecting to the daemon's socket failed with ``exc``."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return DaemonNotRunning(path, "the socket does not exist")
    if exc.errno == errno.ECONNREFUSED:
        return DaemonNotRunning(path, "nothing is listening on the socket")
    if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
        return DaemonUnreachable(path, "its connection backlog is full; try again")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return DaemonUnreachable(path, "permission denied (the socket belongs to another user)")
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return DaemonUnreachable(path, reason)
