"""``python -m omnitron.worker serve``: real worker processes, called through the
daemon-side client and through raw sockets."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import msgpack
import pytest
import trio
from worker_process import BOOTSTRAP, PROJECT, running_worker

from omnitron import __version__
from omnitron._system import PROTOCOL_VERSION, check_identity
from omnitron.daemon._workers import WorkerCallError, open_worker_client
from omnitron.rpc import Call, Dispatcher, Role, open_unix_server

pytestmark = pytest.mark.slow


async def test_hello_services_and_identity() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        hello = await client.hello()
        assert hello == {
            "protocol": PROTOCOL_VERSION,
            "omnitron": __version__,
            "python": sys.executable,
            "pid": worker.process.pid,
            "system": "lab",
            "process": "calc",
            "instance": 3,
        }
        assert check_identity(hello) is None
        assert client.identity == hello
        assert stat.S_IMODE(os.stat(worker.socket).st_mode) == 0o600
        services = await client.builtin("services")
        assert list(services) == ["calc"]
        assert "async add(a: int, b: int = 0, *, scale: int = 1) -> int" in services["calc"]
        assert "echo(value: object) -> object" in services["calc"]
        assert not any(text.startswith(("_internal", "start", "stop")) for text in services["calc"])


async def test_sync_and_async_methods_with_args_and_kwargs() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        assert await client.call("calc", "add", [2, 3], {"scale": 10}) == 50
        assert await client.call("calc", "add", [], {"a": 4}) == 4
        value = {"list": [1, 2.5, None, True], "bytes": b"\x00\xff", "text": "é"}
        assert await client.call("calc", "echo", [value]) == value
        # The definition's env reached the process.
        assert await client.call("calc", "greeting") == "hello"


async def test_an_exception_is_a_structured_app_error_with_traceback() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        with pytest.raises(WorkerCallError) as info:
            await client.call("calc", "fail", ["no such user"])
        error = info.value
        assert error.code == "APP_ERROR"
        assert error.message == "no such user"
        assert error.type == "ValueError"
        assert error.traceback is not None
        assert error.traceback.startswith("Traceback (most recent call last):")
        assert str(PROJECT / "calc" / "service.py") in error.traceback
        assert "raise ValueError(message)" in error.traceback
        assert "_serve.py" not in error.traceback
        # The connection and the worker are fine afterwards.
        assert await client.call("calc", "add", [1, 1]) == 2


@pytest.mark.parametrize(
    ("service", "method"),
    [
        ("calc", "_internal"),
        ("calc", "__class__"),
        ("calc", "__init__"),
        ("calc", "start"),  # on_start, not @public
        ("calc", "nope"),
        ("os", "system"),
        ("calc", "os"),
        ("calc.os", "system"),
        ("worker", "nope"),
    ],
)
async def test_only_public_methods_are_reachable(service: str, method: str) -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        with pytest.raises(WorkerCallError) as info:
            await client.call(service, method, ["echo pwned"])
        assert info.value.code == "METHOD_NOT_FOUND"
        assert await client.call("calc", "add", [1]) == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ([], {}, "missing a required argument: 'a'"),
        ([1, 2, 3], {}, "too many positional arguments"),
        ([1], {"scale": 2, "nope": 1}, "got an unexpected keyword argument 'nope'"),
        ([1], {"a": 2}, "multiple values for argument 'a'"),
    ],
)
async def test_arguments_are_checked_against_the_signature(
    args: list[object], kwargs: dict[str, object], expected: str
) -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        with pytest.raises(WorkerCallError) as info:
            await client.call("calc", "add", args, kwargs)
        assert info.value.code == "INVALID_ARGS"
        assert expected in info.value.message
        assert "calc.add(a: int, b: int = 0, *, scale: int = 1) -> int" in info.value.message


async def test_payload_limits() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        # Refused before sending; the connection stays usable.
        with pytest.raises(WorkerCallError) as info:
            await client.call("calc", "echo", ["x" * (2 << 20)])
        assert info.value.code == "PAYLOAD_TOO_LARGE"
        assert await client.call("calc", "add", [5]) == 5
        # A result over the frame limit is that call's error, not the connection's.
        with pytest.raises(WorkerCallError) as info:
            await client.call("calc", "big", [2 << 20])
        assert info.value.code == "BAD_RESULT"
        assert "calc.big" in info.value.message
        with pytest.raises(WorkerCallError) as info:
            await client.call("calc", "unencodable")
        assert info.value.code == "BAD_RESULT"
        assert "return plain values" in info.value.message
        assert await client.call("calc", "big", [10]) == "x" * 10

        # A raw client that sends a 2 MiB frame anyway is cut off; others are not.
        stream = await trio.open_unix_socket(worker.socket)
        frame = msgpack.packb([0, 1, "calc.echo", [{"args": ["x" * (2 << 20)]}]])
        with trio.fail_after(30):
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(frame)
            received = b""
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                received += data
        await stream.aclose()
        reply = msgpack.unpackb(received)
        assert reply[0] == 1
        assert reply[2]["code"] == "FRAME_TOO_LARGE"
        assert await client.call("calc", "add", [6]) == 6


async def test_a_hanging_call_times_out_and_the_next_succeeds() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        with trio.fail_after(30), pytest.raises(WorkerCallError) as info:
            await client.call("calc", "hang", timeout=0.5)
        assert info.value.code == "TIMEOUT"
        assert "calc.hang" in info.value.message
        assert not client.closed
        assert await client.call("calc", "add", [2], {"b": 2}) == 4


async def test_a_blocked_sync_method_times_out_on_the_client_side() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        # A sync method cannot be cancelled in the worker: the client gives up at
        # timeout + TIMEOUT_GRACE on its own, and the connection stays usable.
        with trio.fail_after(30), pytest.raises(WorkerCallError) as info:
            await client.call("calc", "block", [3], timeout=0.2)
        assert info.value.code == "TIMEOUT"
        assert "the worker is blocked" in info.value.message
        assert not client.closed
        with trio.fail_after(30):
            assert await client.call("calc", "add", [7], timeout=20) == 7


async def test_calls_are_pipelined_on_one_connection() -> None:
    results: list[int] = []
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(8):

                    async def one() -> None:
                        results.append(await client.call("calc", "rendezvous", [8]))

                    nursery.start_soon(one)
    # Each call returns only once all 8 were in the worker at the same time.
    assert results == [8] * 8


async def test_a_worker_killed_mid_call_fails_that_call_promptly() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        outcome: list[WorkerCallError] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def waiting() -> None:
                    try:
                        await client.call("calc", "hang", timeout=None)
                    except WorkerCallError as exc:
                        outcome.append(exc)

                nursery.start_soon(waiting)
                await trio.testing.wait_all_tasks_blocked()
                # Replies follow the requests' order of reading: once hello answers,
                # the hanging call is in the worker.
                await client.hello()
                worker.kill(signal.SIGKILL)
        (error,) = outcome
        assert error.code == "WORKER_EXITED"
        assert worker.socket in error.message
        assert client.closed
        with pytest.raises(WorkerCallError) as info:
            await client.call("calc", "add", [1])
        assert info.value.code == "WORKER_EXITED"


async def test_sigterm_drains_calls_and_runs_the_stop_steps_in_order() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        assert worker.events() == [
            "system.before_start",
            "process.before_start",
            "module.on_start",
            "calc.on_start",
            "process.after_start",
            "system.after_start",
        ]
        replies: list[object] = []
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:

                async def slow() -> None:
                    replies.append(await client.call("calc", "slow", [0.5]))

                nursery.start_soon(slow)
                await trio.testing.wait_all_tasks_blocked()
                await client.hello()  # the slow call is in the worker now
                worker.kill(signal.SIGTERM)
                code = await worker.process.wait()
        assert code == 0
        assert replies == ["done"]  # the in-flight call finished and was answered
        assert worker.events()[6:] == [
            "system.before_stop",
            "process.before_stop",
            "calc.slow done",
            "calc.on_stop",
            "process.after_stop",
            "system.after_stop",
        ]
        assert not os.path.exists(worker.socket)  # noqa: ASYNC240 - one stat in a test


async def test_calls_during_the_drain_are_refused_as_unavailable() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.call, "calc", "slow", [1.0])
                await trio.testing.wait_all_tasks_blocked()
                await client.hello()
                worker.kill(signal.SIGTERM)
                await worker.notified(b"STOPPING=1")
                with pytest.raises(WorkerCallError) as info:
                    await client.call("calc", "add", [1])
                assert info.value.code == "UNAVAILABLE"
            assert await worker.process.wait() == 0


async def test_imported_files_lists_the_project_modules() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        files = await client.builtin("imported_files")
        assert str(PROJECT / "calc" / "service.py") in files
        assert str(PROJECT / "calc" / "hooks.py") in files
        assert str(BOOTSTRAP) in files
        assert str(PROJECT / "calc" / "broken.py") not in files  # another process's module
        assert all(f.startswith(str(PROJECT) + os.sep) for f in files)
        assert not any("site-packages" in f for f in files)


async def test_health_combines_hooks_and_health_checks() -> None:
    async with running_worker() as worker, open_worker_client(worker.socket) as client:
        health = await client.builtin("health")
        assert health["ok"] is True
        assert [c["name"] for c in health["checks"]] == [
            "system lab on_health_check",
            "calc.check",
        ]
        await client.call("calc", "set_healthy", [False])
        health = await client.builtin("health")
        assert health == {
            "ok": False,
            "detail": "calc.check: calc is sick",
            "checks": [
                {"name": "system lab on_health_check", "ok": True, "detail": None},
                {"name": "calc.check", "ok": False, "detail": "calc is sick"},
            ],
        }


async def test_system_health_hook_failing() -> None:
    env = {"LAB_SYSTEM_UNHEALTHY": "1"}
    async with running_worker(env=env) as worker, open_worker_client(worker.socket) as client:
        health = await client.builtin("health")
        assert health["ok"] is False
        assert health["detail"] == "system lab on_health_check: not ok"


def _serve(process: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omnitron.worker", "serve", str(BOOTSTRAP), process],
        env={**os.environ, "OMNITRON_WORKER_SOCKET": "/tmp/ow-unused.sock", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_failing_on_start_exits_1_with_the_traceback() -> None:
    done = _serve("broken")
    assert done.returncode == 1
    assert "process broken failed to start: RuntimeError: cannot reach the database" in done.stderr
    assert str(PROJECT / "calc" / "broken.py") in done.stderr
    assert not os.path.exists("/tmp/ow-unused.sock")


def test_a_missing_module_exits_1_naming_it() -> None:
    done = _serve("missing")
    assert done.returncode == 1
    assert "No module named 'calc.does_not_exist'" in done.stderr


def test_an_unknown_process_or_missing_socket_is_a_usage_error() -> None:
    done = _serve("nope")
    assert done.returncode == 2
    assert "system 'lab' has no process 'nope' (it has: calc, broken, missing)" in done.stderr
    done = _serve("calc", OMNITRON_WORKER_SOCKET="")
    assert done.returncode == 2
    assert "OMNITRON_WORKER_SOCKET is not set" in done.stderr


AIO_CLIENT = """
import asyncio, json, sys
from aio_msgpack_rpc import Client
from aio_msgpack_rpc.error import RPCResponseError

async def main():
    reader, writer = await asyncio.open_unix_connection(sys.argv[1])
    client = Client(reader, writer, response_timeout=30)
    await client.notify("client.hello", "aio-msgpack-rpc")
    out = {"add": await client.call("calc.add", {"args": [20, 22]})}
    out["kwargs"] = await client.call("calc.add", {"args": [1], "kwargs": {"scale": 3}})
    out["hello"] = (await client.call("worker.hello"))["process"]
    try:
        await client.call("calc.fail", {"args": ["bad"]})
    except RPCResponseError as exc:
        out["error"] = exc.args[0]
    try:
        await client.call("calc.__class__")
    except RPCResponseError as exc:
        out["unknown"] = exc.args[0]
    client.close()
    print(json.dumps(out))

asyncio.run(main())
"""


async def test_a_third_party_msgpack_rpc_client_calls_a_worker(tmp_path: Path) -> None:
    pytest.importorskip("aio_msgpack_rpc")
    async with running_worker() as worker:
        done = await trio.run_process(
            [sys.executable, "-c", AIO_CLIENT, worker.socket],
            capture_stdout=True,
            capture_stderr=True,
        )
    import json

    out = json.loads(done.stdout)
    assert out["add"] == 42
    assert out["kwargs"] == 3
    assert out["hello"] == "calc"
    assert out["error"]["code"] == "APP_ERROR"
    assert out["error"]["message"] == "bad"
    assert out["error"]["data"]["type"] == "ValueError"
    assert "Traceback" in out["error"]["data"]["traceback"]
    assert out["unknown"]["code"] == "METHOD_NOT_FOUND"


async def test_connecting_to_a_worker_of_another_protocol_is_refused(tmp_path: Path) -> None:
    dispatcher = Dispatcher(ping=False)

    async def hello(call: Call) -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return {"protocol": 99, "omnitron": "9.0.0", "python": "/old/venv/bin/python"}

    dispatcher.register("worker.hello", hello, role=Role.OPERATOR)
    directory = Path(tempfile.mkdtemp(prefix="ow-", dir="/tmp"))  # mode 0700
    try:
        path = str(directory / "old.sock")
        async with open_unix_server(path, dispatcher):
            with pytest.raises(WorkerCallError) as info:
                async with open_worker_client(path):
                    raise AssertionError("the client must not be handed out")
        assert info.value.code == "PROTOCOL_MISMATCH"
        assert "9.0.0" in info.value.message
        assert "/old/venv/bin/python" in info.value.message
        assert f"this daemon's omnitron is {__version__}" in info.value.message
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_connecting_where_nothing_listens(tmp_path: Path) -> None:
    with pytest.raises(WorkerCallError) as info:
        async with open_worker_client(tmp_path / "none.sock"):
            pass
    assert info.value.code == "WORKER_UNREACHABLE"
    assert str(tmp_path / "none.sock") in info.value.message
