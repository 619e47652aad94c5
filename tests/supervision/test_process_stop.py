"""Stopping process children: escalation, whole trees, escaped descendants."""

from __future__ import annotations

import os
import signal

import psutil
import trio
import trio.testing

from supervision._exit import ExitStatus
from supervision._procfs import PinnedProcess, ProcessIdentity, _kill_pinned
from supervision._runner import StopReport
from supervision._spec import Output, ProcessChild, Ready

READY3 = {"ready": Ready.fd(3), "env": {"READY_FD": "3"}}


async def test_graceful_stop(slots, child) -> None:
    slot = slots.new(ProcessChild(child("sleeper")))
    pid = await slot.start()
    assert slot.runner.pid == pid
    report = await slot.stop()
    assert report == StopReport(exit=ExitStatus.killed(signal.SIGTERM, normal=True))
    assert report.exit is not None
    assert report.exit.normal
    assert slot.runner.pid is None


async def test_stop_escalates_to_sigkill(slots, child) -> None:
    # PL-05: SIGTERM is ignored, SIGKILL reaches the group after stop_timeout.
    slot = slots.new(ProcessChild(child("ignore_term"), stop_timeout=0.5, **READY3))
    pid = await slot.start()
    started = trio.current_time()
    report = await slot.stop()
    elapsed = trio.current_time() - started
    assert report.killed
    assert report.exit == ExitStatus.killed(signal.SIGKILL)
    assert 0.5 <= elapsed < 0.5 + 1.5
    assert os.getpgid(0) != pid


async def test_zero_stop_timeout_kills_at_once(slots, child) -> None:
    slot = slots.new(ProcessChild(child("ignore_term"), stop_timeout=0, **READY3))
    await slot.start()
    report = await slot.stop()
    assert report.killed
    assert report.exit is not None
    assert report.exit.signal == signal.SIGKILL


async def test_custom_stop_signal_is_a_normal_exit(slots, child) -> None:
    slot = slots.new(ProcessChild(child("sleeper"), stop_signal="INT"))
    await slot.start()
    report = await slot.stop()
    assert report.exit == ExitStatus.killed(signal.SIGINT, normal=True)
    assert not report.killed


async def test_trap_tree_is_killed_entirely(slots, child, lines, process_state) -> None:
    # PL-06: three levels, each ignoring SIGTERM.
    out = lines()
    spec = ProcessChild(child("trap_tree", 3), stop_timeout=0.3, stdout=Output.lines(out), **READY3)
    slot = slots.new(spec)
    await slot.start()
    await out.wait_for(lambda got: len(got) >= 3)
    pids = out.pids()
    assert len(pids) == 3
    report = await slot.stop()
    assert report.killed
    assert all(process_state.gone(pid) for pid in pids)


async def test_shell_jobs_stop_kills_every_member(slots, child, lines, process_state) -> None:
    # PL-07a
    out = lines()
    slot = slots.new(ProcessChild(child("shell_jobs"), stdout=Output.lines(out), **READY3))
    leader = await slot.start()
    await out.wait_for(lambda got: len(got) >= 3)
    members = out.pids()
    assert leader in members
    assert {os.getpgid(pid) for pid in members} == {leader}
    report = await slot.stop()
    assert not report.killed
    assert all(process_state.gone(pid) for pid in members)


async def test_leftover_group_members_die_with_the_leader(
    slots, child, lines, process_state, wait_until
) -> None:
    # PL-07b: an external kill -9 of the leader only; the runner kills the rest of
    # its group before reporting the exit, so no old copy outlives it.
    out = lines()
    slot = slots.new(ProcessChild(child("shell_jobs"), stdout=Output.lines(out), **READY3))
    leader = await slot.start()
    await out.wait_for(lambda got: len(got) >= 3)
    jobs = [pid for pid in out.pids() if pid != leader]
    os.kill(leader, signal.SIGKILL)
    status = await slot.exited()
    assert status.signal == signal.SIGKILL
    await wait_until(lambda: all(process_state.gone(pid) for pid in jobs))


async def test_escaped_setsid_grandchild_is_killed_on_stop(
    any_slots, child, lines, process_state, wait_until
) -> None:
    # PL-08: killpg misses a grandchild that called setsid(); the runner finds it
    # by walking the tree before signalling.
    where = any_slots
    out = lines()
    spec = ProcessChild(
        child("escape_setsid", "--ignore-term"),
        stop_timeout=0.3,
        stdout=Output.lines(out),
        **READY3,
    )
    slot = where.new(spec)
    leader = await slot.start()
    escapee = int((await out.line_starting("escapee ")).split()[1])
    assert os.getsid(escapee) == escapee != leader
    report = await slot.stop()
    assert report.escaped == ()
    assert process_state.gone(escapee)
    if where.host.subreaper:
        # It was reparented to us and reaped by pid.
        await wait_until(lambda: not psutil.pid_exists(escapee))


async def test_escapee_of_a_crashed_leader_is_killed_on_a_subreaper(
    reaper_slots, child, lines, wait_until
) -> None:
    out = lines()
    spec = ProcessChild(child("escape_setsid", "--exit", 3), stdout=Output.lines(out))
    slot = reaper_slots.new(spec)
    await slot.start()
    status = await slot.exited()
    assert status.code == 3
    escapee = int((await out.line_starting("escapee ")).split()[1])
    await wait_until(lambda: not psutil.pid_exists(escapee))


async def test_unkillable_targets_are_reported_as_escaped() -> None:
    class Refusing(PinnedProcess):
        def send(self, sig: int) -> bool:
            return False

    target = Refusing(ProcessIdentity(pid=123456, start_time=0.0), None)
    assert await _kill_pinned([target]) == (123456,)


async def test_stopped_child_still_stops(slots, child, wait_until) -> None:
    # SG-07: SIGCONT goes with the stop signal.
    slot = slots.new(ProcessChild(child("sleeper"), stop_timeout=5))
    pid = await slot.start()
    os.kill(pid, signal.SIGSTOP)
    await wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    started = trio.current_time()
    report = await slot.stop()
    assert not report.killed
    assert report.exit == ExitStatus.killed(signal.SIGTERM, normal=True)
    assert trio.current_time() - started < 2


async def test_stop_racing_a_natural_exit(slots, child, process_state) -> None:
    # PL-09: the leader stays unreaped until the group is signalled, so the
    # group id can never be a stranger's; ESRCH and an early exit are fine.
    slot = slots.new(ProcessChild(child("exit_with", 0)))
    for _ in range(50):
        await slot.start()
        report = await slot.stop()
        assert report.exit is not None
        assert report.exit.code == 0 or report.exit.signal == signal.SIGTERM
        assert not report.killed
    assert process_state.zombie_children() == []
    assert slots.host.managed_pids == frozenset()


async def test_cancelled_before_spawn(slots, child) -> None:
    slot = slots.new(ProcessChild(child("sleeper")))
    with trio.CancelScope() as scope:
        async with slots.host.spawn_lock, trio.open_nursery() as nursery:
            nursery.start_soon(slot.runner.run, slot.spawned.append)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert slot.spawned == []
    assert slot.runner.stop_report == StopReport()


async def test_cancelled_while_waiting_for_readiness(slots, child) -> None:
    slot = slots.new(ProcessChild(child("never_ready"), ready=Ready.fd(3)))
    outcome: list[BaseException] = []
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                try:
                    await slot.runner.run(slot.spawned.append)
                except BaseException as exc:
                    outcome.append(exc)
                    raise

            nursery.start_soon(run)
            while not slot.spawned:
                await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert isinstance(outcome[0], trio.Cancelled)
    report = slot.runner.stop_report
    assert report is not None
    assert report.exit == ExitStatus.killed(signal.SIGTERM, normal=True)


async def test_without_pidfd(slots, child, lines, monkeypatch, process_state, wait_until) -> None:
    # Kernels before 5.3: a worker thread waits with WNOWAIT (the leader stays
    # unreaped, so its group id stays ours), escapees are killed after a
    # start-time check.
    monkeypatch.setattr("supervision._procfs._HAVE_PIDFD", False)
    slot = slots.new(ProcessChild(child("exit_with", 3)))
    await slot.start()
    assert (await slot.exited()).code == 3

    slot = slots.new(ProcessChild(child("ignore_term"), stop_timeout=0.2, **READY3))
    await slot.start()
    report = await slot.stop()
    assert report.killed

    out = lines()
    spec = ProcessChild(
        child("escape_setsid", "--ignore-term"),
        stop_timeout=0.2,
        stdout=Output.lines(out),
        **READY3,
    )
    slot = slots.new(spec)
    await slot.start()
    escapee = int((await out.line_starting("escapee ")).split()[1])
    report = await slot.stop()
    assert report.escaped == ()
    # Without a pidfd there is nothing to wait on: SIGKILL was sent to the right
    # process (start time checked), and it dies shortly.
    await wait_until(lambda: process_state.gone(escapee))


async def test_spec_makes_a_process_runner(slots, child) -> None:
    from supervision._process import ProcessRunner
    from supervision._runner import RunnerContext

    spec = ProcessChild(child("exit_with", 0))
    runner = spec._make_runner(RunnerContext(path=("x",), publish=print, host=slots.host))
    assert isinstance(runner, ProcessRunner)
    await runner.aclose()
