"""The WebSocket plane (FAULTS AU-18, AU-20): trio-websocket clients against ``/rpc``."""

from __future__ import annotations

import base64
import contextlib
import functools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio_websocket

from omnitron.rpc import Busy, Dispatcher, Forbidden, Role, Unauthenticated, _ws
from omnitron.rpc._auth import TokenAuthority, register_auth_methods
from omnitron.rpc._dispatch import Call
from omnitron.rpc._planes import PlaneConfig, PlaneError, start_network_planes
from omnitron.rpc._server import RpcServer
from omnitron.rpc._ws import MAX_MESSAGE, open_ws_client, serve_websocket_plane

pytestmark = pytest.mark.slow


def dispatcher_for(home: Path) -> tuple[Dispatcher, TokenAuthority]:
    authority = TokenAuthority(home)
    dispatcher = Dispatcher()

    async def status(call: Call) -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return {"role": call.peer.role.label, "transport": call.peer.transport}

    async def stop(call: Call) -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return {"stopped": True}

    dispatcher.register("daemon.status", status, role=Role.VIEWER)
    dispatcher.register("daemon.stop_all", stop, role=Role.OPERATOR)
    register_auth_methods(dispatcher, lambda: authority)
    return dispatcher, authority


@contextlib.asynccontextmanager
async def ws_plane(home: Path) -> AsyncIterator[tuple[int, TokenAuthority]]:
    dispatcher, authority = dispatcher_for(home)
    async with trio.open_nursery() as nursery:
        server: RpcServer = await nursery.start(
            functools.partial(serve_websocket_plane, "127.0.0.1", 0, dispatcher, context=None)
        )
        port = int(server.address.rsplit(":", 1)[1].split("/")[0])
        try:
            yield port, authority
        finally:
            nursery.cancel_scope.cancel()


async def upgrade_status(port: int, *, host: str, origin: str | None, path: str = "/rpc") -> int:
    """Send a WebSocket upgrade by hand (any Host); the HTTP status of the reply."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = b""
        with trio.fail_after(10):
            while b"\r\n" not in reply:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                reply += chunk
        return int(reply.split(b" ", 2)[1])


async def test_a_trio_websocket_client_logs_in_and_calls(tmp_path: Path) -> None:
    async with ws_plane(tmp_path) as (port, authority):
        token = authority.issue(role="viewer", ttl=600, subject="web")[0]
        async with open_ws_client("127.0.0.1", port) as anonymous:
            assert await anonymous.call("daemon.ping") == {"pong": True}
            with pytest.raises(Unauthenticated):
                await anonymous.call("daemon.status")
        async with open_ws_client("127.0.0.1", port, token=token) as client:
            assert await client.call("daemon.status") == {"role": "viewer", "transport": "ws"}
            with pytest.raises(Forbidden):
                await client.call("daemon.stop_all")
            # Pipelined calls share the connection.
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(client.call, "daemon.status")


@pytest.mark.parametrize(
    ("host", "origin", "path", "expected"),
    [
        ("127.0.0.1:{port}", None, "/rpc", 101),
        ("localhost:{port}", "http://localhost:{port}", "/rpc", 101),
        ("127.0.0.1:{port}", "https://evil.example", "/rpc", 403),
        ("evil.example", None, "/rpc", 403),
        ("evil.example:{port}", None, "/rpc", 403),
        ("127.0.0.1:{port}", "http://127.0.0.1.evil.example", "/rpc", 403),
        ("127.0.0.1:{port}", "http://127.0.0.1:{port}.evil.example", "/rpc", 403),
        ("127.0.0.1:{port}.evil.example", None, "/rpc", 403),
        ("127.0.0.1:{port}", "null", "/rpc", 403),
        ("127.0.0.1:{port}", None, "/rpc/", 403),
        ("127.0.0.1:{port}", None, "/metrics", 403),
        ("127.0.0.1:{port}", None, "/rpc?token=abc", 403),
    ],
)
async def test_origin_host_and_path_are_matched_exactly(
    tmp_path: Path, host: str, origin: str | None, path: str, expected: int
) -> None:
    """AU-18: allowlists matched exactly, never by prefix or substring (DNS rebinding)."""
    async with ws_plane(tmp_path) as (port, _):
        status = await upgrade_status(
            port,
            host=host.format(port=port),
            origin=None if origin is None else origin.format(port=port),
            path=path,
        )
        assert status == expected


async def send_then_receive(connection: trio_websocket.WebSocketConnection, data: bytes) -> None:
    await connection.send_message(data)
    await connection.get_message()


async def test_an_oversized_message_closes_with_1009_and_the_plane_stays_up(
    tmp_path: Path,
) -> None:
    """AU-20: a 2 MiB message is cut off at the 1 MiB cap."""
    async with ws_plane(tmp_path) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as nursery:
            connection = await trio_websocket.wrap_client_stream(
                nursery, stream, f"127.0.0.1:{port}", "/rpc"
            )
            # The server closes while the message is still being sent.
            with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await send_then_receive(connection, b"\x00" * (2 * MAX_MESSAGE))
            assert closed.value.reason.code == 1009
            await connection.aclose()
        async with open_ws_client("127.0.0.1", port) as client:
            assert await client.call("daemon.ping") == {"pong": True}


async def test_a_text_message_closes_the_connection(tmp_path: Path) -> None:
    async with ws_plane(tmp_path) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as nursery:
            connection = await trio_websocket.wrap_client_stream(
                nursery, stream, f"127.0.0.1:{port}", "/rpc"
            )
            await connection.send_message("hello")
            with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await connection.get_message()
            assert closed.value.reason.code == 1003
            await connection.aclose()


async def test_a_stalled_upgrade_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TCP connection that never sends its upgrade is closed after the deadline."""
    monkeypatch.setattr(_ws, "HANDSHAKE_DEADLINE", 0.5)
    async with ws_plane(tmp_path) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            started = trio.current_time()
            with trio.fail_after(10):
                assert await stream.receive_some(4096) == b""
            assert trio.current_time() - started >= 0.4


async def test_max_connections_caps_the_plane(tmp_path: Path) -> None:
    """``--max-connections``: one connection, the one-connection reserve, then BUSY."""
    dispatcher, authority = dispatcher_for(tmp_path)
    async with trio.open_nursery() as nursery:
        [line] = await start_network_planes(
            nursery,
            PlaneConfig(http="127.0.0.1:0", max_connections=1),
            home=tmp_path,
            dispatcher=dispatcher,
            authority=lambda: authority,
        )
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        async with (
            open_ws_client("127.0.0.1", port) as first,
            open_ws_client("127.0.0.1", port) as reserve,
        ):
            assert await first.call("daemon.ping") == {"pong": True}
            assert await reserve.call("daemon.ping") == {"pong": True}
            async with open_ws_client("127.0.0.1", port) as third:
                with pytest.raises(Busy, match=r"too many connections \(limit 1\)"):
                    await third.call("daemon.ping")
        nursery.cancel_scope.cancel()


def test_max_connections_is_checked() -> None:
    with pytest.raises(PlaneError, match="--max-connections must be 1 to 65536, got 0"):
        PlaneConfig(http="127.0.0.1:9800", max_connections=0).check()
