"""The process host: subreaper, orphan reaping, exit-status truth, no zombies."""

from __future__ import annotations

import os
import stat
import subprocess

import psutil
import pytest
import trio
import trio.testing

from supervision import _host
from supervision._host import _prctl_subreaper, open_process_host
from supervision._spec import Output, ProcessChild, Ready

READY3 = {"ready": Ready.fd(3), "env": {"READY_FD": "3"}}


async def test_host_runtime_dir_and_subreaper_flag() -> None:
    assert _prctl_subreaper(None) == 0
    async with open_process_host(subreaper=True) as host:
        assert host.subreaper
        assert _prctl_subreaper(None) == 1
        mode = os.stat(host.runtime_dir).st_mode
        assert stat.S_IMODE(mode) == 0o700
        assert len(host.runtime_dir) < 80
        runtime_dir = host.runtime_dir
    assert _prctl_subreaper(None) == 0
    assert not await trio.Path(runtime_dir).exists()


async def test_host_lets_the_body_exception_through_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with open_process_host(subreaper=True):
            raise KeyError("boom")


async def test_a_spawn_waits_for_no_turn_unless_the_spawn_lock_is_held() -> None:
    # Spawns that come together (a restart storm) do not queue behind each
    # other: with the lock free the turn is immediate (no checkpoint); while
    # another task holds it, the turn waits for its release.
    async with open_process_host() as host:
        with trio.CancelScope() as scope:
            scope.cancel()
            held = await host.spawn_turn()  # no checkpoint: the cancellation does not fire
        assert not held
        assert not host.spawn_lock.locked()
        turns = 0

        async def spawner() -> None:
            nonlocal turns
            held = await host.spawn_turn()
            assert held  # taken from the holder, given back at the end of the turn
            turns += 1
            host.end_spawn_turn(held)

        async with trio.open_nursery() as nursery:
            await host.spawn_lock.acquire()
            nursery.start_soon(spawner)
            nursery.start_soon(spawner)
            await trio.testing.wait_all_tasks_blocked()
            assert turns == 0
            host.spawn_lock.release()
        assert turns == 2
        assert not host.spawn_lock.locked()


async def test_host_token() -> None:
    async with open_process_host(token="omnitron-home1") as host:
        assert host.token == "omnitron-home1"
    with pytest.raises(ValueError, match="token"):
        async with open_process_host(token="has.dot"):
            pass


@pytest.mark.slow
async def test_exit_code_is_true_while_orphans_are_reaped(reaper_slots, child, wait_until) -> None:
    # PL-11: orphans (one escaped with setsid, one in the group) die together with
    # the managed child; a waitpid(-1) reaper would make its exit code read 0.
    slot = reaper_slots.new(ProcessChild(child("orphan_exit", 3)))
    for _ in range(20):
        await slot.start()
        status = await slot.exited()
        assert status.code == 3, status
    await wait_until(lambda: _zombies() == [])


async def test_children_of_other_code_are_left_to_their_owner(reaper_slots, child) -> None:
    # The host reaps only what descends from its managed children: a process this
    # program spawns by other means keeps its exit status.
    for new_session in (False, True):
        for _ in range(5):
            result = await trio.run_process(
                child("exit_with", 7), check=False, start_new_session=new_session
            )
            assert result.returncode == 7


async def test_group_members_reparented_to_the_host_are_reaped(
    reaper_slots, child, lines, wait_until
) -> None:
    out = lines()
    slot = reaper_slots.new(ProcessChild(child("shell_jobs"), stdout=Output.lines(out), **READY3))
    leader = await slot.start()
    await out.wait_for(lambda got: len(got) >= 3)
    jobs = [pid for pid in out.pids() if pid != leader]
    os.kill(leader, 9)
    await slot.exited()
    # Reaped by pid, by the runner or by the host's reaper (whichever comes first).
    await wait_until(lambda: not any(psutil.pid_exists(pid) for pid in jobs))
    await wait_until(lambda: _zombies() == [])


@pytest.mark.slow
async def test_many_cycles_leave_no_zombies(reaper_slots, child, wait_until) -> None:
    # PL-12 (bounded): children that leave unreaped grandchildren behind.
    baseline = len(psutil.Process().children())
    slot = reaper_slots.new(ProcessChild(child("short_lived_kids"), **READY3))
    for _ in range(100):
        await slot.start()
        await slot.stop()
    await wait_until(lambda: _zombies() == [])
    await wait_until(lambda: len(psutil.Process().children()) == baseline)
    assert reaper_slots.host.managed_pids == frozenset()
    # Grandchildren left as zombies of the children's sleep are reparented to the
    # host when it dies; its reaper collects them by pid.
    assert reaper_slots.host.statistics().orphans_reaped > 0


async def test_cycles_without_subreaper_leave_no_zombies(slots, child) -> None:
    slot = slots.new(ProcessChild(child("exit_with", 1)))
    for _ in range(30):
        await slot.start()
        await slot.exited()
    assert _zombies() == []
    assert slots.host.managed_pids == frozenset()


async def test_popen_never_reaps_a_managed_child(slots, child) -> None:
    # subprocess keeps a list of abandoned Popen objects and reaps them by pid on
    # every new Popen; the runner's must never be among them.
    slot = slots.new(ProcessChild(child("exit_with", 5)))
    for _ in range(10):
        await slot.start()
        await trio.to_thread.run_sync(subprocess.run, ["true"])
        assert (await slot.exited()).code == 5


def _zombies() -> list[int]:
    result = []
    for proc in psutil.Process().children():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                result.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return result


async def test_a_burst_of_exits_makes_one_sweep(
    reaper_slots, child, wait_until, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reaper sweeps at the first SIGCHLD of a burst, then waits before it
    # listens again: the exits of a crash storm cost a pass or two, not one each,
    # and each keeps its status (the runners wait on pidfds).
    monkeypatch.setattr(_host, "_SWEEP_COALESCE", 0.5)
    host = reaper_slots.host
    swept = host.statistics().sweeps
    slots = [reaper_slots.new(ProcessChild(child("exit_with", 3)), f"c{i}") for i in range(8)]
    for slot in slots:
        await slot.start()
    for slot in slots:
        assert (await slot.exited()).code == 3
    await wait_until(lambda: host.statistics().sweeps > swept)
    await wait_until(lambda: _zombies() == [])
    assert host.statistics().sweeps - swept <= 3
