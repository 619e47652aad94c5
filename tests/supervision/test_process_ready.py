"""Readiness protocols of process children, against real processes and sockets."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio

from supervision._errors import StartFailure
from supervision._exit import ExitStatus
from supervision._spec import ProcessChild, Ready


class Commands:
    """Lines for the ``notify --fifo`` child, written through a FIFO."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        os.mkfifo(self.path)
        # Read-write keeps open() from blocking until the child opens its end.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)

    def send(self, line: str) -> None:
        os.write(self._fd, line.encode() + b"\n")

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def commands(tmp_path: Path) -> Iterator[Commands]:
    result = Commands(tmp_path / "commands")
    yield result
    result.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def assert_start_failure(slot, reason: str) -> StartFailure:
    with pytest.raises(StartFailure) as info:
        await slot.start()
    assert info.value.reason == reason
    assert info.value.path == ("test", "child")
    return info.value


# --------------------------------------------------------------------------- after


async def test_after_waits_while_alive(slots, child) -> None:
    slot = slots.new(ProcessChild(child("sleeper"), ready=Ready.after(0.2)))
    started = trio.current_time()
    await slot.start()
    assert trio.current_time() - started >= 0.2
    await slot.stop()


async def test_exit_before_ready_is_a_start_failure(slots, child) -> None:
    slot = slots.new(ProcessChild(child("exit_with", 3), ready=Ready.after(5)))
    await assert_start_failure(slot, "exited before becoming ready (exited with code 3)")
    assert slot.runner.pid is None
    assert slots.host.managed_pids == frozenset()


async def test_readiness_timeout_stops_the_child(slots, child, process_state) -> None:
    # PL-24, with a short timeout.
    slot = slots.new(ProcessChild(child("never_ready"), ready=Ready.notify(), startup_timeout=0.3))
    started = trio.current_time()
    await assert_start_failure(slot, "readiness timeout after 0.3s")
    assert 0.3 <= trio.current_time() - started < 2
    report = slot.runner.stop_report
    assert report is not None
    assert report.exit == ExitStatus.killed(signal.SIGTERM, normal=True)
    pid = slot.spawned[0]
    assert pid is not None
    assert process_state.gone(pid)


async def test_readiness_timeout_escalates_like_a_stop(slots, child) -> None:
    spec = ProcessChild(
        child("ignore_term"), ready=Ready.notify(), startup_timeout=0.2, stop_timeout=0.2
    )
    slot = slots.new(spec)
    await assert_start_failure(slot, "readiness timeout after 0.2s")
    report = slot.runner.stop_report
    assert report is not None
    assert report.killed


# --------------------------------------------------------------------------- fd


async def test_fd_ready_on_newline(slots, child) -> None:
    spec = ProcessChild(child("ready_after", 0.1), ready=Ready.fd(3), env={"READY_FD": "3"})
    slot = slots.new(spec)
    started = trio.current_time()
    await slot.start()
    assert trio.current_time() - started >= 0.1
    await slot.stop()


async def test_fd_above_9_is_placed(slots) -> None:
    code = "import os, time; os.write(12, b'ready\\n'); time.sleep(3600)"
    slot = slots.new(ProcessChild([sys.executable, "-c", code], ready=Ready.fd(12)))
    await slot.start()
    await slot.stop()


async def test_fd_closed_without_newline_never_readies(slots) -> None:
    spec = ProcessChild(
        ["/bin/sh", "-c", "printf partial >&3; exec 3>&-; exec sleep 3600"],
        ready=Ready.fd(3),
        startup_timeout=0.3,
    )
    slot = slots.new(spec)
    await assert_start_failure(slot, "readiness timeout after 0.3s")


async def test_fd_never_ready(slots, child) -> None:
    slot = slots.new(ProcessChild(child("never_ready"), ready=Ready.fd(3), startup_timeout=0.3))
    await assert_start_failure(slot, "readiness timeout after 0.3s")


# --------------------------------------------------------------------------- tcp / http


async def test_tcp_ready_once_the_port_accepts(slots, child, lines) -> None:
    port = free_port()
    slot = slots.new(ProcessChild(child("hold_port", port, 0.2), ready=Ready.tcp(port)))
    await slot.start()
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    await slot.stop()


async def test_tcp_never_ready(slots, child) -> None:
    port = free_port()
    spec = ProcessChild(child("never_ready"), ready=Ready.tcp(port), startup_timeout=0.3)
    await assert_start_failure(slots.new(spec), "readiness timeout after 0.3s")


async def test_http_ready_on_2xx(slots, child) -> None:
    port = free_port()
    spec = ProcessChild(
        child("http_status", port, 204), ready=Ready.http(f"http://127.0.0.1:{port}/healthz")
    )
    slot = slots.new(spec)
    await slot.start()
    await slot.stop()


async def test_http_non_2xx_is_not_ready(slots, child) -> None:
    port = free_port()
    spec = ProcessChild(
        child("http_status", port, 503),
        ready=Ready.http(f"http://127.0.0.1:{port}/"),
        startup_timeout=0.5,
    )
    await assert_start_failure(slots.new(spec), "readiness timeout after 0.5s")


async def test_https_against_a_plain_server_is_not_ready(slots, child) -> None:
    port = free_port()
    spec = ProcessChild(
        child("http_status", port, 200),
        ready=Ready.http(f"https://127.0.0.1:{port}/"),
        startup_timeout=0.5,
    )
    await assert_start_failure(slots.new(spec), "readiness timeout after 0.5s")


# --------------------------------------------------------------------------- notify


async def test_notify_ready_and_status(slots, child) -> None:
    slot = slots.new(
        ProcessChild(child("notify", "STATUS=warming up\nREADY=1"), ready=Ready.notify())
    )
    pid = await slot.start()
    assert slot.runner.status_text == "warming up"
    environ = psutil.Process(pid).environ()
    assert environ["NOTIFY_SOCKET"] == slot.runner.notify_socket
    assert "WATCHDOG_USEC" not in environ
    assert len(slot.runner.notify_socket.encode()) < 100
    await slot.stop()


async def test_notify_from_a_process_of_the_group_counts(slots, child) -> None:
    # Like systemd-notify run by a service's shell script.
    slot = slots.new(ProcessChild(child("notify", "--from-child"), ready=Ready.notify()))
    await slot.start()
    await slot.stop()


async def test_notify_exit_before_ready(slots, child) -> None:
    spec = ProcessChild(child("exit_with", 3), ready=Ready.notify())
    await assert_start_failure(slots.new(spec), "exited before becoming ready (exited with code 3)")


async def test_notify_never_ready(slots, child, commands) -> None:
    spec = ProcessChild(
        child("notify", "--fifo", commands.path), ready=Ready.notify(), startup_timeout=0.3
    )
    await assert_start_failure(slots.new(spec), "readiness timeout after 0.3s")


async def test_notify_from_another_process_is_ignored(slots, child, commands, wait_until) -> None:
    # PL-25: only the current generation's process (or its group) may say ready.
    spec = ProcessChild(child("notify", "--fifo", commands.path), ready=Ready.notify())
    slot = slots.new(spec)
    ready = trio.Event()

    async def start() -> None:
        await slot.start()
        ready.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start)
        await wait_until(lambda: slot.runner.notify_socket is not None and slot.spawned)
        path = slot.runner.notify_socket
        # From this process...
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", path)
        # ... and from a sibling process that knows the socket.
        sibling = await trio.run_process(
            child("notify", "--exit", "READY=1"), env={**os.environ, "NOTIFY_SOCKET": path}
        )
        assert sibling.returncode == 0
        # The child's own message comes after the forged ones in the queue.
        commands.send("STATUS=probe")
        await wait_until(lambda: slot.runner.status_text == "probe")
        assert not ready.is_set()
        commands.send("READY=1")
        with trio.fail_after(10):
            await ready.wait()
    await slot.stop()


async def test_watchdog_pings_keep_the_child_alive(slots, child) -> None:
    spec = ProcessChild(
        child("notify", "--ping", 0.05, 10, "--exit", "READY=1"),
        ready=Ready.notify(watchdog=0.4),
    )
    slot = slots.new(spec)
    pid = await slot.start()
    assert psutil.Process(pid).environ()["WATCHDOG_USEC"] == "400000"
    # Ten pings in 0.5 s: longer than the watchdog, and then a normal exit.
    status = await slot.exited()
    assert status.code == 0
    assert slot.runner.status_text == "pinged 10"


async def test_missed_watchdog_is_a_crash(slots, child) -> None:
    spec = ProcessChild(child("notify"), ready=Ready.notify(watchdog=0.2), stop_timeout=1)
    slot = slots.new(spec)
    started = trio.current_time()
    await slot.start()
    status = await slot.exited()
    assert trio.current_time() - started >= 0.2
    assert not status.normal
    assert status.reason.startswith("watchdog timeout: no WATCHDOG=1 within 0.2s; ")
    assert status.signal == signal.SIGABRT


async def test_watchdog_trigger(slots, child, commands) -> None:
    spec = ProcessChild(
        child("notify", "--fifo", commands.path, "READY=1"), ready=Ready.notify(watchdog=30)
    )
    slot = slots.new(spec)
    await slot.start()
    commands.send("WATCHDOG=trigger")
    status = await slot.exited()
    assert not status.normal
    assert status.reason.startswith("watchdog timeout: triggered by the child")


async def test_notify_socket_survives_generations(slots, child) -> None:
    slot = slots.new(ProcessChild(child("notify", "--exit"), ready=Ready.notify()))
    await slot.start()
    path = slot.runner.notify_socket
    await slot.exited()
    await slot.start()
    assert slot.runner.notify_socket == path
    await slot.exited()
    await slot.runner.aclose()
    assert path is not None
    assert not await trio.Path(path).exists()


@pytest.mark.parametrize(
    ("argv_of", "ready"),
    [
        (lambda child: child("notify", "--exit"), Ready.notify()),
        (lambda child: ["/bin/sh", "-c", "echo >&3"], Ready.fd(3)),
    ],
    ids=["notify", "fd"],
)
async def test_ready_just_before_exiting_counts(slots, child, argv_of, ready) -> None:
    # The exit may be seen before the message: the queued message still counts.
    slot = slots.new(ProcessChild(argv_of(child), ready=ready))
    for _ in range(20):
        await slot.start()
        assert (await slot.exited()).code == 0
