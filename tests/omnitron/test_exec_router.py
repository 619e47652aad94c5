"""The router against real workers: round-robin, draining, passing a call on.

Two real ``users`` workers of ``examples/shop`` (``python -m omnitron.worker
serve``), started here as the daemon would start them; the records the router
reads are built by hand, as the orchestrator's would be. These are the
behaviours a reload relies on: a drained worker gets no new call and its calls
in flight end first; a worker already stopping (it answers ``UNAVAILABLE``, the
call never ran there) passes the call to the next one.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing

from omnitron.config import load_config
from omnitron.config._bootstrap import WorkerSlot, describe_sync
from omnitron.daemon._exec import (
    EXEC_ERRORS,
    ExecArgsInvalid,
    ExecResult,
    Router,
    register_exec,
)
from omnitron.daemon._records import AppRecord, ProcessRecord
from omnitron.rpc import (
    Dispatcher,
    Encoded,
    MethodNotFound,
    ServerOptions,
    connect_unix,
    open_unix_server,
)
from omnitron.state import AppStatus

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sockets")

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
READY_WITHIN = 30.0


class Shop:
    def __init__(self, router: Router, pids: list[int], sockets: list[Path]) -> None:
        self.router = router
        self.pids = pids
        self.sockets = sockets
        self.processes: list[trio.Process] = []


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    ecosystem = load_config(SHOP / "omnitron.toml")
    [app] = ecosystem.apps
    systems, _ = describe_sync(ecosystem)
    run = Path("/tmp") / f"omx-router-{os.getpid()}-{id(tmp_path) % 10_000}"
    run.mkdir(mode=0o700)
    notify = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await notify.bind(str(run / "notify"))
    processes: list[trio.Process] = []
    sockets = [run / f"users.{i}.sock" for i in range(2)]
    try:
        for index, path in enumerate(sockets):
            processes.append(
                await trio.lowlevel.open_process(
                    [sys.executable, "-m", "omnitron.worker", "serve", str(app.bootstrap), "users"],
                    cwd=SHOP,
                    env={
                        **os.environ,
                        "OMNITRON_WORKER_SOCKET": str(path),
                        "OMNITRON_INSTANCE": str(index),
                        "NOTIFY_SOCKET": str(run / "notify"),
                        "OMNITRON_STOP_TIMEOUT": "10",
                    },
                )
            )
        with trio.fail_after(READY_WITHIN):
            ready = 0
            while ready < 2:
                ready += (await notify.recv(1024)).count(b"READY=1")
        record = AppRecord(
            config=app,
            instances=2,
            processes={
                i: ProcessRecord(
                    instance=i,
                    pid=proc.pid,
                    status=AppStatus.ONLINE,
                    worker=WorkerSlot("users", i, str(sockets[i])),
                )
                for i, proc in enumerate(processes)
            },
        )
        router = Router(lambda: {"shop": record}, systems)
        async with trio.open_nursery() as nursery:
            await nursery.start(router.run)
            fixture = Shop(router, [p.pid for p in processes], sockets)
            fixture.processes = processes
            yield fixture
            nursery.cancel_scope.cancel()
    finally:
        notify.close()
        for proc in processes:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        for leftover in run.iterdir():
            leftover.unlink()
        run.rmdir()


async def whoami(router: Router) -> int:
    done = await router.call("shop", "users", "whoami", [], {})
    pid: int = done.result["pid"]
    assert done.pid == pid
    return pid


async def test_the_result_is_forwarded_as_the_workers_bytes(shop: Shop) -> None:
    done = await shop.router.call("shop", "users", "find_by_id", ["u_1"], {})
    assert done.raw == msgpack.packb(done.result, use_bin_type=True)
    assert done.result["id"] == "u_1"
    reply = done.to_wire()
    assert isinstance(reply, Encoded)
    assert reply.data.count(done.raw) == 1  # spliced in, not re-encoded
    assert msgpack.unpackb(reply.data) == {
        "result": done.result,
        "process": "users",
        "instance": done.instance,
        "pid": done.pid,
    }


async def test_calls_go_round_robin_and_unknown_names_are_not_looked_up(shop: Shop) -> None:
    assert [await whoami(shop.router) for _ in range(4)] == [*shop.pids, *shop.pids]
    for service, method in [("users", "_internal"), ("users", "os.system"), ("nope", "x")]:
        with pytest.raises(MethodNotFound):
            await shop.router.call("shop", service, method, [], {})


async def test_a_drained_worker_gets_no_new_call_and_its_call_in_flight_ends_first(
    shop: Shop,
) -> None:
    happened: list[str] = []
    first, second = shop.pids

    async def slow_call() -> None:
        done = await shop.router.call("shop", "users", "sleep", [0.5], {})
        assert done.pid == first
        happened.append("call answered")

    async def drain() -> None:
        assert await shop.router.drain("shop", 0, first, within=10)
        happened.append("drained")

    assert [await whoami(shop.router) for _ in range(2)] == [first, second]  # connected
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_call)  # the third call goes to instance 0 again
        await trio.testing.wait_all_tasks_blocked()
        assert shop.router.in_flight("shop") == 1
        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        # While it drains, every new call goes to the other worker.
        assert [await whoami(shop.router) for _ in range(3)] == [second] * 3
    assert happened == ["call answered", "drained"]


async def test_a_call_reaching_a_stopping_worker_is_passed_to_the_next(shop: Shop) -> None:
    first, second = shop.pids
    assert await whoami(shop.router) == first  # connections to both are open now
    assert await whoami(shop.router) == second
    async with trio.open_nursery() as nursery:
        # A long call keeps the first worker in its stop sequence after SIGTERM.
        nursery.start_soon(shop.router.call, "shop", "users", "sleep", [1.0], {})
        await trio.testing.wait_all_tasks_blocked()
        os.kill(first, signal.SIGTERM)
        with trio.fail_after(READY_WITHIN):
            # It stops taking calls: its socket file goes (a file: no event to await).
            while shop.sockets[0].exists():  # noqa: ASYNC110
                await trio.sleep(0.01)
        # The records still show it online; the call meant for it (UNAVAILABLE:
        # never run there) goes to the other worker, as does the next one.
        assert await whoami(shop.router) == second
        assert await whoami(shop.router) == second


# ---------------------------------------------------------------------- without a task per call


class Outcomes:
    """What :meth:`Router.start` hands its callback, and an event per outcome."""

    def __init__(self) -> None:
        self.got: list[object] = []
        self.changed = trio.Event()

    def __call__(self, outcome: object) -> None:
        self.got.append(outcome)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, count: int) -> list[object]:
        with trio.fail_after(READY_WITHIN):
            while len(self.got) < count:
                await self.changed.wait()
        return self.got


async def test_start_sends_only_on_open_links_and_shares_the_round_robin(shop: Shop) -> None:
    first, second = shop.pids
    outcomes = Outcomes()
    # No link is open yet: nothing is sent and no turn is taken.
    assert not shop.router.start("shop", "users", "whoami", [], {}, within=5, done=outcomes)
    assert [await whoami(shop.router) for _ in range(2)] == [first, second]
    for _ in range(2):
        assert shop.router.start("shop", "users", "whoami", [], {}, within=5, done=outcomes)
        assert shop.router.in_flight("shop") == 1
        await outcomes.wait_for(len(outcomes.got) + 1)
        assert await whoami(shop.router) == second  # the turn after the started call's
    results = [done for done in outcomes.got if isinstance(done, ExecResult)]
    assert [done.pid for done in results] == [first, first]
    assert [done.result["pid"] for done in results] == [first, first]
    assert shop.router.in_flight("shop") == 0
    # Errors come as the exceptions call() raises: from the worker, or at once.
    assert shop.router.start("shop", "users", "find_by_id", [], {}, within=5, done=outcomes)
    [*_, error] = await outcomes.wait_for(3)
    assert isinstance(error, ExecArgsInvalid)
    with pytest.raises(MethodNotFound):
        shop.router.start("shop", "users", "_internal", [], {}, within=5, done=outcomes)


def exec_dispatcher(router: Router) -> Dispatcher:
    """``daemon.exec`` as the daemon registers it: a task-run handler and the inline one."""
    dispatcher = Dispatcher(error_types=EXEC_ERRORS)
    register_exec(dispatcher, lambda: router)
    return dispatcher


async def test_a_connection_closed_mid_exec_leaves_the_worker_link_healthy(shop: Shop) -> None:
    """The client of a call in flight disconnects: the call ends on the worker, its
    reply is dropped, and the same link serves the next calls, in one write or not."""
    first, second = shop.pids
    assert [await whoami(shop.router) for _ in range(2)] == [first, second]  # links open
    links = dict(shop.router._links)
    sock = shop.sockets[0].parent / "d.sock"
    options = ServerOptions(idle_timeout=None)
    async with open_unix_server(sock, exec_dispatcher(shop.router), options=options) as srv:
        gone = await trio.open_unix_socket(str(sock))
        request = [0, 1, "daemon.exec", [{"app": "shop", "service": "users", "method": "sleep"}]]
        request[3][0]["args"] = [0.3]  # type: ignore[index]
        await gone.send_all(msgpack.packb(request))
        with trio.fail_after(READY_WITHIN):
            while not shop.router.in_flight("shop"):  # noqa: ASYNC110 - no event to await
                await trio.sleep(0.01)
        await gone.aclose()
        async with connect_unix(sock) as client:
            answers = {}
            async with trio.open_nursery() as nursery:

                async def ask(i: int) -> None:
                    params = {"app": "shop", "service": "users", "method": "find_by_id"}
                    answers[i] = await client.call("daemon.exec", **params, args=[f"u_{1 + i % 2}"])

                for i in range(1, 9):
                    nursery.start_soon(ask, i)
            assert {i: a["result"]["id"] for i, a in answers.items()} == {
                i: f"u_{1 + i % 2}" for i in range(1, 9)
            }
            with trio.fail_after(READY_WITHIN):
                while shop.router.in_flight("shop"):  # noqa: ASYNC110 - no event to await
                    await trio.sleep(0.01)
            assert srv.statistics().calls_in_flight == 0
            assert shop.router._links == links
            assert not any(link.closed for link in links.values())
            done = await client.call("daemon.exec", app="shop", service="users", method="whoami")
            assert done["result"]["pid"] in (first, second)
