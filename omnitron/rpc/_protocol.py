"""The typed messages of the control plane: a closed union over msgpack-rpc.

``Message = Request | Response | Notification``. Decoding checks the envelope (via
:mod:`._wire`, shared with the synchronous client) and builds these frozen records;
encoding is the inverse. Error replies carry an :class:`ErrorInfo`, which turns into
the matching :class:`~omnitron.rpc.RemoteError` subclass on the receiving side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import attrs

from . import _wire
from ._errors import RemoteError, error_class_for

__all__ = [
    "ErrorInfo",
    "Request",
    "Response",
    "Notification",
    "Message",
    "ServerMessage",
    "decode_request",
    "decode_client_message",
    "decode_server_message",
    "encode",
]


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """The ``error`` of a response: ``{"code", "message"}`` plus optional details."""

    code: str
    message: str
    correlation_id: str | None = None
    data: Mapping[str, object] = attrs.field(factory=dict)

    @classmethod
    def from_exception(cls, exc: RemoteError) -> ErrorInfo:
        return cls(
            code=exc.code,
            message=exc.message,
            correlation_id=exc.correlation_id,
            data=dict(exc.data),
        )

    def to_exception(self, domain: Mapping[str, type[RemoteError]] | None = None) -> RemoteError:
        """The exception a caller raises for this error (unknown codes: :class:`RemoteError`)."""
        error_type = error_class_for(self.code, domain)
        return error_type(
            self.message,
            code=self.code,
            correlation_id=self.correlation_id,
            data=self.data,
        )

    def to_wire(self) -> dict[str, object]:
        return _wire.error_map(
            self.code, self.message, correlation_id=self.correlation_id, data=self.data
        )


@attrs.frozen(kw_only=True)
class Request:
    """``[0, msgid, method, [params]]``: a call that expects exactly one response."""

    msgid: int
    method: str
    params: Mapping[str, object]


@attrs.frozen(kw_only=True)
class Response:
    """``[1, msgid, error, result]``; ``msgid`` is ``None`` for a connection-level error."""

    msgid: int | None
    error: ErrorInfo | None = None
    result: object = None


@attrs.frozen(kw_only=True)
class Notification:
    """``[2, method, [params]]``: server push (log lines, events, dropped-N notices),
    or a client's one-way message (its positional params are not kept: see
    :func:`decode_client_message`)."""

    method: str
    params: Mapping[str, object]


Message: TypeAlias = Request | Response | Notification
ServerMessage: TypeAlias = Response | Notification


def encode(message: Message, limits: _wire.Limits | None = None) -> bytes:
    """The msgpack bytes of one message, checked against ``limits`` if given.

    Raises:
        ProtocolError: The message would break ``limits`` (the peer would refuse it).
        TypeError, ValueError, OverflowError: A param or result is not encodable.
    """
    match message:
        case Request(msgid=msgid, method=method, params=params):
            return _wire.pack_request(msgid, method, params, limits)
        case Response(msgid=msgid, error=error, result=result):
            wire_error = None if error is None else error.to_wire()
            return _wire.pack_response(msgid, wire_error, result, limits)
        case Notification(method=method, params=params):
            return _wire.pack_notification(method, params, limits)
    raise TypeError(f"not a message: {type(message).__name__}")


def decode_request(obj: object) -> Request:
    """Check what a client sent and build the :class:`Request`.

    Param values stay untyped here; the dispatcher validates them per method.

    Raises:
        ProtocolError: ``INVALID_REQUEST`` (with ``msgid`` when it was valid).
    """
    msgid, method, params = _wire.split_request(obj)
    return Request(msgid=msgid, method=method, params=params)


def decode_client_message(obj: object) -> Request | Notification:
    """Check what a client sent: a :class:`Request`, or a :class:`Notification`.

    A client notification's params are an array of positional values; nothing
    acts on client notifications, so they are not kept (``params`` is empty).

    Raises:
        ProtocolError: ``INVALID_REQUEST`` (with ``msgid`` when it was valid).
    """
    kind, msgid, method, params = _wire.split_client_message(obj)
    if kind == _wire.NOTIFICATION:
        return Notification(method=method, params={})
    assert msgid is not None
    assert isinstance(params, dict)
    return Request(msgid=msgid, method=method, params=params)


def decode_server_message(obj: object) -> ServerMessage:
    """Check what a server sent and build the typed record.

    Raises:
        ProtocolError: ``INVALID_REQUEST``: a malformed envelope or error map.
    """
    parts = _wire.split_server_message(obj)
    if parts[0] == _wire.NOTIFICATION:
        _, method, params, _ = parts
        return Notification(method=method, params=params)
    _, msgid, error, result = parts
    if error is None:
        return Response(msgid=msgid, result=result)
    code, message, correlation_id, data = _wire.parse_error_map(error)
    info = ErrorInfo(code=code, message=message, correlation_id=correlation_id, data=data)
    return Response(msgid=msgid, error=info)
