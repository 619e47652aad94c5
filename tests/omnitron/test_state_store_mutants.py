"""The persistence path's edges that mutation testing (``nox -s mutate``) found unpinned.

Each test here fails with a mutant of ``omnitron/state/_store.py`` that
survived the other persistence tests. They run
in virtual time on the in-memory disk, as ``test_state_store.py``.
"""

from __future__ import annotations

import errno

import trio
import trio.testing

from omnitron.state import (
    AppState,
    DaemonState,
    Home,
    LoadResult,
    StateSource,
    StateStore,
    Step,
    open_state_writer,
)
from omnitron.state._codec import encode_state
from omnitron.state.testing import Fault, FaultyFileSystem, MemoryFileSystem

HOME = Home("/virtual/home")


def state_of(*names: str) -> DaemonState:
    return DaemonState(apps=[AppState(name=n) for n in names])


def store_over(
    mem: MemoryFileSystem, state: DaemonState, generation: int
) -> tuple[StateStore, FaultyFileSystem]:
    """A store over a memory disk that already holds ``state`` as ``state.json``."""
    mem.files[HOME.state_file] = encode_state(state, generation)
    loaded = LoadResult(state=state, source=StateSource.PRIMARY, generation=generation)
    fs = FaultyFileSystem(mem)
    return StateStore(HOME, loaded, fs=fs), fs


async def test_permission_for_an_empty_state_outlives_writes_that_have_apps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # PC-03: permit_empty() is used up by the first *empty* snapshot written, not by any write.
    mem = MemoryFileSystem()
    store, _ = store_over(mem, state_of("api", "web"), 3)
    async with open_state_writer(store) as send:
        store.permit_empty()
        await send.send(state_of("api"))
        await store.wait_idle()
        await send.send(DaemonState())
        await store.wait_idle()
    assert mem.decode(HOME.state_file) == (5, DaemonState())
    assert store.statistics().writes_refused == 0


async def test_consecutive_failures_count_from_the_last_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # PC-06: after a recovery, the next failure is the first again (count and backoff).
    mem = MemoryFileSystem()
    store, fs = store_over(mem, state_of("api"), 1)
    async with open_state_writer(store) as send:
        fs.inject(Step.CREATE, Fault.error(errno.EIO), times=1)
        await send.send(state_of("api", "web"))
        await store.wait_idle()  # failed at 0, written by the retry at 1
        assert str(store.health()) == "persistence: ok"
        fs.inject(Step.CREATE, Fault.error(errno.EIO), times=1)
        await trio.sleep(5)
        start = trio.current_time()
        await send.send(state_of("web"))
        await trio.sleep(0.5)
        health = store.health()
        assert str(health) == "persistence: degraded (EIO)"
        assert health.consecutive_failures == 1
        await store.wait_idle()
        assert trio.current_time() - start == 1  # retry_initial, not doubled
    assert mem.decode(HOME.state_file)[1] == state_of("web")


async def test_a_backup_temp_left_by_an_earlier_failure_is_replaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mem = MemoryFileSystem()
    store, _ = store_over(mem, state_of("api"), 2)
    previous = mem.files[HOME.state_file]
    mem.files[HOME.path / "state.json.bak.tmp"] = b"half a backup"
    async with open_state_writer(store) as send:
        await send.send(state_of("api", "web"))
        await store.wait_idle()
    assert str(store.health()) == "persistence: ok"
    assert mem.files[HOME.backup_file] == previous
    assert HOME.path / "state.json.bak.tmp" not in mem.files
    assert mem.decode(HOME.state_file) == (3, state_of("api", "web"))
