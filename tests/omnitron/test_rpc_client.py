"""The async and sync clients: real server round trips, errors, and malicious servers."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

import omnitron.rpc
from omnitron.errors import OmnitronError
from omnitron.rpc import (
    Busy,
    Call,
    ConnectionLost,
    DaemonNotRunning,
    Dispatcher,
    ErrorCode,
    Forbidden,
    InternalError,
    InvalidParams,
    Limits,
    MethodNotFound,
    Name,
    NotFound,
    Notification,
    Notifications,
    ProtocolError,
    RemoteError,
    Role,
    RpcError,
    RpcTimeout,
    ServerOptions,
    SocketPathTooLong,
    connect_unix,
    open_unix_server,
)
from omnitron.rpc.sync_client import SyncClient, connect_unix_sync

WAIT = 10.0


@pytest.fixture
def sock_path() -> Iterator[Path]:
    directory = tempfile.mkdtemp(prefix="omc-", dir="/tmp")
    try:
        yield Path(directory) / "d.sock"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class AppCrashed(RemoteError):
    code = "APP_CRASHED"


def make_dispatcher(release: trio.Event, entered: trio.Event) -> Dispatcher:
    dispatcher = Dispatcher(error_types=[AppCrashed])

    @dispatcher.method("app.get", role=Role.VIEWER)
    async def get(call: Call, *, name: Name) -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        if name == "crashed":
            raise AppCrashed("app 'crashed' crashed 5 times", data={"restarts": 5})
        if name != "api":
            raise NotFound(f"no app named {name!r}")
        return {"name": name, "status": "online"}

    @dispatcher.method("app.slow", role=Role.VIEWER)
    async def slow(call: Call, *, tag: int) -> int:
        entered.set()
        await release.wait()
        return tag

    @dispatcher.method("app.crash", role=Role.OPERATOR)
    async def crash(call: Call) -> None:
        await trio.lowlevel.checkpoint()
        raise ZeroDivisionError

    @dispatcher.method("events.burst", role=Role.VIEWER)
    async def burst(call: Call, *, count: int) -> int:
        stream = call.open_stream("events.item", capacity=count)
        for i in range(count):
            stream.send_nowait({"i": i})
        stream.close()
        await trio.lowlevel.checkpoint()
        return stream.id

    return dispatcher


@pytest.fixture
def release() -> trio.Event:
    return trio.Event()


@pytest.fixture
def entered() -> trio.Event:
    return trio.Event()


@pytest.fixture
async def server(
    sock_path: Path, release: trio.Event, entered: trio.Event
) -> AsyncIterator[omnitron.rpc.RpcServer]:
    async with open_unix_server(
        sock_path, make_dispatcher(release, entered), options=ServerOptions(idle_timeout=None)
    ) as srv:
        yield srv
        release.set()


# --------------------------------------------------------------------------- async client


async def test_round_trip_and_error_mapping(server: object, sock_path: Path) -> None:
    async with connect_unix(sock_path, error_types=[AppCrashed]) as client:
        assert await client.call("daemon.ping") == {"pong": True}
        assert await client.call("app.get", name="api") == {"name": "api", "status": "online"}
        with pytest.raises(NotFound, match="no app named 'x'") as not_found:
            await client.call("app.get", name="x")
        assert isinstance(not_found.value, LookupError)
        assert not_found.value.code == ErrorCode.NOT_FOUND
        with pytest.raises(InvalidParams, match=r"params\.name") as invalid:
            await client.call("app.get", name=7)
        assert invalid.value.data == {"param": "name"}
        assert isinstance(invalid.value, ValueError)
        with pytest.raises(MethodNotFound):
            await client.call("app.nope")
        with pytest.raises(AppCrashed) as crashed:
            await client.call("app.get", name="crashed")
        assert crashed.value.data == {"restarts": 5}
        with pytest.raises(InternalError) as internal:
            await client.call("app.crash")
        assert internal.value.correlation_id
        assert internal.value.correlation_id in str(internal.value)
        assert await client.call("daemon.ping") == {"pong": True}  # still usable
        assert not client.closed


async def test_unregistered_domain_codes_arrive_as_plain_remote_errors(
    server: object, sock_path: Path
) -> None:
    async with connect_unix(sock_path) as client:
        with pytest.raises(RemoteError) as info:
            await client.call("app.get", name="crashed")
        assert type(info.value) is RemoteError
        assert info.value.code == "APP_CRASHED"


async def test_concurrent_calls_are_matched_by_msgid(
    server: object, sock_path: Path, release: trio.Event, entered: trio.Event
) -> None:
    results: dict[int, object] = {}
    others_done = trio.Event()
    async with connect_unix(sock_path) as client:

        async def one(tag: int) -> None:
            if tag == 0:
                results[tag] = await client.call("app.slow", tag=tag)
                return
            try:
                results[tag] = await client.call("app.get", name="api" if tag % 2 else "x" * tag)
            except NotFound as exc:
                results[tag] = exc.code
            if len(results) == 49:
                others_done.set()

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, 0)
                await entered.wait()
                for tag in range(1, 50):
                    nursery.start_soon(one, tag)
                await others_done.wait()
                assert 0 not in results
                release.set()  # the first call is answered last
    assert results[0] == 0
    for tag in range(1, 50):
        expected = {"name": "api", "status": "online"} if tag % 2 else "NOT_FOUND"
        assert results[tag] == expected


async def test_notifications_arrive_in_order(server: object, sock_path: Path) -> None:
    async with connect_unix(sock_path) as client:
        stream_id = await client.call("events.burst", count=3)
        received = []
        with trio.fail_after(WAIT):
            async for notification in client.notifications():
                received.append(notification)
                if notification.method == "rpc.closed":
                    break
    assert received == [
        Notification(method="events.item", params={"i": i, "stream": stream_id}) for i in range(3)
    ] + [Notification(method="rpc.closed", params={"stream": stream_id})]


async def test_client_side_notification_buffer_drops_oldest() -> None:
    notifications = Notifications(capacity=2)
    for i in range(5):
        notifications._push(Notification(method="events.item", params={"i": i}))
    notifications._close()
    received = [n async for n in notifications]
    assert received == [
        Notification(method="rpc.dropped", params={"dropped": 3, "local": True}),
        Notification(method="events.item", params={"i": 3}),
        Notification(method="events.item", params={"i": 4}),
    ]


async def test_leaving_the_block_fails_pending_calls_with_connection_lost(
    server: object, sock_path: Path, entered: trio.Event
) -> None:
    outcome: list[BaseException] = []

    async def pending(client: omnitron.rpc.RpcClient) -> None:
        try:
            await client.call("app.slow", tag=1)
        except ConnectionLost as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery, connect_unix(sock_path) as client:
        nursery.start_soon(pending, client)
        with trio.fail_after(WAIT):
            await entered.wait()
    assert len(outcome) == 1
    assert "closed" in str(outcome[0])
    assert client.closed
    with pytest.raises(ConnectionLost):
        await client.call("daemon.ping")


async def test_server_shutdown_mid_call_is_connection_lost(
    sock_path: Path, release: trio.Event, entered: trio.Event
) -> None:
    server_scope = trio.CancelScope()

    async def run_server(task_status: trio.TaskStatus[omnitron.rpc.RpcServer]) -> None:
        with server_scope:
            await omnitron.rpc.serve_unix(
                sock_path, make_dispatcher(release, entered), task_status=task_status
            )

    async def stop_server_when_called() -> None:
        await entered.wait()
        server_scope.cancel()

    async with trio.open_nursery() as nursery:
        srv = await nursery.start(run_server)
        assert srv.address == os.fspath(sock_path)
        nursery.start_soon(stop_server_when_called)
        async with connect_unix(sock_path) as client:
            with trio.fail_after(WAIT), pytest.raises(ConnectionLost, match="lost"):
                await client.call("app.slow", tag=1)
    assert not await trio.Path(sock_path).exists()


async def test_exceptions_in_the_block_are_not_wrapped(server: object, sock_path: Path) -> None:
    with pytest.raises(NotFound):
        async with connect_unix(sock_path) as client:
            await client.call("app.get", name="missing")


async def test_a_cancelled_call_leaves_the_client_usable(
    server: object, sock_path: Path, release: trio.Event, entered: trio.Event
) -> None:
    async with connect_unix(sock_path) as client:
        with trio.move_on_after(WAIT) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(client.call, "app.slow", tag=5))
                await entered.wait()
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        release.set()  # its late reply is ignored
        assert await client.call("daemon.ping") == {"pong": True}


async def test_local_request_checks(server: object, sock_path: Path) -> None:
    async with connect_unix(sock_path, limits=Limits(max_frame=1 << 20)) as client:
        with pytest.raises(ProtocolError, match="max_frame") as info:
            await client.call("app.get", name="x" * (2 << 20))
        assert info.value.code is ErrorCode.FRAME_TOO_LARGE
        with pytest.raises(TypeError):
            await client.call("app.get", name=object())
        with pytest.raises(ProtocolError, match="more than 10000"):
            await client.call("app.get", name=list(range(10_001)))
        assert await client.call("daemon.ping") == {"pong": True}


async def test_connection_level_busy_is_raised_by_the_call(sock_path: Path) -> None:
    options = ServerOptions(max_connections=1, reserved_connections=0, idle_timeout=None)
    async with (
        open_unix_server(sock_path, make_dispatcher(trio.Event(), trio.Event()), options=options),
        connect_unix(sock_path) as first,
    ):
        assert await first.call("daemon.ping") == {"pong": True}
        async with connect_unix(sock_path) as second:
            with pytest.raises(Busy, match="too many connections"):
                await second.call("daemon.ping")
            assert second.closed


async def test_daemon_not_running(sock_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match="socket does not exist") as missing:
        async with connect_unix(sock_path):
            pass  # pragma: no cover
    assert isinstance(missing.value, ConnectionError)
    assert isinstance(missing.value, OmnitronError)
    assert "omnitron up" in str(missing.value)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(sock_path))
    dead.close()
    with pytest.raises(DaemonNotRunning, match="nothing is listening"):
        async with connect_unix(sock_path):
            pass  # pragma: no cover
    with pytest.raises(SocketPathTooLong):
        async with connect_unix(sock_path.parent / ("y" * 200)):
            pass  # pragma: no cover


# --------------------------------------------------------------------------- malicious servers


Script = Callable[[int], bytes]


@asynccontextmanager
async def scripted_server(path: Path, script: Script) -> AsyncIterator[None]:
    """A hostile server: answers every request with ``script(msgid)``'s raw bytes."""
    listen_sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listen_sock.bind(os.fspath(path))
    listen_sock.listen()
    listener = trio.SocketListener(listen_sock)

    async def handle(stream: trio.SocketStream) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while data := await stream.receive_some(65536):
                unpacker.feed(data)
                for request in unpacker:
                    await stream.send_all(script(request[1]))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        yield
        nursery.cancel_scope.cancel()


def pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def deep(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


HOSTILE: dict[str, tuple[Script, ErrorCode]] = {
    "oversized": (lambda m: pack([1, m, None, "x" * (2 << 20)]), ErrorCode.FRAME_TOO_LARGE),
    "deeply nested": (
        lambda m: b"\x94\x01" + bytes([m]) + b"\xc0" + deep(100),
        ErrorCode.PARSE_ERROR,
    ),
    "garbage": (lambda m: b"\xc1\xc1\xc1", ErrorCode.INVALID_REQUEST),
    "invalid utf-8": (
        lambda m: b"\x94\x01" + bytes([m]) + b"\xc0\xa2\xff\xfe",
        ErrorCode.PARSE_ERROR,
    ),
    "ext type": (lambda m: b"\x94\x01" + bytes([m]) + b"\xc0\xd4\x05\x00", ErrorCode.PARSE_ERROR),
    "huge array header": (
        lambda m: b"\x94\x01" + bytes([m]) + b"\xc0\xdd\xff\xff\xff\xff",
        ErrorCode.PARSE_ERROR,
    ),
    "top-level 100 MB string": (
        lambda m: b"\xdb" + struct.pack(">I", 100_000_000),
        ErrorCode.INVALID_REQUEST,
    ),
    "empty maps": (
        lambda m: (
            b"\x94\x01"
            + bytes([m])
            + b"\xc0\xdc\x00\x64"
            + (b"\xdd" + struct.pack(">I", 10_000) + b"\x80" * 10_000) * 100
        ),
        ErrorCode.PARSE_ERROR,
    ),
    "bad error map": (lambda m: pack([1, m, {"code": 5}, None]), ErrorCode.INVALID_REQUEST),
    "a request instead of a reply": (
        lambda m: pack([0, m, "x.y", [{}]]),
        ErrorCode.INVALID_REQUEST,
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_async_client_applies_the_server_limits_to_replies(
    sock_path: Path, case: str
) -> None:
    """RP-22: a hostile server gets the caller an error, never a hang or a blow-up."""
    script, code = HOSTILE[case]
    async with scripted_server(sock_path, script), connect_unix(sock_path) as client:
        with trio.fail_after(WAIT), pytest.raises(ProtocolError) as info:
            await client.call("daemon.ping")
        assert info.value.code is code
        assert "bad reply from the server" in str(info.value)
        with pytest.raises(ProtocolError):  # the connection is done for
            await client.call("daemon.ping")


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_sync_client_applies_the_server_limits_to_replies(sock_path: Path, case: str) -> None:
    script, code = HOSTILE[case]

    def call() -> ProtocolError:
        with connect_unix_sync(sock_path, timeout=WAIT) as client:
            with pytest.raises(ProtocolError) as info:
                client.call("daemon.ping")
            assert client.closed
            with pytest.raises(ProtocolError):
                client.call("daemon.ping")
            return info.value

    async with scripted_server(sock_path, script):
        error = await trio.to_thread.run_sync(call)
    assert error.code is code


async def test_sync_client_times_out_on_a_silent_server(sock_path: Path) -> None:
    """The CLI never hangs: a server that accepts and never answers costs `timeout`."""

    def call() -> float:
        with connect_unix_sync(sock_path, timeout=0.2) as client:
            start = time.monotonic()
            with pytest.raises(RpcTimeout, match=r"no reply from the daemon within 0\.2s"):
                client.call("daemon.ping")
            assert client.closed
            return time.monotonic() - start

    async with scripted_server(sock_path, lambda m: b""):
        elapsed = await trio.to_thread.run_sync(call)
    assert 0.2 <= elapsed < WAIT


def _full_backlog(path: Path) -> tuple[socket.socket, list[socket.socket]]:
    """A listener that never accepts, its backlog filled until connect says EAGAIN."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    pending = []
    for _ in range(100):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            return listener, pending
        pending.append(sock)
    raise AssertionError("the listen backlog never filled")


def test_sync_connect_waits_out_a_full_backlog_until_its_timeout(sock_path: Path) -> None:
    """RP-18: a storm that fills the listen backlog costs the CLI its timeout, not an
    immediate "unreachable" (a socket with a timeout fails with EAGAIN at once)."""
    listener, pending = _full_backlog(sock_path)
    try:
        with pytest.raises(RpcTimeout, match="its connection backlog stayed full"):
            connect_unix_sync(sock_path, timeout=0.3)
    finally:
        for sock in [*pending, listener]:
            sock.close()


async def test_sync_connect_gets_in_once_the_backlog_drains(sock_path: Path) -> None:
    listener, pending = _full_backlog(sock_path)
    try:
        connecting = trio.Event()

        def connect() -> bool:
            trio.from_thread.run_sync(connecting.set)
            with connect_unix_sync(sock_path, timeout=WAIT) as client:
                return not client.closed

        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                await connecting.wait()
                listener.setblocking(False)
                while True:  # accept everything, the connecting client included
                    try:
                        listener.accept()[0].close()
                    except BlockingIOError:
                        await trio.sleep(0.001)

            nursery.start_soon(drain)
            with trio.fail_after(WAIT):
                assert await trio.to_thread.run_sync(connect)
            nursery.cancel_scope.cancel()
    finally:
        for sock in [*pending, listener]:
            sock.close()


async def test_sync_client_half_reply_then_silence_times_out(sock_path: Path) -> None:
    async with scripted_server(sock_path, lambda m: pack([1, m, None, "abc"])[:-2]):

        def call() -> None:
            with connect_unix_sync(sock_path, timeout=0.2) as client, pytest.raises(RpcTimeout):
                client.call("daemon.ping")

        await trio.to_thread.run_sync(call)


# --------------------------------------------------------------------------- sync client


async def test_sync_client_against_the_real_server(
    server: omnitron.rpc.RpcServer, sock_path: Path
) -> None:
    def session() -> list[object]:
        out: list[object] = []
        with connect_unix_sync(sock_path, timeout=WAIT, error_types=[AppCrashed]) as client:
            out.append(client.call("daemon.ping"))
            out.append(client.call("app.get", name="api"))
            with pytest.raises(NotFound, match="no app named 'zz'"):
                client.call("app.get", name="zz")
            with pytest.raises(AppCrashed):
                client.call("app.get", name="crashed")
            with pytest.raises(InvalidParams):
                client.call("app.get", nmae="api")
            with pytest.raises(InternalError) as internal:
                client.call("app.crash")
            assert internal.value.correlation_id
            with pytest.raises(ProtocolError, match="max_frame"):  # refused before sending
                client.call("app.get", name="x" * (2 << 20))
            out.append(client.call("app.get", name="api"))  # errors keep it usable
            assert not client.closed
        assert client.closed
        with pytest.raises(ConnectionLost):
            client.call("daemon.ping")
        return out

    assert await trio.to_thread.run_sync(session) == [
        {"pong": True},
        {"name": "api", "status": "online"},
        {"name": "api", "status": "online"},
    ]


async def test_sync_client_errors_match_the_async_ones(sock_path: Path) -> None:
    def not_running() -> None:
        with pytest.raises(DaemonNotRunning, match="socket does not exist"):
            connect_unix_sync(sock_path)
        with pytest.raises(SocketPathTooLong):
            connect_unix_sync(sock_path.parent / ("z" * 200))
        with socket.socket(socket.AF_UNIX) as sock, pytest.raises(ValueError, match="timeout"):
            SyncClient(sock, timeout=0)

    await trio.to_thread.run_sync(not_running)


@pytest.mark.parametrize("server_hung_up_first", [False, True])
async def test_sync_client_reports_busy_even_if_the_server_already_hung_up(
    sock_path: Path, server_hung_up_first: bool
) -> None:
    """A refused connection says BUSY, whether our write came before or after the close."""
    options = ServerOptions(max_connections=1, reserved_connections=0, idle_timeout=None)
    async with (
        open_unix_server(
            sock_path, make_dispatcher(trio.Event(), trio.Event()), options=options
        ) as srv,
        connect_unix(sock_path) as first,
    ):
        assert await first.call("daemon.ping") == {"pong": True}
        client = await trio.to_thread.run_sync(
            functools.partial(connect_unix_sync, sock_path, timeout=WAIT)
        )
        with client:
            if server_hung_up_first:
                await trio.testing.wait_all_tasks_blocked()
                assert srv.statistics().rejected_busy == 1  # and the socket is closed
            with pytest.raises(Busy):
                await trio.to_thread.run_sync(functools.partial(client.call, "daemon.ping"))
            assert client.closed


async def test_async_client_prefers_the_parting_error_to_a_broken_pipe(sock_path: Path) -> None:
    options = ServerOptions(max_connections=1, reserved_connections=0, idle_timeout=None)
    async with (
        open_unix_server(
            sock_path, make_dispatcher(trio.Event(), trio.Event()), options=options
        ) as srv,
        connect_unix(sock_path) as first,
    ):
        assert await first.call("daemon.ping") == {"pong": True}
        stream = await trio.open_unix_socket(os.fspath(sock_path))
        client = omnitron.rpc.RpcClient(stream)
        await trio.testing.wait_all_tasks_blocked()
        assert srv.statistics().rejected_busy == 1  # the server wrote BUSY and closed
        outcome: list[BaseException] = []

        async def call() -> None:
            try:
                await client.call("daemon.ping")
            except RpcError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()  # its write failed; it waits
            assert outcome == []
            nursery.start_soon(client._run_reader)  # now the BUSY frame is read
        assert [type(e) for e in outcome] == [Busy]


async def test_requests_queued_together_leave_in_one_write(server: object, sock_path: Path) -> None:
    """32 concurrent calls cost one ``send_all`` (one TLS record on the TLS plane)."""
    from test_rpc_server import CountingStream

    stream = CountingStream(await trio.open_unix_socket(os.fspath(sock_path)))
    async with omnitron.rpc._client.open_client(stream) as client:
        results: list[object] = []

        async def ping() -> None:
            results.append(await client.call("daemon.ping"))

        async with trio.open_nursery() as nursery:
            for _ in range(32):
                nursery.start_soon(ping)
        assert results == [{"pong": True}] * 32
        assert len(stream.writes) == 1, stream.writes
        # Later calls still go out (the writer's turn was released).
        assert await client.call("daemon.ping") == {"pong": True}
        assert len(stream.writes) == 2


async def test_a_writer_cancelled_mid_write_fails_the_queued_calls(
    server: object, sock_path: Path
) -> None:
    """Requests queued behind a cut-off write are never sent: their calls fail at once."""
    from test_rpc_server import CountingStream

    class Stuck(CountingStream):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            self.writes.append(len(data))
            await trio.sleep_forever()  # a peer that stopped reading

    stream = Stuck(await trio.open_unix_socket(os.fspath(sock_path)))
    async with omnitron.rpc._client.open_client(stream) as client:
        lost: list[str] = []

        async def writer(scope: trio.CancelScope) -> None:
            with scope:
                await client.call("daemon.ping")

        async def queued() -> None:
            with pytest.raises(ConnectionLost, match="cut off mid-write") as info:
                await client.call("daemon.ping")
            lost.append(str(info.value))

        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()
            nursery.start_soon(writer, scope)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(queued)
            nursery.start_soon(queued)
            await trio.testing.wait_all_tasks_blocked()
            assert len(stream.writes) == 1  # the others wait behind the writer
            scope.cancel()
        assert len(lost) == 2
        assert client.closed


def test_the_sync_client_imports_neither_trio_nor_attrs() -> None:
    """The CLI fast path: see NOTES.md "Start-up cost"."""
    code = (
        "import sys, omnitron.rpc.sync_client\n"
        "heavy = ('trio', 'attrs', 'cattrs', 'omnitron._log', 'click', 'jwt', 'cryptography')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


# --------------------------------------------------------------------------- the public API


def test_public_api_is_pinned() -> None:
    assert set(omnitron.rpc.__all__) == {
        "Dispatcher", "Handler", "Role", "Call", "Peer", "MethodInfo", "NotificationStream",
        "serve_unix", "open_unix_server", "RpcServer", "ServerOptions", "ServerStatistics",
        "Name", "Text", "Len", "Range", "Match", "ParamInfo",
        "connect_unix", "connect_url", "connect_remote", "RpcClient", "Notifications",
        "Limits", "Encoded", "NAME_MAX", "TEXT_MAX", "Request", "Response", "Notification",
        "ErrorInfo", "Message",
        "ErrorCode", "RpcError", "ProtocolError", "RemoteError", "InvalidRequest",
        "MethodNotFound", "InvalidParams", "Unauthenticated", "Forbidden", "NotFound",
        "Conflict", "Busy", "RemoteTimeout", "Unavailable", "InternalError",
        "DaemonNotRunning", "DaemonUnreachable", "ConnectionLost", "RpcTimeout",
        "SocketInUse", "InsecureSocketPath", "SocketPathTooLong",
    }  # fmt: skip
    for name in omnitron.rpc.__all__:
        assert getattr(omnitron.rpc, name) is not None
    assert set(omnitron.rpc.__all__) <= set(dir(omnitron.rpc))
    with pytest.raises(AttributeError):
        omnitron.rpc.nope  # noqa: B018


def test_error_hierarchy() -> None:
    for name in omnitron.rpc.__all__:
        value: Any = getattr(omnitron.rpc, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, RpcError), name
            assert issubclass(value, OmnitronError), name
    assert issubclass(Forbidden, PermissionError)
    assert issubclass(RpcTimeout, TimeoutError)
    assert str(Forbidden("nope")) == "nope (FORBIDDEN)"
    assert {code.value for code in ErrorCode} == {
        "PARSE_ERROR", "FRAME_TOO_LARGE", "INVALID_REQUEST", "METHOD_NOT_FOUND",
        "INVALID_PARAMS", "UNAUTHENTICATED", "FORBIDDEN", "NOT_FOUND", "CONFLICT", "BUSY",
        "TIMEOUT", "UNAVAILABLE", "INTERNAL_ERROR",
    }  # fmt: skip
