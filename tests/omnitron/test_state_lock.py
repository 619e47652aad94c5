"""The pid lock: one daemon per home, decided by the kernel.

Promise 7; PC-07, PC-11, PC-12, PC-13, PC-16.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from omnitron._log import capture_logs
from omnitron.state import (
    DaemonAlreadyRunning,
    Home,
    HomeUnavailable,
    PidLock,
    ProcessIdentity,
    UnsafeHome,
    acquire_pid_lock,
    open_pid_lock,
    read_lock_info,
)

FIXTURES = Path(__file__).parent / "fixtures_state"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.ensure()
    return h


def record_of(home: Home) -> dict[str, str]:
    lines = home.pid_file.read_text().splitlines()
    fields = dict(line.split("=", 1) for line in lines[1:])
    fields["pid"] = lines[0]
    return fields


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- in-process


def test_acquire_records_pid_start_time_and_boot_id(home: Home) -> None:
    lock = acquire_pid_lock(home)
    try:
        me = ProcessIdentity.current()
        fields = record_of(home)
        assert fields["pid"] == str(os.getpid())
        assert float(fields["start_time"]) == me.start_time
        assert fields["boot_id"] == me.boot_id
        assert fields["since"] == lock.since
        assert lock.identity == me
        assert lock.held
        assert os.stat(home.pid_file).st_mode & 0o777 == 0o600
    finally:
        lock.release()


def test_read_lock_info_finds_the_live_daemon(home: Home) -> None:
    assert read_lock_info(home) is None
    lock = acquire_pid_lock(home)
    try:
        info = read_lock_info(home)
        assert info is not None
        assert info.pid == os.getpid()
        assert info.alive is True
        assert info.locked is True
        assert info.since == lock.since
        assert info.identity == lock.identity
    finally:
        lock.release()


def test_second_acquire_fails_and_leaves_the_first_untouched(home: Home) -> None:
    lock = acquire_pid_lock(home)
    try:
        home.socket_path.write_text("")  # stands for the live daemon's socket
        before = (os.stat(home.pid_file).st_ino, home.pid_file.read_bytes())
        with pytest.raises(DaemonAlreadyRunning) as info:
            acquire_pid_lock(home)
        assert str(info.value).startswith(f"daemon already running (pid {os.getpid()})")
        assert lock.since in str(info.value)
        assert info.value.pid == os.getpid()
        assert (os.stat(home.pid_file).st_ino, home.pid_file.read_bytes()) == before
        assert home.socket_path.exists()
    finally:
        lock.release()


def test_release_removes_the_file_and_frees_the_home(home: Home) -> None:
    lock = acquire_pid_lock(home)
    with capture_logs() as logs:
        lock.release()
        lock.release()  # idempotent
    assert not lock.held
    assert not home.pid_file.exists()
    assert [e["event"] for e in logs] == ["pid_lock_released"]
    acquire_pid_lock(home).release()


def test_release_never_removes_a_file_that_is_not_ours(home: Home) -> None:
    lock = acquire_pid_lock(home)
    other = home.path / "other"
    other.write_text("99999\n")
    os.replace(other, home.pid_file)  # someone replaced the file under us
    lock.release()
    assert home.pid_file.read_text() == "99999\n"


def test_stale_file_of_a_dead_daemon_is_reclaimed(home: Home) -> None:
    pid = dead_pid()
    home.pid_file.write_text(f"{pid}\nstart_time=1.0\nsince=2020-01-01T00:00:00Z\n")
    info = read_lock_info(home)
    assert info is not None
    assert (info.pid, info.alive, info.locked) == (pid, False, False)
    with capture_logs() as logs:
        lock = acquire_pid_lock(home)
    try:
        assert record_of(home)["pid"] == str(os.getpid())
        [stale] = [e for e in logs if e["event"] == "stale_pid_file_reclaimed"]
        assert stale["stale_pid"] == pid
        assert stale["stale_pid_alive"] is False
        assert stale["log_level"] == "warning"
        assert lock.reclaimed  # the next daemon looks for what it left behind
    finally:
        lock.release()


def test_a_lock_released_by_its_holder_is_not_reclaimed_by_the_next(home: Home) -> None:
    first = acquire_pid_lock(home)
    assert not first.reclaimed  # no file before
    first.release()
    second = acquire_pid_lock(home)
    try:
        assert not second.reclaimed
    finally:
        second.release()


def test_an_unreadable_record_still_counts_as_reclaimed(home: Home) -> None:
    # Not our format, but a file was left: the safe reading is "not released".
    home.pid_file.write_text("garbage\n")
    lock = acquire_pid_lock(home)
    try:
        assert lock.reclaimed
    finally:
        lock.release()


def test_live_unrelated_pid_without_the_lock_does_not_block_startup(home: Home) -> None:
    # PC-13: the lock decides, not pid liveness. The parent process is alive and not a daemon.
    unrelated = ProcessIdentity.of(os.getppid())
    assert unrelated is not None
    home.pid_file.write_text(
        f"{unrelated.pid}\nstart_time={unrelated.start_time!r}\nboot_id={unrelated.boot_id}\n"
    )
    lock = acquire_pid_lock(home)
    try:
        assert record_of(home)["pid"] == str(os.getpid())
        assert unrelated.is_running()  # not signalled
    finally:
        lock.release()


def test_recycled_pid_is_not_taken_for_the_daemon(home: Home) -> None:
    # The file names a live pid (ours), but with another start time: a recycled pid.
    me = ProcessIdentity.current()
    assert me.start_time is not None
    home.pid_file.write_text(f"{me.pid}\nstart_time={me.start_time - 1}\nboot_id={me.boot_id}\n")
    info = read_lock_info(home)
    assert info is not None
    assert info.alive is False
    home.pid_file.write_text(f"{me.pid}\nstart_time={me.start_time}\nboot_id=another-boot\n")
    info = read_lock_info(home)
    assert info is not None
    assert info.alive is False
    acquire_pid_lock(home).release()


@pytest.mark.parametrize(
    "content", [b"", b"garbage\n", b"-5\n", b"\xff\xfe", b"12\nstart_time=x\n"]
)
def test_unparsable_pid_file_is_reclaimed(home: Home, content: bytes) -> None:
    home.pid_file.write_bytes(content)
    info = read_lock_info(home)
    assert info is None or info.identity.start_time is None
    acquire_pid_lock(home).release()


def test_read_lock_info_ignores_a_fifo(home: Home) -> None:
    os.mkfifo(home.pid_file)
    assert read_lock_info(home) is None  # and did not block


def test_symlinked_pid_file_is_refused(home: Home, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("do not truncate")
    home.pid_file.symlink_to(target)
    with pytest.raises(UnsafeHome, match=r"lock file .*daemon.pid is a symbolic link; refusing"):
        acquire_pid_lock(home)
    assert target.read_text() == "do not truncate"
    assert read_lock_info(home) is None


def test_lock_file_that_cannot_be_created_is_reported(home: Home) -> None:
    home.pid_file.mkdir()
    with pytest.raises(HomeUnavailable) as info:
        acquire_pid_lock(home)
    assert str(info.value) == f"cannot create lock file {home.pid_file}: Is a directory"
    assert info.value.errno == errno.EISDIR


def test_read_only_home_at_startup(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    # PC-07. Root ignores modes, so the EROFS comes from a patched open.
    real_open = os.open

    def read_only(path: str | os.PathLike[str], flags: int, *args: int, **kw: int) -> int:
        if Path(path) == home.pid_file and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(HomeUnavailable) as info:
        acquire_pid_lock(home)
    assert str(info.value) == f"cannot create lock file {home.pid_file}: Read-only file system"
    assert info.value.errno == errno.EROFS


def test_lock_fd_is_close_on_exec(home: Home) -> None:
    lock = acquire_pid_lock(home)
    try:
        fd = lock._fd
        assert fd is not None
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert not os.get_inheritable(fd)
    finally:
        lock.release()


def test_file_replaced_while_locking_is_retried(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A releasing daemon unlinks the file, then unlocks: a starter that opened the
    # old file can lock it, but that lock is on an orphan inode and means nothing.
    real_flock = fcntl.flock
    swapped: list[int] = []

    def flock_after_swap(fd: int, op: int) -> None:
        if not swapped:
            swapped.append(os.fstat(fd).st_ino)
            os.unlink(home.pid_file)
            home.pid_file.write_text("")  # the next daemon's fresh file
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_swap)
    lock = acquire_pid_lock(home)
    try:
        assert swapped
        fd = lock._fd
        assert fd is not None
        assert os.fstat(fd).st_ino == os.stat(home.pid_file).st_ino != swapped[0]
    finally:
        lock.release()


async def test_open_pid_lock_releases_on_error_and_cancellation(home: Home) -> None:
    held: list[PidLock] = []

    async def crash() -> None:
        async with open_pid_lock(home) as lock:
            held.append(lock)
            assert home.pid_file.exists()
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await crash()
    [lock] = held
    assert not lock.held
    assert not home.pid_file.exists()

    with trio.CancelScope() as scope:
        async with open_pid_lock(home) as lock:
            scope.cancel()
            await trio.sleep_forever()
    assert not lock.held
    assert not home.pid_file.exists()


async def test_open_pid_lock_refuses_a_second_daemon(home: Home) -> None:
    async with open_pid_lock(home):
        with pytest.raises(DaemonAlreadyRunning, match=rf"\(pid {os.getpid()}\)"):
            async with open_pid_lock(home):
                pytest.fail("two locks held")  # pragma: no cover
        assert home.pid_file.exists()


# --------------------------------------------------------------------------- other processes


class Lines:
    """Read lines from a child's stdout with a deadline, without threads."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "child did not answer in time"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 4096)
                assert chunk, f"child closed stdout; got {self.buffer!r}"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def start(*args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, str(FIXTURES / "lock_holder.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def finish(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdin is not None
    proc.stdin.close()
    return proc.wait(timeout=20)


@pytest.mark.slow
def test_daemon_in_another_process_blocks_a_second_one(home: Home, spawn: Spawn) -> None:
    # PC-11
    holder = spawn(str(home.path))
    assert Lines(holder).next() == f"locked {holder.pid}"
    home.socket_path.write_text("")
    before = home.pid_file.read_bytes()
    with pytest.raises(DaemonAlreadyRunning) as info:
        acquire_pid_lock(home)
    assert str(info.value).startswith(f"daemon already running (pid {holder.pid}), started ")
    assert home.pid_file.read_bytes() == before
    assert home.socket_path.exists()
    lock_info = read_lock_info(home)
    assert lock_info is not None
    assert (lock_info.pid, lock_info.alive, lock_info.locked) == (holder.pid, True, True)
    assert finish(holder) == 0
    assert not home.pid_file.exists()
    acquire_pid_lock(home).release()


@pytest.mark.slow
def test_ten_simultaneous_daemons_exactly_one_wins(
    home: Home, spawn: Spawn, tmp_path: Path
) -> None:
    # PC-12: the kernel lock, not check-then-write. The contenders wait at a
    # barrier and all try at the same instant, so a racy lock would let several win.
    barrier = tmp_path / "barrier"
    os.mkfifo(barrier)
    held = os.open(barrier, os.O_RDWR)  # a writer, so the contenders' opens return
    try:
        procs = [spawn(str(home.path), "--barrier", str(barrier)) for _ in range(10)]
        lines = {proc.pid: Lines(proc) for proc in procs}
        assert all(line.next() == "waiting" for line in lines.values())
    finally:
        os.close(held)  # the only writer goes: every contender reads EOF at once
    first = {pid: line.next() for pid, line in lines.items()}
    winners = [pid for pid, line in first.items() if line.startswith("locked ")]
    assert len(winners) == 1, first
    [winner] = winners
    for pid, line in first.items():
        if pid != winner:
            assert line.startswith(f"busy daemon already running (pid {winner})"), line
    for proc in procs:
        assert finish(proc) == (0 if proc.pid == winner else 1)


def test_a_winner_held_before_its_record_still_excludes_the_others(
    home: Home, spawn: Spawn
) -> None:
    # PC-12, the race forced: the winner stops right after winning, before it has
    # written anything. A check-then-write lock would let the next contender in.
    winner = spawn(str(home.path), "--pause-when-decided")
    lines = Lines(winner)
    assert lines.next() == "decided"
    assert home.pid_file.read_bytes() == b""
    with pytest.raises(DaemonAlreadyRunning):
        acquire_pid_lock(home)
    contender = spawn(str(home.path))
    assert Lines(contender).next().startswith("busy daemon already running")
    assert winner.stdin is not None
    winner.stdin.write(b"go\n")
    winner.stdin.flush()
    assert lines.next() == f"locked {winner.pid}"
    assert finish(winner) == 0


@pytest.mark.slow
def test_sigkilled_daemon_leaves_a_stale_file_that_is_reclaimed(home: Home, spawn: Spawn) -> None:
    # PC-16: a child that outlives the daemon must not keep the home locked.
    holder = spawn(str(home.path), "--grandchild")
    lines = Lines(holder)
    grandchild = int(lines.next().split()[1])
    assert lines.next() == f"locked {holder.pid}"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    survivor = ProcessIdentity.of(grandchild)
    assert survivor is not None, "the grandchild should still run"
    fds = os.listdir(f"/proc/{grandchild}/fd")
    targets = {os.readlink(f"/proc/{grandchild}/fd/{fd}") for fd in fds}
    assert str(home.pid_file) not in targets

    info = read_lock_info(home)
    assert info is not None
    assert (info.pid, info.alive, info.locked) == (holder.pid, False, False)
    lock = acquire_pid_lock(home)  # immediately, while the grandchild still runs
    try:
        assert survivor.is_running()
    finally:
        lock.release()
    # Closing the shared stdin pipe ends the grandchild; wait for it on a pidfd.
    pidfd = os.pidfd_open(grandchild)
    try:
        finish(holder)
        ready, _, _ = select.select([pidfd], [], [], 20)
        assert ready
    finally:
        os.close(pidfd)
