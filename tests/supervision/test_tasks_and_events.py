"""Task leaves and the event stream, in virtual time.

The tests run under pytest-trio's ``autojump_clock``: sleeps cost nothing and
every time is exact. Process behaviour is stood in for by
:class:`supervision.testing.FakeChild`; the one test with a real process, at the
end, uses the real clock.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from supervision import (
    Backoff,
    ChildSpec,
    ChildState,
    Intensity,
    ProcessChild,
    Ready,
    Restart,
    StartFailure,
    Subscription,
    SupervisorGaveUp,
    SupervisorSpec,
    TaskChild,
    open_supervisor,
    run_supervisor,
)
from supervision.events import (
    ChildExited,
    ChildReady,
    ChildRestarting,
    ChildStarted,
    ChildStopped,
    Event,
    EventsDropped,
)
from supervision.testing import Exit, FakeChild

E = TypeVar("E", bound=Event)

ROOT = SupervisorSpec(name="root")


async def next_event(events: Subscription, kind: type[E]) -> E:
    """Skip events until one of ``kind`` arrives."""
    with trio.fail_after(1000):  # virtual seconds: a guard against a hang, not a delay
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"the subscription ended before a {kind.__name__}")


async def drain(events: Subscription) -> list[Event]:
    """Every remaining event of a subscription whose tree has stopped."""
    with trio.fail_after(1000):
        return [event async for event in events]


# --------------------------------------------------------------------------- task leaves


async def test_task_return_is_a_normal_exit(autojump_clock: MockClock) -> None:
    async def job() -> None:
        await trio.sleep(5)

    async with open_supervisor(ROOT) as sup:
        events = sup.subscribe()
        await sup.start_child(ChildSpec("job", TaskChild(job), restart=Restart.TRANSIENT))
        exited = await next_event(events, ChildExited)
        assert trio.current_time() == 5.0
        assert exited.path == ("root", "job")
        assert exited.exit.normal
        assert (exited.code, exited.signal, exited.exception) == (None, None, None)
        assert exited.start_failure is False
        assert str(exited.exit) == "returned"

        await trio.sleep(100)
        [info] = sup.which_children()
        assert (info.name, info.kind, info.pid, info.state, info.restarts) == (
            "job",
            "task",
            None,
            ChildState.EXITED,
            0,
        )
    assert not [e for e in await drain(events) if isinstance(e, ChildRestarting)]


async def test_permanent_task_is_restarted_after_a_normal_exit(autojump_clock: MockClock) -> None:
    runs: list[float] = []

    async def job() -> None:
        runs.append(trio.current_time())
        if len(runs) < 3:
            return
        await trio.sleep_forever()

    async with open_supervisor(ROOT) as sup:
        events = sup.subscribe()
        await sup.start_child(ChildSpec("job", TaskChild(job)))
        first = await next_event(events, ChildRestarting)
        assert (first.attempt, first.delay) == (1, 1.0)
        second = await next_event(events, ChildRestarting)
        assert (second.attempt, second.delay) == (2, 2.0)
        await next_event(events, ChildReady)
        assert runs == [0.0, 1.0, 3.0]
        assert sup.which_children()[0].restarts == 2


async def test_task_exception_is_an_abnormal_exit(autojump_clock: MockClock) -> None:
    raised: list[BaseException] = []

    async def job() -> None:
        await trio.sleep(1)
        exc = ValueError("boom")
        raised.append(exc)
        raise exc

    async with open_supervisor(ROOT) as sup:
        events = sup.subscribe()
        await sup.start_child(ChildSpec("job", TaskChild(job), restart=Restart.TRANSIENT))
        exited = await next_event(events, ChildExited)
        assert trio.current_time() == 1.0
        assert exited.exception is raised[0]
        assert not exited.exit.normal
        assert exited.start_failure is False
        assert "ValueError('boom')" in str(exited.exit)

        restarting = await next_event(events, ChildRestarting)  # transient: abnormal -> restart
        assert (restarting.attempt, restarting.delay) == (1, 1.0)
        started = await next_event(events, ChildStarted)
        assert started.monotonic == 2.0
        assert started.generation == 2


async def test_task_args_are_passed(autojump_clock: MockClock) -> None:
    got: list[tuple[int, str]] = []

    async def job(a: int, b: str) -> None:
        got.append((a, b))
        await trio.sleep_forever()

    spec = SupervisorSpec(name="root", children=[ChildSpec("job", TaskChild(job, 1, "x"))])
    async with open_supervisor(spec):
        assert got == [(1, "x")]


async def test_task_status_readiness_gates_the_next_child(autojump_clock: MockClock) -> None:
    ready_at: dict[str, float] = {}

    async def slow(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(2)
        ready_at["slow"] = trio.current_time()
        task_status.started()
        await trio.sleep_forever()

    async def plain() -> None:
        ready_at["plain"] = trio.current_time()  # no task_status: ready at once
        await trio.sleep_forever()

    spec = SupervisorSpec(
        name="root",
        children=[ChildSpec("slow", TaskChild(slow)), ChildSpec("plain", TaskChild(plain))],
    )
    async with open_supervisor(spec) as sup:
        assert trio.current_time() == 2.0  # entering waited for every child to be ready
        assert ready_at == {"slow": 2.0, "plain": 2.0}
        assert [(c.name, c.state) for c in sup.which_children()] == [
            ("slow", ChildState.RUNNING),
            ("plain", ChildState.RUNNING),
        ]


async def test_task_status_readiness_events(autojump_clock: MockClock) -> None:
    async def slow(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(3)
        task_status.started()
        await trio.sleep_forever()

    async with open_supervisor(ROOT) as sup:
        events = sup.subscribe()
        t0 = trio.current_time()
        info = await sup.start_child(ChildSpec("slow", TaskChild(slow)))
        assert info.state is ChildState.RUNNING
        assert trio.current_time() == t0 + 3
        started = await next_event(events, ChildStarted)
        ready = await next_event(events, ChildReady)
        assert (started.monotonic, ready.monotonic) == (t0, t0 + 3)
        assert started.generation == ready.generation == 1


async def test_task_failing_before_started_is_a_start_failure(autojump_clock: MockClock) -> None:
    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(1)
        raise ValueError("no database")

    async with open_supervisor(ROOT) as sup:
        events = sup.subscribe()
        with pytest.raises(StartFailure) as info:
            await sup.start_child(ChildSpec("broken", TaskChild(broken)))
        assert info.value.path == ("root", "broken")
        assert isinstance(info.value.__cause__, ValueError)
        assert sup.which_children() == []  # a child that cannot start is not added

        exited = await next_event(events, ChildExited)
        assert exited.start_failure
        assert exited.exception is info.value
        assert not exited.exit.normal


async def test_task_returning_without_started_is_a_start_failure(autojump_clock: MockClock) -> None:
    async def forgetful(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(1)

    async with open_supervisor(ROOT) as sup:
        with pytest.raises(StartFailure, match=r"without calling task_status\.started"):
            await sup.start_child(ChildSpec("forgetful", TaskChild(forgetful)))


async def test_start_failures_count_as_crashes(autojump_clock: MockClock) -> None:
    attempts: list[float] = []

    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        attempts.append(trio.current_time())
        raise ValueError("no database")

    spec = SupervisorSpec(
        name="root",
        intensity=Intensity(max_restarts=2, window=60.0),
        children=[ChildSpec("broken", TaskChild(broken))],
    )
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_supervisor(spec):
            pytest.fail("the tree must not start")
    assert attempts == [0.0, 1.0, 3.0]  # backoff 1 s, 2 s; the third failure is one too many
    assert trio.current_time() == 3.0
    assert (info.value.path, info.value.child, info.value.restarts) == (("root",), "broken", 3)


async def test_stopping_cancels_tasks_in_reverse_start_order(autojump_clock: MockClock) -> None:
    order: list[str] = []

    async def job(name: str) -> None:
        try:
            await trio.sleep_forever()
        finally:
            order.append(name)

    spec = SupervisorSpec(
        name="root", children=[ChildSpec(n, TaskChild(job, n)) for n in ("a", "b", "c")]
    )
    async with open_supervisor(spec) as sup:
        events = sup.subscribe()
    assert order == ["c", "b", "a"]
    stopped = [e for e in await drain(events) if isinstance(e, ChildStopped)]
    assert [(e.name, e.pid, e.exit, e.killed) for e in stopped] == [
        ("c", None, None, False),
        ("b", None, None, False),
        ("a", None, None, False),
    ]


# --------------------------------------------------------------------------- events


async def test_events_carry_path_pid_and_time(autojump_clock: MockClock) -> None:
    fake = FakeChild(ready_delay=0.5)
    pool = SupervisorSpec(name="pool", backoff=Backoff.none(), children=[ChildSpec("w", fake)])
    async with open_supervisor(ROOT) as sup:
        events = sup.subscribe()
        wall_before = time.time()
        t0 = trio.current_time()
        await sup.start_child(ChildSpec("pool", pool))
        wall_after = time.time()

        seen = [await anext(events) for _ in range(4)]
        assert [(type(e), e.path, e.pid, e.monotonic) for e in seen] == [
            (ChildStarted, ("root", "pool"), None, t0),
            (ChildStarted, ("root", "pool", "w"), fake.pids[0], t0),
            (ChildReady, ("root", "pool", "w"), fake.pids[0], t0 + 0.5),
            (ChildReady, ("root", "pool"), None, t0 + 0.5),
        ]
        for event in seen:
            assert wall_before <= event.timestamp <= wall_after
        assert seen[1].name == "w"

        pid = fake.pids[0]
        fake.crash(3)
        exited = await next_event(events, ChildExited)
        assert (exited.path, exited.pid, exited.code, exited.signal) == (
            ("root", "pool", "w"),
            pid,
            3,
            None,
        )
        assert exited.monotonic == trio.current_time()
        restarting = await next_event(events, ChildRestarting)
        assert (restarting.path, restarting.pid, restarting.delay) == (
            ("root", "pool", "w"),
            None,
            0,
        )
        started = await next_event(events, ChildStarted)
        assert started.pid == fake.pids[1] != pid


async def test_killed_child_reports_the_signal(autojump_clock: MockClock) -> None:
    fake = FakeChild()
    async with open_supervisor(ROOT) as sup:
        events = sup.subscribe()
        await sup.start_child(ChildSpec("w", fake))
        fake.kill(9)
        exited = await next_event(events, ChildExited)
        assert (exited.code, exited.signal, exited.exit.signal_name) == (None, 9, "SIGKILL")
        assert str(exited.exit) == "killed by SIGKILL"


async def test_subtree_subscription_sees_only_its_subtree(autojump_clock: MockClock) -> None:
    fake = FakeChild()
    pool = SupervisorSpec(name="pool", children=[ChildSpec("w", fake)])

    async def idle() -> None:
        await trio.sleep_forever()

    spec = SupervisorSpec(
        name="root", children=[ChildSpec("pool", pool), ChildSpec("t", TaskChild(idle))]
    )
    async with open_supervisor(spec) as sup:
        sub = sup.child_supervisor("pool").subscribe()
        await sup.restart_child("t")  # events of the root's own children
        fake.crash()
        await next_event(sub, ChildRestarting)
        await next_event(sub, ChildReady)
        await sup.terminate_child("pool")  # the subtree stops: its subscription ends
        rest = await drain(sub)
    assert [(type(e), e.path) for e in rest] == [(ChildStopped, ("root", "pool", "w"))]


async def test_slow_subscriber_never_delays_a_restart(autojump_clock: MockClock) -> None:
    crashes = 10
    fake = FakeChild(script=[Exit(1)] * crashes)  # then runs forever
    root = SupervisorSpec(
        name="root",
        intensity=Intensity(max_restarts=100, window=60.0),
        backoff=Backoff(initial=1.0, max=4.0, factor=2.0),
    )
    async with open_supervisor(root) as sup:
        slow = sup.subscribe(buffer=4)  # never read until the end
        fast = sup.subscribe()
        await sup.start_child(ChildSpec("crashy", fake))

        seen: list[Event] = []
        async for event in fast:
            seen.append(event)
            if isinstance(event, ChildReady) and event.generation == crashes + 1:
                break

        assert fake.starts == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0, 19.0, 23.0, 27.0, 31.0, 35.0]
        restarts = [e for e in seen if isinstance(e, ChildRestarting)]
        assert [e.delay for e in restarts] == [1.0, 2.0] + [4.0] * 8
        assert [e.attempt for e in restarts] == list(range(1, 11))
        assert [e.monotonic for e in restarts] == fake.starts[:-1]
        assert not [e for e in seen if isinstance(e, EventsDropped)]
        assert len(seen) == 2 + 4 * crashes  # started+ready, then exited/restarting/started/ready

        assert slow.dropped == len(seen) - 4
        marker = await anext(slow)
        assert isinstance(marker, EventsDropped)
        assert (marker.count, marker.path) == (len(seen) - 4, ("root",))
        assert slow.dropped == 0
        newest = [await anext(slow) for _ in range(4)]
        assert newest == seen[-4:]
        assert [type(e) for e in newest] == [ChildExited, ChildRestarting, ChildStarted, ChildReady]


async def test_events_dropped_again_after_the_marker(autojump_clock: MockClock) -> None:
    fake = FakeChild()
    async with open_supervisor(SupervisorSpec(name="root", backoff=Backoff.none())) as sup:
        fast = sup.subscribe()
        slow = sup.subscribe(buffer=1)
        await sup.start_child(ChildSpec("w", fake))  # ChildStarted, ChildReady
        assert isinstance(await anext(slow), EventsDropped)
        assert isinstance(await anext(slow), ChildReady)
        fake.crash()
        while (await next_event(fast, ChildReady)).generation < 2:
            pass
        marker = await anext(slow)
        assert isinstance(marker, EventsDropped)
        assert marker.count == 3  # exited, restarting, started
        assert isinstance(await anext(slow), ChildReady)


async def test_subscriptions_end_when_the_tree_stops(autojump_clock: MockClock) -> None:
    fake = FakeChild()
    spec = SupervisorSpec(name="root", children=[ChildSpec("w", fake)])
    readers: list[list[Event]] = []

    async def read(events: Subscription) -> None:
        readers.append(await drain(events))

    async with trio.open_nursery() as nursery:
        async with open_supervisor(spec) as sup:
            nursery.start_soon(read, sup.subscribe())
            nursery.start_soon(read, sup.subscribe(buffer=1))
            await trio.testing.wait_all_tasks_blocked()  # both readers wait for events
        assert not sup.running
    # Both iterations ended on their own once the tree had stopped.
    assert len(readers) == 2
    for events in readers:
        assert isinstance(events[-1], ChildStopped)
        assert events[-1].path == ("root", "w")

    late = sup.subscribe()
    assert await drain(late) == []


async def test_closed_subscription_receives_nothing(autojump_clock: MockClock) -> None:
    fake = FakeChild()
    async with open_supervisor(SupervisorSpec(name="root")) as sup:
        with sup.subscribe() as events:
            await sup.start_child(ChildSpec("w", fake))
        fake.crash()
        await fake.wait_generation(2)
    assert await drain(events) == []


async def test_subscription_buffer_must_be_positive(autojump_clock: MockClock) -> None:
    async with open_supervisor(ROOT) as sup:
        with pytest.raises(ValueError, match="buffer"):
            sup.subscribe(buffer=0)


# --------------------------------------------------------------------------- stop order


async def test_subtree_stops_its_children_one_by_one_in_reverse_order(
    autojump_clock: MockClock,
) -> None:
    a, b, c = (FakeChild(stop_delay=1.0) for _ in range(3))
    pool = SupervisorSpec(
        name="pool", children=[ChildSpec("a", a), ChildSpec("b", b), ChildSpec("c", c)]
    )
    async with open_supervisor(
        SupervisorSpec(name="root", children=[ChildSpec("pool", pool)])
    ) as sup:
        events = sup.subscribe()
        t0 = trio.current_time()
        await sup.terminate_child("pool")
        # Each child takes 1 s to exit and is stopped only once the previous one is gone.
        assert (c.stops, b.stops, a.stops) == ([t0], [t0 + 1], [t0 + 2])
    stopped = [e for e in await drain(events) if isinstance(e, ChildStopped)]
    assert [(e.path, e.monotonic, str(e.exit)) for e in stopped[:3]] == [
        (("root", "pool", "c"), t0 + 1, "killed by SIGTERM"),
        (("root", "pool", "b"), t0 + 2, "killed by SIGTERM"),
        (("root", "pool", "a"), t0 + 3, "killed by SIGTERM"),
    ]


async def test_cancelling_run_supervisor_stops_children_one_by_one_in_reverse_order(
    autojump_clock: MockClock,
) -> None:
    a, b, c = (FakeChild(stop_delay=1.0) for _ in range(3))
    spec = SupervisorSpec(
        name="root", children=[ChildSpec("a", a), ChildSpec("b", b), ChildSpec("c", c)]
    )
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(run_supervisor, spec)
        events = sup.subscribe()
        t0 = trio.current_time()
        nursery.cancel_scope.cancel()
    assert (c.stops, b.stops, a.stops) == ([t0], [t0 + 1], [t0 + 2])
    stopped = [e for e in await drain(events) if isinstance(e, ChildStopped)]
    assert [str(e.exit) for e in stopped] == ["killed by SIGTERM"] * 3


# --------------------------------------------------------------------------- virtual time


async def test_a_deadline_around_the_tree_does_not_fire_in_virtual_time(
    autojump_clock: MockClock,
) -> None:
    # A tree of tasks and fakes does no real I/O, so autojump has no reason to
    # advance the clock while it starts or stops: a fail_after around it is safe.
    entered_at = None
    with trio.move_on_after(100) as scope:
        async with open_supervisor(SupervisorSpec(name="root")):
            entered_at = trio.current_time()
    assert entered_at == 0.0
    assert not scope.cancelled_caught
    assert trio.current_time() == 0.0


# --------------------------------------------------------------------------- a real process


@pytest.mark.parametrize(
    ("sig", "stop_signal", "normal"),
    [
        (signal.SIGUSR1, signal.SIGTERM, False),
        (signal.SIGTERM, signal.SIGTERM, True),
        (signal.SIGHUP, signal.SIGHUP, True),
    ],
)
async def test_process_killed_by_a_signal_is_abnormal_unless_it_is_its_stop_signal(
    tmp_path: Path, sig: signal.Signals, stop_signal: signal.Signals, normal: bool
) -> None:
    # Killed from elsewhere (not stopped by its supervisor): by any signal but its
    # own stop signal, abnormal, so a transient child is restarted (the second
    # generation finds the flag and stays up); by its stop signal, a normal exit
    # (OTP's shutdown reason), so it is not restarted.
    flag = tmp_path / "killed-once"
    code = (
        "import os, pathlib, signal, sys\n"
        "flag = pathlib.Path(sys.argv[1])\n"
        "if not flag.exists():\n"
        "    flag.touch()\n"
        f"    os.kill(os.getpid(), {int(sig)})\n"
        "signal.pause()\n"
    )
    child = ProcessChild([sys.executable, "-c", code, str(flag)], stop_signal=stop_signal)
    spec = SupervisorSpec(name="root", backoff=Backoff.none())
    with trio.fail_after(20):
        async with open_supervisor(spec) as sup:
            events = sup.subscribe()
            await sup.start_child(ChildSpec("c", child, restart=Restart.TRANSIENT))
            exited = await next_event(events, ChildExited)
            assert exited.signal == sig
            assert exited.exit.normal is normal
            if not normal:
                await next_event(events, ChildRestarting)
                return
            await trio.testing.wait_all_tasks_blocked(0.2)
            [info] = sup.which_children()
            assert info.restarts == 0
            assert info.pid is None


@pytest.mark.trio(clock=MockClock(autojump_threshold=0))
async def test_fake_killed_by_its_stop_signal_is_a_normal_exit() -> None:
    from supervision.testing import FakeChild, Killed

    term = FakeChild([Killed(signal.SIGTERM, after=1.0), Killed(signal.SIGTERM, after=1.0)])
    usr1 = FakeChild([Killed(signal.SIGUSR1, after=1.0)])
    spec = SupervisorSpec(name="root", backoff=Backoff.none())
    async with open_supervisor(spec) as sup:
        await sup.start_child(ChildSpec("term", term, restart=Restart.TRANSIENT))
        await sup.start_child(ChildSpec("usr1", usr1, restart=Restart.TRANSIENT))
        await trio.sleep(10)
        restarts = {info.name: info.restarts for info in sup.which_children()}
    assert restarts == {"term": 0, "usr1": 1}


async def test_a_subscriber_that_never_reads_does_not_hold_back_real_restarts() -> None:
    # A crash loop of a real process: a subscription of 2 events nobody reads
    # loses its oldest events while the restarts go on at the reader's pace.
    child = ProcessChild(["/bin/sh", "-c", "exit 1"], ready=Ready.on_spawn())
    spec = SupervisorSpec(
        name="root", backoff=Backoff.none(), intensity=Intensity(max_restarts=10**6, window=1.0)
    )
    with trio.fail_after(30):
        async with open_supervisor(spec) as sup:
            stalled = sup.subscribe(buffer=2)
            events = sup.subscribe()
            await sup.start_child(ChildSpec("crashy", child))
            starts = 0
            async for event in events:
                assert not isinstance(event, EventsDropped)
                if isinstance(event, ChildStarted):
                    starts += 1
                    if starts == 30:
                        break
            assert stalled.dropped >= 4 * 29 - 2
            marker = await anext(stalled)
            assert isinstance(marker, EventsDropped)
            assert marker.count >= 4 * 29 - 2
