"""Backoff, restart intensity and escalation, with exact times under a MockClock.

Every child here is a :class:`~supervision.testing.FakeChild`, so a restart takes no
time and every delay can be read off ``FakeChild.starts`` and the
``ChildRestarting`` events to the float.
"""

from __future__ import annotations

import math
import random

import attrs
import pytest
import trio
import trio.testing

from supervision import (
    Backoff,
    ChildSpec,
    ChildState,
    Intensity,
    Strategy,
    Subscription,
    Supervisor,
    SupervisorGaveUp,
    SupervisorSpec,
    open_supervisor,
)
from supervision import events as ev
from supervision.testing import Exit, FailStart, FakeChild, Step

GENEROUS = Intensity(max_restarts=1000, window=10_000)
DOUBLING = Backoff(initial=1, max=30, factor=2)


def one_child(
    child: FakeChild,
    *,
    backoff: Backoff = DOUBLING,
    intensity: Intensity = GENEROUS,
    child_backoff: Backoff | None = None,
) -> SupervisorSpec:
    return SupervisorSpec(
        name="root",
        intensity=intensity,
        backoff=backoff,
        children=[ChildSpec("a", child, backoff=child_backoff)],
    )


async def events_of(subscription: Subscription) -> list[ev.Event]:
    """Everything the subscription holds; call it once the tree has stopped."""
    return [event async for event in subscription]


def restarting(events: list[ev.Event], name: str = "a") -> list[ev.ChildRestarting]:
    return [e for e in events if isinstance(e, ev.ChildRestarting) and e.name == name]


def exits(events: list[ev.Event], name: str = "a") -> list[float]:
    return [e.monotonic for e in events if isinstance(e, ev.ChildExited) and e.name == name]


def gaps(starts: list[float], exited: list[float]) -> list[float]:
    """Time from each exit to the next start."""
    return [start - end for end, start in zip(exited, starts[1:], strict=False)]


@attrs.frozen
class GaveUp:
    error: SupervisorGaveUp
    at: float
    """When ``SupervisorGaveUp`` came out of ``open_supervisor``."""
    sup: Supervisor
    events: list[ev.Event]


async def until_it_gives_up(spec: SupervisorSpec, *, within: float = math.inf) -> GaveUp:
    """Run the tree, doing nothing, until it gives up; fail if it has not after ``within``.

    ``at`` is exact only with no deadline pending in the block (``within=inf``):
    the block is cancelled once the tree has torn down, and autojump may move the
    clock to a pending deadline meanwhile. Event times are exact either way.
    """
    try:
        async with open_supervisor(spec) as sup:
            subscription = sup.subscribe()
            await trio.sleep(within)
    except SupervisorGaveUp as exc:
        return GaveUp(exc, trio.current_time(), sup, await events_of(subscription))
    pytest.fail(f"the tree did not give up within {within:g}s")


def crash_loop(first_after: float, crashes: int, *, then: list[Step] | None = None) -> FakeChild:
    """A child that runs ``first_after`` seconds, then crashes at once on every start."""
    return FakeChild(script=[Exit(1, after=first_after)] + [Exit(1)] * (crashes - 1) + (then or []))


# ---------------------------------------------------------------------------- backoff


@pytest.mark.parametrize("where", ["supervisor", "child"])
async def test_backoff_doubles_up_to_the_cap(
    where: str, autojump_clock: trio.testing.MockClock
) -> None:
    child = crash_loop(1, 7)
    if where == "supervisor":
        spec = one_child(child)
    else:  # the child's own backoff wins over the supervisor's
        spec = one_child(child, backoff=Backoff.none(), child_backoff=DOUBLING)
    async with open_supervisor(spec) as sup:
        subscription = sup.subscribe()
        await child.wait_generation(8)
        assert trio.current_time() == 92.0
        assert sup.which_children()[0].restarts == 7
    events = await events_of(subscription)

    assert child.starts == [0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 62.0, 92.0]
    assert exits(events) == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 62.0]
    assert gaps(child.starts, exits(events)) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    announced = restarting(events)
    assert [(e.attempt, e.delay) for e in announced] == [
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),
        (4, 8.0),
        (5, 16.0),
        (6, 30.0),
        (7, 30.0),
    ]
    # Announced at the crash, for a restart exactly `delay` later.
    assert [e.monotonic for e in announced] == exits(events)


async def test_backoff_resets_after_reset_after_of_stable_uptime(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = FakeChild(
        script=[
            Exit(1, after=1),  # 0 -> 1, restart in 1
            Exit(1),  # 2 -> 2, restart in 2
            Exit(1),  # 4 -> 4, restart in 4
            Exit(1, after=10),  # 8 -> 18: up exactly reset_after, the streak starts over
            Exit(1, after=9.5),  # 19 -> 28.5: up less than reset_after, it goes on
        ]
    )
    spec = one_child(child, backoff=Backoff(initial=1, max=30, factor=2, reset_after=10))
    async with open_supervisor(spec) as sup:
        subscription = sup.subscribe()
        await child.wait_generation(6)
    events = await events_of(subscription)

    assert child.starts == [0.0, 2.0, 4.0, 8.0, 19.0, 30.5]
    assert [(e.attempt, e.delay) for e in restarting(events)] == [
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),
        (1, 1.0),
        (2, 2.0),
    ]


async def test_reset_after_defaults_to_the_intensity_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = FakeChild(
        script=[
            Exit(1, after=1),  # 0 -> 1
            Exit(1),  # 2 -> 2
            Exit(1, after=19.5),  # 4 -> 23.5: shorter than the 20 s window
            Exit(1, after=20),  # 27.5 -> 47.5: as long as the window
        ]
    )
    spec = one_child(child, intensity=Intensity(max_restarts=10, window=20))
    async with open_supervisor(spec) as sup:
        subscription = sup.subscribe()
        await child.wait_generation(5)
    events = await events_of(subscription)

    assert child.starts == [0.0, 2.0, 4.0, 27.5, 48.5]
    assert [e.delay for e in restarting(events)] == [1.0, 2.0, 4.0, 1.0]


async def test_jitter_stays_within_its_fraction_of_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashes = 12
    child = crash_loop(1, crashes)
    spec = one_child(child, backoff=Backoff(initial=1, max=30, factor=2, jitter=0.25))
    async with open_supervisor(spec) as sup:
        subscription = sup.subscribe()
        await child.wait_generation(crashes + 1)
    events = await events_of(subscription)

    announced = restarting(events)
    assert [e.attempt for e in announced] == list(range(1, crashes + 1))
    nominal = [min(30.0, 2.0 ** (n - 1)) for n in range(1, crashes + 1)]
    for event, base in zip(announced, nominal, strict=True):
        assert 0.75 * base <= event.delay <= 1.25 * base
    # The delay announced is the delay applied.
    for gap, event in zip(gaps(child.starts, exits(events)), announced, strict=True):
        assert gap == pytest.approx(event.delay, abs=1e-9)
    assert any(e.delay != base for e, base in zip(announced, nominal, strict=True))


async def test_jitter_follows_the_seed_of_the_random_module(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Supervisors draw the spread from the random module's generator (no state
    # of their own): a seeded run is reproducible.
    async def delays() -> list[float]:
        child = crash_loop(1, 5)
        spec = one_child(child, backoff=Backoff(initial=1, max=30, factor=2, jitter=0.5))
        async with open_supervisor(spec) as sup:
            subscription = sup.subscribe()
            await child.wait_generation(6)
        return [e.delay for e in restarting(await events_of(subscription))]

    state = random.getstate()
    try:
        random.seed(1234)
        first = await delays()
        random.seed(1234)
        second = await delays()
    finally:
        random.setstate(state)
    assert first == second
    assert len(set(first)) == len(first)


@pytest.mark.parametrize("jitter", [0.0, 0.25])
async def test_pl22_fast_base_capped_and_reset_after_a_stable_minute(
    jitter: float, autojump_clock: trio.testing.MockClock
) -> None:
    """PL-22: base 100 ms, cap 30 s, reset after 60 s of stable uptime."""
    backoff = Backoff(initial=0.1, max=30, factor=2, reset_after=60, jitter=jitter)
    crashes = 12
    child = crash_loop(1, crashes, then=[Exit(1, after=60)])
    async with open_supervisor(one_child(child, backoff=backoff)) as sup:
        subscription = sup.subscribe()
        await child.wait_generation(crashes + 2)
    events = await events_of(subscription)

    delays = [e.delay for e in restarting(events)]
    nominal = [0.1 * 2**k for k in range(9)] + [30.0] * (crashes - 9) + [0.1]
    assert nominal[:10] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0])
    if jitter == 0:
        assert delays == nominal
    else:
        assert len(delays) == len(nominal)
        for delay, base in zip(delays, nominal, strict=True):
            assert base * (1 - jitter) <= delay <= base * (1 + jitter)
    # The stable minute: up from the last start of the loop to its crash 60 s later.
    assert exits(events)[-1] == pytest.approx(child.starts[-2] + 60, abs=1e-9)
    assert gaps(child.starts, exits(events)) == pytest.approx(delays, abs=1e-9)


# ---------------------------------------------------------------------------- intensity


@pytest.mark.parametrize("max_restarts", [0, 1, 3])
async def test_one_restart_too_many_in_the_window_gives_up(
    max_restarts: int, autojump_clock: trio.testing.MockClock
) -> None:
    crasher = FakeChild(script=[Exit(1, after=1)] * (max_restarts + 1))
    bystander = FakeChild()
    spec = SupervisorSpec(
        name="root",
        intensity=Intensity(max_restarts=max_restarts, window=10),
        backoff=Backoff.none(),
        children=[ChildSpec("bystander", bystander), ChildSpec("crasher", crasher)],
    )
    outcome = await until_it_gives_up(spec)
    end = float(max_restarts + 1)
    assert outcome.at == end
    error = outcome.error
    assert (error.path, error.child) == (("root",), "crasher")
    assert (error.restarts, error.window) == (max_restarts + 1, 10.0)

    # Restarted max_restarts times, then everything was stopped.
    assert crasher.starts == [float(t) for t in range(max_restarts + 1)]
    assert bystander.stops == [end]
    assert not bystander.running
    assert not crasher.running
    assert not outcome.sup.running
    assert [(i.name, i.state, i.restarts) for i in outcome.sup.which_children()] == [
        ("bystander", ChildState.STOPPED, 0),
        ("crasher", ChildState.STOPPED, max_restarts),
    ]
    events = outcome.events
    gave_up = [e for e in events if isinstance(e, ev.SupervisorGaveUp)]
    assert [(e.path, e.child, e.monotonic) for e in gave_up] == [(("root",), "crasher", end)]
    tail = events[events.index(gave_up[0]) :]
    assert [(type(e).__name__, e.name) for e in tail] == [
        ("SupervisorGaveUp", "root"),
        ("ChildStopped", "bystander"),
    ]
    assert len(restarting(events, "crasher")) == max_restarts


async def test_restarts_leave_the_sliding_window(autojump_clock: trio.testing.MockClock) -> None:
    # Intensity 3 in 10 s. Crashes at 1, 2, 3, 11.5, 12.5, 13.5 keep at most three
    # restarts inside any 10 s; the crash at 14 is a fourth one (11.5, 12.5, 13.5, 14).
    child = FakeChild(
        script=[
            Exit(1, after=1),
            Exit(1, after=1),
            Exit(1, after=1),
            Exit(1, after=8.5),
            Exit(1, after=1),
            Exit(1, after=1),
            Exit(1, after=0.5),
        ]
    )
    spec = one_child(child, backoff=Backoff.none(), intensity=Intensity(max_restarts=3, window=10))
    outcome = await until_it_gives_up(spec)
    assert child.starts == [0.0, 1.0, 2.0, 3.0, 11.5, 12.5, 13.5]
    assert outcome.at == 14.0
    assert outcome.error.restarts == 4


async def test_start_failures_count_for_intensity_and_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A crash at 1, then restarts that fail to start at 2 and at 4 (1 s, then 2 s of
    # backoff): the third restart within 10 s is one too many for max_restarts=2.
    child = FakeChild(script=[Exit(1, after=1), FailStart("port busy"), FailStart("port busy")])
    spec = one_child(child, intensity=Intensity(max_restarts=2, window=10))
    outcome = await until_it_gives_up(spec)
    assert outcome.at == 4.0
    assert child.starts == [0.0, 2.0, 4.0]
    failures = [
        e.monotonic for e in outcome.events if isinstance(e, ev.ChildExited) and e.start_failure
    ]
    assert failures == [2.0, 4.0]
    assert [(e.attempt, e.delay) for e in restarting(outcome.events)] == [(1, 1.0), (2, 2.0)]
    assert outcome.error.restarts == 3


@pytest.mark.parametrize("backoff", [Backoff.none(), DOUBLING], ids=["no-backoff", "doubling"])
async def test_pl16_crashes_eleven_seconds_apart_never_give_up(
    backoff: Backoff, autojump_clock: trio.testing.MockClock
) -> None:
    """PL-16: intensity 3 / 10 s, a crash every 11 s, 10 crashes: never escalates.

    With the doubling backoff each generation runs 10 s (the window, hence the
    default reset_after) and waits 1 s: the streak resets every time.
    """
    uptime = 11 if backoff.max == 0 else 10
    child = FakeChild(script=[Exit(1, after=uptime)] * 10)
    spec = one_child(child, backoff=backoff, intensity=Intensity(max_restarts=3, window=10))
    async with open_supervisor(spec) as sup:
        subscription = sup.subscribe()
        await child.wait_generation(11)
        await trio.sleep(100)
        assert [(i.state, i.restarts) for i in sup.which_children()] == [(ChildState.RUNNING, 10)]
    events = await events_of(subscription)
    assert child.starts == [11.0 * n for n in range(11)]
    assert not any(isinstance(e, ev.SupervisorGaveUp) for e in events)
    assert all(e.attempt == 1 for e in restarting(events))


# ---------------------------------------------------------------------------- escalation


def flaky_subtree(worker: FakeChild) -> SupervisorSpec:
    """A subtree that gives up on its second crash within 10 s."""
    return SupervisorSpec(
        name="sub",
        intensity=Intensity(max_restarts=1, window=10),
        backoff=Backoff.none(),
        children=[ChildSpec("worker", worker)],
    )


async def test_a_subtree_giving_up_is_a_crash_for_its_one_for_all_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = FakeChild(script=[Exit(1, after=1), Exit(1, after=1)])  # crashes at 1 and 2
    sibling = FakeChild()
    spec = SupervisorSpec(
        name="root",
        strategy=Strategy.ONE_FOR_ALL,
        intensity=Intensity(max_restarts=5, window=60),
        backoff=DOUBLING,
        children=[ChildSpec("sibling", sibling), ChildSpec("sub", flaky_subtree(worker))],
    )
    async with open_supervisor(spec) as sup:
        subscription = sup.subscribe()
        await worker.wait_generation(3)
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == 3.0
        assert [(i.name, i.kind, i.state, i.restarts) for i in sup.which_children()] == [
            ("sibling", "process", ChildState.RUNNING, 1),
            ("sub", "supervisor", ChildState.RUNNING, 1),
        ]
        assert sup.running
    events = await events_of(subscription)

    # The subtree restarted its worker once (at 1), then gave up at 2; the parent
    # stopped the sibling and restarted both after its own 1 s backoff.
    assert worker.starts == [0.0, 1.0, 3.0]
    assert sibling.starts == [0.0, 3.0]
    assert sibling.stops[0] == 2.0
    gave_up = [e for e in events if isinstance(e, ev.SupervisorGaveUp)]
    assert [(e.path, e.child, e.monotonic) for e in gave_up] == [(("root", "sub"), "worker", 2.0)]
    exited = [e for e in events if isinstance(e, ev.ChildExited) and e.path == ("root", "sub")]
    assert [e.monotonic for e in exited] == [2.0]
    assert isinstance(exited[0].exception, SupervisorGaveUp)
    assert not exited[0].exit.normal
    at_two = [(type(e).__name__, e.path) for e in events if e.monotonic == 2.0]
    assert at_two == [
        ("ChildExited", ("root", "sub", "worker")),
        ("SupervisorGaveUp", ("root", "sub")),
        ("ChildExited", ("root", "sub")),
        ("ChildStopped", ("root", "sibling")),
        ("ChildRestarting", ("root", "sibling")),
        ("ChildRestarting", ("root", "sub")),
    ]
    assert [(e.name, e.delay) for e in events if isinstance(e, ev.ChildRestarting)] == [
        ("worker", 0.0),
        ("sibling", 1.0),
        ("sub", 1.0),
    ]


async def test_the_parent_gives_up_when_its_own_intensity_is_exceeded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = FakeChild(script=[Exit(1, after=1)] * 4)  # the subtree gives up at 2 and at 4
    sibling = FakeChild()
    spec = SupervisorSpec(
        name="root",
        intensity=Intensity(max_restarts=1, window=60),
        backoff=Backoff.none(),
        children=[ChildSpec("sibling", sibling), ChildSpec("sub", flaky_subtree(worker))],
    )
    outcome = await until_it_gives_up(spec)
    assert outcome.at == 4.0
    error = outcome.error
    assert (error.path, error.child, error.restarts) == (("root",), "sub", 2)
    assert worker.starts == [0.0, 1.0, 2.0, 3.0]
    assert sibling.starts == [0.0]
    assert sibling.stops == [4.0]
    assert [(i.name, i.state) for i in outcome.sup.which_children()] == [
        ("sibling", ChildState.STOPPED),
        ("sub", ChildState.STOPPED),
    ]
    gave_up = [(e.path, e.monotonic) for e in outcome.events if isinstance(e, ev.SupervisorGaveUp)]
    assert gave_up == [(("root", "sub"), 2.0), (("root", "sub"), 4.0), (("root",), 4.0)]


# ---------------------------------------------------------------------------- departures


async def test_a_restart_exactly_window_old_still_counts_like_otp(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Crashes at 1 and 11 with intensity 1 / 10 s: the second is the second restart
    # within 10 s if the window is closed, [now - window, now], as in OTP.
    child = FakeChild(script=[Exit(1, after=1), Exit(1, after=10)])
    spec = one_child(child, backoff=Backoff.none(), intensity=Intensity(max_restarts=1, window=10))
    outcome = await until_it_gives_up(spec, within=100)
    assert [e.monotonic for e in outcome.events if isinstance(e, ev.SupervisorGaveUp)] == [11.0]
