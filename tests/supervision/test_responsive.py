"""A supervisor answers while a child is slow, and every call returns its result.

Erlang/OTP's own supervisor test cases, ported to the public API, plus the cases
where OTP's supervisor blocks and this one must not: a start that waits for
readiness, a long backoff, a start that keeps failing. Virtual time with fake
children and tasks first; the same behaviours with real processes at the end.
"""

from __future__ import annotations

import os
import sys

import pytest
import trio
import trio.testing

from supervision import (
    Backoff,
    ChildSpec,
    ChildState,
    Intensity,
    ProcessChild,
    Ready,
    StartFailure,
    Strategy,
    SupervisorGaveUp,
    SupervisorSpec,
    TaskChild,
    open_supervisor,
)
from supervision import events as ev
from supervision.testing import Exit, FakeChild, Hang, RunForever


def tree(*children: ChildSpec, **kwargs: object) -> SupervisorSpec:
    return SupervisorSpec(
        name="root",
        intensity=kwargs.pop("intensity", Intensity(max_restarts=10, window=60)),  # type: ignore[arg-type]
        backoff=kwargs.pop("backoff", Backoff.none()),  # type: ignore[arg-type]
        children=children,
        **kwargs,  # type: ignore[arg-type]
    )


def states(sup: object) -> dict[str, ChildState]:
    return {c.name: c.state for c in sup.which_children()}  # type: ignore[attr-defined]


async def wait_state(sup: object, name: str, state: ChildState) -> None:
    """Poll the table (virtual time: each poll costs a millisecond of the mock clock)."""
    while states(sup).get(name) is not state:  # noqa: ASYNC110
        await trio.sleep(0.001)


# ---------------------------------------------------------------- a slow start


async def test_calls_answer_while_a_child_waits_for_readiness(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = FakeChild([Hang()], startup_timeout=30)
    other = FakeChild()
    async with open_supervisor(tree(ChildSpec("other", other))) as sup:
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def start_slow() -> None:
                try:
                    await sup.start_child(ChildSpec("slow", slow))
                except StartFailure as exc:
                    outcome.append(exc)

            nursery.start_soon(start_slow)
            await wait_state(sup, "slow", ChildState.STARTING)
            began = trio.current_time()

            # Another child's stop, and the table, answer at once.
            await sup.terminate_child("other")
            assert states(sup) == {"other": ChildState.STOPPED, "slow": ChildState.STARTING}
            # The slow child's own stop cancels its start at once.
            await sup.terminate_child("slow")
            assert trio.current_time() - began < 1.0
        # start_child learns that its child was stopped before it was ready, and
        # the child is not added.
        assert len(outcome) == 1
        assert "stopped before it was ready" in str(outcome[0])
        assert "slow" not in states(sup)
        assert slow.stops
        assert slow.ready_times == []


async def test_a_stopped_restart_does_not_come_back_after_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = FakeChild([RunForever(), Hang()], startup_timeout=30)
    async with open_supervisor(tree(ChildSpec("slow", slow))) as sup:
        async with trio.open_nursery() as nursery:
            failures: list[StartFailure] = []

            async def restart() -> None:
                try:
                    await sup.restart_child("slow")
                except StartFailure as exc:
                    failures.append(exc)

            nursery.start_soon(restart)
            await wait_state(sup, "slow", ChildState.STARTING)
            await sup.terminate_child("slow")
        assert [f.reason for f in failures] == ["stopped before it was ready"]
        await trio.sleep(100)
        assert states(sup)["slow"] is ChildState.STOPPED
        assert slow.generation == 2


async def test_calls_answer_while_a_child_sits_in_a_long_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashing = FakeChild()
    spec = tree(
        ChildSpec("crashing", crashing),
        ChildSpec("other", FakeChild()),
        backoff=Backoff(initial=30, max=30),
    )
    async with open_supervisor(spec) as sup:
        subscription = sup.subscribe()
        crashing.crash()
        await wait_state(sup, "crashing", ChildState.RESTARTING)
        began = trio.current_time()
        await sup.terminate_child("other")
        info = await sup.restart_child("other")
        assert info.state is ChildState.RUNNING
        # Stopping the child in backoff cancels its restart, at once.
        await sup.terminate_child("crashing")
        assert trio.current_time() - began < 1.0
        await trio.sleep(60)
        assert states(sup)["crashing"] is ChildState.STOPPED
        assert crashing.generation == 1
    kinds = [type(e).__name__ async for e in subscription if e.path[-1] == "crashing"]
    # The record of the child ends stopped: the stop of a child in backoff is an event.
    assert kinds[-1] == "ChildStopped"


# ---------------------------------------------------------------- OTP-9549


async def test_a_hanging_restart_loop_still_serves_calls_and_can_be_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """OTP's hanging_restart_loop: starts fail forever below the intensity limit."""
    attempts = 0

    async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            task_status.started()
            await trio.sleep(1)
            raise RuntimeError("crash")
        await trio.sleep(0.01)
        raise RuntimeError("cannot start")

    spec = tree(
        ChildSpec("keep", FakeChild()),
        ChildSpec("flaky", TaskChild(flaky)),
        # Immediate restarts, never more than 5 inside the window: never gives up.
        intensity=Intensity(max_restarts=10, window=0.05),
    )
    with trio.fail_after(1000):
        async with open_supervisor(spec) as sup:
            while attempts < 50:  # noqa: ASYNC110
                await trio.sleep(0.005)
            assert states(sup)["keep"] is ChildState.RUNNING
            await sup.terminate_child("keep")
            info = await sup.restart_child("keep")
            assert info.state is ChildState.RUNNING
        # Leaving the block stopped the tree.
        assert not sup.running


# ---------------------------------------------------------------- a call is never cut short


async def test_a_call_is_not_cancelled_by_another_childs_restart_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """start_child of a task ready after 1.5 s while a sibling restarts at 1 s."""
    crashing = FakeChild()

    async def slow_ready(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(1.5)
        task_status.started()
        await trio.sleep_forever()

    async with open_supervisor(tree(ChildSpec("crashing", crashing), backoff=Backoff())) as sup:
        crashed_at = trio.current_time()
        crashing.crash()
        await wait_state(sup, "crashing", ChildState.RESTARTING)
        began = trio.current_time()
        info = await sup.start_child(ChildSpec("slow", TaskChild(slow_ready)))
        assert info.name == "slow"
        assert info.state is ChildState.RUNNING
        assert trio.current_time() - began == pytest.approx(1.5)
        # The sibling restarted (1 s after its crash) while the start was in progress.
        assert crashing.starts == [0.0, pytest.approx(crashed_at + 1.0)]
        assert states(sup) == {"crashing": ChildState.RUNNING, "slow": ChildState.RUNNING}


async def test_restart_child_returns_its_result_while_a_sibling_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashing, slow = FakeChild(), FakeChild(ready_delay=2)
    spec = tree(ChildSpec("crashing", crashing), ChildSpec("slow", slow), backoff=Backoff())
    async with open_supervisor(spec) as sup:
        crashing.crash()
        info = await sup.restart_child("slow")
        assert info.state is ChildState.RUNNING
        assert info.name == "slow"


# ---------------------------------------------------------------- task startup timeout


async def test_a_task_that_never_reports_ready_gets_the_startup_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def never_ready(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep_forever()

    async with open_supervisor(tree()) as sup:
        began = trio.current_time()
        with pytest.raises(StartFailure, match=r"not ready within 5s") as caught:
            await sup.start_child(ChildSpec("t", TaskChild(never_ready, startup_timeout=5)))
        assert trio.current_time() - began == pytest.approx(5)
        assert "task_status.started()" in caught.value.reason
        assert sup.which_children() == []


async def test_a_task_ready_in_time_keeps_running_past_its_startup_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def ready_then_run(
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await trio.sleep(1)
        task_status.started()
        await trio.sleep_forever()

    async with open_supervisor(tree()) as sup:
        await sup.start_child(ChildSpec("t", TaskChild(ready_then_run, startup_timeout=2)))
        await trio.sleep(100)
        assert states(sup) == {"t": ChildState.RUNNING}
        assert sup.which_children()[0].restarts == 0


# ---------------------------------------------------------------- rest_for_one and terminate


def rest_for_one_abc() -> tuple[tuple[FakeChild, FakeChild, FakeChild], SupervisorSpec]:
    """Three fakes under rest_for_one, restarted 5 s after a crash."""
    a, b, c = FakeChild(), FakeChild(), FakeChild()
    spec = tree(
        ChildSpec("a", a),
        ChildSpec("b", b),
        ChildSpec("c", c),
        strategy=Strategy.REST_FOR_ONE,
        backoff=Backoff(initial=5),
    )
    return (a, b, c), spec


async def test_rest_for_one_terminate_during_backoff_leaves_the_rest_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    (_a, b, c), spec = rest_for_one_abc()
    async with open_supervisor(spec) as sup:
        b.crash()
        await wait_state(sup, "c", ChildState.RESTARTING)
        await sup.terminate_child("b")
        await trio.sleep(60)
        assert states(sup) == {
            "a": ChildState.RUNNING,
            "b": ChildState.STOPPED,
            "c": ChildState.STOPPED,
        }
        assert (b.generation, c.generation) == (1, 1)
        # Restarting them by hand works as usual.
        await sup.restart_child("b")
        await sup.restart_child("c")
        assert states(sup)["c"] is ChildState.RUNNING


async def test_rest_for_one_terminate_keeps_a_later_childs_own_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Only the restarts scheduled together with the stopped child are cancelled."""
    (_a, _b, c), spec = rest_for_one_abc()
    async with open_supervisor(spec) as sup:
        c.crash()
        await wait_state(sup, "c", ChildState.RESTARTING)
        await sup.terminate_child("b")
        await c.wait_generation(2)
        await wait_state(sup, "c", ChildState.RUNNING)
        assert states(sup) == {
            "a": ChildState.RUNNING,
            "b": ChildState.STOPPED,
            "c": ChildState.RUNNING,
        }


# ---------------------------------------------------------------- the cause of giving up


async def test_giving_up_names_the_last_exit_and_chains_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("disk on fire")

    spec = tree(ChildSpec("cache", TaskChild(broken)), intensity=Intensity(2, 60))
    with pytest.raises(SupervisorGaveUp) as caught:
        async with open_supervisor(spec):
            pass  # pragma: no cover - the start never completes
    error = caught.value
    assert str(error) == (
        "supervisor root gave up: restart limit exceeded (3 restarts within 60s); "
        "last: child 'cache' failed to start: raised OSError('disk on fire') before ready"
    )
    assert error.last.startswith("child 'cache' failed to start")
    assert isinstance(error.__cause__, StartFailure)


async def test_the_gave_up_event_carries_the_last_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashing = FakeChild()
    seen: list[ev.Event] = []
    spec = tree(ChildSpec("cache", crashing), intensity=Intensity(0, 60))

    async def crash_it() -> None:
        async with open_supervisor(spec, observer=seen.append):
            crashing.crash(3)
            await trio.sleep_forever()

    with pytest.raises(SupervisorGaveUp, match=r"last: child 'cache' exited with code 3"):
        await crash_it()
    gave_up = [e for e in seen if isinstance(e, ev.SupervisorGaveUp)]
    assert [e.last for e in gave_up] == ["child 'cache' exited with code 3"]


# ---------------------------------------------------------------- real processes


def _sleeper() -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.mark.slow
async def test_real_process_stop_answers_while_another_waits_for_readiness() -> None:
    """The same as the first fake test, with real processes and real time."""
    never_ready = ProcessChild(_sleeper(), ready=Ready.notify(), startup_timeout=30)
    spec = tree(ChildSpec("other", ProcessChild(_sleeper(), stop_timeout=5)))
    async with open_supervisor(spec) as sup:
        async with trio.open_nursery() as nursery:
            failures: list[StartFailure] = []

            async def start_slow() -> None:
                try:
                    await sup.start_child(ChildSpec("slow", never_ready))
                except StartFailure as exc:
                    failures.append(exc)

            nursery.start_soon(start_slow)
            with trio.fail_after(10):
                await wait_state(sup, "slow", ChildState.STARTING)
                while sup.which_children()[-1].pid is None:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            slow_pid = sup.which_children()[-1].pid
            assert slow_pid is not None
            # Both stops return long before the 30 s start could end.
            with trio.fail_after(10):
                await sup.terminate_child("other")
                await sup.terminate_child("slow")
        assert [f.reason for f in failures] == ["stopped before it was ready"]
        with pytest.raises(ProcessLookupError):
            os.kill(slow_pid, 0)


@pytest.mark.slow
async def test_real_process_in_backoff_is_stopped_at_once() -> None:
    crasher = ProcessChild([sys.executable, "-c", "import time; time.sleep(0.2); exit(1)"])
    spec = tree(
        ChildSpec("crasher", crasher),
        ChildSpec("other", ProcessChild(_sleeper())),
        backoff=Backoff(initial=30, max=30),
    )
    async with open_supervisor(spec) as sup:
        with trio.fail_after(10):
            await wait_state(sup, "crasher", ChildState.RESTARTING)
            await sup.terminate_child("other")
            await sup.terminate_child("crasher")
        assert states(sup) == {"crasher": ChildState.STOPPED, "other": ChildState.STOPPED}


@pytest.mark.slow
async def test_real_process_gave_up_names_the_missing_executable() -> None:
    spec = tree(
        ChildSpec("cache", ProcessChild(["/nonexistent/redis-server"])),
        intensity=Intensity(1, 60),
    )
    with pytest.raises(SupervisorGaveUp) as caught, trio.fail_after(10):
        async with open_supervisor(spec):
            pass  # pragma: no cover
    assert "last: child 'cache' failed to start: executable not found" in str(caught.value)
    assert isinstance(caught.value.__cause__, StartFailure)


# ---------------------------------------------------------------- entering during a storm


async def test_a_tree_in_a_crash_storm_is_entered_and_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Children that crash soon after they are ready, restarted at once, are never all
    up at the same instant; the block is entered once each has been ready (as OTP's
    start_link returns once each child was started), and leaving it stops the storm."""
    fakes = [FakeChild([Exit(1, after=0.005)] * 1000, ready_delay=0.03) for _ in range(3)]
    spec = tree(
        *(ChildSpec(f"c{i}", fake) for i, fake in enumerate(fakes)),
        intensity=Intensity(max_restarts=10**6, window=1),
    )
    with trio.fail_after(100):
        async with open_supervisor(spec) as sup:
            assert trio.current_time() < 1.0
            assert all(fake.ready_times for fake in fakes)
            await trio.sleep(1)
        assert not sup.running
    assert all(not fake.running for fake in fakes)
