"""The Unix-socket server against real sockets: framing, limits, deadlines, caps, push.

Every wait is bounded by ``trio.fail_after``; nothing sleeps to let something happen.
Sockets live in a short ``/tmp`` directory (AF_UNIX paths stop at 107 bytes).
"""

from __future__ import annotations

import errno
import functools
import gc
import itertools
import os
import shutil
import socket
import stat
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.lowlevel
import trio.testing

from omnitron._log import capture_logs
from omnitron.rpc import (
    Call,
    Dispatcher,
    ErrorCode,
    InsecureSocketPath,
    Name,
    NotificationStream,
    Role,
    RpcServer,
    ServerOptions,
    SocketInUse,
    SocketPathTooLong,
    open_unix_server,
    serve_unix,
)
from omnitron.rpc._dispatch import Peer
from omnitron.rpc._server import ACCEPT_RETRY_DELAY

WAIT = 10.0  # the cap on any single wait; a healthy run takes milliseconds


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    directory = tempfile.mkdtemp(prefix="omr-", dir="/tmp")
    try:
        yield Path(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


_OPEN: list[Raw] = []


@pytest.fixture
async def sock_path(sock_dir: Path) -> AsyncIterator[Path]:
    """The server's socket path; the test's :class:`Raw` connections are closed after it.

    An async fixture, not an autouse one: pytest-trio runs only the async fixtures a
    test names, so an async autouse fixture would silently never run (and every
    ``Raw`` would stay open until the garbage collector finds it in a later test).
    """
    try:
        yield sock_dir / "d.sock"
    finally:
        while _OPEN:
            await _OPEN.pop().aclose()


class Raw:
    """A hand-driven client: sends any bytes, decodes replies leniently."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, timestamp=0)

    @classmethod
    async def connect(cls, path: Path) -> Raw:
        raw = cls(await trio.open_unix_socket(os.fspath(path)))
        _OPEN.append(raw)
        return raw

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, obj: object) -> None:
        await self.send_bytes(msgpack.packb(obj, use_bin_type=True))

    async def send_until_refused(self, chunks: Iterable[bytes], *, pace: float = 0.0) -> bool:
        """Send ``chunks`` until the server hangs up; ``True`` if it did so first."""
        try:
            for chunk in chunks:
                await self.send_bytes(chunk)
                if pace:
                    await trio.sleep(pace)  # an attacker's pace, not a synchronisation
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return True
        return False

    async def request(self, msgid: int, method: str, **params: object) -> None:
        await self.send([0, msgid, method, [params]])

    async def receive(self) -> Any:
        with trio.fail_after(WAIT):
            while True:
                for obj in self.unpacker:
                    return obj
                data = await self._read()
                if not data:
                    raise EOFError("connection closed before a reply")
                self.unpacker.feed(data)

    async def call(self, msgid: int, method: str, **params: object) -> Any:
        await self.request(msgid, method, **params)
        return await self.receive()

    async def receive_eof(self) -> None:
        with trio.fail_after(WAIT):
            leftover = list(self.unpacker)
            assert not leftover, leftover
            while data := await self._read():
                self.unpacker.feed(data)
                assert not list(self.unpacker), "expected EOF, got more messages"

    async def _read(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(65536))
        except trio.BrokenResourceError:
            return b""  # Linux reports ECONNRESET when the server closed with unread input

    async def aclose(self) -> None:
        await self.stream.aclose()


async def expect_error_then_close(raw: Raw, code: ErrorCode, msgid: int | None = None) -> str:
    reply = await raw.receive()
    assert reply[0] == 1
    assert reply[1] == msgid
    assert reply[2]["code"] == code, reply
    assert reply[3] is None
    await raw.receive_eof()
    message: str = reply[2]["message"]
    return message


class Gate:
    """Handlers that block until released, counting how many are inside."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.inside = 0
        self.finished = 0
        self.peak = 0
        self.reached: dict[int, trio.Event] = {}

    def wait_for(self, count: int) -> trio.Event:
        return self.reached.setdefault(count, trio.Event())

    async def enter(self) -> None:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        if self.inside in self.reached:
            self.reached[self.inside].set()
        try:
            await self.release.wait()
        finally:
            self.inside -= 1
            self.finished += 1


def make_dispatcher(gate: Gate | None = None) -> Dispatcher:
    dispatcher = Dispatcher()
    gate = gate or Gate()

    @dispatcher.method("test.echo", role=Role.VIEWER)
    async def echo(call: Call, *, value: object = None) -> object:
        await trio.lowlevel.checkpoint()
        return value

    @dispatcher.method("test.block", role=Role.OPERATOR)
    async def block(call: Call, *, tag: int = 0) -> int:
        await gate.enter()
        return tag

    @dispatcher.method("test.crash", role=Role.OPERATOR)
    async def crash(call: Call) -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("boom: /etc/secret")

    @dispatcher.method("test.whoami", role=Role.ADMIN)
    async def whoami(call: Call) -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return {"uid": call.peer.uid, "pid": call.peer.pid, "role": call.peer.role.label}

    @dispatcher.method("test.huge", role=Role.VIEWER)
    async def huge(call: Call) -> str:
        await trio.lowlevel.checkpoint()
        return "x" * (2 << 20)

    @dispatcher.method("test.unencodable", role=Role.VIEWER)
    async def unencodable(call: Call) -> object:
        await trio.lowlevel.checkpoint()
        return {1j}

    @dispatcher.method("test.undecodable", role=Role.VIEWER)
    async def undecodable(call: Call, *, shape: str) -> object:
        """Encodable, but the client's decoder would refuse it."""
        await trio.lowlevel.checkpoint()
        if shape == "int keys":
            return {1: "one"}
        if shape == "long list":
            return list(range(20_000))
        deep: object = None
        for _ in range(40):
            deep = [deep]
        return deep

    return dispatcher


FAST = ServerOptions(hello_deadline=5.0, frame_deadline=5.0, idle_timeout=None)


@pytest.fixture
async def server(sock_path: Path) -> AsyncIterator[RpcServer]:
    async with open_unix_server(sock_path, make_dispatcher(), options=FAST) as srv:
        yield srv


# --------------------------------------------------------------------------- basics


async def test_round_trip_and_peer_identity(server: RpcServer, sock_path: Path) -> None:
    raw = await Raw.connect(sock_path)
    assert await raw.call(1, "daemon.ping") == [1, 1, None, {"pong": True}]
    assert await raw.call(2, "test.echo", value={"a": [1, 2.5, None, b"\x00"]}) == [
        1,
        2,
        None,
        {"a": [1, 2.5, None, b"\x00"]},
    ]
    _, _, error, who = await raw.call(3, "test.whoami")
    assert error is None
    assert who == {"uid": os.getuid(), "pid": os.getpid(), "role": "admin"}
    assert server.address == os.fspath(sock_path)
    await raw.aclose()


async def test_empty_params_array_is_accepted(server: RpcServer, sock_path: Path) -> None:
    raw = await Raw.connect(sock_path)
    await raw.send([0, 5, "daemon.ping", []])
    assert await raw.receive() == [1, 5, None, {"pong": True}]


async def test_pipelined_requests_are_answered_out_of_order(sock_path: Path) -> None:
    gate = Gate()
    async with open_unix_server(sock_path, make_dispatcher(gate), options=FAST):
        raw = await Raw.connect(sock_path)
        data = msgpack.packb([0, 1, "test.block", [{"tag": 1}]]) + msgpack.packb(
            [0, 2, "test.echo", [{"value": "fast"}]]
        )
        await raw.send_bytes(data)  # one write, two requests
        assert await raw.receive() == [1, 2, None, "fast"]  # the second, first
        gate.release.set()
        assert await raw.receive() == [1, 1, None, 1]


class CountingStream(trio.abc.Stream):
    """A real stream that records the size of every ``send_all``."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[int] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class CountingListener(trio.abc.Listener[CountingStream]):
    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner
        self.streams: list[CountingStream] = []

    async def accept(self) -> CountingStream:
        stream = CountingStream(await self.inner.accept())
        self.streams.append(stream)
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_replies_decided_together_leave_in_one_write() -> None:
    """32 requests in one read: their replies are written with one ``send_all``."""

    async def admit(stream: trio.abc.Stream) -> Peer:
        await trio.lowlevel.checkpoint()
        return Peer(transport="test", role=Role.ADMIN)

    [tcp] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = CountingListener(tcp)
    server = RpcServer(make_dispatcher(), authenticate=admit, options=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [listener])
        stream = await trio.open_tcp_stream("127.0.0.1", tcp.socket.getsockname()[1])
        raw = Raw(stream)
        async with stream:
            await raw.send_bytes(
                b"".join(msgpack.packb([0, i, "daemon.ping", []]) for i in range(32))
            )
            replies = [await raw.receive() for _ in range(32)]
        assert sorted(reply[1] for reply in replies) == list(range(32))
        [served] = listener.streams
        assert len(served.writes) == 1, served.writes
        nursery.cancel_scope.cancel()


async def test_unknown_method_keeps_the_connection_open(server: RpcServer, sock_path: Path) -> None:
    raw = await Raw.connect(sock_path)
    _, msgid, error, _ = await raw.call(1, "nope.nothing")
    assert msgid == 1
    assert error["code"] == ErrorCode.METHOD_NOT_FOUND
    _, _, error, _ = await raw.call(2, "test.echo", bogus=1)
    assert error["code"] == ErrorCode.INVALID_PARAMS
    assert await raw.call(3, "daemon.ping") == [1, 3, None, {"pong": True}]


async def test_a_handler_that_raises_leaves_the_server_serving(
    server: RpcServer, sock_path: Path
) -> None:
    """RP-15."""
    raw = await Raw.connect(sock_path)
    other = await Raw.connect(sock_path)
    with capture_logs() as logs:
        _, _, error, _ = await raw.call(1, "test.crash")
    assert error["code"] == ErrorCode.INTERNAL_ERROR
    assert "secret" not in error["message"]
    assert "RuntimeError" not in error["message"]
    assert [e["correlation_id"] for e in logs if e["event"] == "rpc_handler_failed"] == [
        error["correlation_id"]
    ]
    assert await raw.call(2, "daemon.ping") == [1, 2, None, {"pong": True}]
    assert await other.call(1, "daemon.ping") == [1, 1, None, {"pong": True}]


async def test_results_over_the_frame_limit_or_unencodable_are_internal_errors(
    server: RpcServer, sock_path: Path
) -> None:
    """RP-21: a response never exceeds max_frame, whatever the handler returns."""
    raw = await Raw.connect(sock_path)
    with capture_logs() as logs:
        _, _, error, _ = await raw.call(1, "test.huge")
        assert error["code"] == ErrorCode.INTERNAL_ERROR
        _, _, error, _ = await raw.call(2, "test.unencodable")
        assert error["code"] == ErrorCode.INTERNAL_ERROR
        for msgid, shape in enumerate(["int keys", "long list", "deep"], start=3):
            _, _, error, _ = await raw.call(msgid, "test.undecodable", shape=shape)
            assert error["code"] == ErrorCode.INTERNAL_ERROR
    events = [e["event"] for e in logs]
    assert events.count("rpc_result_over_limits") == 4
    assert events.count("rpc_result_unencodable") == 1
    assert await raw.call(9, "daemon.ping") == [1, 9, None, {"pong": True}]


async def test_two_hundred_concurrent_clients_are_all_answered(
    server: RpcServer, sock_path: Path
) -> None:
    answered: list[int] = []

    async def client(n: int) -> None:
        raw = await Raw.connect(sock_path)
        assert await raw.call(n, "test.echo", value=n) == [1, n, None, n]
        answered.append(n)
        await raw.aclose()

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(client, n)
    assert sorted(answered) == list(range(200))


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("message", "msgid"),
    [
        ("not an array", None),
        ({"method": "daemon.ping"}, None),
        ([0, 1, 2, [{}]], 1),  # method not a string
        ([0, "1", "daemon.ping", [{}]], None),  # msgid not an int
        ([0, 2**40, "daemon.ping", [{}]], None),  # msgid beyond uint32
        ([0, 3, "daemon.ping", {"a": 1}], 3),  # params not [map]
        ([0, 3, "daemon.ping", [1, 2]], 3),
        ([1, 3, None, None], None),  # a response, from a client
        ([2, "daemon.ping"], None),  # a notification of 2 items
        ([2, 7, []], None),  # a notification whose method is not a string
        ([2, "client.info", {"a": 1}], None),  # notification params not an array
    ],
)
async def test_wrong_types_get_invalid_request_and_close(
    server: RpcServer, sock_path: Path, message: object, msgid: int | None
) -> None:
    """RP-10: the reply echoes the id only when it is valid; then that connection closes."""
    raw = await Raw.connect(sock_path)
    bystander = await Raw.connect(sock_path)
    await raw.send(message)
    await expect_error_then_close(raw, ErrorCode.INVALID_REQUEST, msgid)
    assert await bystander.call(1, "daemon.ping") == [1, 1, None, {"pong": True}]


async def test_duplicate_msgid_in_flight_is_a_protocol_error(sock_path: Path) -> None:
    gate = Gate()
    async with open_unix_server(sock_path, make_dispatcher(gate), options=FAST):
        raw = await Raw.connect(sock_path)
        await raw.request(7, "test.block")
        await raw.request(7, "test.block")
        message = await expect_error_then_close(raw, ErrorCode.INVALID_REQUEST)
        assert "already in flight" in message
        gate.release.set()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ErrorCode.INVALID_REQUEST),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), ErrorCode.INVALID_REQUEST),
        (b"\x94\xc1", ErrorCode.PARSE_ERROR),
        (b"\x94\x00\x01\xa2\xff\xfe\x90", ErrorCode.PARSE_ERROR),  # invalid UTF-8 (RP-07)
        (b"\x94\x00\x01\xa1m\x91\x81\xa1v\xd4\x05\x00", ErrorCode.PARSE_ERROR),  # ext 5 (RP-08)
        (b"\x94\x00\x01\xa1m\x91\x81\xa1v\xd6\xff\x00\x00\x00\x01", ErrorCode.PARSE_ERROR),
        (b"\x94\x00\x01\xa1m\x91\x81\x01\x02", ErrorCode.PARSE_ERROR),  # int key (RP-09)
        (b"\x91" * 33 + b"\xc0", ErrorCode.PARSE_ERROR),  # depth 33 (RP-04)
        (b"\x91" * 1000 + b"\xc0", ErrorCode.PARSE_ERROR),
        (b"\x94" + b"\x91" * 1025 + b"\xc0", ErrorCode.PARSE_ERROR),
        (b"\xdd\xff\xff\xff\xff", ErrorCode.PARSE_ERROR),  # array32 of 4 G items (RP-02)
        (b"\xdb" + struct.pack(">I", 100_000_000), ErrorCode.INVALID_REQUEST),  # 100 MB str
        (b"\xc6" + struct.pack(">I", 100_000_000), ErrorCode.INVALID_REQUEST),  # 100 MB bin
    ],
)
async def test_malformed_bytes_get_an_error_and_close_that_connection_only(
    server: RpcServer, sock_path: Path, payload: bytes, code: ErrorCode
) -> None:
    """RP-02, RP-04, RP-06..RP-09: error reply where possible, then close; others unaffected."""
    raw = await Raw.connect(sock_path)
    bystander = await Raw.connect(sock_path)
    await raw.send_bytes(payload)
    await expect_error_then_close(raw, code)
    assert await bystander.call(1, "daemon.ping") == [1, 1, None, {"pong": True}]
    assert server.statistics().protocol_errors >= 1


async def test_random_bytes_never_crash_the_server(server: RpcServer, sock_path: Path) -> None:
    """RP-06: 64 KiB of random bytes, several times; the server answers afterwards."""
    for seed in range(5):
        raw = await Raw.connect(sock_path)
        data = bytes(((seed + 1) * 7919 * i + (i >> 3)) % 251 for i in range(65536))
        with trio.fail_after(WAIT):
            assert await raw.send_until_refused(itertools.repeat(data, 10_000))
        await raw.aclose()
    ok = await Raw.connect(sock_path)
    assert await ok.call(1, "daemon.ping") == [1, 1, None, {"pong": True}]


async def test_truncated_frame_then_eof_dispatches_nothing(sock_path: Path) -> None:
    """RP-05: half a request, then EOF: nothing runs; the connection just ends."""
    gate = Gate()
    async with open_unix_server(sock_path, make_dispatcher(gate), options=FAST) as srv:
        raw = await Raw.connect(sock_path)
        frame = msgpack.packb([0, 1, "test.block", [{"tag": 1}]])
        with capture_logs() as logs:
            await raw.send_bytes(frame[:-3])
            await raw.stream.send_eof()
            await raw.receive_eof()
        assert gate.inside == gate.finished == 0
        assert [e["bytes"] for e in logs if e["event"] == "rpc_truncated_message"] == [
            len(frame) - 3
        ]
        assert srv.statistics().calls_in_flight == 0


async def test_a_half_closed_client_still_gets_its_replies(
    server: RpcServer, sock_path: Path
) -> None:
    """`printf request | nc -U sock` style: requests, then EOF on our side, then replies."""
    raw = await Raw.connect(sock_path)
    await raw.send_bytes(
        msgpack.packb([0, 1, "daemon.ping", [{}]])
        + msgpack.packb([0, 2, "test.echo", [{"value": 2}]])
    )
    await raw.stream.send_eof()
    replies = sorted([await raw.receive(), await raw.receive()])
    assert replies == [[1, 1, None, {"pong": True}], [1, 2, None, 2]]
    await raw.receive_eof()


async def test_a_huge_string_header_is_refused_after_max_frame_bytes(
    server: RpcServer, sock_path: Path
) -> None:
    """RP-01: a request whose method claims 100 MB: FRAME_TOO_LARGE after ~1 MiB, then close."""
    raw = await Raw.connect(sock_path)
    max_frame = FAST.limits.max_frame
    sent = 0

    async def flood() -> None:
        nonlocal sent
        await raw.send_bytes(b"\x94\x00\x01\xdb" + struct.pack(">I", 100_000_000))
        chunk = b"a" * 65536
        try:
            while sent < 8 * max_frame:
                await raw.send_bytes(chunk)
                sent += len(chunk)
        except trio.BrokenResourceError:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        message = await expect_error_then_close(raw, ErrorCode.FRAME_TOO_LARGE)
    assert "frame limit" in message
    assert sent < 4 * max_frame  # cut off long before the claimed 100 MB


class StepTimer(trio.abc.Instrument):
    """The longest CPU time any single task step took (blind to other processes)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.worst_task = ""
        self._started: float | None = None  # the step that adds us has no start

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._started is not None and time.thread_time() - self._started > self.worst:
            self.worst = time.thread_time() - self._started
            self.worst_task = task.name
        self._started = None


async def test_a_megabyte_of_empty_maps_times_five_does_not_stall_the_loop(
    server: RpcServer, sock_path: Path
) -> None:
    """RP-03: the item cap stops each frame early; no loop step runs long.

    Measured as CPU time per task step, so a busy CI machine cannot fake a stall.
    """
    inner = b"\xdd" + struct.pack(">I", 10_000) + b"\x80" * 10_000
    frame = b"\x94\x00\x01\xa1m\x91\x81\xa1v" + b"\xdc" + struct.pack(">H", 100) + inner * 100

    async def attacker() -> None:
        raw = await Raw.connect(sock_path)
        await raw.send_until_refused([frame, frame])  # the server stops reading part-way
        reply = await raw.receive()
        assert reply[2]["code"] == ErrorCode.PARSE_ERROR

    timer = StepTimer()
    # The test process's own heap (every object pytest and earlier tests keep) is
    # left out of the collector's passes, which a step that builds many maps
    # triggers: a daemon's heap is a small fraction of it.
    gc.collect()
    gc.freeze()
    trio.lowlevel.add_instrument(timer)
    try:
        async with trio.open_nursery() as attackers:
            for _ in range(5):
                attackers.start_soon(attacker)
    finally:
        trio.lowlevel.remove_instrument(timer)
        gc.unfreeze()
    assert server.statistics().protocol_errors == 5
    assert timer.worst < 0.1, (timer.worst, timer.worst_task)  # RP-03: loop lag p99 < 100 ms


# --------------------------------------------------------------------------- deadlines


async def test_a_client_that_sends_nothing_is_closed_at_the_hello_deadline(
    sock_path: Path,
) -> None:
    """RP-16."""
    options = ServerOptions(hello_deadline=0.2, frame_deadline=5.0)
    async with open_unix_server(sock_path, make_dispatcher(), options=options) as srv:
        raw = await Raw.connect(sock_path)
        started = trio.current_time()
        message = await expect_error_then_close(raw, ErrorCode.TIMEOUT)
        assert trio.current_time() - started >= 0.2
        assert "no request within 0.2s" in message
        assert srv.statistics().deadline_closes == 1


async def test_half_a_frame_then_silence_is_closed_at_the_frame_deadline(
    sock_path: Path,
) -> None:
    """RP-05 / RP-16: the frame deadline runs from the first byte of a message."""
    options = ServerOptions(hello_deadline=5.0, frame_deadline=0.2)
    async with open_unix_server(sock_path, make_dispatcher(), options=options):
        raw = await Raw.connect(sock_path)
        assert await raw.call(1, "daemon.ping") == [1, 1, None, {"pong": True}]
        await raw.send_bytes(msgpack.packb([0, 2, "daemon.ping", [{}]])[:4])
        message = await expect_error_then_close(raw, ErrorCode.TIMEOUT)
        assert "not completed within 0.2s" in message


async def test_a_slow_loris_dripping_bytes_is_cut_off(sock_path: Path) -> None:
    """RP-16: one byte at a time keeps the connection busy, not alive."""
    options = ServerOptions(hello_deadline=5.0, frame_deadline=0.3)
    async with open_unix_server(sock_path, make_dispatcher(), options=options):
        raw = await Raw.connect(sock_path)
        frame = msgpack.packb([0, 1, "test.echo", [{"value": "x" * 200}]])
        started = trio.current_time()

        async def drip() -> None:
            assert await raw.send_until_refused((bytes([b]) for b in frame), pace=0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            await expect_error_then_close(raw, ErrorCode.TIMEOUT)
            nursery.cancel_scope.cancel()
        assert trio.current_time() - started >= 0.3


async def test_an_idle_connection_is_closed_after_idle_timeout_but_not_mid_call(
    sock_path: Path,
) -> None:
    gate = Gate()
    options = ServerOptions(hello_deadline=5.0, frame_deadline=5.0, idle_timeout=0.2)
    async with open_unix_server(sock_path, make_dispatcher(gate), options=options):
        raw = await Raw.connect(sock_path)
        await raw.request(1, "test.block", tag=1)
        with trio.fail_after(WAIT):
            await gate.wait_for(1).wait()
        # A call in flight: no idle deadline, however long it takes.
        with trio.move_on_after(0.4):
            await raw.receive()
            raise AssertionError("nothing should arrive while the call runs")
        gate.release.set()
        assert await raw.receive() == [1, 1, None, 1]
        message = await expect_error_then_close(raw, ErrorCode.TIMEOUT)
        assert "idle for 0.2s" in message


# --------------------------------------------------------------------------- caps


async def test_connection_cap_answers_busy(sock_path: Path) -> None:
    """RP-18: beyond the cap (and its reserve), one BUSY frame and close; others work."""
    options = ServerOptions(max_connections=2, reserved_connections=0, idle_timeout=None)
    async with open_unix_server(sock_path, make_dispatcher(), options=options) as srv:
        first = await Raw.connect(sock_path)
        second = await Raw.connect(sock_path)
        for raw in (first, second):
            assert (await raw.call(1, "daemon.ping"))[3] == {"pong": True}
        third = await Raw.connect(sock_path)
        message = await expect_error_then_close(third, ErrorCode.BUSY)
        assert "too many connections (limit 2)" in message
        assert srv.statistics().rejected_busy == 1
        assert (await first.call(2, "daemon.ping"))[3] == {"pong": True}
        await second.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert srv.statistics().connections == 1
        fourth = await Raw.connect(sock_path)
        assert (await fourth.call(1, "daemon.ping"))[3] == {"pong": True}


async def test_a_full_plane_keeps_a_reserve_for_status_and_shutdown(sock_path: Path) -> None:
    """RP-18: every slot busy, a newcomer still gets status; the reserve cannot be held.

    A reserve connection may call only ping/status/shutdown (anything else answers
    BUSY and the connection stays), and while idle it is evicted by the next
    newcomer, so a client that parks in the reserve does not keep it.
    """
    gate = Gate()
    dispatcher = make_dispatcher(gate)

    @dispatcher.method("daemon.status", role=Role.VIEWER)
    async def status(call: Call) -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return {"ok": True}

    options = ServerOptions(max_connections=2, idle_timeout=None)
    async with open_unix_server(sock_path, dispatcher, options=options) as srv:
        busy = [await Raw.connect(sock_path) for _ in range(2)]
        for n, raw in enumerate(busy):
            await raw.request(n, "test.block", tag=n)
        with trio.fail_after(WAIT):
            await gate.wait_for(2).wait()
        probe = await Raw.connect(sock_path)
        assert await probe.call(1, "daemon.status") == [1, 1, None, {"ok": True}]
        refused = await probe.call(2, "test.echo", value=1)
        assert refused[2]["code"] == "BUSY"
        assert "daemon.shutdown, daemon.status" in refused[2]["message"]
        assert (await probe.call(3, "daemon.ping"))[3] == {"pong": True}
        # The idle reserve holder makes way for the next newcomer.
        second = await Raw.connect(sock_path)
        assert (await second.call(1, "daemon.status"))[3] == {"ok": True}
        await probe.receive_eof()
        stats = srv.statistics()
        assert (stats.reserve_admitted, stats.evicted_idle, stats.rejected_busy) == (1, 1, 0)
        gate.release.set()
        assert [await raw.receive() for raw in busy] == [[1, 0, None, 0], [1, 1, None, 1]]


async def test_a_reserve_connection_that_sends_nothing_is_closed_after_a_second(
    sock_path: Path,
) -> None:
    """RP-16/RP-18: the reserve's hello deadline is 1 s, not the normal 5 s."""
    options = ServerOptions(max_connections=1, idle_timeout=None)
    async with open_unix_server(sock_path, make_dispatcher(), options=options) as srv:
        holder = await Raw.connect(sock_path)
        await holder.request(1, "test.block")
        await trio.testing.wait_all_tasks_blocked()
        silent = await Raw.connect(sock_path)
        started = trio.current_time()
        message = await expect_error_then_close(silent, ErrorCode.TIMEOUT)
        assert "no request within 1s" in message
        assert trio.current_time() - started < options.hello_deadline
        assert srv.statistics().reserve_admitted == 1


async def test_client_notifications_get_no_reply_and_keep_the_connection(
    server: RpcServer, sock_path: Path
) -> None:
    """SPEC 4: a notification is never answered; unknown ones are counted and ignored."""
    raw = await Raw.connect(sock_path)
    with capture_logs() as logs:
        await raw.send([2, "nvim_set_client_info", ["python3-client", {"major": 0}, "remote"]])
        await raw.send([2, "daemon.ping", []])
        await raw.send([2, "daemon.shutdown", [{}]])
        # The next reply on the wire is the request's: nothing answered the three.
        assert await raw.call(7, "daemon.ping") == [1, 7, None, {"pong": True}]
    assert server.statistics().notifications_ignored == 3
    ignored = [e for e in logs if e["event"] == "rpc_notification_ignored"]
    assert [e["log_level"] for e in ignored] == ["debug"] * 3
    assert "nvim_set_client_info" in ignored[0]["method"]


async def test_a_storm_of_evictions_is_logged_as_a_count_not_a_line_each(
    sock_path: Path,
) -> None:
    """A storm must not become a flood of log writes slowing the accept loop."""
    options = ServerOptions(max_connections=1, idle_timeout=None, evict_idle=True)
    async with open_unix_server(sock_path, make_dispatcher(), options=options) as srv:
        with capture_logs() as logs:
            for _ in range(5):
                raw = await Raw.connect(sock_path)
                assert (await raw.call(1, "daemon.ping"))[3] == {"pong": True}
        assert srv.statistics().evicted_idle == 4
    evicted = [e for e in logs if e["event"] == "rpc_idle_connections_evicted"]
    assert [(e["count"], e["total"]) for e in evicted] == [(1, 1)]


async def test_in_flight_cap_applies_back_pressure(sock_path: Path) -> None:
    """RP-19: 40 pipelined calls, 32 run at once; the rest wait; all are answered."""
    gate = Gate()
    options = ServerOptions(max_inflight=32, idle_timeout=None)
    async with open_unix_server(sock_path, make_dispatcher(gate), options=options) as srv:
        raw = await Raw.connect(sock_path)
        await raw.send_bytes(
            b"".join(msgpack.packb([0, i, "test.block", [{"tag": i}]]) for i in range(40))
        )
        with trio.fail_after(WAIT):
            await gate.wait_for(32).wait()
        await trio.testing.wait_all_tasks_blocked()
        assert gate.inside == 32
        assert srv.statistics().calls_in_flight == 32
        other = await Raw.connect(sock_path)  # another connection is not held up
        assert (await other.call(1, "daemon.ping"))[3] == {"pong": True}
        gate.release.set()
        replies = [await raw.receive() for _ in range(40)]
        assert sorted(r[1] for r in replies) == list(range(40))
        assert all(r[1] == r[3] for r in replies)
        assert gate.peak == 32


async def test_disconnect_mid_call_lets_the_call_finish_quietly(sock_path: Path) -> None:
    """RP-20: the operation completes; the failed reply write is not an error."""
    gate = Gate()
    async with open_unix_server(sock_path, make_dispatcher(gate), options=FAST) as srv:
        raw = await Raw.connect(sock_path)
        await raw.request(1, "test.block", tag=1)
        with trio.fail_after(WAIT):
            await gate.wait_for(1).wait()
        with capture_logs() as logs:
            await raw.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert gate.inside == 1  # still running, not cancelled
            gate.release.set()
            await trio.testing.wait_all_tasks_blocked()
        assert gate.finished == 1
        assert [e for e in logs if e["log_level"] in ("error", "warning", "critical")] == []
        assert srv.statistics().connections == 0


async def test_a_peer_with_another_uid_is_refused(sock_path: Path) -> None:
    """AU-14: SO_PEERCRED uid must equal the daemon's."""
    async with open_unix_server(
        sock_path, make_dispatcher(), options=FAST, allowed_uid=os.getuid() + 1
    ) as srv:
        raw = await Raw.connect(sock_path)
        with capture_logs() as logs:
            message = await expect_error_then_close(raw, ErrorCode.FORBIDDEN)
        assert f"peer uid {os.getuid()} may not use this socket" in message
        assert srv.statistics().rejected_auth == 1
        assert [e["event"] for e in logs] == ["rpc_peer_rejected"]


# --------------------------------------------------------------------------- push


def streaming_dispatcher(produced: trio.Event, streams: list[NotificationStream]) -> Dispatcher:
    dispatcher = Dispatcher()

    @dispatcher.method("events.burst", role=Role.VIEWER)
    async def burst(call: Call, *, count: int, capacity: int) -> int:
        stream = call.open_stream("events.item", capacity=capacity)
        for i in range(count):  # all at once, before the pump runs: drops are certain
            assert stream.send_nowait({"i": i})
        stream.close()
        assert not stream.send_nowait({"i": -1})
        await trio.lowlevel.checkpoint()
        return stream.id

    @dispatcher.method("events.flood", role=Role.VIEWER)
    async def flood(call: Call, *, size: int) -> int:
        stream = call.open_stream("events.blob", capacity=8)
        streams.append(stream)

        async def produce() -> None:
            # Ends when the stream closes, or is cancelled with the connection.
            try:
                while stream.send_nowait({"blob": b"x" * size}):
                    await trio.lowlevel.checkpoint()  # send_nowait itself never blocks
            finally:
                produced.set()

        call.start_soon(produce)
        await trio.lowlevel.checkpoint()
        return stream.id

    @dispatcher.method("events.many", role=Role.VIEWER)
    async def many(call: Call, *, name: Name) -> int:
        await trio.lowlevel.checkpoint()
        return call.open_stream(name).id

    return dispatcher


async def test_a_slow_subscriber_loses_the_oldest_items_with_a_dropped_notice(
    sock_path: Path,
) -> None:
    """RP-17: bounded per subscriber, drop-oldest, and a `dropped: N` notice in their place."""
    dispatcher = streaming_dispatcher(trio.Event(), [])
    async with open_unix_server(sock_path, dispatcher, options=FAST):
        raw = await Raw.connect(sock_path)
        await raw.request(1, "events.burst", count=10, capacity=4)
        notifications = []
        response = None
        while True:
            message = await raw.receive()
            if message[0] == 1:
                response = message
                continue
            notifications.append((message[1], message[2][0]))
            if message[1] == "rpc.closed":
                break
        assert response == [1, 1, None, 1]
        assert notifications == [
            ("rpc.dropped", {"stream": 1, "method": "events.item", "dropped": 6}),
            ("events.item", {"i": 6, "stream": 1}),
            ("events.item", {"i": 7, "stream": 1}),
            ("events.item", {"i": 8, "stream": 1}),
            ("events.item", {"i": 9, "stream": 1}),
            ("rpc.closed", {"stream": 1}),
        ]


async def test_a_subscriber_that_never_reads_is_disconnected_not_waited_for(
    sock_path: Path,
) -> None:
    """RP-17: the producer never blocks; the stuck peer is dropped at the send timeout."""
    produced = trio.Event()
    streams: list[NotificationStream] = []
    options = ServerOptions(send_timeout=0.2, idle_timeout=None)
    async with open_unix_server(
        sock_path, streaming_dispatcher(produced, streams), options=options
    ) as srv:
        stuck = await Raw.connect(sock_path)
        await stuck.request(1, "events.flood", size=32 * 1024)
        healthy = await Raw.connect(sock_path)
        assert (await healthy.call(1, "daemon.ping"))[3] == {"pong": True}
        with capture_logs() as logs, trio.fail_after(WAIT):
            await produced.wait()  # the producer stopped
        assert streams[0].closed
        assert streams[0].dropped > 0
        assert srv.statistics().send_timeouts == 1
        assert "rpc_send_timeout" in [e["event"] for e in logs]
        assert (await healthy.call(2, "daemon.ping"))[3] == {"pong": True}


async def test_streams_per_connection_are_capped(sock_path: Path) -> None:
    options = ServerOptions(max_streams=2, idle_timeout=None)
    async with open_unix_server(sock_path, streaming_dispatcher(trio.Event(), []), options=options):
        raw = await Raw.connect(sock_path)
        assert (await raw.call(1, "events.many", name="a"))[3] == 1
        assert (await raw.call(2, "events.many", name="b"))[3] == 2
        _, _, error, _ = await raw.call(3, "events.many", name="c")
        assert error["code"] == ErrorCode.BUSY


# --------------------------------------------------------------------------- the socket file


async def test_socket_is_0600_even_under_umask_000(sock_path: Path) -> None:
    """AU-14: the mode is right from bind on (umask 0177 around bind), not chmod-ed later."""
    previous = os.umask(0)
    try:
        async with open_unix_server(sock_path, make_dispatcher(), options=FAST):
            info = os.lstat(sock_path)
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o600
            assert os.umask(0) == 0  # the process umask was restored
    finally:
        os.umask(previous)
    assert not await trio.Path(sock_path).exists()  # removed on exit


async def test_a_stale_socket_file_is_replaced(sock_path: Path) -> None:
    """PC-14: a socket nobody answers on is left over from a dead daemon."""
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(sock_path))
    dead.close()
    assert await trio.Path(sock_path).exists()
    with capture_logs() as logs:
        async with open_unix_server(sock_path, make_dispatcher(), options=FAST):
            raw = await Raw.connect(sock_path)
            assert (await raw.call(1, "daemon.ping"))[3] == {"pong": True}
    assert "rpc_stale_socket_removed" in [e["event"] for e in logs]


async def test_a_live_socket_is_never_replaced(sock_path: Path) -> None:
    """PC-11 / PC-14: a second server fails; the first keeps its socket."""
    async with open_unix_server(sock_path, make_dispatcher(), options=FAST):
        with pytest.raises(SocketInUse, match="already listening"):
            async with open_unix_server(sock_path, make_dispatcher(), options=FAST):
                pass  # pragma: no cover
        raw = await Raw.connect(sock_path)
        assert (await raw.call(1, "daemon.ping"))[3] == {"pong": True}


async def test_the_socket_file_is_removed_only_if_still_ours(sock_path: Path) -> None:
    async with open_unix_server(sock_path, make_dispatcher(), options=FAST):
        os.unlink(sock_path)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(os.fspath(sock_path))  # someone else's socket now
    assert await trio.Path(sock_path).exists()
    other.close()


async def test_unsafe_paths_are_refused(sock_dir: Path) -> None:
    """PC-15 / AU-14: not a socket, a symlink, an open directory, too long."""
    regular = sock_dir / "file.sock"
    regular.write_text("")
    with pytest.raises(InsecureSocketPath, match="not a socket"):
        await serve_unix(regular, make_dispatcher())
    link = sock_dir / "link.sock"
    link.symlink_to(sock_dir / "elsewhere.sock")
    with pytest.raises(InsecureSocketPath, match="not a socket"):
        await serve_unix(link, make_dispatcher())
    open_dir = sock_dir / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(InsecureSocketPath, match=r"open to group or others \(0755\)"):
        await serve_unix(open_dir / "d.sock", make_dispatcher())
    linked_dir = sock_dir / "linked"
    linked_dir.symlink_to(sock_dir)
    with pytest.raises(InsecureSocketPath, match="symlink"):
        await serve_unix(linked_dir / "d.sock", make_dispatcher())
    with pytest.raises(SocketPathTooLong, match="107"):
        await serve_unix(sock_dir / ("x" * 120), make_dispatcher())
    with pytest.raises(FileNotFoundError):
        await serve_unix(sock_dir / "missing" / "d.sock", make_dispatcher())


async def test_serve_unix_in_a_caller_nursery(sock_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        srv = await nursery.start(serve_unix, sock_path, make_dispatcher())
        assert isinstance(srv, RpcServer)
        raw = await Raw.connect(sock_path)
        assert (await raw.call(1, "daemon.ping"))[3] == {"pong": True}
        nursery.cancel_scope.cancel()
    assert not await trio.Path(sock_path).exists()


async def test_errors_in_the_block_are_not_wrapped_in_groups(sock_path: Path) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with open_unix_server(sock_path, make_dispatcher(), options=FAST):
            raise KeyError("mine")


# --------------------------------------------------------------------------- accept loop


class FailingListener(trio.abc.Listener[trio.abc.Stream]):
    """accept() fails with EMFILE a few times, then waits forever."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []

    async def accept(self) -> trio.abc.Stream:
        self.attempts.append(trio.current_time())
        if len(self.attempts) <= self.failures:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_emfile_on_accept_sleeps_instead_of_spinning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """RP-18 / RX-01: out of fds, the accept loop retries every 100 ms, and logs it."""

    async def anyone(stream: trio.abc.Stream) -> Peer:
        await trio.lowlevel.checkpoint()
        return Peer(transport="test", role=Role.ADMIN)

    listener = FailingListener(failures=3)
    srv = RpcServer(make_dispatcher(), authenticate=anyone)
    start = trio.current_time()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(srv.serve, [listener])
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
    assert [t - start for t in listener.attempts] == pytest.approx(
        [0.0, ACCEPT_RETRY_DELAY, 2 * ACCEPT_RETRY_DELAY, 3 * ACCEPT_RETRY_DELAY]
    )
    failures = [e for e in logs if e["event"] == "rpc_accept_failed"]
    assert [e["errno"] for e in failures] == ["EMFILE"] * 3


async def test_a_full_trusted_plane_evicts_the_idlest_connection(sock_path: Path) -> None:
    """RX-01: with evict_idle, a newcomer is served and the longest-idle peer is closed."""
    options = ServerOptions(max_connections=2, idle_timeout=None, evict_idle=True)
    async with open_unix_server(sock_path, make_dispatcher(), options=options) as srv:
        first = await Raw.connect(sock_path)
        second = await Raw.connect(sock_path)
        assert (await first.call(1, "daemon.ping"))[3] == {"pong": True}
        assert (await second.call(1, "daemon.ping"))[3] == {"pong": True}
        third = await Raw.connect(sock_path)
        assert (await third.call(1, "daemon.ping"))[3] == {"pong": True}
        with trio.fail_after(WAIT):
            assert await first.stream.receive_some() == b""  # the idlest one was closed
        assert (await second.call(2, "daemon.ping"))[3] == {"pong": True}
        await trio.testing.wait_all_tasks_blocked()
        assert srv.statistics().connections == 2


async def test_a_flood_beyond_the_cap_is_closed_at_once_once_rejections_pile_up(
    tmp_path: Path,
) -> None:
    """RP-18: telling a newcomer BUSY over TLS holds a descriptor until its handshake
    ends (up to a second); beyond ``max_rejecting`` such newcomers, the next is closed
    at once, so a flood holds at most ``capacity + max_rejecting`` descriptors."""
    from omnitron.rpc._tls import ensure_self_signed, serve_tls, server_context

    options = ServerOptions(
        max_connections=4, reserved_connections=0, max_rejecting=1, idle_timeout=None
    )
    context = server_context(ensure_self_signed(tmp_path))
    async with trio.open_nursery() as nursery:
        server: RpcServer = await nursery.start(
            functools.partial(
                serve_tls, "127.0.0.1", 0, make_dispatcher(), context, options=options
            )
        )
        port = int(server.address.rsplit(":", 1)[1])
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
        # The fifth says nothing: the server waits for its TLS hello to say BUSY.
        rejecting = await trio.open_tcp_stream("127.0.0.1", port)
        await trio.testing.wait_all_tasks_blocked()
        assert server.statistics().rejected_busy == 1
        started = trio.current_time()
        closed = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(WAIT):
            assert await closed.receive_some(1) == b""
        assert trio.current_time() - started < 0.5
        assert server.statistics().rejected_silently == 1
        for stream in [*held, rejecting, closed]:
            await stream.aclose()
        nursery.cancel_scope.cancel()
