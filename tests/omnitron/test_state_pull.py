"""The persistence task pulling snapshots: ``mark_dirty()``, ``flush()``, one snapshot per write.

Virtual time with the in-memory disk, as in ``test_state_store.py``.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from omnitron.state import AppState, DaemonState, Home, StateStore, Step, open_persistence
from omnitron.state.testing import Fault, FaultyFileSystem, MemoryFileSystem

HOME = Home("/virtual/home")


class Source:
    """The daemon's side: a state that changes, and a count of snapshots taken."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.taken = 0

    def change(self, name: str, store: StateStore) -> None:
        self.names.append(name)
        store.mark_dirty()

    def snapshot(self) -> DaemonState:
        self.taken += 1
        return DaemonState(apps=[AppState(name=n) for n in self.names])


def make(**kwargs: float) -> tuple[StateStore, FaultyFileSystem, MemoryFileSystem]:
    mem = MemoryFileSystem()
    fs = FaultyFileSystem(mem)
    return StateStore(HOME, fs=fs, **kwargs), fs, mem


async def test_flush_returns_once_the_change_is_on_disk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, _fs, mem = make(min_write_interval=0.2)
    source = Source()
    async with open_persistence(store, source.snapshot):
        source.change("api", store)
        await store.flush()
        assert mem.decode(HOME.state_file)[1] == source.snapshot()
        # A second change within min_write_interval: the flush waits for its write.
        source.change("web", store)
        before = trio.current_time()
        await store.flush()
        assert trio.current_time() - before == pytest.approx(0.2)
        assert [a.name for a in mem.decode(HOME.state_file)[1].apps] == ["api", "web"]


async def test_a_burst_of_changes_costs_one_snapshot_per_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, _fs, mem = make(min_write_interval=0.2)
    source = Source()
    async with open_persistence(store, source.snapshot):
        for n in range(1000):
            source.change(f"app{n}", store)
            if n % 100 == 0:
                await trio.sleep(0.01)
        await store.flush()
        writes, taken = store.statistics().writes, source.taken
    assert len(mem.decode(HOME.state_file)[1].apps) == 1000
    assert taken == writes  # the snapshot is built only when a write is due
    assert writes <= 7  # 1000 changes over ~0.1 s: a handful of writes
    # Every change is counted; all but one per write were coalesced into another.
    stats = store.statistics()
    assert stats.snapshots_received - stats.snapshots_coalesced == stats.writes


async def test_flush_waits_through_a_failing_disk(autojump_clock: trio.testing.MockClock) -> None:
    store, fs, mem = make(retry_initial=1.0)
    source = Source()
    fs.inject(Step.FSYNC, Fault.error(errno.ENOSPC), times=1)
    async with open_persistence(store, source.snapshot):
        source.change("api", store)
        with trio.move_on_after(0.5):
            await store.flush()
        assert str(store.health()) == "persistence: degraded (ENOSPC)"
        assert HOME.state_file not in mem.files
        # The retry succeeds: the flush that is still waiting returns then.
        await store.flush()
        assert trio.current_time() == pytest.approx(1.0)
        assert str(store.health()) == "persistence: ok"
        assert mem.decode(HOME.state_file)[1] == source.snapshot()


async def test_flush_returns_when_the_change_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, _fs, mem = make()
    source = Source()
    async with open_persistence(store, source.snapshot):
        source.change("api", store)
        await store.flush()
        source.names.clear()  # every app gone: refused, not written
        store.mark_dirty()
        await store.flush()
        assert store.statistics().writes_refused == 1
        assert [a.name for a in mem.decode(HOME.state_file)[1].apps] == ["api"]


async def test_leaving_the_block_writes_the_very_last_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, _fs, mem = make(min_write_interval=10.0)
    source = Source()
    async with open_persistence(store, source.snapshot):
        source.change("api", store)
        await store.flush()
        source.names.append("web")  # changed, not even announced
    assert [a.name for a in mem.decode(HOME.state_file)[1].apps] == ["api", "web"]


async def test_an_error_in_the_block_comes_out_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, _, _ = make()
    with pytest.raises(KeyError):
        async with open_persistence(store, Source().snapshot):
            raise KeyError("boom")


@contextlib.asynccontextmanager
async def held(seconds: float) -> AsyncIterator[tuple[StateStore, Source, MemoryFileSystem]]:
    """A running store writing at most every 50 ms, held for ``seconds`` from the start."""
    store, _fs, mem = make(min_write_interval=0.05)
    source = Source()
    async with open_persistence(store, source.snapshot):
        store.hold(seconds)
        yield store, source, mem


def names_on_disk(mem: MemoryFileSystem) -> list[str]:
    return [app.name for app in mem.decode(HOME.state_file)[1].apps]


async def test_a_hold_delays_the_writes_of_a_burst_until_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with held(5.0) as (store, source, mem):
        for n in range(100):  # the daemon starting 100 apps over a second
            source.change(f"app{n}", store)
            await trio.sleep(0.01)
        assert store.statistics().writes == 0
        assert source.taken == 0  # not even a snapshot
        store.release()
        await trio.sleep(0.01)
        assert store.statistics().writes == 1
        assert len(names_on_disk(mem)) == 100


async def test_a_hold_ends_by_itself(autojump_clock: trio.testing.MockClock) -> None:
    async with held(2.0) as (store, source, mem):
        source.change("api", store)
        await trio.sleep(1.99)
        assert store.statistics().writes == 0
        await trio.sleep(0.02)
        assert store.statistics().writes == 1
        assert names_on_disk(mem) == ["api"]


async def test_a_flush_during_a_hold_writes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with held(60.0) as (store, source, mem):
        source.change("api", store)
        await trio.sleep(0.5)
        before = trio.current_time()
        source.change("web", store)
        await store.flush()  # a reply that must be durable does not wait for the hold
        assert trio.current_time() - before < 0.1
        assert names_on_disk(mem) == ["api", "web"]
        # The hold goes on for the changes after it.
        source.change("db", store)
        await trio.sleep(1.0)
        assert store.statistics().writes == 1


async def test_a_negative_hold_is_refused() -> None:
    store, _fs, _mem = make()
    with pytest.raises(ValueError, match="seconds"):
        store.hold(-1.0)


@contextlib.asynccontextmanager
async def written_once(
    **kwargs: float,
) -> AsyncIterator[tuple[StateStore, Source, MemoryFileSystem]]:
    """A running store whose first change is on disk."""
    store, _fs, mem = make(**kwargs)
    source = Source()
    async with open_persistence(store, source.snapshot):
        source.change("api", store)
        await store.flush()
        yield store, source, mem


async def test_changes_nobody_waits_for_are_written_at_the_background_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with written_once(min_write_interval=0.05, background_interval=1.0) as (
        store,
        source,
        mem,
    ):
        # Churn: a change every 10 ms for 3 s, and nobody waits for it.
        for n in range(300):
            source.change(f"app{n}", store)
            await trio.sleep(0.01)
        writes = store.statistics().writes
        assert 3 <= writes <= 5  # the first, then about one a second (not 60)
        # A reply waiting for its change is written min_write_interval after the last write.
        source.change("web", store)
        before = trio.current_time()
        await store.flush()
        assert store.statistics().writes == writes + 1
        assert trio.current_time() - before <= 0.05 + 1e-9
        assert mem.decode(HOME.state_file)[1].apps[-1].name == "web"


async def test_the_background_interval_is_never_below_the_minimum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with written_once(min_write_interval=0.5, background_interval=0.1) as (
        store,
        source,
        _mem,
    ):
        start = trio.current_time()
        source.change("web", store)
        while store.statistics().writes < 2:  # noqa: ASYNC110 - virtual time
            await trio.sleep(0.01)
        assert trio.current_time() - start == pytest.approx(0.5, abs=0.011)


async def test_changes_while_one_is_pending_do_not_wake_the_writer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, fs, mem = make(background_interval=1.0)
    source = Source()
    async with open_persistence(store, source.snapshot):
        source.change("api", store)
        await store.flush()
        source.change("web", store)  # the writer wakes: due a second after the write
        await trio.testing.wait_all_tasks_blocked()
        wake = store._wake
        for n in range(1000):
            source.change(f"app{n}", store)
            assert not wake.is_set()  # the due time is already set
        await trio.sleep(1.5)
        assert len(mem.decode(HOME.state_file)[1].apps) == 1002
        assert [t for t, step in fs.calls if step is Step.CREATE] == pytest.approx([0, 1.0])
