"""Calls answered without a task of their own (inline handlers), against real sockets.

A method with an inline handler runs in the connection's reading task: it answers
at once (``daemon.ping``), hands the call on and is answered later by a callback
(``DEFER``, as ``daemon.exec`` is answered by the worker link's reader), or
declines (the ``async`` handler runs in a task). These tests drive the deferred
answers by hand and check that the replies still arrive complete, each to its
call, that the usual checks apply, and that a connection that closes or stops
reading harms no other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgpack
import test_rpc_server
import trio
import trio.testing
from test_rpc_server import WAIT, Raw

from omnitron._log import capture_logs
from omnitron.rpc import Call, Dispatcher, ErrorCode, Role, ServerOptions, open_unix_server
from omnitron.rpc._dispatch import DECLINE, DEFER, Done, Peer
from omnitron.rpc._protocol import Request, Response

# The server tests' socket fixtures (a short /tmp directory; Raw connections closed).
sock_dir = test_rpc_server.sock_dir
sock_path = test_rpc_server.sock_path

OPTIONS = ServerOptions(hello_deadline=5.0, frame_deadline=5.0, idle_timeout=None)


class Deferred:
    """The ``done`` callbacks of the deferred calls, answered when the test says so."""

    def __init__(self) -> None:
        self.waiting: list[tuple[int, Done]] = []
        self.inline_runs = 0
        self.async_runs = 0
        self.arrived = trio.Event()

    def answer_all(self, value: Callable[[int], object]) -> None:
        waiting, self.waiting = self.waiting, []
        for tag, done in waiting:
            done(value(tag))


def make_dispatcher(deferred: Deferred) -> Dispatcher:
    dispatcher = Dispatcher()

    async def later(call: Call, *, tag: int, decline: bool = False) -> int:
        deferred.async_runs += 1
        await trio.lowlevel.checkpoint()
        return -tag

    def later_inline(call: Call, done: Done, *, tag: int, decline: bool = False) -> object:
        deferred.inline_runs += 1
        if decline:
            return DECLINE
        deferred.waiting.append((tag, done))
        deferred.arrived.set()
        return DEFER

    async def crash(call: Call) -> None:
        await trio.lowlevel.checkpoint()

    def crash_inline(call: Call, done: Done) -> object:
        raise RuntimeError("boom: /etc/secret")

    async def admin_only(call: Call) -> str:
        await trio.lowlevel.checkpoint()
        return "async"

    def admin_only_inline(call: Call, done: Done) -> str:
        deferred.inline_runs += 1
        return "inline"

    dispatcher.register("test.later", later, role=Role.OPERATOR)
    dispatcher.set_inline("test.later", later_inline)
    dispatcher.register("test.crash", crash, role=Role.OPERATOR)
    dispatcher.set_inline("test.crash", crash_inline)
    dispatcher.register("test.admin", admin_only, role=Role.ADMIN)
    dispatcher.set_inline("test.admin", admin_only_inline)
    return dispatcher


async def replies(raw: Raw, count: int) -> dict[int, list[object]]:
    got: dict[int, list[object]] = {}
    for _ in range(count):
        reply = await raw.receive()
        assert reply[1] not in got, reply
        got[reply[1]] = reply
    return got


async def test_replies_of_every_kind_arrive_complete_each_to_its_call(sock_path: Path) -> None:
    """Pings (answered at once), deferred calls (answered by callback, in reverse
    order) and declined ones (run as tasks), sent in one write: every reply, once."""
    deferred = Deferred()
    dispatcher = make_dispatcher(deferred)
    async with open_unix_server(sock_path, dispatcher, options=OPTIONS) as srv:
        raw = await Raw.connect(sock_path)
        batch = []
        for i in range(30):
            if i % 3 == 0:
                batch.append([0, i, "daemon.ping", []])
            elif i % 3 == 1:
                batch.append([0, i, "test.later", [{"tag": i}]])
            else:
                batch.append([0, i, "test.later", [{"tag": i, "decline": True}]])
        await raw.send_bytes(b"".join(msgpack.packb(m) for m in batch))
        with trio.fail_after(WAIT):
            while len(deferred.waiting) < 10:
                await trio.testing.wait_all_tasks_blocked()
        assert srv.statistics().calls_in_flight == 10
        deferred.waiting.reverse()
        deferred.answer_all(lambda tag: tag * 10)
        got = await replies(raw, 30)
        assert sorted(got) == list(range(30))
        for i, reply in got.items():
            expected = [{"pong": True}, i * 10, -i][i % 3]
            assert reply == [1, i, None, expected]
        assert deferred.async_runs == 10
        assert srv.statistics().calls_in_flight == 0
        assert dispatcher.calls == 30  # each call counted once, whichever path


async def test_a_deferred_call_handed_back_runs_its_async_handler(sock_path: Path) -> None:
    deferred = Deferred()
    dispatcher = make_dispatcher(deferred)
    async with open_unix_server(sock_path, dispatcher, options=OPTIONS):
        raw = await Raw.connect(sock_path)
        await raw.request(7, "test.later", tag=7)
        with trio.fail_after(WAIT):
            await deferred.arrived.wait()
        deferred.answer_all(lambda tag: DECLINE)
        assert await raw.receive() == [1, 7, None, -7]
        assert (deferred.inline_runs, deferred.async_runs, dispatcher.calls) == (1, 1, 1)


async def test_inline_methods_are_checked_like_any_other(sock_path: Path) -> None:
    """Role, params, and a raising inline handler (INTERNAL_ERROR, logged)."""
    deferred = Deferred()
    dispatcher = make_dispatcher(deferred)
    async with open_unix_server(sock_path, dispatcher, options=OPTIONS):
        raw = await Raw.connect(sock_path)
        _, _, error, _ = await raw.call(1, "test.later", tag="seven")
        assert error["code"] == ErrorCode.INVALID_PARAMS
        with capture_logs() as logs:
            _, _, error, _ = await raw.call(2, "test.crash")
        assert error["code"] == ErrorCode.INTERNAL_ERROR
        assert "secret" not in error["message"]
        assert [e["correlation_id"] for e in logs if e["event"] == "rpc_handler_failed"] == [
            error["correlation_id"]
        ]
        assert deferred.inline_runs == 0
        assert (await raw.call(3, "test.admin"))[3] == "inline"
    # A viewer may not call it: refused before the inline handler runs.
    runs = deferred.inline_runs
    refused = dispatcher.start(
        Request(msgid=1, method="test.admin", params={}),
        peer=Peer(transport="test", role=Role.VIEWER),
        host=None,
        done=lambda response: None,
    )
    assert isinstance(refused, Response)
    assert refused.error is not None
    assert refused.error.code == ErrorCode.FORBIDDEN
    assert deferred.inline_runs == runs


async def test_a_connection_closed_mid_call_waits_for_it_then_goes(sock_path: Path) -> None:
    """RP-20 for a deferred call: the connection stays until its call is answered
    (the reply is dropped), and other connections are served meanwhile."""
    deferred = Deferred()
    async with open_unix_server(sock_path, make_dispatcher(deferred), options=OPTIONS) as srv:
        gone = await Raw.connect(sock_path)
        await gone.request(1, "test.later", tag=1)
        with trio.fail_after(WAIT):
            await deferred.arrived.wait()
        await gone.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert srv.statistics().connections == 1  # waiting for its call
        other = await Raw.connect(sock_path)
        assert (await other.call(1, "daemon.ping"))[3] == {"pong": True}
        deferred.answer_all(lambda tag: tag)
        with trio.fail_after(WAIT):
            while srv.statistics().connections != 1:  # only `other` is left
                await trio.testing.wait_all_tasks_blocked()
        assert srv.statistics().calls_in_flight == 0
        assert (await other.call(2, "daemon.ping"))[3] == {"pong": True}


async def test_a_client_that_stops_reading_does_not_stall_the_others(sock_path: Path) -> None:
    """RP-17 with replies answered inline: the stuck peer is held back, then dropped
    at the send timeout; another connection is answered all along."""
    options = ServerOptions(send_timeout=0.3, idle_timeout=None)
    async with open_unix_server(sock_path, make_dispatcher(Deferred()), options=options) as srv:
        stuck = await Raw.connect(sock_path)
        healthy = await Raw.connect(sock_path)
        pings = b"".join(msgpack.packb([0, i % 1000, "daemon.ping", []]) for i in range(20_000))
        refused = trio.Event()

        async def flood() -> None:
            while not await stuck.send_until_refused([pings]):
                await trio.lowlevel.checkpoint()
            refused.set()

        with capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                for msgid in range(20):
                    assert (await healthy.call(msgid, "daemon.ping"))[3] == {"pong": True}
                with trio.fail_after(WAIT):
                    await refused.wait()
        assert srv.statistics().send_timeouts == 1
        assert "rpc_send_timeout" in [e["event"] for e in logs]
        assert (await healthy.call(99, "daemon.ping"))[3] == {"pong": True}


async def test_replies_answered_in_bursts_keep_the_order_of_their_requests(
    sock_path: Path,
) -> None:
    """Thousands of pings in one write: the server answers them a read at a time,
    each burst's replies held and written together, some left to the writer when
    the socket is full; they arrive complete and in the order they were asked."""
    async with open_unix_server(sock_path, make_dispatcher(Deferred()), options=OPTIONS):
        raw = await Raw.connect(sock_path)
        count = 5000
        pings = b"".join(msgpack.packb([0, i, "daemon.ping", []]) for i in range(count))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw.send_bytes, pings)
            order = [(await raw.receive())[1] for _ in range(count)]
        assert order == list(range(count))
