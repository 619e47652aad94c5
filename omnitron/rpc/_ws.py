"""The WebSocket plane: the same msgpack-rpc in binary WebSocket messages at ``/rpc``.

A client sends one or more whole msgpack-rpc messages per binary WebSocket message
(a message may also be split over several: the server decodes the byte stream, as
on the other planes); the server's replies likewise. Text messages close the
connection (1003).

Plain HTTP requests on the same port are answered by :mod:`._http`: ``GET
/metrics`` with a bearer token serves the Prometheus exposition; anything else
gets 404. The request head is read first (at most 8 KiB) and replayed into the
WebSocket handshake when it asks for an upgrade.

Host and Origin are checked before anything else (AU-18), for an upgrade and for
plain HTTP alike; an upgrade's path must be ``/rpc``;
``Host`` must be exactly one of the allowed hosts (the bound ``host:port`` and, on
loopback, ``localhost:PORT``/``127.0.0.1:PORT``/``[::1]:PORT``); a browser's
``Origin``, if sent, must be exactly ``http(s)://`` + an allowed host. Anything else
gets 403 before the WebSocket opens. Messages are capped at ``max_message`` bytes
(1 MiB): a longer one closes the connection with 1009 as soon as its received part
passes the cap (AU-20); no compression extension is negotiated, so nothing
inflates past it. The upgrade must complete within ``handshake_deadline`` seconds
and at most ``max_handshakes`` upgrades run at once; beyond that a new TCP
connection is closed at once.

Without TLS the plane binds loopback addresses only (the daemon refuses others).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio
import trio_websocket

from .._log import get_logger
from . import _http
from ._client import RpcClient, open_client
from ._dispatch import Dispatcher, Peer, Role
from ._server import RpcServer, ServerOptions
from ._tls import NETWORK_OPTIONS, peer_address

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection, WebSocketRequest

__all__ = ["serve_websocket_plane", "open_ws_client", "allowed_hosts", "RPC_PATH", "MAX_MESSAGE"]

log = get_logger()

RPC_PATH = "/rpc"
MAX_MESSAGE = 1 << 20
"""Largest WebSocket message accepted, in bytes."""
HANDSHAKE_DEADLINE = 10.0
MAX_HANDSHAKES = 64


def allowed_hosts(host: str, port: int, *, loopback: bool) -> frozenset[str]:
    """``Host`` values accepted for a plane bound to ``host:port``."""
    hosts = {f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}
    if loopback:
        hosts |= {f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}
    return frozenset(hosts)


class _WsStream(trio.abc.Stream):
    """A WebSocket connection as a byte stream for :class:`RpcServer`."""

    def __init__(self, connection: WebSocketConnection, address: str | None, secure: bool) -> None:
        self.connection = connection
        self.address = address
        self.secure = secure
        self._pending = b""
        self.closed = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.connection.send_message(bytes(data))
        except trio_websocket.ConnectionClosed:
            raise trio.BrokenResourceError("the WebSocket closed") from None

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._pending:
            try:
                message = await self.connection.get_message()
            except trio_websocket.ConnectionClosed:
                return b""
            if isinstance(message, str):
                await self.connection.aclose(1003, "binary messages only")
                return b""
            self._pending = message
        size = len(self._pending) if max_bytes is None else max_bytes
        chunk, self._pending = self._pending[:size], self._pending[size:]
        return chunk

    async def aclose(self) -> None:
        try:
            await self.connection.aclose()
        finally:
            self.closed.set()


class _WsListener(trio.abc.Listener[_WsStream]):
    def __init__(self, receive: trio.MemoryReceiveChannel[_WsStream]) -> None:
        self._receive = receive

    async def accept(self) -> _WsStream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._receive.aclose()


def _header(request: WebSocketRequest, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in request.headers if k.lower() == name]


def _host_origin_refusal(
    host: str | None, sent_origins: list[str], allowed: frozenset[str], origins: frozenset[str]
) -> str | None:
    if not isinstance(host, str) or host.lower() not in allowed:
        return "host not allowed"
    if len(sent_origins) > 1 or (sent_origins and sent_origins[0].lower() not in origins):
        return "origin not allowed"
    return None


def _refusal(
    request: WebSocketRequest, allowed: frozenset[str], origins: frozenset[str]
) -> str | None:
    if request.path != RPC_PATH:
        return "unknown path"
    # wsproto takes Host out of the headers (h11 has refused a request without
    # exactly one); the request event keeps it.
    host = getattr(getattr(request, "_event", None), "host", None)
    return _host_origin_refusal(host, _header(request, b"origin"), allowed, origins)


@attrs.frozen(kw_only=True)
class _Gate:
    """What every new connection of one plane is checked against and handed to."""

    allowed: frozenset[str]
    origins: frozenset[str]
    secure: bool
    dispatcher: Dispatcher
    send: trio.MemorySendChannel[_WsStream]
    limit: trio.Semaphore


async def _upgrade(stream: trio.abc.Stream, gate: _Gate) -> None:
    """One connection: upgrade (or answer one HTTP request) within the deadline, then
    live until the server closes it."""
    address = peer_address(stream)
    try:
        async with trio.open_nursery() as nursery:
            ws: _WsStream | None = None
            try:
                with trio.move_on_after(HANDSHAKE_DEADLINE):
                    ws = await _handshake(nursery, stream, gate, address)
            finally:
                gate.limit.release()
            if ws is None:
                nursery.cancel_scope.cancel()
                return
            try:
                await gate.send.send(ws)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                await ws.aclose()
                return
            await ws.closed.wait()
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def _handshake(
    nursery: trio.Nursery, stream: trio.abc.Stream, gate: _Gate, address: str | None
) -> _WsStream | None:
    try:
        if isinstance(stream, trio.SSLStream):
            await stream.do_handshake()
        head = await _http.read_request_head(stream)
        if head is None:
            return None
        if not head.is_upgrade:
            reason = _host_origin_refusal(
                head.host, head.header("origin"), gate.allowed, gate.origins
            )
            if reason is not None:
                log.warning("http_request_refused", peer=address, reason=reason)
                await _http.respond(head.connection, stream, 403, f"forbidden: {reason}\n")
                return None
            await _http.serve_http_request(
                stream,
                head,
                dispatcher=gate.dispatcher,
                transport="https" if gate.secure else "http",
                address=address,
            )
            return None
        request = await trio_websocket.wrap_server_stream(
            nursery,
            _http.ReplayStream(stream, head.raw),
            message_queue_size=4,
            max_message_size=MAX_MESSAGE,
        )
        reason = _refusal(request, gate.allowed, gate.origins)
        if reason is not None:
            log.warning("ws_upgrade_refused", peer=address, reason=reason)
            await request.reject(403, body=f"forbidden: {reason}\n".encode())
            return None
        return _WsStream(await request.accept(), address, gate.secure)
    except (trio.BrokenResourceError, trio_websocket.ConnectionClosed, OSError):
        return None


@contextlib.asynccontextmanager
async def open_ws_client(
    host: str,
    port: int,
    *,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
    origin: str | None = None,
) -> AsyncIterator[RpcClient]:
    """An async client of a WebSocket plane (``wss`` with ``context``); logs in with ``token``."""
    headers = [(b"Origin", origin.encode())] if origin is not None else None
    async with trio_websocket.open_websocket(
        host,
        port,
        RPC_PATH,
        use_ssl=context if context is not None else False,
        extra_headers=headers,
        max_message_size=MAX_MESSAGE,
    ) as connection:
        stream = _WsStream(connection, None, context is not None)
        scheme = "wss" if context is not None else "ws"
        async with open_client(stream, address=f"{scheme}://{host}:{port}{RPC_PATH}") as client:
            if token is not None:
                await client.call("auth.login", token=token)
            yield client


async def _ws_authenticate(stream: trio.abc.Stream) -> Peer:
    await trio.lowlevel.checkpoint()
    if not isinstance(stream, _WsStream):
        raise TypeError(f"expected a WebSocket stream, got {type(stream).__name__}")
    return Peer(
        transport="wss" if stream.secure else "ws", role=Role.ANONYMOUS, address=stream.address
    )


async def serve_websocket_plane(
    host: str,
    port: int,
    dispatcher: Dispatcher,
    *,
    context: ssl.SSLContext | None,
    origins: Sequence[str] = (),
    options: ServerOptions = NETWORK_OPTIONS,
    task_status: trio.TaskStatus[RpcServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``dispatcher`` over WebSocket (``wss`` when ``context`` is given).

    Args:
        origins: Extra allowed ``Origin`` values (exact, e.g. a web console's).
    """
    tcp = await trio.open_tcp_listeners(port, host=host)
    bound = tcp[0].socket.getsockname()
    loopback = all(_is_loopback_ip(listener.socket.getsockname()[0]) for listener in tcp)
    allowed = allowed_hosts(host, bound[1], loopback=loopback)
    scheme = "https" if context is not None else "http"
    allowed_origins = frozenset({f"{scheme}://{h}" for h in allowed} | set(origins))
    shown = f"[{host}]" if ":" in host else host
    address = f"{'wss' if context else 'ws'}://{shown}:{bound[1]}{RPC_PATH}"
    listeners: list[trio.abc.Listener[Any]] = (
        [trio.SSLListener(listener, context) for listener in tcp] if context else list(tcp)
    )
    send, receive = trio.open_memory_channel[_WsStream](0)
    server = RpcServer(dispatcher, authenticate=_ws_authenticate, options=options, address=address)
    gate = _Gate(
        allowed=allowed,
        origins=allowed_origins,
        secure=context is not None,
        dispatcher=dispatcher,
        send=send,
        limit=trio.Semaphore(MAX_HANDSHAKES),
    )
    log.info("rpc_listening", address=address, transport="ws")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [_WsListener(receive)])
        task_status.started(server)
        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(_accept_loop, listener, gate)
    raise AssertionError("unreachable")  # pragma: no cover


def _is_loopback_ip(text: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


async def _accept_loop(listener: trio.abc.Listener[Any], gate: _Gate) -> NoReturn:
    async with listener, trio.open_nursery() as connections:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                log.error("ws_accept_failed", error=str(exc))
                await trio.sleep(0.1)
                continue
            try:
                gate.limit.acquire_nowait()
            except trio.WouldBlock:
                await trio.aclose_forcefully(stream)
                continue
            connections.start_soon(_upgrade, stream, gate)
