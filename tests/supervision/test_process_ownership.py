"""What a subreaper host owns: its orphans, never the embedding program's children.

Real processes throughout: the embedder's own children (``trio.lowlevel.open_process``),
escapees that wipe their environment, a process frozen so that SIGKILL cannot end it,
and a live stranger named by a stale identity.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio

from supervision import (
    ChildSpec,
    PinnedProcess,
    ProcessIdentity,
    SupervisorSpec,
    _host,
    _procfs,
    descendants,
    find_marked,
    kill_processes,
    open_supervisor,
)
from supervision._procfs import _find_tree, _read_stat
from supervision._spec import Output, ProcessChild, Ready
from supervision.events import ChildStopped

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux processes")

READY3 = {"ready": Ready.fd(3), "env": {"READY_FD": "3"}}
SLEEP = ["sleep", "3600"]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------- item: reaping


@pytest.mark.parametrize("new_session", [False, True], ids=["same-session", "new-session"])
async def test_an_embedders_own_child_keeps_its_exit_status_when_reaped_late(
    reaper_slots, child, wait_until, new_session: bool
) -> None:
    # A crash-looping managed child keeps SIGCHLD coming (and the reaper sweeping)
    # while the embedder's own child sits unreaped well past the reaper's grace.
    slot = reaper_slots.new(ProcessChild(child("orphan_exit", 3)))
    proc = await trio.lowlevel.open_process(["sh", "-c", "exit 7"], start_new_session=new_session)
    await wait_until(lambda: (entry := _read_stat(proc.pid)) is not None and entry.zombie)
    for _ in range(3):
        await slot.start()
        assert (await slot.exited()).code == 3
    # Longer than the grace after which an unwatched zombie would be reaped.
    await trio.sleep(_host._UNKNOWN_ZOMBIE_GRACE + 0.5)
    await slot.start()
    await slot.exited()
    assert await proc.wait() == 7


async def test_a_burst_of_exits_never_reads_every_process(
    reaper_slots, child, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reaper learns of its children from the children lists, not /proc/*.
    calls: list[int] = []
    real = _procfs._process_table

    def counting() -> dict[int, _procfs._Stat]:
        calls.append(1)
        return real()

    monkeypatch.setattr(_host, "_process_table", counting)
    monkeypatch.setattr(_procfs, "_process_table", counting)
    slot = reaper_slots.new(ProcessChild(child("orphan_exit", 3)))
    swept = reaper_slots.host.statistics().sweeps
    for _ in range(10):
        await slot.start()
        assert (await slot.exited()).code == 3
    assert reaper_slots.host.statistics().sweeps > swept
    assert calls == []


# --------------------------------------------------------------------------- item: escapees


async def test_an_escapee_with_a_wiped_environment_is_killed_with_its_child(
    reaper_slots, child, lines, wait_until
) -> None:
    out = lines()
    slot = reaper_slots.new(
        ProcessChild(child("escape_wiped"), stdout=Output.lines(out), stop_timeout=1, **READY3)
    )
    leader = await slot.start()
    escapee = int((await out.line_starting("escapee ")).split()[1])
    # Reparented here, in a session of its own, with nothing that names its child.
    await wait_until(lambda: psutil.Process(escapee).ppid() == os.getpid())
    await wait_until(lambda: psutil.Process(escapee).environ() == {})
    assert os.getsid(escapee) == escapee != leader
    report = await slot.stop()
    assert report.escaped == ()
    await wait_until(lambda: not psutil.pid_exists(escapee))  # killed and reaped by pid


async def test_a_wiped_escapee_of_a_crashed_leader_is_killed(
    reaper_slots, child, lines, wait_until
) -> None:
    out = lines()
    spec = ProcessChild(child("escape_wiped", "--exit", 3), stdout=Output.lines(out))
    slot = reaper_slots.new(spec)
    await slot.start()
    # The embedder's own child, started after the crashed generation, outside this
    # session: only its owner's pidfd tells it apart from the escapee.
    mine = await trio.lowlevel.open_process(SLEEP, start_new_session=True)
    try:
        assert (await slot.exited()).code == 3
        escapee = int((await out.line_starting("escapee ")).split()[1])
        # Killed by the orphan reaper (off the restart path), and reaped by pid.
        await wait_until(lambda: not psutil.pid_exists(escapee))
        assert mine.returncode is None
        assert _alive(mine.pid)
    finally:
        mine.kill()
        await mine.wait()


async def test_a_wiped_orphan_in_another_childs_group_is_left_to_that_child(
    reaper_slots, child, lines, wait_until
) -> None:
    first = reaper_slots.new(ProcessChild(child("sleeper"), stop_timeout=1), name="first")
    await first.start()
    out = lines()
    spec = ProcessChild(
        child("escape_wiped", "--keep-session"), stdout=Output.lines(out), stop_timeout=1, **READY3
    )
    second = reaper_slots.new(spec, name="second")
    leader = await second.start()
    orphan = int((await out.line_starting("escapee ")).split()[1])
    await wait_until(lambda: psutil.Process(orphan).ppid() == os.getpid())
    assert os.getpgid(orphan) == leader
    # Started after the first child's leader, no marker, nobody watches it: but it
    # is in the second child's group, so it is the second child's.
    await first.stop()
    assert _alive(orphan)
    await second.stop()
    await wait_until(lambda: not psutil.pid_exists(orphan))


async def test_a_tree_stop_takes_the_wiped_escapee_but_spares_the_embedders_child(
    child, lines, wait_until
) -> None:
    out = lines()
    spec = ProcessChild(child("escape_wiped"), stdout=Output.lines(out), stop_timeout=1, **READY3)
    mine = await trio.lowlevel.open_process(SLEEP, start_new_session=True)
    try:
        with trio.fail_after(20):
            async with open_supervisor(SupervisorSpec(name="root"), subreaper=True) as sup:
                events = sup.subscribe()
                await sup.start_child(ChildSpec("c", spec))
                escapee = int((await out.line_starting("escapee ")).split()[1])
                await wait_until(lambda: psutil.Process(escapee).ppid() == os.getpid())
                await sup.terminate_child("c")
                async for event in events:
                    if isinstance(event, ChildStopped):
                        break
                assert event.escaped == ()
                assert not _alive(escapee)
        assert mine.returncode is None
        assert _alive(mine.pid)
    finally:
        mine.kill()
        await mine.wait()


@pytest.fixture
def freezer() -> Iterator[Path]:
    """A cgroup v1 freezer group (root, with the freezer hierarchy mounted)."""
    base = Path("/sys/fs/cgroup/freezer")
    if not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
        pytest.skip("needs a writable cgroup v1 freezer to make SIGKILL wait")
    group = base / f"supervision-test-{os.getpid()}"
    group.mkdir()
    try:
        yield group
    finally:
        (group / "freezer.state").write_text("THAWED")
        for pid in (group / "cgroup.procs").read_text().split():
            psutil.Process(int(pid)).wait(timeout=10)
        group.rmdir()


async def test_an_escapee_that_outlives_sigkill_is_named_in_the_event(
    child, lines, wait_until, freezer: Path
) -> None:
    # PL-08 with a real process: a frozen task cannot act on SIGKILL until thawed.
    out = lines()
    spec = ProcessChild(
        child("escape_setsid"), stdout=Output.lines(out), stop_timeout=0.2, **READY3
    )
    with trio.fail_after(20):
        async with open_supervisor(SupervisorSpec(name="root"), subreaper=True) as sup:
            events = sup.subscribe()
            await sup.start_child(ChildSpec("c", spec))
            escapee = int((await out.line_starting("escapee ")).split()[1])
            (freezer / "cgroup.procs").write_text(str(escapee))
            (freezer / "freezer.state").write_text("FROZEN")
            state = freezer / "freezer.state"
            await wait_until(lambda: state.read_text().strip() == "FROZEN")
            await sup.terminate_child("c")
            async for event in events:
                if isinstance(event, ChildStopped):
                    break
            assert event.escaped == (escapee,)
            assert _alive(escapee)  # frozen, SIGKILL pending: the fixture thaws it


# --------------------------------------------------------------------------- item: identity


async def test_the_runner_never_signals_a_stale_identity(reaper_slots, child) -> None:
    # PL-09: the runner is told of a process by (pid, start time); the pid now
    # names a live stranger that started later (a recycled pid): it is not touched.
    stranger = await trio.lowlevel.open_process(SLEEP, start_new_session=True)
    try:
        entry = _read_stat(stranger.pid)
        assert entry is not None
        slot = reaper_slots.new(ProcessChild(child("sleeper")))
        leader = await slot.start()
        stale = [(stranger.pid, entry.ticks - 1)]
        tree = await trio.to_thread.run_sync(_find_tree, leader, lambda ticks: stale)
        assert [t.pid for t in (*tree.escapees, *tree.members)] == []
        # The same through a stop, with the host's claim replaced by the stale one.
        host = reaper_slots.host
        original = host.claimed_by
        host.claimed_by = lambda child_id, ticks: stale  # type: ignore[method-assign]
        try:
            await slot.stop()
        finally:
            host.claimed_by = original  # type: ignore[method-assign]
        assert stranger.returncode is None
        assert _alive(stranger.pid)
    finally:
        stranger.kill()
        await stranger.wait()


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "no-pidfd"])
async def test_a_pinned_process_is_checked_before_every_signal(
    monkeypatch: pytest.MonkeyPatch, pidfd: bool
) -> None:
    if not pidfd:
        monkeypatch.setattr(_procfs, "_HAVE_PIDFD", False)
    stranger = await trio.lowlevel.open_process(SLEEP)
    try:
        identity = ProcessIdentity.of(stranger.pid)
        assert identity is not None
        assert identity.start_time is not None
        older = ProcessIdentity(pid=stranger.pid, start_time=identity.start_time / 2)
        assert PinnedProcess.pin(older) is None
        assert not older.is_running()
        # Pinned while it matched, then its pid is recycled: no signal lands.
        target = PinnedProcess(older, None)
        assert target.send(signal.SIGKILL) is True
        assert not target.is_same()
        assert _alive(stranger.pid)
        pinned = PinnedProcess.pin(identity)
        assert pinned is not None
        with pinned:
            assert pinned.send(signal.SIGKILL)
            with trio.fail_after(10):
                await pinned.wait_exited()
        assert await stranger.wait() == -signal.SIGKILL
    finally:
        if stranger.returncode is None:
            stranger.kill()
            await stranger.wait()


# --------------------------------------------------------------------------- the public API


async def test_descendants_find_marked_and_kill_processes(child) -> None:
    token = f"t{os.getpid()}"
    env = {**os.environ, "SUPERVISION_CHILD_ID": f"{token}.1", "PYTHONUNBUFFERED": "1"}
    proc = await trio.lowlevel.open_process(
        child("escape_setsid"), env=env, stdout=-1, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        received = b""
        with trio.fail_after(10):
            while b"escapee " not in received:
                received += await proc.stdout.receive_some()
        escapee = int(received.split(b"escapee ")[1].split()[0])
        assert escapee in {p.pid for p in descendants(proc.pid)}
        marked = await trio.to_thread.run_sync(
            find_marked, "SUPERVISION_CHILD_ID", lambda v: v.startswith(token + ".")
        )
        assert {m.identity.pid for m in marked} == {proc.pid, escapee}
        report = await trio.to_thread.run_sync(
            lambda: kill_processes([ProcessIdentity.of(proc.pid)], kill_timeout=5)  # type: ignore[list-item]
        )
        assert set(report.killed) == {proc.pid, escapee}
        assert report.complete
        assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
