"""What the library keeps per child and per supervisor: tasks, objects, fds.

Memory is measured in ``benchmarks/``; these tests pin the structure that the
measurements depend on (how many tasks a child costs, what an idle pipe holds).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import signal

import pytest
import trio

import supervision._pump
from supervision import Output, ProcessChild, Ready, StartFailure
from supervision._flag import Flag
from supervision._spawn import exec_candidates
from supervision._supervisor import _Inbox


def _task_count() -> int:
    """Every task of this run."""
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        assert task is not None
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def test_an_on_spawn_child_costs_its_runner_task_alone(slots, child) -> None:
    before = _task_count()
    slot = slots.new(ProcessChild(child("sleeper")))
    pid = await slot.start()
    await trio.testing.wait_all_tasks_blocked()
    # No task watches the exit: the runner's own task waits on the pidfd.
    assert _task_count() == before + 1
    os.kill(pid, signal.SIGKILL)
    end = await slot.exited()
    assert end.signal == signal.SIGKILL


async def test_piped_children_cost_their_runner_task_alone(slots, lines) -> None:
    # One task of the host reads every pipe (epoll): a child's two pipes add no task.
    before = _task_count()
    sink = lines()
    spec = ProcessChild(["sleep", "3600"], stdout=Output.lines(sink), stderr=Output.lines(sink))
    await slots.new(spec, "a").start()
    await trio.testing.wait_all_tasks_blocked()
    assert _task_count() == before + 2  # its runner, and the host's reader
    await slots.new(spec, "b").start()
    await trio.testing.wait_all_tasks_blocked()
    assert _task_count() == before + 3


async def test_without_epoll_each_pipe_has_a_task(
    slots, lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervision._pump, "_HAVE_EPOLL", False)
    before = _task_count()
    sink = lines()
    spec = ProcessChild(["sleep", "3600"], stdout=Output.lines(sink), stderr=Output.lines(sink))
    await slots.new(spec).start()
    await trio.testing.wait_all_tasks_blocked()
    assert _task_count() == before + 3


async def test_a_check_that_runs_still_sees_the_exit(slots, child) -> None:
    # Ready.after runs a task: the exit is then watched by a task of its own.
    slot = slots.new(ProcessChild(child("exit_with", 3), ready=Ready.after(20)))
    with pytest.raises(StartFailure, match="exited before becoming ready"):
        await slot.start()


def _blocking_errors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, BlockingIOError))


async def test_an_idle_pipe_keeps_no_exception_alive(slots, lines) -> None:
    before = _blocking_errors()
    sink = lines()
    spec = ProcessChild(["sleep", "3600"], stdout=Output.lines(sink), stderr=Output.lines(sink))
    for name in ("a", "b", "c"):
        await slots.new(spec, name).start()
    await trio.testing.wait_all_tasks_blocked()
    assert _blocking_errors() <= before


async def test_an_idle_pipe_still_delivers_what_comes_later(slots, lines) -> None:
    sink = lines()
    spec = ProcessChild(["sh", "-c", "sleep 0.2; echo late; sleep 3600"], stdout=Output.lines(sink))
    await slots.new(spec).start()
    await trio.testing.wait_all_tasks_blocked()
    assert sink.lines == []  # the pump waits on an empty pipe
    await sink.wait_for(lambda got: got == ["late"])


async def test_the_inbox_is_first_in_first_out() -> None:
    inbox = _Inbox()
    for n in range(3):
        inbox.send_nowait(n)  # type: ignore[arg-type]
    assert [await inbox.receive(), inbox.receive_nowait(), await inbox.receive()] == [0, 1, 2]
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()


async def test_a_waiting_receiver_gets_the_next_message() -> None:
    inbox = _Inbox()
    got: list[object] = []
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            got.append(await inbox.receive())

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        inbox.send_nowait("a")  # type: ignore[arg-type]
        inbox.send_nowait("b")  # type: ignore[arg-type]
    assert got == ["a"]
    assert inbox.receive_nowait() == "b"


async def test_a_cancelled_receive_takes_no_message() -> None:
    inbox = _Inbox()
    with trio.move_on_after(1) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbox.receive)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    inbox.send_nowait("late")  # type: ignore[arg-type]
    assert inbox.receive_nowait() == "late"
    with trio.move_on_after(0) as timed_out:
        await inbox.receive()  # empty again: waits, and the deadline ends it
    assert timed_out.cancelled_caught


async def _child_env(slots, child, lines, name: str, env: dict[str, str] | None = None):
    """Start a child that prints its marker and ONLY_MINE; its slot and what it printed."""
    sink = lines()
    argv = child("print_env", "SUPERVISION_CHILD_ID", "ONLY_MINE")
    slot = slots.new(ProcessChild(argv, env=env, stdout=Output.lines(sink)), name)
    await slot.start()
    await slot.exited()  # it prints and ends; a teardown stop would race its exit
    [line] = sink.lines
    return slot, json.loads(line)


async def test_slots_share_one_inherited_environment(slots, child, lines) -> None:
    first, first_env = await _child_env(slots, child, lines, "a")
    second, second_env = await _child_env(slots, child, lines, "b")
    own, own_env = await _child_env(slots, child, lines, "c", {"ONLY_MINE": "1"})
    # One dict of what children inherit for all: a slot's own variables stay apart.
    assert first.runner._base_env is second.runner._base_env is own.runner._base_env
    assert "ONLY_MINE" not in first.runner._base_env
    # Each still carries its own marker; only the slot that asked has its variable.
    envs = [first_env, second_env, own_env]
    markers = [env["SUPERVISION_CHILD_ID"] for env in envs]
    assert markers == [slot.runner.child_id for slot in (first, second, own)]
    assert len(set(markers)) == 3
    assert [env["ONLY_MINE"] for env in envs] == [None, None, "1"]


async def test_a_slot_cannot_set_its_own_marker(slots, child, lines) -> None:
    slot, env = await _child_env(slots, child, lines, "a", {"SUPERVISION_CHILD_ID": "forged"})
    assert env["SUPERVISION_CHILD_ID"] == slot.runner.child_id


def test_the_paths_tried_for_a_program_are_kept_once() -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    found = exec_candidates("sleep", env)
    assert found == (b"/usr/local/bin/sleep", b"/usr/bin/sleep", b"/bin/sleep")
    assert exec_candidates("sleep", dict(env)) is found
    assert exec_candidates("sleep", {"PATH": "/bin"}) == (b"/bin/sleep",)
    assert exec_candidates("/bin/sleep", env) == (b"/bin/sleep",)


async def test_a_flag_wakes_its_waiters_and_is_a_checkpoint_once_set() -> None:
    flag = Flag()
    woken: list[str] = []
    async with trio.open_nursery() as nursery:
        for name in ("a", "b"):
            nursery.start_soon(lambda n=name: _wait_and_note(flag, woken, n))
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        flag.set()
    assert sorted(woken) == ["a", "b"]
    with trio.CancelScope() as scope:
        scope.cancel()
        await flag.wait()  # set already: still a checkpoint, so the cancel lands
    assert scope.cancelled_caught


async def _wait_and_note(flag: Flag, woken: list[str], name: str) -> None:
    await flag.wait()
    woken.append(name)


async def test_without_a_descriptor_for_epoll_a_pipe_gets_its_own_task(
    slots, lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FAULTS RX-01: the host's epoll instance is made with the first pipe; when no
    # descriptor is left for it, that pipe is read by a task of its own.
    def exhausted() -> object:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(supervision._pump, "_open_epoll", exhausted)
    before = _task_count()
    first = lines()
    spec = ProcessChild(["sh", "-c", "echo one; sleep 3600"], stdout=Output.lines(first))
    await slots.new(spec, "a").start()
    await first.wait_for(lambda got: got == ["one"])
    await trio.testing.wait_all_tasks_blocked()
    assert _task_count() == before + 2  # its runner and its pipe's task
    monkeypatch.undo()  # a descriptor again: the next pipe is read by the hub
    second = lines()
    spec = ProcessChild(["sh", "-c", "echo two; sleep 3600"], stdout=Output.lines(second))
    await slots.new(spec, "b").start()
    await second.wait_for(lambda got: got == ["two"])
    await trio.testing.wait_all_tasks_blocked()
    assert _task_count() == before + 4  # and its runner, and the host's reader
