"""The router's link to a worker: pipelined calls, results passed through as bytes.

Against a real worker process (``python -m omnitron.worker serve``) on its real
socket, and, for replies no worker sends, a real socket pair whose far end this
test writes by hand.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator

import msgpack
import pytest
import trio
import trio.testing
from worker_process import RunningWorker, running_worker

from omnitron.daemon._worker_link import WorkerLink, decode_value, open_link
from omnitron.daemon._workers import WorkerCallError
from omnitron.rpc import Limits
from omnitron.rpc._wire import DEFAULT_LIMITS

WITHIN = 30.0


async def call(
    link: WorkerLink,
    method: str,
    *args: object,
    timeout: float = 20,  # noqa: ASYNC109 - sent to the worker
    **kwargs: object,
) -> bytes:
    return await link.call_raw("calc", method, list(args), kwargs, timeout=timeout, grace=1.0)


@contextlib.asynccontextmanager
async def worker_link() -> AsyncIterator[tuple[RunningWorker, WorkerLink]]:
    """A real calc worker and a link to it, closed on exit."""
    async with running_worker() as worker, trio.open_nursery() as nursery:
        with trio.fail_after(WITHIN):
            link = await open_link(worker.socket, nursery, timeout=10)
            yield worker, link
        link.close()


async def test_results_arrive_as_the_bytes_the_worker_encoded() -> None:
    async with worker_link() as (_worker, link):
        assert link.identity["process"] == "calc"
        assert "calc" in link.services
        assert await call(link, "add", 2, b=2) == msgpack.packb(4)
        value = {"a": [1, 2.5, None, True], "b": b"\x00bin", "c": "é"}
        raw = await call(link, "echo", value)
        assert raw == msgpack.packb(value, use_bin_type=True)
        assert decode_value(raw) == value


async def test_many_calls_are_in_flight_on_one_connection() -> None:
    results: list[bytes] = []
    async with worker_link() as (_worker, link):

        async def one() -> None:
            results.append(await call(link, "rendezvous", 20))

        async with trio.open_nursery() as calls:
            for _ in range(20):
                calls.start_soon(one)
            # The worker answers none until all 20 are in it at the same time.
            await trio.testing.wait_all_tasks_blocked()
        assert results == [msgpack.packb(20)] * 20
        assert link.in_flight == 0


async def test_worker_errors_are_structured_and_the_link_stays_usable() -> None:
    async with worker_link() as (_worker, link):
        with pytest.raises(WorkerCallError) as info:
            await call(link, "fail", "boom")
        assert (info.value.code, info.value.type) == ("APP_ERROR", "ValueError")
        assert "raise ValueError(message)" in (info.value.traceback or "")
        with pytest.raises(WorkerCallError) as info:
            await call(link, "add", "x", "y", "z")
        assert info.value.code == "INVALID_ARGS"
        with pytest.raises(WorkerCallError) as info:
            await link.call_raw("calc", "_private", [], {}, timeout=5, grace=1)
        assert info.value.code == "METHOD_NOT_FOUND"
        # The worker cancels an async method at its timeout and says so.
        with pytest.raises(WorkerCallError) as info:
            await call(link, "hang", timeout=0.3)
        assert info.value.code == "TIMEOUT"
        assert "calc.hang" in info.value.message
        # A blocked sync method: the link gives up at timeout + grace on its own.
        with pytest.raises(WorkerCallError) as info:
            await link.call_raw("calc", "block", [2], {}, timeout=0.2, grace=0.3)
        assert info.value.code == "TIMEOUT"
        assert "calc.block did not answer within 0.5s" in info.value.message
        assert "the worker is blocked" in info.value.message
        assert not link.closed
        assert await call(link, "add", 7) == msgpack.packb(7)


async def test_arguments_over_the_limits_are_refused_before_sending() -> None:
    async with worker_link() as (_worker, link):
        with pytest.raises(WorkerCallError) as info:
            await call(link, "echo", "x" * (2 << 20))
        assert info.value.code == "PAYLOAD_TOO_LARGE"
        assert "calc.echo" in info.value.message
        deep: object = []
        for _ in range(40):
            deep = [deep]
        with pytest.raises(WorkerCallError) as info:
            await call(link, "echo", deep)
        assert info.value.code == "PAYLOAD_TOO_LARGE"
        assert "nested deeper" in info.value.message
        with pytest.raises(WorkerCallError) as info:
            await call(link, "echo", {1, 2})
        assert info.value.code == "INVALID_ARGS"
        assert await call(link, "add", 5) == msgpack.packb(5)


async def test_a_result_is_checked_with_room_for_the_daemons_envelope() -> None:
    depth = DEFAULT_LIMITS.max_depth
    async with worker_link() as (_worker, link):
        # In [1, id, nil, {"result": value, ...}] the value sits at level 3.
        assert decode_value(await call(link, "nest", depth - 2)) is not None
        with pytest.raises(WorkerCallError) as info:
            await call(link, "nest", depth - 1)
        assert info.value.code == "BAD_RESULT"
        assert "nested deeper" in info.value.message


async def test_a_worker_killed_fails_every_call_in_flight_at_once() -> None:
    failures: list[str] = []
    async with worker_link() as (worker, link):

        async def hanging() -> None:
            with pytest.raises(WorkerCallError) as info:
                await call(link, "hang")
            failures.append(info.value.code)

        async with trio.open_nursery() as calls:
            for _ in range(3):
                calls.start_soon(hanging)
            await trio.testing.wait_all_tasks_blocked()
            assert link.in_flight == 3
            worker.kill()
        assert failures == ["WORKER_EXITED"] * 3
        assert link.closed
        with pytest.raises(WorkerCallError) as info:
            await call(link, "add", 1)
        assert info.value.code == "WORKER_EXITED"


async def test_nothing_listening_is_unreachable() -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WITHIN), pytest.raises(WorkerCallError) as info:
            await open_link("/tmp/omx-no-such-worker.sock", nursery, timeout=1)
    assert info.value.code == "WORKER_UNREACHABLE"


# ---------------------------------------------------------------------- replies no worker sends


@contextlib.asynccontextmanager
async def link_on_pair(
    limits: Limits = DEFAULT_LIMITS,
) -> AsyncIterator[tuple[WorkerLink, trio.SocketStream]]:
    """A link whose "worker" is the far end of a socket pair, written by the test."""
    ours, theirs = trio.socket.socketpair()
    async with trio.SocketStream(theirs) as far, trio.open_nursery() as nursery:
        link = WorkerLink(trio.SocketStream(ours), "pair", limits=limits)
        await nursery.start(link.run)
        with trio.fail_after(WITHIN):
            yield link, far
        link.close()


async def _request(far: trio.SocketStream) -> list[object]:
    request: list[object] = msgpack.unpackb(await far.receive_some(65536))
    return request


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"\xc1", "invalid msgpack"),
        (msgpack.packb([1, 0, None, "x" * 5000]), "frame limit"),
        (msgpack.packb([1, 0, "not a map", None]), "an error must be a map"),
    ],
)
async def test_a_bad_reply_fails_the_link_not_the_daemon(reply: bytes, reason: str) -> None:
    limits = Limits(max_frame=4096, read_size=1024)
    async with link_on_pair(limits) as (link, far):
        async with trio.open_nursery() as calls:

            async def failing() -> None:
                with pytest.raises(WorkerCallError) as info:
                    await call(link, "add", 1)
                assert info.value.code == "PROTOCOL_ERROR"
                assert reason in info.value.message

            calls.start_soon(failing)
            assert (await _request(far))[2] == "calc.add"
            await far.send_all(reply)
        assert link.closed


async def test_replies_in_any_order_and_split_anywhere_reach_their_callers() -> None:
    async with link_on_pair() as (link, far):
        got: dict[int, bytes] = {}

        async def one(n: int) -> None:
            got[n] = await call(link, "echo", n)

        async with trio.open_nursery() as calls:
            for n in range(3):
                calls.start_soon(one, n)
            unpacker = msgpack.Unpacker()
            requests: list[list[object]] = []
            while len(requests) < 3:
                unpacker.feed(await far.receive_some(65536))
                requests.extend(unpacker)
            replies = b"".join(
                msgpack.packb([1, r[1], None, {"n": r[3][0]["args"][0]}])  # type: ignore[index]
                for r in reversed(requests)
            )
            for byte in range(len(replies)):  # one byte at a time
                await far.send_all(replies[byte : byte + 1])
        assert got == {n: msgpack.packb({"n": n}) for n in range(3)}
        assert not link.closed
        link.close()


async def test_a_connection_error_from_the_worker_fails_its_calls_with_that_code() -> None:
    async with link_on_pair() as (link, far):
        async with trio.open_nursery() as calls:

            async def failing() -> None:
                with pytest.raises(WorkerCallError) as info:
                    await call(link, "add", 1)
                assert info.value.code == "TIMEOUT"

            calls.start_soon(failing)
            await _request(far)
            error = {"code": "TIMEOUT", "message": "idle"}
            await far.send_all(msgpack.packb([1, None, error, None]))
        assert link.closed


async def test_a_link_cancelled_while_opening_stops_its_tasks() -> None:
    directory = tempfile.mkdtemp(prefix="ol-", dir="/tmp")
    path = os.path.join(directory, "silent.sock")
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await listener.bind(path)
        listener.listen()
        with trio.fail_after(WITHIN):
            # The nursery ends only once the half-opened link's tasks have stopped.
            async with trio.open_nursery() as nursery:
                opening = trio.CancelScope()

                async def silent_worker() -> None:
                    conn, _ = await listener.accept()
                    with conn:
                        assert b"worker.hello" in await conn.recv(4096)
                        opening.cancel()  # the caller gives up while waiting for hello
                        # The link closes its end: no task of it is left holding it.
                        assert await conn.recv(4096) == b""

                nursery.start_soon(silent_worker)
                with opening:
                    await open_link(path, nursery, timeout=WITHIN)
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
