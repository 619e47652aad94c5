"""The writer on a real disk with the real clock (PC-06, PC-07, PC-08, PC-15).

Virtual time cannot be used here: autojump would advance the clock while a
worker thread is busy. Every wait has a ``fail_after`` cap instead.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest
import trio

from omnitron.state import (
    AppState,
    DaemonState,
    FileSystem,
    Home,
    PersistenceStatus,
    StateSource,
    StateStore,
    Step,
    _fs,
    load_state,
    open_pid_lock,
    open_state_writer,
)
from omnitron.state._codec import decode_state
from omnitron.state.testing import Fault, FaultyFileSystem

CAP = 10  # seconds; a generous bound, not a sleep


def api(restarts: int) -> DaemonState:
    return DaemonState(apps=[AppState(name="api", restarts=restarts)])


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.ensure()
    return h


def temps(home: Home) -> list[str]:
    return sorted(p for p in os.listdir(home.path) if p.endswith(".tmp"))


async def written(home: Home, state: DaemonState) -> bytes:
    """Write ``state`` as the next generation with a store of its own; the file's bytes."""
    store = StateStore(home, load_state(home))
    with trio.fail_after(CAP):
        async with open_state_writer(store) as send:
            await send.send(state)
            await store.wait_idle()
    return home.state_file.read_bytes()


class CleanupSpy(FaultyFileSystem):
    """Sets ``cleaned`` when the writer removes a temporary file after a failure."""

    def __init__(self) -> None:
        super().__init__(FileSystem())
        self.cleaned = trio.Event()

    async def unlink(self, path: Path) -> None:
        await super().unlink(path)
        self.cleaned.set()


async def test_atomic_writes_with_a_backup(home: Home) -> None:
    store = StateStore(home, load_state(home))
    with trio.fail_after(CAP):
        async with open_state_writer(store) as send:
            await send.send(api(1))
            await store.wait_idle()
            await send.send(api(2))
    primary, backup = home.state_file.stat(), home.backup_file.stat()
    assert stat.S_IMODE(primary.st_mode) == 0o600
    assert primary.st_ino != backup.st_ino
    assert decode_state(home.state_file.read_bytes()).generation == 2
    assert decode_state(home.backup_file.read_bytes()).generation == 1
    assert temps(home) == []


async def test_the_whole_start_up_sequence(home: Home) -> None:
    with trio.fail_after(CAP):
        async with open_pid_lock(home):
            loaded = await trio.to_thread.run_sync(load_state, home)
            assert loaded.source is StateSource.NONE
            store = StateStore(home, loaded)
            async with open_state_writer(store) as send:
                for restarts in range(100):
                    await send.send(api(restarts))
        assert not home.pid_file.exists()
        async with open_pid_lock(home):
            loaded = await trio.to_thread.run_sync(load_state, home)
    assert (loaded.source, loaded.state) == (StateSource.PRIMARY, api(99))


@pytest.mark.parametrize(
    ("step", "code"),
    [(Step.WRITE, errno.ENOSPC), (Step.FSYNC, errno.ENOSPC), (Step.REPLACE, errno.EIO)],
)
async def test_failed_write_leaves_the_old_file_and_no_temp(
    home: Home, step: Step, code: int
) -> None:
    # PC-06 on a real disk; recovery is checked through the final flush, which skips the backoff.
    old = await written(home, api(1))

    fs = CleanupSpy()
    fs.inject(step, Fault.error(code))
    store = StateStore(home, load_state(home), fs=fs, retry_initial=3600)
    with trio.fail_after(CAP):
        async with open_state_writer(store) as send:
            await send.send(api(2))
            await fs.cleaned.wait()
            assert store.health().status is PersistenceStatus.DEGRADED
            assert str(store.health()) == f"persistence: degraded ({errno.errorcode[code]})"
            assert home.state_file.read_bytes() == old
            assert temps(home) == []
            fs.clear()  # the disk recovers
    assert store.health().status is PersistenceStatus.OK
    assert decode_state(home.state_file.read_bytes()).state == api(2)
    assert temps(home) == []


async def test_backup_is_copied_where_hard_links_are_not_allowed(home: Home) -> None:
    store = StateStore(home, load_state(home))
    with trio.fail_after(CAP):
        async with open_state_writer(store) as send:
            await send.send(api(1))
    fs = FaultyFileSystem(FileSystem())
    fs.inject(Step.BACKUP_LINK, Fault.error(errno.EPERM), times=1)
    store = StateStore(home, load_state(home), fs=fs)
    with trio.fail_after(CAP):
        async with open_state_writer(store) as send:
            await send.send(api(2))
    assert fs.count(Step.BACKUP_LINK) == 2  # the link, then the copy
    assert decode_state(home.backup_file.read_bytes()).state == api(1)
    assert stat.S_IMODE(home.backup_file.stat().st_mode) == 0o600
    assert decode_state(home.state_file.read_bytes()).state == api(2)
    assert temps(home) == []


async def test_slow_fsync_never_stalls_the_loop(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PC-08: every fsync takes 0.3 s, in a worker thread; the loop keeps its pace.
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.3)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    store = StateStore(home, load_state(home))
    lags: list[float] = []

    async def heartbeat() -> None:
        while True:
            before = trio.current_time()
            await trio.sleep(0.01)
            lags.append(trio.current_time() - before - 0.01)

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            async with open_state_writer(store) as send:
                started = trio.current_time()
                await send.send(api(1))
                await store.wait_idle()
                elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert elapsed >= 0.6  # the file fsync and the directory fsync
    assert len(lags) >= 20
    assert max(lags) < 0.1


# --------------------------------------------------------------------------- the real seam


async def test_real_file_system_primitives(home: Home, tmp_path: Path) -> None:
    fs = FileSystem()
    fd, path = await fs.create_temp(home.path, "state.json.")
    assert path.parent == home.path
    assert path.name.startswith("state.json.")
    assert path.name.endswith(".tmp")
    assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    assert not os.get_inheritable(fd)
    await fs.write(fd, b"x" * 100_000)
    await fs.fsync(fd)
    await fs.close(fd)
    assert path.read_bytes() == b"x" * 100_000
    await fs.fsync_dir(home.path)

    await fs.link(path, home.path / "linked")
    assert (home.path / "linked").stat().st_ino == path.stat().st_ino
    with pytest.raises(FileExistsError):
        await fs.copy(path, home.path / "linked")
    await fs.copy(path, home.path / "copied")
    assert (home.path / "copied").read_bytes() == b"x" * 100_000

    await fs.replace(path, home.path / "moved")
    assert not path.exists()
    # rename(2) between two hard links of one file does nothing; replace still moves.
    await fs.link(home.path / "moved", home.path / "twin")
    await fs.replace(home.path / "twin", home.path / "moved")
    assert not (home.path / "twin").exists()
    assert (home.path / "moved").read_bytes() == b"x" * 100_000
    await fs.unlink(home.path / "moved")
    await fs.unlink(home.path / "moved")  # missing is fine

    outside = tmp_path / "outside"
    outside.write_text("secret")
    (home.path / "sneaky").symlink_to(outside)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        await fs.copy(home.path / "sneaky", home.path / "stolen")
    await fs.link(home.path / "sneaky", home.path / "sneaky2")  # links the link itself
    assert (home.path / "sneaky2").is_symlink()


async def _wait_for_failure(store: StateStore) -> None:
    while store.statistics().write_failures == 0:  # noqa: ASYNC110 - a counter, capped by fail_after
        await trio.sleep(0.005)


async def test_a_real_disk_write_is_one_thread_hop(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each hand-off to a worker thread costs the busy event loop; the real disk
    # has no hooks between the steps, so a write (backup included) is one.
    store = StateStore(home, load_state(home))
    with trio.fail_after(CAP):
        async with open_state_writer(store) as send:
            await send.send(api(1))
            await store.wait_idle()
            calls: list[object] = []
            real = trio.to_thread.run_sync

            async def counted(fn: object, *args: object, **kwargs: object) -> object:
                calls.append(fn)
                return await real(fn, *args, **kwargs)  # type: ignore[arg-type]

            monkeypatch.setattr(trio.to_thread, "run_sync", counted)
            await send.send(api(2))
            await store.wait_idle()
            monkeypatch.undo()
    assert len(calls) == 1
    assert decode_state(home.state_file.read_bytes()).state == api(2)
    assert decode_state(home.backup_file.read_bytes()).state == api(1)


async def test_a_one_thread_write_that_fails_names_its_step_and_recovers(home: Home) -> None:
    # PC-06 through the one-thread write: the backup cannot replace a directory.
    old = await written(home, api(1))
    home.backup_file.unlink(missing_ok=True)
    home.backup_file.mkdir()
    (home.backup_file / "in-the-way").write_text("x")

    store = StateStore(home, load_state(home), retry_initial=3600)
    with trio.fail_after(CAP):
        async with open_state_writer(store) as send:
            await send.send(api(2))
            await _wait_for_failure(store)
            health = store.health()
            assert health.status is PersistenceStatus.DEGRADED
            assert health.last_error is not None
            assert health.last_error.startswith("backup_replace: ")
            assert home.state_file.read_bytes() == old
            assert temps(home) == []
            (home.backup_file / "in-the-way").unlink()
            home.backup_file.rmdir()  # the disk recovers: the final write succeeds
    assert store.health().status is PersistenceStatus.OK
    assert decode_state(home.state_file.read_bytes()).state == api(2)
    assert decode_state(home.backup_file.read_bytes()).generation == 1
    assert temps(home) == []


def test_a_temporary_name_in_use_is_skipped(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    # O_EXCL: an existing file (or a symlink planted under the name, PC-15) is never
    # opened; the next random name is tried.
    names = iter([b"\x00" * 6, b"\x00" * 6, b"\x01" * 6])
    monkeypatch.setattr(_fs.os, "urandom", lambda n: next(names))
    taken = home.path / "state.json.000000000000.tmp"
    os.symlink(home.path / "elsewhere", taken)
    fd, path = _fs._create_temp(home.path, "state.json.")
    os.close(fd)
    assert path == home.path / "state.json.010101010101.tmp"
    assert taken.is_symlink()
    assert not (home.path / "elsewhere").exists()
