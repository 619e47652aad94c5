"""Plain HTTP on the WebSocket plane: ``GET /metrics`` for Prometheus.

The plane reads the head of each new connection's request itself, with h11 (the
HTTP/1.1 parser trio-websocket's wsproto is built on), at most
:data:`MAX_REQUEST_HEAD` bytes: a longer head gets ``431`` before anything more is
buffered. A WebSocket upgrade is replayed, byte for byte, into the WebSocket
handshake (:class:`ReplayStream`); any other request is answered here, once, with
``Connection: close``.

``GET /metrics`` answers what the daemon's ``daemon.metrics`` method returns with
``format="prometheus"`` (the exposition ``omnitron metrics --prometheus`` prints,
by the same function), to a caller presenting ``Authorization: Bearer <token>``
with at least the method's role (viewer), as Prometheus' ``authorization``
setting sends it. The token goes through ``auth.login`` and the call through the
dispatcher, as on every other plane: the same checks, the same per-address
failure backoff, the same log lines. A missing, malformed, invalid, expired or
revoked token gets the same ``401`` with ``WWW-Authenticate: Bearer`` and a body
that says only ``unauthorized``; the reason is in the daemon's log.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import h11
import trio

from .._log import get_logger
from ._auth import MAX_TOKEN_BYTES
from ._dispatch import Dispatcher, Peer, Role
from ._errors import Busy, ErrorCode
from ._protocol import Request, Response
from ._stream import NotificationStream

__all__ = [
    "MAX_REQUEST_HEAD",
    "METRICS_PATH",
    "PROMETHEUS_CONTENT_TYPE",
    "RequestHead",
    "ReplayStream",
    "read_request_head",
    "respond",
    "serve_http_request",
]

log = get_logger()

MAX_REQUEST_HEAD: Final = 8192
"""Bytes of request line and headers read before answering ``431``."""
METRICS_PATH: Final = "/metrics"
METRICS_METHOD: Final = "daemon.metrics"
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The text exposition format 0.0.4, which ``prometheus_client.generate_latest`` writes."""
_BEARER: Final = re.compile(r"Bearer +([A-Za-z0-9._~+/-]+=*) *", re.IGNORECASE)
"""RFC 6750's ``b64token``, the only credentials accepted."""
_READ_SIZE: Final = 4096


@attrs.frozen(kw_only=True)
class RequestHead:
    """A parsed request line and headers, and every byte read to get them."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    raw: bytes
    connection: h11.Connection = attrs.field(eq=False, repr=False)

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` (lower case), in order."""
        return [value for key, value in self.headers if key == name]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def host(self) -> str | None:
        hosts = self.header("host")
        return hosts[0] if len(hosts) == 1 else None

    @property
    def is_upgrade(self) -> bool:
        return bool(self.header("upgrade"))


async def read_request_head(stream: trio.abc.Stream) -> RequestHead | None:
    """Read one request head from ``stream``; ``None`` if there is none to answer.

    A malformed or oversized head is answered here (``400``/``431``) and gives
    ``None``, as does a connection closed before a whole head arrived.
    """
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    raw = bytearray()
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            await respond(connection, stream, status, f"bad request: {exc}\n")
            return None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                return None
            raw += data
            connection.receive_data(bytes(data))
            continue
        if not isinstance(event, h11.Request):
            return None
        return RequestHead(
            method=event.method.decode("ascii", "replace"),
            target=event.target.decode("ascii", "replace"),
            headers=tuple(
                (name.decode("ascii", "replace").lower(), value.decode("latin-1"))
                for name, value in event.headers
            ),
            raw=bytes(raw),
            connection=connection,
        )


class ReplayStream(trio.abc.Stream):
    """``stream`` with ``prefix`` (bytes already read from it) read again first."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.transport_stream = stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return await self.transport_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


class _HttpCall:
    """The connection a request's calls run on: it keeps the identity of ``auth.login``."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def set_peer(self, peer: Peer) -> None:
        self.peer = peer

    def open_stream(self, method: str, *, capacity: int | None) -> NotificationStream:
        raise Busy("notification streams need the WebSocket endpoint /rpc")

    def start_soon(self, async_fn: Callable[..., Awaitable[object]], *args: object) -> None:
        raise RuntimeError("an HTTP request has no connection to run tasks on")


async def serve_http_request(
    stream: trio.abc.Stream,
    head: RequestHead,
    *,
    dispatcher: Dispatcher,
    transport: str,
    address: str | None,
) -> None:
    """Answer one plain HTTP request (the Host and Origin checks are the caller's)."""
    if head.path != METRICS_PATH:
        await respond(head.connection, stream, 404, "not found\n")
        return
    if head.method != "GET":
        await respond(
            head.connection, stream, 405, "method not allowed\n", extra=[("Allow", "GET")]
        )
        return
    if head.header("content-length") not in ([], ["0"]) or head.header("transfer-encoding"):
        await respond(head.connection, stream, 400, "bad request: GET takes no body\n")
        return
    call = _HttpCall(Peer(transport=transport, role=Role.ANONYMOUS, address=address))
    credentials = head.header("authorization")
    match = _BEARER.fullmatch(credentials[0]) if len(credentials) == 1 else None
    if match is None or len(match.group(1)) > MAX_TOKEN_BYTES:
        # Nothing that could be a token: refused without verifying anything.
        log.info("http_unauthorized", transport=transport, peer=address, reason="no bearer token")
        await _unauthorized(head, stream, error=bool(credentials))
        return
    login = await dispatcher.dispatch(
        Request(msgid=0, method="auth.login", params={"token": match.group(1)}),
        peer=call.peer,
        host=call,
    )
    if login.error is not None:
        await _unauthorized(head, stream, error=True)
        return
    reply = await dispatcher.dispatch(
        Request(msgid=1, method=METRICS_METHOD, params={"format": "prometheus"}),
        peer=call.peer,
        host=call,
    )
    await _answer(head, stream, reply)


async def _answer(head: RequestHead, stream: trio.abc.Stream, reply: Response) -> None:
    if reply.error is None and isinstance(reply.result, str):
        await respond(
            head.connection,
            stream,
            200,
            reply.result,
            content_type=PROMETHEUS_CONTENT_TYPE,
        )
        return
    code = reply.error.code if reply.error is not None else None
    if code == ErrorCode.UNAUTHENTICATED.value:
        # The token was revoked or expired between login and call.
        await _unauthorized(head, stream, error=True)
    elif code == ErrorCode.FORBIDDEN.value:
        await respond(head.connection, stream, 403, "forbidden: role too low\n")
    elif code == ErrorCode.METHOD_NOT_FOUND.value:
        await respond(head.connection, stream, 404, "not found\n")
    else:
        correlation = reply.error.correlation_id if reply.error is not None else None
        log.error("http_metrics_failed", code=code, correlation_id=correlation)
        await respond(head.connection, stream, 500, "internal error; see the daemon log\n")


async def _unauthorized(head: RequestHead, stream: trio.abc.Stream, *, error: bool) -> None:
    challenge = 'Bearer realm="omnitron"'
    if error:
        challenge += ', error="invalid_token"'
    await respond(
        head.connection, stream, 401, "unauthorized\n", extra=[("WWW-Authenticate", challenge)]
    )


async def respond(
    connection: h11.Connection,
    stream: trio.abc.Stream,
    status: int,
    body: str,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: list[tuple[str, str]] | None = None,
) -> None:
    data = body.encode()
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        *(extra or []),
    ]
    wire = b"".join(
        connection.send(event) or b""
        for event in (
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=data),
            h11.EndOfMessage(),
        )
    )
    await stream.send_all(wire)
