"""The persistence task in virtual time, on an in-memory disk (PC-03, PC-06..PC-10, RX-05).

Every test here runs under ``autojump_clock`` with :class:`MemoryFileSystem`,
which never uses threads, so times are exact. Real-disk behaviour is in
``test_state_disk.py``.
"""

from __future__ import annotations

import errno
import math
from typing import Any, Literal

import pytest
import trio
import trio.testing

from omnitron._log import capture_logs
from omnitron.state import (
    AppState,
    DaemonState,
    Home,
    LoadResult,
    PersistenceHealth,
    PersistenceStatus,
    StateSource,
    StateStore,
    Step,
    open_state_writer,
    run_persistence,
)
from omnitron.state._codec import encode_state
from omnitron.state.testing import Fault, FaultyFileSystem, MemoryFileSystem

HOME = Home("/virtual/home")
WRITE_STEPS = [Step.CREATE, Step.WRITE, Step.FSYNC, Step.CLOSE, Step.REPLACE, Step.FSYNC_DIR]
BACKUP_STEPS = [Step.BACKUP_LINK, Step.BACKUP_REPLACE]


def state_of(*names: str, restarts: int = 0) -> DaemonState:
    return DaemonState(apps=[AppState(name=n, restarts=restarts) for n in names])


def on_disk(mem: MemoryFileSystem, state: DaemonState, generation: int) -> LoadResult:
    """Seed the memory disk with a primary file, as load_state would have found it."""
    mem.files[HOME.state_file] = encode_state(state, generation)
    return LoadResult(state=state, source=StateSource.PRIMARY, generation=generation)


def make(
    loaded: LoadResult | None = None, mem: MemoryFileSystem | None = None, **kwargs: float
) -> tuple[StateStore, FaultyFileSystem, MemoryFileSystem]:
    mem = MemoryFileSystem() if mem is None else mem
    fs = FaultyFileSystem(mem)
    return StateStore(HOME, loaded, fs=fs, **kwargs), fs, mem


def times(fs: FaultyFileSystem, step: Step) -> list[float]:
    return [t for t, s in fs.calls if s is step]


def assert_clean(mem: MemoryFileSystem) -> None:
    assert mem.temp_files() == []
    assert mem.open_fds == {}


# --------------------------------------------------------------------------- happy path


async def test_first_snapshot_is_written_at_once(autojump_clock: trio.testing.MockClock) -> None:
    store, fs, mem = make()
    async with open_state_writer(store) as send:
        await send.send(state_of("api"))
        await store.wait_idle()
        assert trio.current_time() == 0
    assert mem.decode(HOME.state_file) == (1, state_of("api"))
    assert HOME.backup_file not in mem.files  # nothing to back up yet
    assert [s for _, s in fs.calls] == [Step.BACKUP_LINK, *WRITE_STEPS]  # the link found nothing
    assert store.generation == 1
    assert str(store.health()) == "persistence: ok"
    assert_clean(mem)


async def test_previous_file_becomes_the_backup(autojump_clock: trio.testing.MockClock) -> None:
    mem = MemoryFileSystem()
    store, fs, mem = make(on_disk(mem, state_of("api"), 41), mem)
    async with open_state_writer(store) as send:
        await send.send(state_of("api", "web"))
        await store.wait_idle()
        await send.send(state_of("api", "web", "db"))
    assert [s for _, s in fs.calls] == (BACKUP_STEPS + WRITE_STEPS) * 2
    assert mem.decode(HOME.state_file) == (43, state_of("api", "web", "db"))
    assert mem.decode(HOME.backup_file) == (42, state_of("api", "web"))
    assert store.statistics().writes == 2
    assert_clean(mem)


async def test_run_persistence_in_a_callers_nursery(autojump_clock: trio.testing.MockClock) -> None:
    store, _, mem = make()
    send, receive = trio.open_memory_channel[DaemonState](0)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_persistence, store, receive)
        async with send:
            await send.send(state_of("api"))
        # Closing the last send side ends the task after the final write.
    assert mem.decode(HOME.state_file) == (1, state_of("api"))


async def test_a_store_runs_one_task_only(autojump_clock: trio.testing.MockClock) -> None:
    store, _, _ = make()
    async with open_state_writer(store):
        with pytest.raises(RuntimeError, match="already has a persistence task"):
            async with open_state_writer(store):
                pass  # pragma: no cover


@pytest.mark.parametrize(
    "kwargs",
    [
        {"flush_interval": 0},
        {"retry_initial": -1},
        {"retry_max": math.nan},
        {"shutdown_timeout": True},
        {"min_write_interval": -0.1},
    ],
)
def test_bad_intervals_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"expected a .*number of seconds"):
        StateStore(HOME, None, fs=MemoryFileSystem(), **kwargs)


def test_health_strings() -> None:
    assert str(PersistenceHealth(status=PersistenceStatus.OK)) == "persistence: ok"
    degraded = PersistenceHealth(status=PersistenceStatus.DEGRADED, reason="ENOSPC")
    assert str(degraded) == "persistence: degraded (ENOSPC)"


# --------------------------------------------------------------------------- coalescing


async def test_slow_fsync_coalesces_to_one_in_flight_plus_one_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # PC-08: fsync takes 5 s; the senders and the rest of the daemon never wait for it.
    store, fs, mem = make()
    fs.inject(Step.FSYNC, Fault.delay(5))
    ticks: list[float] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(trio.current_time())
            await trio.sleep(1)

    async with trio.open_nursery() as nursery, open_state_writer(store) as send:
        nursery.start_soon(heartbeat)
        for restarts in range(1001):
            await send.send(state_of("api", restarts=restarts))
        assert trio.current_time() == 0  # 1001 changes handed over without waiting for disk
        stats = store.statistics()
        assert (stats.writing, stats.pending) == (True, True)
        assert fs.count(Step.CREATE) == 1
        await store.wait_idle()
        # Exactly two writes of 5 s each, the second min_write_interval after the first.
        assert trio.current_time() == 10.2
        assert ticks == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # the loop kept running
        nursery.cancel_scope.cancel()
    stats = store.statistics()
    assert (stats.snapshots_received, stats.snapshots_coalesced, stats.writes) == (1001, 999, 2)
    assert times(fs, Step.CREATE) == [0, 5.2]
    assert mem.decode(HOME.state_file) == (2, state_of("api", restarts=1000))


async def test_write_storm_gives_a_handful_of_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # PC-09: 10 000 changes in 1 s; the file ends with the last one.
    store, fs, mem = make()
    async with open_state_writer(store) as send:
        for restarts in range(10_000):
            await send.send(state_of("api", restarts=restarts))
            await trio.sleep(0.0001)
        await store.wait_idle()
    assert times(fs, Step.CREATE) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    generation, state = mem.decode(HOME.state_file)
    assert state == state_of("api", restarts=9_999)
    assert generation == store.statistics().writes == 6
    assert store.statistics().snapshots_coalesced == 10_000 - 6


async def test_min_write_interval_is_configurable(autojump_clock: trio.testing.MockClock) -> None:
    store, fs, _ = make(min_write_interval=0)
    async with open_state_writer(store) as send:
        for restarts in range(10):
            await send.send(state_of("api", restarts=restarts))
            await store.wait_idle()
    assert times(fs, Step.CREATE) == [0] * 10


# --------------------------------------------------------------------------- baseline flush


async def test_baseline_flush_every_30_seconds(autojump_clock: trio.testing.MockClock) -> None:
    store, fs, mem = make()
    async with open_state_writer(store) as send:
        await send.send(state_of("api"))
        await trio.sleep(65)
        assert times(fs, Step.CREATE) == [0, 30, 60]
        await trio.sleep(10)  # t=75: a change restarts the interval
        await send.send(state_of("api", restarts=1))
        await trio.sleep(40)
        assert times(fs, Step.CREATE) == [0, 30, 60, 75, 105]
    assert mem.decode(HOME.state_file) == (5, state_of("api", restarts=1))
    assert mem.decode(HOME.backup_file) == (4, state_of("api", restarts=1))


async def test_baseline_interval_is_configurable(autojump_clock: trio.testing.MockClock) -> None:
    store, fs, _ = make(flush_interval=2.5)
    async with open_state_writer(store) as send:
        await send.send(state_of("api"))
        await trio.sleep(6)
    assert times(fs, Step.CREATE) == [0, 2.5, 5]


async def test_state_loaded_from_backup_is_rewritten_by_the_baseline_flush(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # PC-02: the primary is rewritten on the next persist, even with no change.
    mem = MemoryFileSystem()
    mem.files[HOME.backup_file] = encode_state(state_of("api"), 6)
    loaded = LoadResult(state=state_of("api"), source=StateSource.BACKUP, generation=6)
    store, fs, mem = make(loaded, mem)
    async with open_state_writer(store):
        await trio.sleep(31)
    assert times(fs, Step.CREATE) == [30]
    assert mem.decode(HOME.state_file) == (7, state_of("api"))
    assert mem.decode(HOME.backup_file) == (6, state_of("api"))


# --------------------------------------------------------------------------- failures


async def test_enospc_degrades_retries_with_backoff_and_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # PC-06
    mem = MemoryFileSystem()
    store, fs, mem = make(on_disk(mem, state_of("api"), 3), mem)
    old = mem.files[HOME.state_file]
    fs.inject(Step.FSYNC, Fault.error(errno.ENOSPC))
    async with open_state_writer(store) as send:
        with capture_logs() as logs:
            for restarts in range(50):
                await send.send(state_of("api", restarts=restarts))
            await trio.sleep(5)  # more changes during the backoff do not hurry the retries
            for restarts in range(50, 100):
                await send.send(state_of("api", restarts=restarts))
            await trio.sleep(11)
            assert times(fs, Step.FSYNC) == [0, 1, 3, 7, 15]
            health = store.health()
            assert str(health) == "persistence: degraded (ENOSPC)"
            assert health.consecutive_failures == 5
            assert health.generation == 3
            assert health.last_error == "fsync: [Errno 28] No space left on device"
            assert mem.files[HOME.state_file] == old  # the old file is intact
            assert_clean(mem)  # and no temp file is left behind

            fs.clear()  # space is back
            await store.wait_idle()
            assert trio.current_time() == 31  # the next scheduled retry: 15 + 16
    assert str(store.health()) == "persistence: ok"
    assert mem.decode(HOME.state_file)[1] == state_of("api", restarts=99)
    stats = store.statistics()
    assert (stats.write_failures, stats.writes) == (5, 1)
    failed = [e for e in logs if e["event"] == "state_write_failed"]
    assert [e["retry_in"] for e in failed] == [1, 2, 4, 8, 16]
    assert failed[0]["log_level"] == "error"
    assert (failed[0]["reason"], failed[0]["step"]) == ("ENOSPC", "fsync")
    assert [e["event"] for e in logs if e["event"] == "state_persistence_recovered"] == [
        "state_persistence_recovered"
    ]


async def test_retry_delay_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    store, fs, _ = make(retry_initial=1, retry_max=4)
    fs.inject(Step.CREATE, Fault.error(errno.EIO))
    async with open_state_writer(store) as send:
        await send.send(state_of("api"))
        await trio.sleep(20)
        assert times(fs, Step.CREATE) == [0, 1, 3, 7, 11, 15, 19]
        fs.clear()


@pytest.mark.parametrize(
    ("step", "code", "when", "primary_changed"),
    [
        (Step.BACKUP_LINK, errno.EIO, "before", False),
        (Step.BACKUP_REPLACE, errno.ENOSPC, "before", False),
        (Step.CREATE, errno.EROFS, "before", False),
        (Step.CREATE, errno.EACCES, "before", False),
        (Step.WRITE, errno.ENOSPC, "before", False),
        (Step.WRITE, errno.EDQUOT, "before", False),
        (Step.FSYNC, errno.EIO, "before", False),
        # Linux releases the fd even when close() reports an error: never close twice.
        (Step.CLOSE, errno.EIO, "after", False),
        (Step.REPLACE, errno.EROFS, "before", False),
        # The rename happened: the new generation is visible but not acknowledged.
        (Step.FSYNC_DIR, errno.EIO, "before", True),
    ],
)
async def test_failed_write_at_any_step(
    autojump_clock: trio.testing.MockClock,
    step: Step,
    code: int,
    when: Literal["before", "after"],
    primary_changed: bool,
) -> None:
    # PC-06 / PC-07: the same handling at every step and for every errno.
    mem = MemoryFileSystem()
    store, fs, mem = make(on_disk(mem, state_of("api"), 3), mem)
    old = mem.files[HOME.state_file]
    fs.inject(step, Fault.error(code), when=when, times=1)
    async with open_state_writer(store) as send:
        await send.send(state_of("api", "web"))
        await trio.sleep(0.5)
        assert store.health().reason == errno.errorcode[code]
        assert store.generation == 3
        assert (mem.files[HOME.state_file] != old) is primary_changed
        assert mem.decode(HOME.state_file)[0] == (4 if primary_changed else 3)
        assert_clean(mem)
        await store.wait_idle()
        assert trio.current_time() == 1
    assert mem.decode(HOME.state_file) == (store.generation, state_of("api", "web"))
    assert store.health().status is PersistenceStatus.OK
    assert_clean(mem)


async def test_no_worker_thread_is_a_retried_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # RX-05: fsync-in-thread depends on threads.
    store, fs, mem = make()
    fs.inject(Step.CREATE, Fault.error(RuntimeError("can't start new thread")), times=2)
    async with open_state_writer(store) as send:
        await send.send(state_of("api"))
        await trio.sleep(0.5)
        assert str(store.health()) == "persistence: degraded (RuntimeError)"
        await store.wait_idle()
        assert trio.current_time() == 3
    assert mem.decode(HOME.state_file) == (3, state_of("api"))


async def test_bugs_are_not_swallowed(autojump_clock: trio.testing.MockClock) -> None:
    store, fs, _ = make()
    fs.inject(Step.WRITE, Fault.error(KeyError("bug")))

    async def run() -> None:
        async with open_state_writer(store) as send:
            await send.send(state_of("api"))
            await trio.sleep_forever()

    with pytest.raises(KeyError, match="bug"):
        await run()


# --------------------------------------------------------------------------- never erase by mistake


async def test_empty_app_list_never_replaces_a_full_one_by_accident(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # PC-03 (PM2 #2971, #3776)
    mem = MemoryFileSystem()
    store, fs, mem = make(on_disk(mem, state_of("api", "web"), 3), mem)
    old = mem.files[HOME.state_file]
    async with open_state_writer(store) as send:
        with capture_logs() as logs:
            await send.send(DaemonState())
            await store.wait_idle()
            await trio.sleep(100)  # and the baseline flush does not try again
        assert mem.files[HOME.state_file] == old
        assert fs.calls == []
        assert str(store.health()) == "persistence: degraded (refused to replace 2 apps with none)"
        assert store.statistics().writes_refused == 1
        [event] = [e for e in logs if e["event"] == "state_write_refused"]
        assert event["log_level"] == "error"

        await send.send(state_of("api"))  # a real change is written, and clears it
        await store.wait_idle()
        assert store.health().status is PersistenceStatus.OK

        store.permit_empty()  # deliberate: e.g. the config now defines no apps
        await send.send(DaemonState())
        await store.wait_idle()
        assert mem.decode(HOME.state_file) == (5, DaemonState())

        await send.send(state_of("api"))
        await store.wait_idle()
        await send.send(DaemonState())  # the permission was used up
        await store.wait_idle()
    assert store.statistics().writes_refused == 2
    assert mem.decode(HOME.state_file) == (6, state_of("api"))


async def test_fresh_start_may_write_an_empty_state(autojump_clock: trio.testing.MockClock) -> None:
    store, _, mem = make(LoadResult())
    async with open_state_writer(store) as send:
        await send.send(DaemonState())
    assert mem.decode(HOME.state_file) == (1, DaemonState())


async def test_read_only_store_writes_nothing_and_never_blocks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # PC-04: a newer schema on disk is never overwritten.
    loaded = LoadResult(read_only=True, read_only_reason="state.json has a newer schema (2)")
    store, fs, mem = make(loaded)
    async with open_state_writer(store) as send:
        for restarts in range(100):
            await send.send(state_of("api", restarts=restarts))
        await store.wait_idle()
        await trio.sleep(100)
        assert store.read_only
        assert str(store.health()) == ("persistence: read-only (state.json has a newer schema (2))")
    assert fs.calls == []
    assert mem.files == {}
    assert store.statistics().snapshots_received == 100


# --------------------------------------------------------------------------- shutdown


async def test_closing_the_channel_writes_the_last_snapshot_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # PC-10: during a backoff, shutdown does not wait for the retry timer.
    store, fs, mem = make()
    fs.inject(Step.FSYNC, Fault.error(errno.ENOSPC), times=1)
    async with open_state_writer(store) as send:
        await send.send(state_of("api"))
        await trio.sleep(0.5)
        await send.send(state_of("api", restarts=7))
    assert trio.current_time() == 0.5
    assert mem.decode(HOME.state_file) == (2, state_of("api", restarts=7))


async def test_cancellation_still_flushes(autojump_clock: trio.testing.MockClock) -> None:
    store, fs, mem = make()
    fs.inject(Step.FSYNC, Fault.error(errno.ENOSPC), times=1)
    with trio.move_on_after(0.5):
        async with open_state_writer(store) as send:
            await send.send(state_of("api", restarts=7))
            await trio.sleep_forever()
    assert trio.current_time() == 0.5
    assert mem.decode(HOME.state_file) == (2, state_of("api", restarts=7))


async def test_final_flush_is_bounded_by_shutdown_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, fs, mem = make(shutdown_timeout=5)
    fs.inject(Step.FSYNC, Fault.delay(1000))
    with capture_logs() as logs, trio.move_on_after(1):
        async with open_state_writer(store) as send:
            await send.send(state_of("api"))
            await trio.sleep_forever()
    assert trio.current_time() == 6  # cancelled at 1, gave up the final write at 1 + 5
    assert HOME.state_file not in mem.files
    assert_clean(mem)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["state_final_write_failed"]


async def test_errors_in_the_block_come_out_unwrapped_after_a_final_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, _, mem = make()

    async def run() -> None:
        async with open_state_writer(store) as send:
            await send.send(state_of("api"))
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as info:
        await run()
    assert type(info.value) is ValueError  # not an ExceptionGroup
    # The cancelled in-flight write is redone by the final flush.
    assert mem.decode(HOME.state_file)[1] == state_of("api")
    assert_clean(mem)


async def test_wait_idle_returns_once_the_task_has_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, fs, _ = make()
    fs.inject(Step.CREATE, Fault.error(errno.EIO))
    with trio.move_on_after(1):
        async with open_state_writer(store) as send:
            await send.send(state_of("api"))
            await trio.sleep_forever()
    assert store.statistics().pending
    await store.wait_idle()  # nothing more will be written: no hang
    assert trio.current_time() == 1


async def test_wait_idle(autojump_clock: trio.testing.MockClock) -> None:
    store, fs, _ = make()
    await store.wait_idle()  # nothing to do
    fs.inject(Step.WRITE, Fault.delay(3))
    async with open_state_writer(store) as send:
        await send.send(state_of("api"))
        await store.wait_idle()
        assert trio.current_time() == 3
        assert store.statistics().pending is False
