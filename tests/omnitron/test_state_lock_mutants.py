"""The pid lock's edges that mutation testing (``nox -s mutate``) found unpinned.

Each test here fails with a mutant of ``omnitron/state/_lock.py`` that survived
the other lock tests: what a holder that has not written its record yet is
called, records in odd but legal shapes, pid files that are not plain files,
and a pid file removed under a live lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from omnitron._log import capture_logs
from omnitron.state import DaemonAlreadyRunning, Home, acquire_pid_lock, read_lock_info


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.ensure()
    return h


@pytest.fixture
def foreign_lock(home: Home) -> Iterator[int]:
    """The pid file, flocked through another open file: a holder as the kernel sees it."""
    fd = os.open(home.pid_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield fd
    os.close(fd)


def test_a_holder_that_has_not_written_its_record_is_reported_by_lock_path(
    home: Home, foreign_lock: int
) -> None:
    with pytest.raises(DaemonAlreadyRunning) as info:
        acquire_pid_lock(home)
    assert info.value.pid is None
    assert info.value.path == str(home.pid_file)
    assert str(info.value) == f"daemon already running (pid unknown), lock {home.pid_file}"


def test_a_holder_is_named_by_its_record_and_the_lock_path(home: Home, foreign_lock: int) -> None:
    # A field from a newer version whose value holds "=" does not hide the holder.
    os.pwrite(foreign_lock, b"4242\nnote=a=b=c\nsince=2026-01-02T03:04:05Z\n", 0)
    with pytest.raises(DaemonAlreadyRunning) as info:
        acquire_pid_lock(home)
    assert (info.value.pid, info.value.since) == (4242, "2026-01-02T03:04:05Z")
    assert info.value.path == str(home.pid_file)
    assert str(info.value).endswith(f", lock {home.pid_file}")


def test_a_record_of_pid_1_without_start_time_is_read(home: Home) -> None:
    # A daemon can be pid 1 (a container's init); an old record has no start_time.
    home.pid_file.write_bytes(b"1\n")
    info = read_lock_info(home)
    assert info is not None
    assert (info.path, info.pid, info.since) == (home.pid_file, 1, None)
    assert info.identity.start_time is None


def test_a_record_of_pid_0_is_not_a_daemon(home: Home) -> None:
    home.pid_file.write_bytes(b"0\nsince=2026-01-02T03:04:05Z\n")
    assert read_lock_info(home) is None


def test_a_symlinked_pid_file_is_not_followed_by_readers(home: Home, tmp_path: Path) -> None:
    elsewhere = tmp_path / "planted"
    elsewhere.write_bytes(f"{os.getpid()}\n".encode())
    assert read_lock_info(home) is None  # sanity: nothing there yet
    home.pid_file.symlink_to(elsewhere)
    assert read_lock_info(home) is None


async def test_a_fifo_as_pid_file_does_not_block_the_reader(home: Home) -> None:
    os.mkfifo(home.pid_file)
    try:
        with trio.fail_after(10):
            info = await trio.to_thread.run_sync(read_lock_info, home, abandon_on_cancel=True)
    finally:
        # Release a reader stuck in open(2), if any: a writer makes its open return.
        fd = os.open(home.pid_file, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
    assert info is None


def test_release_after_the_pid_file_was_removed_drops_the_lock(home: Home) -> None:
    lock = acquire_pid_lock(home)
    home.pid_file.unlink()
    lock.release()
    assert not lock.held
    acquire_pid_lock(home).release()  # the kernel lock went with it


def test_release_logs_which_lock_was_released(home: Home) -> None:
    lock = acquire_pid_lock(home)
    with capture_logs() as logs:
        lock.release()
    assert {
        "event": "pid_lock_released",
        "log_level": "info",
        "path": str(home.pid_file),
        "pid": os.getpid(),
    } in logs
