"""Daemon-owned sockets under real HTTP load: ``reload`` and ``scale`` of a
socket-activated app (``examples/http_server.py``) refuse and fail no request.

Real processes, a real HTTP/1.0 client on Trio streams, free ports.
"""

from __future__ import annotations

import os
import socket
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from orchestrator_harness import open_orchestrator

from omnitron.daemon._errors import AppStartFailed
from omnitron.daemon._orchestrator import Orchestrator
from omnitron.state import AppStatus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

SERVER = Path(__file__).resolve().parents[2] / "examples" / "http_server.py"
WAIT = 30.0
"""Generous bound for real processes to come and go."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def web(port: int, instances: int, *, command: list[str] | None = None, **extra: Any) -> dict:
    return {
        "name": "web",
        "command": command or [sys.executable, str(SERVER)],
        "sockets": [{"name": "http", "port": port}],
        "ready": "notify",
        "instances": instances,
        "stop_timeout": "10s",
        **extra,
    }


async def get(port: int, path: str = "/") -> tuple[int, str]:
    """One HTTP/1.0 request: ``(status, body)``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body.decode()


class Load:
    """``clients`` request loops against ``port`` until stopped; every outcome counted."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.clients = clients
        self.served: Counter[int] = Counter()  # pid -> requests answered
        self.failures: list[str] = []
        self._stop = trio.Event()

    @property
    def ok(self) -> int:
        return sum(self.served.values())

    async def _client(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = await get(self.port)
            except OSError as exc:  # refused, reset, broken
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if status != 200 or not body.startswith("pid "):
                self.failures.append(f"{status} {body!r}")
                continue
            self.served[int(body.split()[1])] += 1

    async def until(self, check: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT):
            while not check():  # noqa: ASYNC110 - the load itself is what changes
                await trio.sleep(0.01)

    async def run(self, nursery: trio.Nursery) -> None:
        for _ in range(self.clients):
            nursery.start_soon(self._client)
        await self.until(lambda: self.ok >= 20)

    def stop(self) -> None:
        self._stop.set()


async def until(check: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not check():  # noqa: ASYNC110 - records and /proc give no event here
            await trio.sleep(0.02)


def online(orchestrator: Orchestrator, count: int) -> bool:
    record = orchestrator.apps["web"]
    return record.status is AppStatus.ONLINE and len(record.processes) == count


def pids(orchestrator: Orchestrator) -> dict[int, int | None]:
    return {i: p.pid for i, p in sorted(orchestrator.apps["web"].processes.items())}


def socket_inode(pid: int, fd: int = 3) -> str:
    """``socket:[N]``: which open socket fd ``fd`` of ``pid`` is."""
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def the_server(pid: int) -> int:
    """The server's pid: ``pid`` itself (exec'd) or its one child (a shell wrapper)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        if str(SERVER).encode() in f.read():
            return pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return int(f.read().split()[0])


async def test_reload_under_load_refuses_and_fails_nothing(tmp_path: Path) -> None:
    port = free_port()
    async with open_orchestrator(tmp_path, [web(port, 3)]) as (orchestrator, _):
        await until(lambda: online(orchestrator, 3))
        before = pids(orchestrator)
        shared = {socket_inode(pid) for pid in before.values() if pid}
        assert len(shared) == 1  # the three processes accept on one socket
        load = Load(port)
        async with trio.open_nursery() as nursery:
            await load.run(nursery)
            assert await orchestrator.reload("web") == ["web"]
            after = pids(orchestrator)
            assert set(after.values()).isdisjoint(before.values())
            # The new processes answer, on the same socket as the old ones did.
            await load.until(lambda: any(load.served[pid] for pid in after.values() if pid))
            assert {socket_inode(pid) for pid in after.values() if pid} == shared
            ok_at_reload = load.ok
            await load.until(lambda: load.ok >= ok_at_reload + 50)
            load.stop()
        assert load.failures == []
        assert set(load.served) & {pid for pid in before.values() if pid}
        assert orchestrator.apps["web"].restarts == 0


async def test_an_in_flight_request_is_finished_by_the_old_process(tmp_path: Path) -> None:
    port = free_port()
    async with open_orchestrator(tmp_path, [web(port, 1)]) as (orchestrator, _):
        await until(lambda: online(orchestrator, 1))
        [old] = pids(orchestrator).values()
        answer: list[tuple[int, str]] = []

        async def slow() -> None:
            answer.append(await get(port, "/sleep?s=1.5"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await trio.sleep(0.3)  # the request is being served (there is no event for it)
            assert await orchestrator.reload("web") == ["web"]
        [new] = pids(orchestrator).values()
        assert new != old
        assert answer == [(200, f"pid {old}\n")]
        assert await get(port) == (200, f"pid {new}\n")


async def test_scale_up_and_down_under_load(tmp_path: Path) -> None:
    port = free_port()
    async with open_orchestrator(tmp_path, [web(port, 1)]) as (orchestrator, _):
        await until(lambda: online(orchestrator, 1))
        load = Load(port)
        async with trio.open_nursery() as nursery:
            await load.run(nursery)
            assert await orchestrator.scale("web", 4) == 1
            four = pids(orchestrator)
            assert online(orchestrator, 4)
            assert len({socket_inode(pid) for pid in four.values() if pid}) == 1
            await load.until(lambda: sum(1 for pid in four.values() if load.served[pid]) >= 3)
            assert await orchestrator.scale("web", 2) == 4
            # The newest were stopped; the first two are the ones that ran before.
            assert pids(orchestrator) == {0: four[0], 1: four[1]}
            ok = load.ok
            await load.until(lambda: load.ok >= ok + 50)
            load.stop()
        assert load.failures == []
        assert orchestrator.apps["web"].restarts == 0


async def test_a_broken_new_process_keeps_the_old_ones_serving(tmp_path: Path) -> None:
    port = free_port()
    flag = tmp_path / "broken"
    command = [
        "sh",
        "-c",
        f'if [ -e {flag} ]; then echo "bad config: $(cat {flag})" >&2; exit 2; fi; '
        f'exec "{sys.executable}" "{SERVER}"',
    ]
    (tmp_path / "logs").mkdir()
    async with open_orchestrator(tmp_path, [web(port, 2, command=command)]) as (
        orchestrator,
        service,
    ):
        await until(lambda: online(orchestrator, 2))
        before = pids(orchestrator)
        load = Load(port)
        async with trio.open_nursery() as nursery:
            await load.run(nursery)
            flag.write_text("no database url")
            with pytest.raises(AppStartFailed, match="new instance 0 did not become ready"):
                await orchestrator.reload("web")
            ok = load.ok
            await load.until(lambda: load.ok >= ok + 50)
            load.stop()
        assert load.failures == []
        assert pids(orchestrator) == before
        assert set(load.served) <= {the_server(pid) for pid in before.values() if pid}
        details = await service.failure_details("web")
        assert "bad config: no database url" in details["stderr_tail"][-1]


async def test_a_port_in_use_errors_the_app_and_names_the_socket(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        apps = [web(port, 2), {"name": "other", "command": ["sleep", "3600"]}]
        async with open_orchestrator(tmp_path, apps) as (orchestrator, _):
            await until(lambda: orchestrator.apps["other"].status is AppStatus.ONLINE)
            record = orchestrator.apps["web"]
            assert record.status is AppStatus.CRASHED
            reason = (
                f"app 'web' cannot bind its socket tcp 127.0.0.1:{port}: Address already in use"
            )
            assert record.last_error == reason
            assert record.processes == {}  # nothing was started
            with pytest.raises(AppStartFailed) as info:
                await orchestrator.start("web")
            assert info.value.message == f"web failed to start: {reason}"
            busy.close()  # freed: the next start binds it
            assert await orchestrator.start("web") == ["web"]
            await until(lambda: online(orchestrator, 2))
            assert (await get(port))[0] == 200


async def test_sockets_live_while_the_app_runs_and_close_when_it_stops(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "web.sock"
    app = web(port, 2)
    app["sockets"].append({"name": "local", "path": str(path)})
    async with open_orchestrator(tmp_path, [app]) as (orchestrator, _):
        await until(lambda: online(orchestrator, 2))
        [pid, *_] = pids(orchestrator).values()
        assert pid is not None
        inodes = {
            (socket_inode(p, 3), socket_inode(p, 4)) for p in pids(orchestrator).values() if p
        }
        assert len(inodes) == 1  # both processes hold the same two sockets
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(WAIT)
            client.connect(str(path))
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.0 200")
        # A crash of a process does not close them: the others keep accepting.
        os.kill(pid, 9)
        assert (await get(port))[0] == 200
        await orchestrator.stop("web")
        with pytest.raises(OSError, match="all attempts to connect"):
            await get(port)
        assert not path.exists()
        assert orchestrator.sockets.addresses("web") == ()
        assert await orchestrator.start("web") == ["web"]
        await until(lambda: online(orchestrator, 2))
        assert (await get(port))[0] == 200
        assert path.exists()
    assert not path.exists()  # the daemon closed them as it stopped


async def test_a_stopped_pool_gets_its_sockets_again_in_group_mode(tmp_path: Path) -> None:
    port = free_port()
    apps = [web(port, 2)]
    async with open_orchestrator(tmp_path, apps, supervision={"strategy": "one_for_all"}) as (
        orchestrator,
        _,
    ):
        await until(lambda: online(orchestrator, 2))
        assert await orchestrator.reload("web") == ["web"]
        await orchestrator.stop("web")
        with pytest.raises(OSError, match="all attempts to connect"):
            await get(port)
        assert await orchestrator.start("web") == ["web"]
        await until(lambda: online(orchestrator, 2))
        assert (await get(port))[0] == 200
        assert await orchestrator.reload("web") == ["web"]
        assert (await get(port))[0] == 200


async def test_health_probes_follow_the_new_processes(tmp_path: Path) -> None:
    port = free_port()
    app = web(port, 2, health={"http": f"http://127.0.0.1:{port}/", "interval": "200ms"})
    async with open_orchestrator(tmp_path, [app]) as (orchestrator, _):
        await until(lambda: online(orchestrator, 2))
        states = orchestrator.health.states
        await until(
            lambda: (
                {states[("web", i)].pid for i in (0, 1) if ("web", i) in states}
                == set(pids(orchestrator).values())
            )
        )
        assert await orchestrator.reload("web") == ["web"]
        after = pids(orchestrator)
        assert {i: states[("web", i)].pid for i in (0, 1)} == after
