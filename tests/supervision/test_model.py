"""The engine's restart decisions agree with a small, pure model of SPEC 1.2.

The model below is written from the specification (and from OTP's ``supervisor``
where the spec defers to it), not from the engine: a discrete-event simulation of
one supervisor whose children exit only when told to. Hypothesis draws a tree
(strategy, restart types, significant children, intensity, backoff, generations
whose start fails) and a timed list of exits; the same script then drives the real
engine with :class:`~supervision.testing.FakeChild` children under a ``MockClock``.
Both must agree exactly, to the float, on

* the start time of every generation of every child,
* the lifecycle events, in order, with their times and details,
* whether and when the supervisor gave up (``SupervisorGaveUp`` out of
  ``open_supervisor``) or shut itself down,
* what ``which_children()`` reports at the end of the run and once the tree stopped.

Times are chosen so that no answer depends on the order of two things happening
at the same instant: every backoff delay is a whole number of seconds, the i-th
exit happens at a whole number of seconds plus i/32, and windows and
``reset_after`` are whole numbers plus one half. So an exit never coincides with a
restart, and nothing lands exactly on an intensity or ``reset_after`` boundary
(``test_backoff_intensity.py`` covers those boundaries). Starts and stops take no
time: the fakes are ready at once and stop at once, so the supervisor is never
busy when an exit arrives.
"""

from __future__ import annotations

import math
import signal

import attrs
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from supervision import (
    AutoShutdown,
    Backoff,
    ChildSpec,
    ChildState,
    Intensity,
    Restart,
    Strategy,
    Supervisor,
    SupervisorGaveUp,
    SupervisorSpec,
    open_supervisor,
)
from supervision import events as ev
from supervision.testing import Exit, FailStart, FakeChild, RunForever, Step

ROOT = "root"


# ---------------------------------------------------------------------------- scenario


@attrs.frozen
class ExitKind:
    """How a child is made to exit: ``exit(code)`` or ``kill(signal)``."""

    label: str
    code: int | None = None
    signal: int | None = None

    @property
    def normal(self) -> bool:
        return self.code == 0


EXIT_KINDS = (
    ExitKind("exit 0", code=0),
    ExitKind("exit 1", code=1),
    ExitKind("exit 3", code=3),
    ExitKind("SIGKILL", signal=signal.SIGKILL),
    ExitKind("SIGTERM", signal=signal.SIGTERM),
)


@attrs.frozen
class ChildPlan:
    name: str
    restart: Restart
    significant: bool
    failing: frozenset[int]
    """Generations (2 and later) whose start fails."""
    backoff: Backoff | None


@attrs.frozen
class Fault:
    """At time ``at``, make child number ``child`` exit (if it is running then)."""

    at: float
    child: int
    kind: ExitKind


@attrs.frozen
class Scenario:
    strategy: Strategy
    auto_shutdown: AutoShutdown
    intensity: Intensity
    backoff: Backoff
    children: tuple[ChildPlan, ...]
    faults: tuple[Fault, ...]
    horizon: float
    """When the test leaves the ``async with`` block (stopping the tree)."""


Info = tuple[str, str, int]
"""(name, state, restarts): one row of ``which_children()``."""
Record = tuple[object, ...]
"""One lifecycle event: (kind, child name, time, details...)."""
GaveUp = tuple[float, str, str]
"""(time, path of the supervisor, child that tipped the balance)."""


@attrs.frozen
class Outcome:
    starts: dict[str, list[float]]
    events: list[Record]
    at_horizon: list[Info] | None
    """``which_children()`` just before leaving the block; ``None`` if it gave up."""
    final: list[Info]
    gave_up: GaveUp | None


# ---------------------------------------------------------------------------- model


class _Child:
    def __init__(self, plan: ChildPlan, backoff: Backoff, window: float) -> None:
        self.plan = plan
        self.initial = float(backoff.initial)
        self.factor = float(backoff.factor)
        self.cap = float(backoff.max)
        self.reset_after = window if backoff.reset_after is None else backoff.reset_after
        self.present = True
        self.state = ChildState.RUNNING
        self.generation = 1
        self.starts = [0.0]
        self.up_since: float | None = 0.0
        self.due: float | None = None
        self.streak = 0
        """Consecutive restarts: the n of the backoff formula."""

    @property
    def name(self) -> str:
        return self.plan.name

    def delay(self) -> float:
        return min(self.cap, self.initial * self.factor ** (self.streak - 1))


class Model:
    """SPEC 1.2 for one supervisor, as a pure function of a :class:`Scenario`."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        window = scenario.intensity.window
        self.everyone = [
            _Child(plan, plan.backoff or scenario.backoff, window) for plan in scenario.children
        ]
        self.children = list(self.everyone)  # present children, in start order
        self.restarts: list[float] = []  # times of the restarts inside the window
        self.events: list[Record] = []
        self.done = False
        self.gave_up: GaveUp | None = None

    def run(self) -> Outcome:
        faults = list(self.scenario.faults)
        while not self.done:
            due = min((c.due for c in self.children if c.due is not None), default=math.inf)
            at = faults[0].at if faults else math.inf
            if min(due, at) >= self.scenario.horizon:
                break
            assert due != at, "the scenario was built so that this cannot happen"
            if due < at:
                self._restart_due(due)
            else:
                self._fault(faults.pop(0))
        at_horizon = None if self.gave_up else self._infos()
        if not self.done:
            self._stop_all(self.scenario.horizon)
        return Outcome(
            starts={c.name: c.starts for c in self.everyone},
            events=self.events,
            at_horizon=at_horizon,
            final=self._infos(),
            gave_up=self.gave_up,
        )

    def _infos(self) -> list[Info]:
        return [(c.name, c.state.value, c.generation - 1) for c in self.children]

    # -- what happens

    def _fault(self, fault: Fault) -> None:
        child = self.everyone[fault.child]
        if not child.present or child.state is not ChildState.RUNNING:
            return  # the driver skips children that are not running
        kind = fault.kind
        self.events.append(
            ("exited", child.name, fault.at, kind.code, kind.signal, kind.normal, False)
        )
        self._exited(child, fault.at, normal=kind.normal)

    def _restart_due(self, now: float) -> None:
        # Everything due now starts, in start order; a failed start may reschedule.
        while not self.done:
            ready = [c for c in self.children if c.due is not None and c.due <= now]
            if not ready:
                return
            self._start(ready[0], now)

    def _start(self, child: _Child, now: float) -> None:
        child.due = None
        child.generation += 1
        child.starts.append(now)
        self.events.append(("started", child.name, now, child.generation))
        if child.generation in child.plan.failing:
            self.events.append(("exited", child.name, now, None, None, False, True))
            self._exited(child, now, normal=False)
            return
        child.state = ChildState.RUNNING
        child.up_since = now
        self.events.append(("ready", child.name, now, child.generation))

    def _exited(self, child: _Child, now: float, *, normal: bool) -> None:
        self._end_uptime(child, now)
        restart = child.plan.restart
        if restart is Restart.TEMPORARY:
            self._remove(child)
            self._maybe_auto_shutdown(child, now)
            return
        if restart is Restart.TRANSIENT and normal:
            child.state = ChildState.EXITED
            self._maybe_auto_shutdown(child, now)
            return

        # A restart: counted at the crash; more than max_restarts in the window -> give up.
        window = self.scenario.intensity.window
        assert all(now - t != window for t in self.restarts), "boundary: see module doc"
        self.restarts = [t for t in self.restarts if now - t < window] + [now]
        if len(self.restarts) > self.scenario.intensity.max_restarts:
            self.events.append(("gave_up", ROOT, now, child.name))
            self.gave_up = (now, ROOT, child.name)
            child.state = ChildState.STOPPED
            self._stop_all(now)
            return

        group = self._group(child)
        for other in reversed(group):
            if other is not child and other.state is ChildState.RUNNING:
                self._stop(other, now)
        for other in group:
            if other is not child and other.plan.restart is Restart.TEMPORARY:
                self._remove(other)  # never restarted, not even by a sibling
        child.streak += 1
        delay = child.delay()
        for other in group:
            if other.present:
                other.state = ChildState.RESTARTING
                other.due = now + delay
                self.events.append(("restarting", other.name, now, child.streak, delay))

    def _group(self, child: _Child) -> list[_Child]:
        if self.scenario.strategy is Strategy.ONE_FOR_ONE:
            return [child]
        members = self.children
        if self.scenario.strategy is Strategy.REST_FOR_ONE:
            members = members[members.index(child) :]
        # OTP restarts every non-temporary member, one that exited normally included.
        alive = {ChildState.RUNNING, ChildState.RESTARTING, ChildState.EXITED}
        return [c for c in members if c is child or c.state in alive]

    def _end_uptime(self, child: _Child, now: float, *, crashed: bool = True) -> None:
        """The backoff streak resets once a child has stayed up for ``reset_after``."""
        if child.up_since is not None:
            uptime = now - child.up_since
            assert uptime != child.reset_after, "boundary: see module doc"
            if uptime >= child.reset_after:
                child.streak = 0
        child.up_since = None

    def _stop(self, child: _Child, now: float) -> None:
        self.events.append(("stopped", child.name, now))
        self._end_uptime(child, now, crashed=False)
        child.state = ChildState.STOPPED

    def _stop_all(self, now: float) -> None:
        for child in reversed(self.children):
            if child.state is ChildState.RUNNING:
                self._stop(child, now)
            elif child.state is not ChildState.EXITED:
                child.state = ChildState.STOPPED
            child.due = None
        self.done = True

    def _remove(self, child: _Child) -> None:
        child.present = False
        self.children.remove(child)

    def _maybe_auto_shutdown(self, child: _Child, now: float) -> None:
        mode = self.scenario.auto_shutdown
        if not child.plan.significant or mode is AutoShutdown.NEVER:
            return
        if mode is AutoShutdown.ALL_SIGNIFICANT and any(
            c.plan.significant and c.state in {ChildState.RUNNING, ChildState.RESTARTING}
            for c in self.children
        ):
            return
        self._stop_all(now)


# ---------------------------------------------------------------------------- engine


def _record(event: ev.Event) -> Record:
    t = event.monotonic
    if isinstance(event, ev.ChildStarted):
        return ("started", event.name, t, event.generation)
    if isinstance(event, ev.ChildReady):
        return ("ready", event.name, t, event.generation)
    if isinstance(event, ev.ChildExited):
        x = event.exit
        return ("exited", event.name, t, x.code, x.signal, x.normal, event.start_failure)
    if isinstance(event, ev.ChildRestarting):
        return ("restarting", event.name, t, event.attempt, event.delay)
    if isinstance(event, ev.ChildStopped):
        return ("stopped", event.name, t)
    if isinstance(event, ev.SupervisorGaveUp):
        return ("gave_up", event.name, t, event.child)
    return (type(event).__name__, event.name, t)


def _infos(sup: Supervisor) -> list[Info]:
    return [(i.name, i.state.value, i.restarts) for i in sup.which_children()]


def _script(plan: ChildPlan) -> list[Step]:
    last = max(plan.failing, default=1)
    return [FailStart() if g in plan.failing else RunForever() for g in range(2, last + 1)]


async def run_engine(scenario: Scenario) -> Outcome:
    fakes = [FakeChild(script=[RunForever(), *_script(plan)]) for plan in scenario.children]
    spec = SupervisorSpec(
        name=ROOT,
        strategy=scenario.strategy,
        intensity=scenario.intensity,
        backoff=scenario.backoff,
        auto_shutdown=scenario.auto_shutdown,
        children=[
            ChildSpec(
                plan.name,
                fake,
                restart=plan.restart,
                significant=plan.significant,
                backoff=plan.backoff,
            )
            for plan, fake in zip(scenario.children, fakes, strict=True)
        ],
    )
    at_horizon: list[Info] | None = None
    error: SupervisorGaveUp | None = None
    try:
        async with open_supervisor(spec) as sup:
            subscription = sup.subscribe(buffer=100_000)
            for fault in scenario.faults:
                await trio.sleep_until(fault.at)
                fake = fakes[fault.child]
                if not fake.running:
                    continue
                if fault.kind.code is not None:
                    fake.exit(fault.kind.code)
                else:
                    assert fault.kind.signal is not None
                    fake.kill(fault.kind.signal)
            await trio.sleep_until(scenario.horizon)
            at_horizon = _infos(sup)
    except SupervisorGaveUp as exc:
        error = exc
    events = [_record(e) async for e in subscription]
    gave_up: GaveUp | None = None
    if error is not None:
        # The time comes from the event: the block is cancelled only once the tree
        # has torn down, and autojump may move the clock while that happens.
        at_horizon = None
        [when] = [record[2] for record in events if record[0] == "gave_up"]
        gave_up = (when, "/".join(error.path), error.child)  # type: ignore[assignment]
    return Outcome(
        starts={
            plan.name: fake.starts for plan, fake in zip(scenario.children, fakes, strict=True)
        },
        events=events,
        at_horizon=at_horizon,
        final=_infos(sup),
        gave_up=gave_up,
    )


# ---------------------------------------------------------------------------- strategies


@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    """Whole-second delays (so restarts never meet the i/32 exits)."""
    initial = draw(st.sampled_from([0, 1, 2]))
    return Backoff(
        initial=initial,
        max=initial + draw(st.sampled_from([0, 1, 3, 6, 10])),
        factor=draw(st.sampled_from([1, 2, 3])),
        reset_after=draw(st.sampled_from([None, 1.5, 4.5, 9.5])),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    auto_shutdown = draw(st.sampled_from(AutoShutdown))
    children = []
    for i in range(draw(st.integers(1, 4))):
        restart = draw(st.sampled_from(Restart))
        children.append(
            ChildPlan(
                name=f"c{i}",
                restart=restart,
                significant=restart is not Restart.PERMANENT
                and auto_shutdown is not AutoShutdown.NEVER
                and draw(st.booleans()),
                failing=draw(st.frozensets(st.integers(2, 6), max_size=2)),
                backoff=draw(st.none() | backoffs()),
            )
        )
    # Fault i happens at a whole number of seconds plus (i + 1) / 32: see the module doc.
    faults = []
    whole = 0
    for i in range(draw(st.integers(0, 10))):
        whole += draw(st.integers(0, 12))
        faults.append(
            Fault(
                at=whole + (i + 1) / 32,
                child=draw(st.integers(0, len(children) - 1)),
                kind=draw(st.sampled_from(EXIT_KINDS)),
            )
        )
    return Scenario(
        strategy=draw(st.sampled_from(Strategy)),
        auto_shutdown=auto_shutdown,
        intensity=Intensity(
            max_restarts=draw(st.integers(0, 5)),
            window=draw(st.sampled_from([2.5, 6.5, 12.5, 40.5])),
        ),
        backoff=draw(backoffs()),
        children=tuple(children),
        faults=tuple(faults),
        horizon=whole + 300.75,
    )


def _by_child(events: list[Record]) -> dict[object, list[Record]]:
    out: dict[object, list[Record]] = {}
    for record in events:
        out.setdefault(record[1], []).append(record)
    return out


def check(scenario: Scenario) -> None:
    expected = Model(scenario).run()
    observed = trio.run(run_engine, scenario, clock=MockClock(autojump_threshold=0))
    assert observed.starts == expected.starts
    assert _by_child(observed.events) == _by_child(expected.events)
    assert observed.events == expected.events
    assert observed.gave_up == expected.gave_up
    assert observed.at_horizon == expected.at_horizon
    assert observed.final == expected.final


# ---------------------------------------------------------------------------- tests


def _plan(
    name: str,
    restart: Restart = Restart.PERMANENT,
    *,
    significant: bool = False,
    failing: frozenset[int] = frozenset(),
) -> ChildPlan:
    return ChildPlan(name, restart, significant, failing, backoff=None)


def _scenario(strategy: Strategy, *children: ChildPlan, **kwargs: object) -> Scenario:
    fields: dict[str, object] = {
        "strategy": strategy,
        "auto_shutdown": AutoShutdown.NEVER,
        "intensity": Intensity(max_restarts=3, window=12.5),
        "backoff": Backoff(initial=1, max=4, factor=2),
        "children": children,
        "faults": (),
        "horizon": 100.75,
        **kwargs,
    }
    return Scenario(**fields)  # type: ignore[arg-type]


def _faults(*faults: tuple[int, int, str]) -> tuple[Fault, ...]:
    """(whole seconds, child, exit kind label) -> faults at the i/32 offsets."""
    kinds = {kind.label: kind for kind in EXIT_KINDS}
    return tuple(
        Fault(at=whole + (i + 1) / 32, child=child, kind=kinds[label])
        for i, (whole, child, label) in enumerate(faults)
    )


# PL-19 and PL-20: one_for_all where a start fails inside the group restart, with a
# temporary bystander that must be removed.
PL19 = _scenario(
    Strategy.ONE_FOR_ALL,
    _plan("a"),
    _plan("t", Restart.TEMPORARY),
    _plan("c", failing=frozenset({2})),
    faults=_faults((1, 0, "SIGKILL"), (10, 2, "exit 1")),
)
# rest_for_one crash loop of the middle child until the tree gives up.
GIVE_UP = _scenario(
    Strategy.REST_FOR_ONE,
    _plan("a"),
    _plan("b"),
    _plan("c", Restart.TRANSIENT),
    faults=_faults(*((n, 1, "exit 3") for n in (1, 3, 6, 9, 10))),
)
# all_significant: the tree ends once both jobs are done, not after the first.
ALL_DONE = _scenario(
    Strategy.ONE_FOR_ONE,
    _plan("server"),
    _plan("job1", Restart.TRANSIENT, significant=True),
    _plan("job2", Restart.TEMPORARY, significant=True),
    auto_shutdown=AutoShutdown.ALL_SIGNIFICANT,
    faults=_faults((1, 1, "exit 1"), (5, 1, "exit 0"), (7, 0, "exit 0"), (9, 2, "SIGTERM")),
)


def test_the_model_on_hand_worked_scenarios() -> None:
    """The model's answers for three scenarios, worked out by hand from SPEC 1.2."""
    pl19 = Model(PL19).run()
    # a is killed at 1 + 1/32: t and c are stopped, t is removed, and a and c restart
    # 1 s later. c fails to start (its own 1st restart: 1 s more), so a is stopped
    # again. c's crash at 10 + 2/32, 7 s after that start, is its 2nd in a row: 2 s.
    t0, t1 = 1 + 1 / 32, 10 + 2 / 32
    assert pl19.starts == {
        "a": [0.0, t0 + 1, t0 + 2, t1 + 2],
        "t": [0.0],
        "c": [0.0, t0 + 1, t0 + 2, t1 + 2],
    }
    assert pl19.final == [("a", "stopped", 3), ("c", "stopped", 3)]

    gave_up = Model(GIVE_UP).run()
    # b crashes at 1, 3 and 6 s (plus offsets) and restarts 1, 2 and 4 s later, with c.
    # At 9 it is still waiting (until 10 + 3/32): that fault finds nothing to kill.
    # Its crash at 10 + 5/32 is the 4th restart within 12.5 s.
    assert gave_up.gave_up == (10 + 5 / 32, ROOT, "b")
    assert gave_up.starts["b"] == [0.0, 2 + 1 / 32, 5 + 2 / 32, 10 + 3 / 32]
    assert gave_up.final == [("a", "stopped", 0), ("b", "stopped", 3), ("c", "stopped", 3)]

    all_done = Model(ALL_DONE).run()
    # job1 crashes (restarted), exits normally at 5; job2 is killed at 9: the end.
    assert all_done.at_horizon == [
        ("server", "stopped", 1),
        ("job1", "exited", 1),
    ]
    assert [r for r in all_done.events if r[0] == "stopped"] == [("stopped", "server", 9.125)]


@settings(max_examples=200, deadline=None)
@given(scenarios())
@example(PL19)
@example(GIVE_UP)
@example(ALL_DONE)
def test_engine_agrees_with_the_model(scenario: Scenario) -> None:
    check(scenario)


# ---------------------------------------------------------------------------- OTP parity


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
async def test_group_restart_also_restarts_an_exited_transient_child(
    strategy: Strategy, autojump_clock: MockClock
) -> None:
    job = FakeChild(script=[Exit(0, after=1)])  # done at 1, normally
    server = FakeChild(script=[Exit(1, after=2)])  # crashes at 2
    spec = SupervisorSpec(
        name=ROOT,
        strategy=strategy,
        backoff=Backoff.none(),
        children=[ChildSpec("server", server), ChildSpec("job", job, restart=Restart.TRANSIENT)],
    )
    async with open_supervisor(spec) as sup:
        await server.wait_generation(2)
        await trio.testing.wait_all_tasks_blocked()
        assert job.starts == [0.0, 2.0]
        assert [(i.name, i.state) for i in sup.which_children()] == [
            ("server", ChildState.RUNNING),
            ("job", ChildState.RUNNING),
        ]


async def test_a_long_run_ended_by_a_group_restart_resets_the_backoff(
    autojump_clock: MockClock,
) -> None:
    a = FakeChild(script=[Exit(1, after=1), RunForever(), Exit(1, after=1)])
    b = FakeChild(script=[RunForever(), Exit(1, after=8)])
    spec = SupervisorSpec(
        name=ROOT,
        strategy=Strategy.ONE_FOR_ALL,
        intensity=Intensity(max_restarts=100, window=1000),
        backoff=Backoff(initial=1, max=30, factor=2, reset_after=5),
        children=[ChildSpec("a", a), ChildSpec("b", b)],
    )
    async with open_supervisor(spec) as sup:
        subscription = sup.subscribe()
        # a crashes at 1 (its 1st restart, at 2), runs 8 s until b crashes at 10 (all
        # restart at 11), then crashes at 12: after 8 s up, that is again its 1st.
        await a.wait_generation(4)
    events = [e async for e in subscription]
    assert a.starts == [0.0, 2.0, 11.0, 13.0]
    assert [
        (e.monotonic, e.attempt, e.delay)
        for e in events
        if isinstance(e, ev.ChildRestarting) and e.name == "a"
    ] == [(1.0, 1, 1.0), (10.0, 1, 1.0), (12.0, 1, 1.0)]
