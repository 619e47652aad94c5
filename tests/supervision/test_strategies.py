"""Strategies, restart types and dynamic children, in virtual time with fake children.

The same behaviours are proven on real processes in ``test_strategies_real.py``.
"""

from __future__ import annotations

import signal

import pytest
import trio
import trio.testing

from supervision import (
    AutoShutdown,
    Backoff,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ChildState,
    Intensity,
    Restart,
    StartFailure,
    Strategy,
    SupervisorSpec,
    TaskChild,
    open_supervisor,
)
from supervision import events as ev
from supervision.testing import Exit, FailStart, FakeChild, RunForever


def tree(strategy: Strategy, *children: ChildSpec, **kwargs: object) -> SupervisorSpec:
    return SupervisorSpec(
        name="root",
        strategy=strategy,
        intensity=kwargs.pop("intensity", Intensity(max_restarts=10, window=60)),  # type: ignore[arg-type]
        backoff=kwargs.pop("backoff", Backoff.none()),  # type: ignore[arg-type]
        children=children,
        **kwargs,  # type: ignore[arg-type]
    )


def trail(events: list[ev.Event]) -> list[tuple[str, str]]:
    """(event kind, child name) pairs, without the lifecycle noise of Started."""
    return [
        (type(e).__name__, e.path[-1])
        for e in events
        if not isinstance(e, ev.ChildStarted | ev.EventsDropped)
    ]


async def drain(
    subscription: object, until: type[ev.Event], name: str, count: int = 1
) -> list[ev.Event]:
    seen: list[ev.Event] = []
    with trio.fail_after(100):
        async for event in subscription:  # type: ignore[attr-defined]
            seen.append(event)
            if isinstance(event, until) and event.path[-1] == name:
                count -= 1
                if count == 0:
                    return seen
    return seen


async def test_start_order_and_reverse_stop_order(autojump_clock: trio.testing.MockClock) -> None:
    a, b, c = FakeChild(ready_delay=1), FakeChild(ready_delay=1), FakeChild(ready_delay=1)
    spec = tree(Strategy.ONE_FOR_ONE, ChildSpec("a", a), ChildSpec("b", b), ChildSpec("c", c))
    async with open_supervisor(spec) as sup:
        # Each child must be ready before the next starts.
        assert (a.starts, b.starts, c.starts) == ([0.0], [1.0], [2.0])
        assert trio.current_time() == 3.0
        assert [i.name for i in sup.which_children()] == ["a", "b", "c"]
        subscription = sup.subscribe()
    stopped = [e.path[-1] async for e in subscription if isinstance(e, ev.ChildStopped)]
    assert stopped == ["c", "b", "a"]


@pytest.mark.parametrize(
    ("strategy", "stopped", "restarted"),
    [
        (Strategy.ONE_FOR_ONE, [], ["b"]),
        (Strategy.ONE_FOR_ALL, ["c", "a"], ["a", "b", "c"]),
        (Strategy.REST_FOR_ONE, ["c"], ["b", "c"]),
    ],
)
async def test_strategy_restarts_exactly_the_right_children(
    strategy: Strategy,
    stopped: list[str],
    restarted: list[str],
    autojump_clock: trio.testing.MockClock,
) -> None:
    children = {name: FakeChild() for name in "abc"}
    spec = tree(strategy, *(ChildSpec(n, c) for n, c in children.items()))
    async with open_supervisor(spec) as sup:
        pids = {i.name: i.pid for i in sup.which_children()}
        with sup.subscribe() as subscription:
            children["b"].kill(signal.SIGKILL)
            events = await drain(subscription, ev.ChildReady, restarted[-1])
        after = {i.name: i.pid for i in sup.which_children()}

    kinds = trail(events)
    assert kinds[0] == ("ChildExited", "b")
    assert [n for k, n in kinds if k == "ChildStopped"] == stopped
    assert [n for k, n in kinds if k == "ChildReady"] == restarted
    # Every stop happens before any restart.
    last_stop = max((i for i, (k, _) in enumerate(kinds) if k == "ChildStopped"), default=0)
    first_ready = min(i for i, (k, _) in enumerate(kinds) if k == "ChildReady")
    assert last_stop < first_ready
    for name in "abc":
        if name in restarted:
            assert after[name] != pids[name]
            assert len(children[name].starts) == 2
        else:
            assert after[name] == pids[name]
            assert len(children[name].starts) == 1
    exited = next(e for e in events if isinstance(e, ev.ChildExited))
    assert exited.signal == signal.SIGKILL


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize(
    ("restart", "exit_code", "signum", "restarted"),
    [
        (Restart.PERMANENT, 0, None, True),
        (Restart.PERMANENT, 3, None, True),
        (Restart.PERMANENT, None, signal.SIGSEGV, True),
        (Restart.TRANSIENT, 0, None, False),
        (Restart.TRANSIENT, 3, None, True),
        (Restart.TRANSIENT, None, signal.SIGSEGV, True),
        (Restart.TEMPORARY, 0, None, False),
        (Restart.TEMPORARY, 3, None, False),
        (Restart.TEMPORARY, None, signal.SIGKILL, False),
    ],
)
async def test_restart_types_by_exit_kind(
    strategy: Strategy,
    restart: Restart,
    exit_code: int | None,
    signum: int | None,
    restarted: bool,
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = FakeChild()
    sibling = FakeChild()
    spec = tree(strategy, ChildSpec("x", child, restart=restart), ChildSpec("y", sibling))
    async with open_supervisor(spec) as sup:
        if exit_code is not None:
            child.exit(exit_code)
        else:
            assert signum is not None
            child.kill(signum)
        await child.wait_stopped()
        await trio.sleep(1)
        names = [i.name for i in sup.which_children()]
        if restarted:
            assert child.generation == 2
            assert sup.which_children()[0].restarts == 1
        else:
            assert child.generation == 1
            # Nothing else was disturbed.
            assert sibling.generation == 1
            if restart is Restart.TEMPORARY:
                assert names == ["y"]
            else:
                assert sup.which_children()[0].state is ChildState.EXITED


async def test_success_exit_codes_count_as_normal(autojump_clock: trio.testing.MockClock) -> None:
    child = FakeChild(success_exit_codes=(0, 42))
    spec = tree(Strategy.ONE_FOR_ONE, ChildSpec("x", child, restart=Restart.TRANSIENT))
    async with open_supervisor(spec) as sup:
        child.exit(42)
        await child.wait_stopped()
        await trio.sleep(1)
        assert sup.which_children()[0].state is ChildState.EXITED


async def test_task_exception_is_abnormal_and_return_is_normal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []

    async def fails() -> None:
        calls.append("fails")
        await trio.sleep(5)
        raise ValueError("boom")

    async def returns() -> None:
        calls.append("returns")
        await trio.sleep(5)

    spec = tree(
        Strategy.ONE_FOR_ONE,
        ChildSpec("fails", TaskChild(fails), restart=Restart.TRANSIENT),
        ChildSpec("returns", TaskChild(returns), restart=Restart.TRANSIENT),
    )
    async with open_supervisor(spec) as sup, sup.subscribe() as subscription:
        events: list[ev.Event] = []
        with trio.fail_after(100):
            async for event in subscription:
                events.append(event)
                if {"fails", "returns"} <= {
                    e.path[-1] for e in events if isinstance(e, ev.ChildExited)
                }:
                    break
        await trio.sleep(1)
        info = {i.name: i for i in sup.which_children()}
    exited = [e for e in events if isinstance(e, ev.ChildExited)]
    assert {e.path[-1] for e in exited} == {"fails", "returns"}
    failed = next(e for e in exited if e.path[-1] == "fails")
    assert isinstance(failed.exception, ValueError)
    assert not failed.exit.normal
    assert info["returns"].state is ChildState.EXITED
    assert calls.count("fails") == 2


async def test_temporary_bystander_is_removed_in_group_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """PL-20: a temporary child is stopped and removed, never restarted."""
    a, t, c = FakeChild(), FakeChild(), FakeChild()
    spec = tree(
        Strategy.ONE_FOR_ALL,
        ChildSpec("a", a),
        ChildSpec("t", t, restart=Restart.TEMPORARY),
        ChildSpec("c", c),
    )
    async with open_supervisor(spec) as sup:
        a.crash()
        await c.wait_generation(2)
        assert [i.name for i in sup.which_children()] == ["a", "c"]
        assert t.generation == 1
        assert not t.running


async def test_one_for_all_child_failing_during_group_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """PL-19: the already restarted children are stopped again; never half a tree."""
    a = FakeChild()
    b = FakeChild()
    c = FakeChild(script=[RunForever(), FailStart("port busy"), RunForever()])
    spec = tree(
        Strategy.ONE_FOR_ALL,
        ChildSpec("a", a),
        ChildSpec("b", b),
        ChildSpec("c", c),
        backoff=Backoff(initial=1, max=1, factor=1),
    )
    async with open_supervisor(spec) as sup, sup.subscribe() as subscription:
        a.crash()
        events = await drain(subscription, ev.ChildReady, "c")
        assert all(i.state is ChildState.RUNNING for i in sup.which_children())
    # a and b started three times: initially, in the failed group restart, in the good one.
    assert len(a.starts) == len(b.starts) == 3
    assert len(c.starts) == 3
    failure = next(e for e in events if isinstance(e, ev.ChildExited) and e.start_failure)
    assert failure.path[-1] == "c"
    assert "port busy" in str(failure.exception)
    # After c's failure, a and b were stopped (reverse order) before anything restarted.
    after_failure = trail(events[events.index(failure) + 1 :])
    assert [n for k, n in after_failure if k == "ChildStopped"][:2] == ["b", "a"]
    assert sup.which_children()[0].restarts == 2


async def test_late_exit_of_an_old_generation_is_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """PL-10: a manual restart is not followed by a second restart."""
    child = FakeChild()
    spec = tree(Strategy.ONE_FOR_ONE, ChildSpec("x", child))
    async with open_supervisor(spec) as sup:
        await sup.restart_child("x")
        await trio.sleep(5)
        assert child.generation == 2
        assert sup.which_children()[0].restarts == 0


async def test_stop_during_backoff_is_prompt_and_final(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """PL-23: terminate/delete/shutdown cancel a pending restart at once."""
    child = FakeChild(script=[Exit(1)] * 5)
    spec = tree(
        Strategy.ONE_FOR_ONE,
        ChildSpec("x", child),
        backoff=Backoff(initial=10, max=10),
    )
    async with open_supervisor(spec) as sup:
        await trio.sleep(1)
        assert sup.which_children()[0].state is ChildState.RESTARTING
        before = trio.current_time()
        await sup.terminate_child("x")
        assert trio.current_time() == before
        await trio.sleep(100)
        assert child.generation == 1  # the pending restart never happened
        assert sup.which_children()[0].state is ChildState.STOPPED
        await sup.delete_child("x")
        assert sup.which_children() == []

    child = FakeChild(script=[Exit(1)] * 5)
    spec = tree(Strategy.ONE_FOR_ONE, ChildSpec("x", child), backoff=Backoff(initial=10, max=10))
    async with open_supervisor(spec) as sup:
        await trio.sleep(1)
        before = trio.current_time()
    assert trio.current_time() == before


async def test_dynamic_children_under_every_strategy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for strategy in Strategy:
        base = FakeChild()
        async with open_supervisor(tree(strategy, ChildSpec("base", base))) as sup:
            extra = FakeChild()
            info = await sup.start_child(ChildSpec("extra", extra))
            assert info.state is ChildState.RUNNING
            assert [i.name for i in sup.which_children()] == ["base", "extra"]
            assert sup.count_children().active == 2

            with pytest.raises(ChildRunning):
                await sup.delete_child("extra")
            await sup.terminate_child("extra")
            assert not extra.running
            assert sup.which_children()[1].state is ChildState.STOPPED
            await sup.restart_child("extra")
            assert extra.generation == 2
            await sup.terminate_child("extra")
            await sup.delete_child("extra")
            assert [i.name for i in sup.which_children()] == ["base"]

            with pytest.raises(ChildNotFound):
                await sup.restart_child("nope")
            with pytest.raises(StartFailure, match="nope, not today"):
                await sup.start_child(ChildSpec("bad", FakeChild([FailStart("nope, not today")])))
            assert [i.name for i in sup.which_children()] == ["base"]
            # A dynamic child takes part in the strategy like any other.
            late = FakeChild()
            await sup.start_child(ChildSpec("late", late))
            base.crash()
            await base.wait_generation(2)
            expected = 1 if strategy is Strategy.ONE_FOR_ONE else 2
            await late.wait_generation(expected)
            assert late.generation == expected


async def test_auto_shutdown_any_and_all_significant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = FakeChild([Exit(0, after=5)])
    spec = tree(
        Strategy.ONE_FOR_ONE,
        ChildSpec("server", FakeChild()),
        ChildSpec("job", job, restart=Restart.TRANSIENT, significant=True),
        auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
    )
    async with open_supervisor(spec) as sup:
        await sup._engine.finished.wait()
        assert trio.current_time() == 5.0
        assert not sup.running

    first = FakeChild([Exit(0, after=5)])
    second = FakeChild([Exit(0, after=8)])
    spec = tree(
        Strategy.ONE_FOR_ONE,
        ChildSpec("first", first, restart=Restart.TEMPORARY, significant=True),
        ChildSpec("second", second, restart=Restart.TRANSIENT, significant=True),
        auto_shutdown=AutoShutdown.ALL_SIGNIFICANT,
    )
    t0 = trio.current_time()
    async with open_supervisor(spec) as sup:
        await first.wait_stopped()
        assert sup.running
        await sup._engine.finished.wait()
        assert trio.current_time() - t0 == 8.0

    # An abnormal exit of a transient significant child is restarted, not a shutdown.
    flaky = FakeChild([Exit(1, after=1), Exit(0, after=1)])
    spec = tree(
        Strategy.ONE_FOR_ONE,
        ChildSpec("flaky", flaky, restart=Restart.TRANSIENT, significant=True),
        auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
    )
    t0 = trio.current_time()
    async with open_supervisor(spec) as sup:
        await sup._engine.finished.wait()
        assert flaky.generation == 2
        assert trio.current_time() - t0 == 2.0


async def test_subtree_auto_shutdown_is_a_normal_exit_for_its_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = FakeChild([Exit(0, after=3)])
    batch = SupervisorSpec(
        name="batch",
        auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        children=[ChildSpec("job", job, restart=Restart.TRANSIENT, significant=True)],
    )
    spec = tree(Strategy.ONE_FOR_ONE, ChildSpec("batch", batch, restart=Restart.TRANSIENT))
    async with open_supervisor(spec) as sup:
        await job.wait_stopped()
        await trio.sleep(1)
        info = sup.which_children()[0]
        assert (info.kind, info.state) == ("supervisor", ChildState.EXITED)


async def test_child_supervisor_handle_manages_a_pool(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = SupervisorSpec(name="pool", children=[ChildSpec("w0", FakeChild())])
    async with open_supervisor(tree(Strategy.ONE_FOR_ONE, ChildSpec("pool", pool))) as sup:
        handle = sup.child_supervisor("pool")
        assert handle.path == ("root", "pool")
        await handle.start_child(ChildSpec("w1", FakeChild()))
        assert [i.name for i in handle.which_children()] == ["w0", "w1"]
        with pytest.raises(ChildNotFound):
            sup.child_supervisor("nope")


async def test_stop_timeout_escalation_is_reported(autojump_clock: trio.testing.MockClock) -> None:
    stubborn = FakeChild(ignore_stop=True, stop_timeout=7)
    spec = tree(Strategy.ONE_FOR_ONE, ChildSpec("x", stubborn))
    async with open_supervisor(spec) as sup, sup.subscribe() as subscription:
        await sup.terminate_child("x")
        assert trio.current_time() == 7.0
        stopped = await drain(subscription, ev.ChildStopped, "x")
    event = stopped[-1]
    assert isinstance(event, ev.ChildStopped)
    assert event.killed
    assert event.exit is not None
    assert event.exit.signal == signal.SIGKILL


async def test_a_failed_manual_restart_is_handled_like_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = FakeChild([RunForever(), FailStart("port busy"), RunForever()])
    spec = tree(Strategy.ONE_FOR_ONE, ChildSpec("x", child), backoff=Backoff(initial=2, max=2))
    async with open_supervisor(spec) as sup, sup.subscribe() as subscription:
        t0 = trio.current_time()
        with pytest.raises(StartFailure, match="port busy"):
            await sup.restart_child("x")
        # Not left stopped: the restart policy takes over, after the backoff delay.
        assert sup.which_children()[0].state is ChildState.RESTARTING
        await drain(subscription, ev.ChildReady, "x")
        assert child.starts == [t0, t0, t0 + 2]
        assert sup.which_children()[0].state is ChildState.RUNNING


async def test_an_observer_sees_every_event_from_the_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[str, str]] = []

    def observe(event: ev.Event) -> None:
        seen.append((type(event).__name__, event.path[-1]))
        if isinstance(event, ev.ChildReady):
            raise RuntimeError("a broken observer must not break supervision")

    child = FakeChild([Exit(1, after=1), RunForever()])
    spec = tree(Strategy.ONE_FOR_ONE, ChildSpec("x", child))
    async with open_supervisor(spec, observer=observe):
        await child.wait_generation(2)
    assert seen == [
        ("ChildStarted", "x"),
        ("ChildReady", "x"),
        ("ChildExited", "x"),
        ("ChildRestarting", "x"),
        ("ChildStarted", "x"),
        ("ChildReady", "x"),
        ("ChildStopped", "x"),
    ]
