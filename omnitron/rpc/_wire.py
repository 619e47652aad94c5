"""msgpack-rpc framing with hard decoder limits.

The wire format (SPEC section 4) is plain msgpack-rpc, one msgpack array per message
and no length prefix::

    request       [0, msgid, method, [params]]
    response      [1, msgid, error, result]
    notification  [2, method, [params]]

Because msgpack has no frame header, "a frame" is one top-level msgpack object and
its size is only known once it is complete. :class:`FrameDecoder` therefore bounds
everything that costs memory or CPU *while* decoding:

- the bytes of one message (``max_frame``; a partial message that grows past it is
  rejected, so a 100 MB ``str32`` header never makes us buffer more than
  ``max_frame`` plus one read);
- the element count of any one array or map (checked at the header, before
  allocation) and the total number of container entries in one message
  (``max_items``, counted by the decode hooks so a megabyte of empty maps stops
  after ``max_items`` maps instead of building 73 MB of dicts);
- nesting depth (``max_depth``, checked after decoding with an iterative walk,
  bounded by ``max_items``);
- ext types (every ext, the timestamp included, is rejected);
- invalid UTF-8 and every other decoder failure, caught broadly at this boundary
  (``UnicodeDecodeError`` is not an msgpack exception).

This module imports only the standard library and msgpack: the synchronous CLI
client depends on it.
"""

from __future__ import annotations

import msgpack

from ._errors import ErrorCode, ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at import; the CLI fast path avoids it
    from collections.abc import Mapping
    from typing import Any, Final

__all__ = [
    "REQUEST",
    "RESPONSE",
    "NOTIFICATION",
    "MAX_MSGID",
    "NAME_MAX",
    "TEXT_MAX",
    "UNIX_PATH_MAX",
    "DROPPED_METHOD",
    "CLOSED_METHOD",
    "Limits",
    "DEFAULT_LIMITS",
    "Encoded",
    "FrameDecoder",
    "limit_violation",
    "pack_request",
    "pack_response",
    "pack_notification",
    "error_map",
    "split_request",
    "split_client_message",
    "split_params",
    "split_server_message",
    "parse_error_map",
    "describe",
]

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2

MAX_MSGID: Final = 2**32 - 1
"""msgpack-rpc message ids are uint32."""

NAME_MAX: Final = 64
"""Cap on names: methods, error codes, correlation ids, app names in params."""

TEXT_MAX: Final = 4096
"""Cap on free text: error messages and (by default) string params."""

UNIX_PATH_MAX: Final = 107
"""Longest AF_UNIX path Linux accepts (``sun_path`` is 108 bytes with the NUL)."""

DROPPED_METHOD: Final = "rpc.dropped"
"""Notification sent in place of items a slow subscriber lost: ``{stream, method, dropped}``."""

CLOSED_METHOD: Final = "rpc.closed"
"""Notification sent after the last item of a stream the server closed: ``{stream}``."""

_ARRAY_HEADERS: Final = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


class Limits:
    """Decoder and frame limits, applied identically by servers and clients.

    Args:
        max_frame: Largest message in bytes, in either direction (default 1 MiB).
        max_container_len: Most elements in any one array or map (default 10 000).
        max_items: Most container entries in one message, all containers together;
            each container also counts one (default 200 000).
        max_depth: Deepest nesting of arrays and maps (default 32).
        read_size: Bytes asked of the transport per read (default 64 KiB).

    Raises:
        ValueError: A limit is not a positive integer, or ``max_depth`` > 512.
    """

    __slots__ = ("max_container_len", "max_depth", "max_frame", "max_items", "read_size")

    max_frame: int
    max_container_len: int
    max_items: int
    max_depth: int
    read_size: int

    def __init__(
        self,
        *,
        max_frame: int = 1 << 20,
        max_container_len: int = 10_000,
        max_items: int = 200_000,
        max_depth: int = 32,
        read_size: int = 64 * 1024,
    ) -> None:
        values = {
            "max_frame": max_frame,
            "max_container_len": max_container_len,
            "max_items": max_items,
            "max_depth": max_depth,
            "read_size": read_size,
        }
        for name, value in values.items():
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        if max_depth > 512:
            # msgpack itself stops at 1024; deep values also break naive repr().
            raise ValueError(f"Limits.max_depth must be <= 512, got {max_depth}")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Limits is immutable; build a new one (cannot set {name})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Limits):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in sorted(self.__slots__))
        return f"Limits({fields})"


DEFAULT_LIMITS: Final = Limits()


def _reject_ext(code: int, data: bytes) -> object:
    raise ProtocolError(ErrorCode.PARSE_ERROR, f"msgpack ext type {code} is not accepted")


UNPACKER_INITIAL_BUFFER: Final = 4096
"""Bytes the msgpack ``Unpacker`` allocates up front; it grows (up to ``max_buffer_size``)
only when a message needs it. Left unset it would be ``min(max_buffer_size, 1 MiB)``
per connection, allocated whether or not the peer ever sends anything."""


class _ItemCounter:
    """Counts container entries of one message for the decode hooks.

    A separate object, not a method of :class:`FrameDecoder`: a bound method held by
    the ``Unpacker`` would make decoder and unpacker a reference cycle, which only the
    cyclic GC frees, so every closed connection's buffers would outlive it.
    """

    __slots__ = ("count", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def __call__(self, container: Any) -> Any:
        self.count += 1 + len(container)
        if self.count > self.limit:
            raise ProtocolError(
                ErrorCode.PARSE_ERROR,
                f"message holds more than {self.limit} array/map entries",
            )
        return container


class FrameDecoder:
    """Splits a byte stream into decoded msgpack messages, enforcing :class:`Limits`.

    Feed it what the transport returned, then call :meth:`next_frame` until it
    returns ``None`` before feeding again. Any violation raises
    :class:`ProtocolError`; after that the decoder is unusable (the stream cannot be
    re-synchronised), and the connection must be closed.

    The msgpack ``Unpacker`` (about 20 KiB of decoder state plus its buffer) exists
    only while a message is being received: it is made when bytes are fed and
    dropped whenever every byte fed has been decoded, so an idle connection costs
    none of it (making one takes about a microsecond).
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._items = _ItemCounter(limits.max_items)
        self._fed = 0
        self._frame_start = 0
        self._checked_start = -1
        self._chunk_start = 0
        self._chunk: bytes | bytearray = b""
        self._broken: ProtocolError | None = None
        self._unpacker: msgpack.Unpacker | None = None
        self._unpacker_base = 0

    def _new_unpacker(self) -> msgpack.Unpacker:
        limits = self._limits
        max_buffer_size = limits.max_frame + limits.read_size
        return msgpack.Unpacker(
            max_buffer_size=max_buffer_size,
            read_size=min(UNPACKER_INITIAL_BUFFER, max_buffer_size),
            max_str_len=limits.max_frame,
            max_bin_len=limits.max_frame,
            max_array_len=limits.max_container_len,
            max_map_len=limits.max_container_len,
            max_ext_len=0,
            ext_hook=_reject_ext,
            list_hook=self._items,
            object_hook=self._items,
            raw=False,
            strict_map_key=True,
            use_list=True,
            timestamp=0,
        )

    @property
    def buffered(self) -> int:
        """Bytes received of a message that is not complete yet."""
        return self._fed - self._frame_start

    @property
    def frame_offset(self) -> int:
        """Stream offset where the current (incomplete) message starts."""
        return self._frame_start

    def discard(self) -> None:
        """Free the decoder state now (the stream is done; any partial message is dropped)."""
        self._unpacker = None
        self._frame_start = self._fed

    def _fail(self, error: ProtocolError) -> ProtocolError:
        self._broken = error
        return error

    def feed(self, data: bytes | bytearray) -> None:
        """Append bytes read from the transport (at most ``read_size`` at a time).

        Raises:
            ProtocolError: ``FRAME_TOO_LARGE``, or the decoder is already broken.
            ValueError: ``data`` is larger than ``read_size`` (a caller bug).
        """
        if self._broken is not None:
            raise self._broken
        if len(data) > self._limits.read_size:
            raise ValueError(f"feed() takes at most read_size={self._limits.read_size} bytes")
        if not data:
            return
        if self._unpacker is None:
            self._unpacker = self._new_unpacker()
            self._unpacker_base = self._fed
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise self._fail(self._too_large(self.buffered + len(data))) from None
        self._chunk_start = self._fed
        self._chunk = data
        self._fed += len(data)

    def _too_large(self, size: int) -> ProtocolError:
        return ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"message exceeds the {self._limits.max_frame}-byte frame limit "
            f"(at least {size} bytes)",
        )

    def next_frame(self) -> object | None:
        """The next complete message, or ``None`` if more bytes are needed.

        Raises:
            ProtocolError: The message breaks the format or a limit.
        """
        if self._broken is not None:
            raise self._broken
        start = self._frame_start
        if start == self._fed or self._unpacker is None:
            # At a message boundary with nothing pending: free the decoder state.
            self._unpacker = None
            return None
        if start != self._checked_start and start >= self._chunk_start:
            # Reject a non-array message at its first byte: a top-level str32/bin32
            # header claiming 100 MB is refused before any of it is buffered.
            self._checked_start = start
            first = self._chunk[start - self._chunk_start]
            if first not in _ARRAY_HEADERS:
                raise self._fail(
                    ProtocolError(
                        ErrorCode.INVALID_REQUEST,
                        "not a msgpack-rpc message: expected an array, "
                        f"got first byte 0x{first:02x}",
                    )
                )
        try:
            obj: object = self._unpacker.unpack()
        except msgpack.OutOfData:
            if self.buffered > self._limits.max_frame:
                raise self._fail(self._too_large(self.buffered)) from None
            return None
        except ProtocolError as exc:
            raise self._fail(exc) from None
        except Exception as exc:
            # The codec boundary: msgpack's ValueErrors (limits, strict_map_key, bad
            # timestamps), StackError, FormatError, and UnicodeDecodeError alike.
            raise self._fail(
                ProtocolError(ErrorCode.PARSE_ERROR, f"invalid msgpack: {_exc_summary(exc)}")
            ) from None
        end = self._unpacker_base + self._unpacker.tell()
        self._frame_start = end
        self._items.count = 0
        if end - start > self._limits.max_frame:
            raise self._fail(self._too_large(end - start))
        depth_error = _depth_error(obj, self._limits.max_depth)
        if depth_error is not None:
            raise self._fail(depth_error)
        return obj


def _exc_summary(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _depth_error(obj: object, max_depth: int) -> ProtocolError | None:
    if type(obj) is not list and type(obj) is not dict:
        return None
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return ProtocolError(
                ErrorCode.PARSE_ERROR, f"message is nested deeper than {max_depth} levels"
            )
        for child in node if type(node) is list else node.values():
            kind = type(child)
            if kind is list or kind is dict:
                stack.append((child, depth + 1))
    return None


def limit_violation(message: object, limits: Limits) -> str | None:
    """Why the peer's decoder would refuse ``message`` (before encoding it), or ``None``.

    Checks what :class:`FrameDecoder` checks structurally: per-container length,
    total entries, depth, and string/binary map keys. Senders call it so that a
    reply or request the other side would reject fails locally, as an error for
    that one call, instead of costing the whole connection.
    """
    items = 0
    stack: list[tuple[Any, int]] = [(message, 1)]
    while stack:
        node, depth = stack.pop()
        kind = type(node)
        if kind is dict:
            for key in node:
                if type(key) is not str and type(key) is not bytes:
                    return f"map keys must be strings, got {describe(key)}"
            children = node.values()
        elif kind is list or kind is tuple:
            children = node
        else:
            continue
        if depth > limits.max_depth:
            return f"nested deeper than {limits.max_depth} levels"
        if len(node) > limits.max_container_len:
            return f"holds {describe(node)}, more than {limits.max_container_len}"
        items += 1 + len(node)
        if items > limits.max_items:
            return f"holds more than {limits.max_items} array/map entries"
        for child in children:
            child_kind = type(child)
            if child_kind is list or child_kind is dict or child_kind is tuple:
                stack.append((child, depth + 1))
    return None


# --------------------------------------------------------------------------- encoding


def _packb(message: list[object], limits: Limits | None) -> bytes:
    if limits is not None:
        problem = limit_violation(message, limits)
        if problem is not None:
            raise ProtocolError(ErrorCode.PARSE_ERROR, f"message {problem}")
    data: bytes = msgpack.packb(message, use_bin_type=True, datetime=False)
    if limits is not None and len(data) > limits.max_frame:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"message is {len(data)} bytes, more than max_frame={limits.max_frame}",
        )
    return data


def pack_request(
    msgid: int, method: str, params: Mapping[str, object], limits: Limits | None = None
) -> bytes:
    """Encode ``[0, msgid, method, [params]]``, checked against ``limits`` if given.

    Raises:
        ProtocolError: The request would break ``limits`` (nothing was sent).
        TypeError, ValueError, OverflowError: A param is not msgpack-encodable.
    """
    return _packb([REQUEST, msgid, method, [dict(params)]], limits)


class Encoded:
    """A result already encoded, for a reply that many calls share.

    :meth:`of` checks the value against the limits once, as the result of a
    response, and packs it; :func:`pack_response` then only puts the envelope
    around the bytes. A handler returns one when the same plain value (dicts,
    lists, strings, numbers) answers many calls, like ``daemon.status`` within
    one millisecond: the dispatcher does not unstructure it again.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def of(cls, value: object, limits: Limits = DEFAULT_LIMITS) -> Encoded:
        """Check ``value`` as a response's result against ``limits`` and pack it.

        Raises:
            ProtocolError: The value would break ``limits``.
            TypeError, ValueError, OverflowError: It is not msgpack-encodable.
        """
        problem = limit_violation([RESPONSE, 0, None, value], limits)
        if problem is not None:
            raise ProtocolError(ErrorCode.PARSE_ERROR, f"message {problem}")
        return cls(msgpack.packb(value, use_bin_type=True, datetime=False))


def pack_response(
    msgid: int | None,
    error: Mapping[str, object] | None,
    result: object,
    limits: Limits | None = None,
) -> bytes:
    """Encode ``[1, msgid, error, result]`` (``msgid`` is nil for connection-level errors).

    An :class:`Encoded` result is used as it is (it was checked when encoded);
    only the frame size is checked then.

    Raises:
        ProtocolError: The response would break ``limits``.
        TypeError, ValueError, OverflowError: ``result`` is not msgpack-encodable.
    """
    if type(result) is Encoded and error is None:
        # fixarray(4), the type, the msgid, nil: then the result's own bytes.
        head = msgpack.packb(msgid) if msgid is not None else b"\xc0"
        data = b"\x94\x01" + head + b"\xc0" + result.data
        if limits is not None and len(data) > limits.max_frame:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"message is {len(data)} bytes, more than max_frame={limits.max_frame}",
            )
        return data
    return _packb([RESPONSE, msgid, None if error is None else dict(error), result], limits)


def pack_notification(
    method: str, params: Mapping[str, object], limits: Limits | None = None
) -> bytes:
    """Encode ``[2, method, [params]]``, checked against ``limits`` if given."""
    return _packb([NOTIFICATION, method, [dict(params)]], limits)


def error_map(
    code: str,
    message: str,
    *,
    correlation_id: str | None = None,
    data: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The wire form of an error: ``{"code", "message"}`` plus optional keys."""
    if len(message) > TEXT_MAX:
        message = message[: TEXT_MAX - 3] + "..."
    error: dict[str, object] = {"code": code, "message": message}
    if correlation_id is not None:
        error["correlation_id"] = correlation_id
    if data:
        error["data"] = dict(data)
    return error


# --------------------------------------------------------------------------- envelopes


def _valid_msgid(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_MSGID


def split_request(obj: object) -> tuple[int, str, dict[str, object]]:
    """Check a request a client sent; return ``(msgid, method, params)``.

    Raises:
        ProtocolError: ``INVALID_REQUEST``; ``msgid`` is set when it was valid. A
            notification is refused here too: see :func:`split_client_message`.
    """
    kind, msgid, method, params = split_client_message(obj)
    if kind != REQUEST or msgid is None or type(params) is not dict:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            "only requests ([0, msgid, method, params]) are accepted here",
        )
    return msgid, method, params


def _invalid(message: str, *, msgid: int | None = None) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_REQUEST, message, msgid=msgid)


def split_client_message(obj: object) -> tuple[int, int | None, str, object]:
    """Check a message a client sent; return ``(kind, msgid, method, params)``.

    A request gives ``(REQUEST, msgid, method, named_params)``; a notification
    ``(NOTIFICATION, None, method, raw_params)``, its params an array left as sent
    (msgpack-rpc params are positional; nothing reads a notification's params).

    Raises:
        ProtocolError: ``INVALID_REQUEST``; ``msgid`` is set when it was valid.
    """
    if type(obj) is not list or not obj:
        raise _invalid("a message must be a non-empty array")
    kind = obj[0]
    if type(kind) is not int or kind not in (REQUEST, RESPONSE, NOTIFICATION):
        raise _invalid("a message must start with its type: 0, 1 or 2")
    if kind == NOTIFICATION:
        if len(obj) != 3:
            raise _invalid(f"a notification has 3 items [2, method, params], got {len(obj)}")
        _, method, raw = obj
        if type(method) is bytes and len(method) <= NAME_MAX:
            # Some clients send their method names as msgpack bin (pynvim's own
            # client-info notification does); nothing acts on the name anyway.
            method = method.decode("utf-8", "replace")
        if type(method) is not str:
            raise _invalid(f"notification method must be a string, got {describe(method)}")
        if type(raw) is not list:
            raise _invalid(f"notification params must be an array, got {describe(raw)}")
        return NOTIFICATION, None, method, raw
    if kind != REQUEST:
        raise _invalid(
            "a client sends requests ([0, msgid, method, params]) or notifications "
            "([2, method, params]), not responses"
        )
    if len(obj) != 4:
        msgid = obj[1] if len(obj) > 1 and _valid_msgid(obj[1]) else None
        raise _invalid(
            f"a request has 4 items [0, msgid, method, params], got {len(obj)}",
            msgid=msgid,
        )
    _, msgid, method, params = obj
    if not _valid_msgid(msgid):
        raise _invalid(f"msgid must be an integer in [0, 2**32), got {describe(msgid)}")
    if type(method) is not str:
        raise _invalid(
            f"method must be a string, got {describe(method)}",
            msgid=msgid,
        )
    named = split_params(params)
    if named is None:
        raise _invalid(
            f"params must be an array holding one map of named arguments, got {describe(params)}",
            msgid=msgid,
        )
    return REQUEST, msgid, method, named


def split_params(raw: object) -> dict[str, object] | None:
    """The named-arguments map of a request's params, or ``None`` if misshapen.

    ``[map]`` is the form; ``[]`` is accepted as "no arguments" (generic
    msgpack-rpc clients send it).
    """
    if type(raw) is not list:
        return None
    if not raw:
        return {}
    if len(raw) == 1 and type(raw[0]) is dict:
        return raw[0]
    return None


def parse_error_map(error: object) -> tuple[str, str, str | None, dict[str, object]]:
    """Check an error map from a server; return ``(code, message, correlation_id, data)``.

    Raises:
        ProtocolError: ``INVALID_REQUEST``: the map is malformed.
    """
    if type(error) is not dict:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"an error must be a map, got {describe(error)}"
        )
    code = error.get("code")
    message = error.get("message")
    correlation_id = error.get("correlation_id")
    data = error.get("data", {})
    if type(code) is not str or not 0 < len(code) <= NAME_MAX:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"error code must be a short string, got {describe(code)}"
        )
    if type(message) is not str or len(message) > TEXT_MAX:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"error message must be a string of at most {TEXT_MAX} characters",
        )
    if correlation_id is not None and (
        type(correlation_id) is not str or len(correlation_id) > NAME_MAX
    ):
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, "error correlation_id must be a short string"
        )
    if type(data) is not dict:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "error data must be a map")
    return code, message, correlation_id, data


def split_server_message(obj: object) -> tuple[int, Any, Any, Any]:
    """Check a message a server sent.

    Returns:
        ``(RESPONSE, msgid, error, result)`` (``msgid`` is ``None`` for a
        connection-level error, ``error`` is ``None`` on success) or
        ``(NOTIFICATION, method, params, None)``.

    Raises:
        ProtocolError: ``INVALID_REQUEST``: the message is malformed.
    """
    if type(obj) is not list or not obj:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "a message must be a non-empty array")
    kind = obj[0]
    if type(kind) is int and kind == RESPONSE and len(obj) == 4:
        _, msgid, error, result = obj
        if msgid is not None and not _valid_msgid(msgid):
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, f"response msgid is invalid: {describe(msgid)}"
            )
        if error is None and msgid is None:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, "a response without msgid must carry an error"
            )
        return RESPONSE, msgid, error, result
    if type(kind) is int and kind == NOTIFICATION and len(obj) == 3:
        _, method, raw = obj
        params = split_params(raw)
        if type(method) is not str or not 0 < len(method) <= NAME_MAX or params is None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "malformed notification")
        return NOTIFICATION, method, params, None
    raise ProtocolError(
        ErrorCode.INVALID_REQUEST, "expected a response [1, msgid, error, result] or a notification"
    )


# --------------------------------------------------------------------------- messages


def describe(value: object) -> str:
    """A short, safe description of a decoded value for error messages.

    Never reprs containers or long strings: params can be deep or huge, and the
    text goes into replies and logs.
    """
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    kind = type(value)
    if kind is int:
        text = str(value)
        return text if len(text) <= 24 else f"an integer of {len(text)} digits"
    if kind is float:
        return repr(value)
    if kind is str:
        assert isinstance(value, str)
        if len(value) <= 32:
            return repr(value)
        return f"a string of {len(value)} characters"
    if kind is bytes:
        assert isinstance(value, bytes)
        return f"{len(value)} bytes of binary"
    if kind is list:
        assert isinstance(value, list)
        return f"an array of {len(value)} items"
    if kind is dict:
        assert isinstance(value, dict)
        return f"a map of {len(value)} entries"
    return f"a value of type {kind.__name__}"
