"""Log files are never opened through a planted link, and logging survives no threads.

FAULTS PC-15 (every file the daemon opens) and RX-05 (no thread can be started):
real files, links and directories; the thread failure is injected where the
collector starts its worker threads.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from omnitron.daemon._logs import LogCollector
from omnitron.daemon._safefile import (
    SafeFileHandler,
    UnsafeLogPath,
    check_log_directory,
    open_for_append,
)


def line(text: str) -> bytes:
    """``text`` as the pump hands it to a batch sink: one whole line of bytes."""
    return text.encode() + b"\n"


async def write_lines(collector: LogCollector, app: str, count: int) -> None:
    sink = collector.sink(app, 0, "out")
    for i in range(count):
        sink(line(f"line {i}"))
    await collector.flush()


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o700)
    return directory


async def test_an_app_log_planted_as_a_symlink_is_never_written_through(
    logs: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (logs / "web.log").symlink_to(victim)
    collector = LogCollector(logs)
    await write_lines(collector, "web", 3)
    assert victim.read_text() == "precious\n"
    assert collector.write_errors == 1
    assert (logs / "web.log").is_symlink()


async def test_an_app_log_planted_as_a_hard_link_is_refused(logs: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.link(victim, logs / "web.log")
    collector = LogCollector(logs)
    await write_lines(collector, "web", 3)
    assert victim.read_text() == "precious\n"
    assert collector.write_errors == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
async def test_an_app_log_owned_by_another_user_is_refused(logs: Path) -> None:
    planted = logs / "web.log"
    planted.write_text("theirs\n")
    os.chown(planted, 4242, 4242)
    with pytest.raises(UnsafeLogPath, match="belongs to uid 4242"):
        open_for_append(planted)
    collector = LogCollector(logs)
    await write_lines(collector, "web", 1)
    assert planted.read_text() == "theirs\n"


async def test_a_normal_log_is_created_private_and_appended(logs: Path) -> None:
    collector = LogCollector(logs)
    await write_lines(collector, "web", 2)
    await write_lines(collector, "web", 1)
    path = logs / "web.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert [line.rsplit("| ", 1)[1] for line in lines] == ["line 0", "line 1", "line 0"]
    assert collector.write_errors == 0


def test_a_directory_others_can_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeLogPath, match=r"can be written by another user and is not sticky"):
        check_log_directory(shared)
    shared.chmod(0o1777)
    check_log_directory(shared)  # sticky, like /tmp: others cannot replace our files
    group = tmp_path / "group"
    group.mkdir()
    group.chmod(0o770)
    with pytest.raises(UnsafeLogPath, match=str(group)):
        check_log_directory(group)


async def test_the_collector_refuses_to_start_in_an_unsafe_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o757)
    collector = LogCollector(shared)
    async with trio.open_nursery() as nursery:
        with pytest.raises(UnsafeLogPath):
            await nursery.start(collector.run)


def test_the_daemon_log_handler_refuses_a_symlink(logs: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (logs / "daemon.log").symlink_to(victim)
    with pytest.raises(UnsafeLogPath, match="symbolic link"):
        SafeFileHandler(logs / "daemon.log")
    handler = SafeFileHandler(logs / "other.log")
    try:
        assert handler.stream is not None
    finally:
        handler.close()


# ---------------------------------------------------------------- no thread to be had


def failing_first(times: int) -> tuple[Callable[..., Any], list[int]]:
    """A ``run_sync`` that cannot start a thread ``times`` times, then works."""
    calls = [0]

    async def run_sync(fn: Callable[..., Any], *args: Any) -> Any:
        calls[0] += 1
        if calls[0] <= times:
            raise RuntimeError("can't start new thread")
        return await trio.to_thread.run_sync(fn, *args)

    return run_sync, calls


async def test_no_thread_keeps_the_lines_degrades_and_recovers(
    logs: Path, autojump_clock: trio.testing.MockClock
) -> None:
    run_sync, calls = failing_first(3)
    collector = LogCollector(logs, run_sync=run_sync)
    sink = collector.sink("web", 0, "out")
    async with trio.open_nursery() as nursery:
        await nursery.start(collector.run)
        for i in range(100):
            sink(line(f"line {i}"))
        while calls[0] < 1:  # noqa: ASYNC110 - virtual time
            await trio.sleep(0.01)
        assert collector.degraded is not None
        assert "can't start new thread" in collector.degraded
        while calls[0] < 4:  # noqa: ASYNC110 - virtual time
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert collector.thread_failures == 3
    assert collector.degraded is None
    written = (logs / "web.log").read_text().splitlines()
    assert [line.rsplit("| ", 1)[1] for line in written] == [f"line {i}" for i in range(100)]


async def test_with_no_thread_at_shutdown_the_last_lines_are_written_anyway(
    logs: Path, autojump_clock: trio.testing.MockClock
) -> None:
    run_sync, _ = failing_first(10**6)
    collector = LogCollector(logs, run_sync=run_sync)
    async with trio.open_nursery() as nursery:
        await nursery.start(collector.run)
        collector.sink("web", 0, "err")(line("last words"))
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert collector.thread_failures >= 1
    assert (logs / "web.log").read_text().endswith("web[0] err | last words\n")


async def test_lines_beyond_the_buffer_while_degraded_are_counted_not_kept(
    logs: Path, autojump_clock: trio.testing.MockClock
) -> None:
    run_sync, _ = failing_first(1)
    collector = LogCollector(logs, buffer_lines=10, run_sync=run_sync)
    sink = collector.sink("web", 0, "out")
    for i in range(10):
        sink(line(f"early {i}"))
    assert not await collector.flush()
    for i in range(5):
        sink(line(f"late {i}"))
    assert await collector.flush()
    lines = (logs / "web.log").read_text().splitlines()
    assert "5 lines dropped (log buffer full)" in lines[0]
    assert [line.rsplit("| ", 1)[1] for line in lines[1:]] == [
        *(f"early {i}" for i in range(5, 10)),
        *(f"late {i}" for i in range(5)),
    ]
