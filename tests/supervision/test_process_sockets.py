"""Supervisor-owned listening sockets, passed with the socket-activation protocol."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import trio

from supervision._errors import InvalidSpec, InvalidSpecType, StartFailure
from supervision._spec import Listen, Output, ProcessChild, Ready


async def test_listen_fds_environment_and_descriptors(slots, child, lines, tmp_path) -> None:
    out = lines()
    path = str(tmp_path / "app.sock")
    spec = ProcessChild(
        child("listen_fds"),
        listen=[Listen.tcp(0, name="web"), Listen.unix(path)],
        ready=Ready.fd(5),
        env={"READY_FD": "5"},
        stdout=Output.lines(out),
    )
    slot = slots.new(spec)
    await slot.start()
    # The line and the readiness newline travel on different fds: the line may
    # be read after the child is ready (print() writes its newline separately).
    [line] = await out.wait_for(lambda lines: len(lines) >= 1)
    report = json.loads(line)
    host, port = slot.runner.listen_addresses[0]
    assert (host, port != 0) == ("127.0.0.1", True)
    assert report == {
        "listen_fds": 2,
        "names": "web:unknown",
        "pid_matches": True,
        "cwd": os.getcwd(),
        "open_fds": [0, 1, 2, 3, 4, 5],
        "addresses": [[host, port], path],
    }
    assert (await slot.exited()).code == 0


async def test_listen_with_cwd(slots, child, lines, tmp_path) -> None:
    out = lines()
    spec = ProcessChild(
        child("listen_fds"), listen=[Listen.tcp(0)], cwd=str(tmp_path), stdout=Output.lines(out)
    )
    slot = slots.new(spec)
    await slot.start()
    await slot.exited()
    report = json.loads(out.lines[0])
    assert report["cwd"] == str(tmp_path)
    assert report["pid_matches"]
    assert report["open_fds"] == [0, 1, 2, 3]


async def test_sockets_are_kept_across_generations(slots, child, lines) -> None:
    out = lines()
    spec = ProcessChild(child("listen_fds"), listen=[Listen.tcp(0)], stdout=Output.lines(out))
    slot = slots.new(spec)
    for _ in range(2):
        await slot.start()
        await slot.exited()
    first, second = (json.loads(line)["addresses"] for line in out.lines)
    assert first == second == [list(slot.runner.listen_addresses[0])]


async def test_no_connection_refused_while_the_child_is_replaced(slots, child, wait_until) -> None:
    # The socket outlives the child: connections made while it restarts wait in the
    # backlog and are answered by the next generation. (A connection the killed
    # child had already accepted is lost with it: that is not a refusal.)
    spec = ProcessChild(
        child("listen_fds", "--serve"),
        listen=[Listen.tcp(0)],
        ready=Ready.fd(4),
        env={"READY_FD": "4"},
        stdout=Output.discard(),
    )
    slot = slots.new(spec)
    await slot.start()
    host, port = slot.runner.listen_addresses[0]
    answered_by: dict[str, int] = {}
    refused = 0
    done = trio.Event()

    async def client() -> None:
        nonlocal refused
        for _ in range(5000):
            if done.is_set():
                return
            try:
                stream = await trio.open_tcp_stream(host, port)
            except ConnectionRefusedError:
                refused += 1
                continue
            data = b""
            async with stream:
                try:
                    while chunk := await stream.receive_some(64):
                        data += chunk
                except trio.BrokenResourceError:
                    pass  # accepted by the generation that was just killed
            if data:
                pid = data.decode().split()[1]
                answered_by[pid] = answered_by.get(pid, 0) + 1

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            for _ in range(3):
                pid = slot.runner.pid
                assert pid is not None
                await wait_until(lambda pid=pid: answered_by.get(str(pid), 0) >= 5)
                os.kill(pid, signal.SIGKILL)
                await slot.exited()
                await slot.start()
            last = slot.runner.pid
            await wait_until(lambda: answered_by.get(str(last), 0) >= 5)
            done.set()
    assert refused == 0
    assert len(answered_by) == 4
    await slot.stop()


async def test_stale_unix_socket_is_replaced(slots, tmp_path) -> None:
    path = str(tmp_path / "stale.sock")
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(path)
    leftover.close()  # the file stays, nobody listens
    slot = slots.new(ProcessChild(["sleep", "3600"], listen=[Listen.unix(path)]))
    await slot.start()
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
    await slot.stop()
    await slot.runner.aclose()
    assert not await trio.Path(path).exists()


async def test_live_unix_socket_is_not_stolen(slots, tmp_path) -> None:
    path = str(tmp_path / "live.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen()
        slot = slots.new(ProcessChild(["sleep", "3600"], listen=[Listen.unix(path)]))
        with pytest.raises(StartFailure) as info:
            await slot.start()
    assert info.value.reason == (
        f"cannot open listening socket: unix {path}: a live listener already owns this socket path"
    )
    assert slot.spawned == []


async def test_unix_path_that_is_not_a_socket(slots, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("data")
    slot = slots.new(ProcessChild(["sleep", "3600"], listen=[Listen.unix(str(path))]))
    with pytest.raises(StartFailure, match="exists and is not a socket"):
        await slot.start()
    assert path.read_text() == "data"


async def test_port_in_use(slots) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        slot = slots.new(ProcessChild(["sleep", "3600"], listen=[Listen.tcp(port)]))
        with pytest.raises(StartFailure) as info:
            await slot.start()
    assert info.value.reason == (
        f"cannot open listening socket: tcp 127.0.0.1:{port}: Address already in use"
    )


async def test_aclose_releases_the_port(slots) -> None:
    slot = slots.new(ProcessChild(["sleep", "3600"], listen=[Listen.tcp(0)]))
    await slot.start()
    host, port = slot.runner.listen_addresses[0]
    await slot.stop()
    with socket.create_connection((host, port), timeout=5):
        pass  # still listening between generations
    await slot.runner.aclose()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=5).close()


async def test_a_shared_socket_reaches_two_children_and_outlives_them(slots, child, lines) -> None:
    # Listen.socket: the caller's socket, passed to every child as it is and never
    # closed by the supervisor (the daemon shares one socket between a pool's
    # processes, and between an old and a new process during a reload).
    with socket.socket() as shared:
        shared.bind(("127.0.0.1", 0))
        shared.listen()
        address = list(shared.getsockname())
        outs = [lines(), lines()]
        runners = []
        for index, out in enumerate(outs):
            spec = ProcessChild(
                child("listen_fds"),
                listen=[Listen.socket(shared, name="http")],
                stdout=Output.lines(out),
            )
            slot = slots.new(spec, name=f"child{index}")
            await slot.start()
            assert (await slot.exited()).code == 0
            await slot.runner.aclose()  # closes what it owns: not this socket
            runners.append(slot.runner)
        reports = [json.loads(out.lines[0]) for out in outs]
        assert [r["names"] for r in reports] == ["http", "http"]
        assert [r["addresses"] for r in reports] == [[address], [address]]
        assert all(r["pid_matches"] and r["listen_fds"] == 1 for r in reports)
        assert runners[0].listen_addresses == (tuple(address),)
        assert shared.fileno() >= 0
        with socket.create_connection(tuple(address), timeout=5):
            pass  # still listening: the owner decides when it closes


async def test_a_shared_socket_closed_by_its_owner_is_a_start_failure(slots) -> None:
    shared = socket.socket()
    shared.bind(("127.0.0.1", 0))
    shared.listen()
    spec = ProcessChild(["sleep", "3600"], listen=[Listen.socket(shared, name="http")])
    shared.close()
    slot = slots.new(spec)
    with pytest.raises(StartFailure) as info:
        await slot.start()
    assert info.value.reason == (
        "cannot open listening socket: socket http: the socket was closed by its owner"
    )
    assert slot.spawned == []


def test_listen_socket_spec_is_checked() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram,
        pytest.raises(InvalidSpec, match="SOCK_STREAM"),
    ):
        Listen.socket(datagram)
    closed = socket.socket()
    closed.close()
    with pytest.raises(InvalidSpec, match="is closed"):
        Listen.socket(closed)
    with pytest.raises(InvalidSpecType, match=r"socket\.socket"):
        Listen.socket(3)  # type: ignore[arg-type]
    with socket.socket() as sock, pytest.raises(InvalidSpec, match="name"):
        Listen.socket(sock, name="a b")
