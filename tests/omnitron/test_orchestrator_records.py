"""App and process records as a pure function of the tree's events.

Each test feeds :func:`apply` a literal sequence of lifecycle events, as the
library publishes them, and asserts the records that result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from omnitron.config import AppConfig, define_ecosystem
from omnitron.daemon._records import (
    RECENT_EVENTS,
    AppEvent,
    AppRecord,
    EventKind,
    ProcessRecord,
    apply,
    give_up,
    intend,
    remember,
)
from omnitron.state import AppStatus, DesiredStatus
from supervision import ExitStatus, StartFailure, SupervisorGaveUp
from supervision import events as ev

POOL = ("shop", "api")


def at(index: int) -> tuple[str, ...]:
    return (*POOL, str(index))


@pytest.fixture
def config(tmp_path: Path) -> AppConfig:
    return define_ecosystem(
        project="shop",
        apps=[
            {
                "name": "api",
                "command": ["sleep", "60"],
                "instances": 2,
                "restart_policy": {"max_restarts": 3, "window": 60},
            }
        ],
        base_dir=tmp_path,
    ).apps[0]


def feed(
    record: AppRecord,
    events: list[tuple[int | None, ev.Event]],
    *,
    group_mode: bool = False,
) -> AppRecord:
    for instance, event in events:
        record = apply(record, event, instance, group_mode=group_mode)
    return record


def started(index: int, pid: int, t: float = 0.0) -> tuple[int, ev.Event]:
    return index, ev.ChildStarted(
        path=at(index), pid=pid, generation=1, timestamp=1000 + t, monotonic=t
    )


def ready(index: int, pid: int, t: float = 0.0) -> tuple[int, ev.Event]:
    return index, ev.ChildReady(
        path=at(index), pid=pid, generation=1, timestamp=1000 + t, monotonic=t
    )


def exited(index: int, pid: int, status: ExitStatus, t: float = 0.0) -> tuple[int, ev.Event]:
    return index, ev.ChildExited(
        path=at(index), pid=pid, exit=status, timestamp=1000 + t, monotonic=t
    )


def restarting(index: int, delay: float, t: float = 0.0) -> tuple[int, ev.Event]:
    return index, ev.ChildRestarting(
        path=at(index), attempt=1, delay=delay, timestamp=1000 + t, monotonic=t
    )


def stopped(index: int, pid: int | None, t: float = 0.0, **fields: Any) -> tuple[int, ev.Event]:
    return index, ev.ChildStopped(
        path=at(index), pid=pid, timestamp=1000 + t, monotonic=t, **fields
    )


def pool(event: type[ev.Event], t: float = 0.0, **fields: Any) -> tuple[None, ev.Event]:
    return None, event(path=POOL, timestamp=1000 + t, monotonic=t, **fields)


BOTH_UP = [started(0, 101), ready(0, 101), started(1, 102), ready(1, 102)]
"""Instances 0 and 1 spawned and ready, as pids 101 and 102."""


def kinds(record: AppRecord) -> list[tuple[EventKind, int | None]]:
    return [(e.kind, e.instance) for e in record.events]


def test_a_pool_coming_up(config: AppConfig) -> None:
    record = feed(
        AppRecord(config=config, instances=2),
        [
            pool(ev.ChildStarted, generation=1),
            started(0, 101, t=1),
            ready(0, 101, t=2),
            started(1, 102, t=2),
        ],
    )
    assert record.processes == {
        0: ProcessRecord(instance=0, pid=101, status=AppStatus.ONLINE, ready_at=2),
        1: ProcessRecord(instance=1, pid=102, status=AppStatus.STARTING),
    }
    assert record.status is AppStatus.STARTING
    assert record.events == (AppEvent(time=1002, kind=EventKind.ONLINE, instance=0, pid=101),)
    record = feed(record, [ready(1, 102, t=3)])
    assert record.status is AppStatus.ONLINE
    assert kinds(record) == [(EventKind.ONLINE, 0), (EventKind.ONLINE, 1)]


def test_a_crash_and_its_restart(config: AppConfig) -> None:
    """A crashed process is errored until it runs again, whatever the backoff."""
    up = feed(AppRecord(config=config, instances=1), [started(0, 101), ready(0, 101)])
    crashed = feed(up, [exited(0, 101, ExitStatus.exited(3), t=5)])
    assert crashed.processes[0] == ProcessRecord(
        instance=0, status=AppStatus.ERRORED, last_exit="exited with code 3"
    )
    assert crashed.last_error == "instance 0: exited with code 3"
    assert crashed.status is AppStatus.ERRORED

    waiting = feed(crashed, [restarting(0, 30.0, t=5)])
    assert waiting.processes[0].status is AppStatus.ERRORED
    assert (waiting.restarts, waiting.processes[0].restarts) == (1, 1)
    assert waiting.events[-1] == AppEvent(
        time=1005, kind=EventKind.RESTARTING, instance=0, delay=30.0
    )

    again = feed(waiting, [started(0, 202, t=35), ready(0, 202, t=36)])
    assert again.processes[0] == ProcessRecord(
        instance=0,
        pid=202,
        status=AppStatus.ONLINE,
        restarts=1,
        ready_at=36,
        last_exit="exited with code 3",
    )
    assert again.status is AppStatus.ONLINE
    assert again.last_error == "instance 0: exited with code 3"  # kept for inspect
    assert kinds(again) == [
        (EventKind.ONLINE, 0),
        (EventKind.EXITED, 0),
        (EventKind.RESTARTING, 0),
        (EventKind.ONLINE, 0),
    ]


def test_a_normal_exit_waiting_for_its_restart_is_starting(config: AppConfig) -> None:
    record = feed(
        AppRecord(config=config, instances=1),
        [started(0, 101), ready(0, 101), exited(0, 101, ExitStatus.exited(0))],
    )
    assert record.processes[0].status is AppStatus.STOPPED
    assert record.last_error is None
    record = feed(record, [restarting(0, 1.0)])
    assert record.processes[0].status is AppStatus.STARTING
    assert record.status is AppStatus.STARTING


def test_a_process_stopped_for_a_group_restart_is_starting(config: AppConfig) -> None:
    record = feed(
        AppRecord(config=config, instances=1),
        [started(0, 101), ready(0, 101), stopped(0, 101), restarting(0, 1.0)],
    )
    assert record.processes[0] == ProcessRecord(instance=0, status=AppStatus.STARTING, restarts=1)


def test_a_stop_that_needed_a_kill_and_left_escapees(config: AppConfig) -> None:
    record = feed(
        AppRecord(config=config, instances=1),
        [started(0, 101), ready(0, 101), stopped(0, 101, killed=True, escaped=(555,))],
    )
    assert record.processes[0] == ProcessRecord(instance=0, status=AppStatus.STOPPED)
    assert record.events[-1] == AppEvent(
        time=1000, kind=EventKind.STOPPED, instance=0, pid=101, killed=True, escaped=(555,)
    )
    assert record.last_error == "instance 0 stopped (killed after stop timeout); escaped: [555]"


def gave_up(t: float = 9.0) -> tuple[None, ev.Event]:
    cause = SupervisorGaveUp(POOL, restarts=4, window=60.0, child="0")
    return pool(ev.ChildExited, t=t, exit=ExitStatus.raised(cause))


def test_a_pool_past_its_restart_limit_is_given_up_on(config: AppConfig) -> None:
    record = feed(
        AppRecord(config=config, instances=2),
        [
            *BOTH_UP,
            exited(0, 101, ExitStatus.killed(9)),
            restarting(0, 0.5),
            stopped(1, 102),  # the pool stops the others when it gives up
            pool(ev.SupervisorGaveUp, restarts=4, window=60.0, child="0"),
            gave_up(),
        ],
    )
    reason = "restart limit exceeded (3 restarts within 60s); last: instance 0: killed by SIGKILL"
    assert record.crashed
    assert record.status is AppStatus.CRASHED
    assert record.last_error == reason
    assert {p.status for p in record.processes.values()} == {AppStatus.STOPPED}
    assert record.events[-1] == AppEvent(time=1009, kind=EventKind.CRASHED, reason=reason)
    # Given up once: a late duplicate changes nothing.
    assert apply(record, gave_up()[1], None) is record


def test_a_pool_that_fails_to_start_is_given_up_on(config: AppConfig) -> None:
    failure = StartFailure(POOL, "readiness timeout after 30s")
    record = feed(
        AppRecord(config=config, instances=1),
        [
            pool(ev.ChildStarted, generation=1),
            started(0, 101),
            exited(0, 101, ExitStatus.start_failed(failure, "readiness timeout after 30s")),
            pool(
                ev.ChildExited,
                exit=ExitStatus.start_failed(failure, "readiness timeout after 30s"),
                start_failure=True,
            ),
        ],
    )
    assert record.crashed
    assert record.last_error is not None
    assert record.last_error.endswith("last: instance 0: start failed: readiness timeout after 30s")


def test_in_group_mode_a_failed_pool_is_restarted_not_given_up_on(config: AppConfig) -> None:
    record = feed(
        AppRecord(config=config, instances=1),
        [
            pool(ev.ChildStarted, generation=1),
            started(0, 101),
            ready(0, 101),
            exited(0, 101, ExitStatus.exited(1)),
            gave_up(t=1),
            pool(ev.ChildRestarting, t=1, attempt=1, delay=1.0),
        ],
        group_mode=True,
    )
    assert not record.crashed
    assert record.restarts == 1
    assert record.status is AppStatus.ERRORED
    assert record.events[-1] == AppEvent(
        time=1001,
        kind=EventKind.FAILED,
        reason=str(SupervisorGaveUp(POOL, restarts=4, window=60.0, child="0")),
    )
    # The root starts a fresh pool: its processes start over.
    fresh = feed(record, [pool(ev.ChildStarted, generation=2), started(0, 303)], group_mode=True)
    assert fresh.processes == {0: ProcessRecord(instance=0, pid=303)}
    assert fresh.restarts == 1


def test_stopping_the_pool_stops_processes_waiting_for_a_restart(config: AppConfig) -> None:
    """A process in backoff has no stop event of its own: its pool's stop covers it."""
    record = feed(
        AppRecord(config=config, instances=2),
        [
            *BOTH_UP,
            exited(0, 101, ExitStatus.exited(2)),
            restarting(0, 30.0),
            stopped(1, 102),
            pool(ev.ChildStopped),
        ],
    )
    assert {i: p.status for i, p in record.processes.items()} == {
        0: AppStatus.STOPPED,
        1: AppStatus.STOPPED,
    }
    assert record.status is AppStatus.STOPPED


def test_a_fresh_pool_forgets_the_processes_of_the_last_one(config: AppConfig) -> None:
    """After a stop and start (or a reload with fewer instances) only new processes count."""
    record = feed(
        AppRecord(config=config, instances=2),
        [
            *BOTH_UP,
            stopped(1, 102),
            stopped(0, 101),
            pool(ev.ChildStopped),
        ],
    )
    record = attrs.evolve(record, instances=1)
    record = feed(record, [pool(ev.ChildStarted, generation=2), started(0, 201), ready(0, 201)])
    assert record.processes == {
        0: ProcessRecord(instance=0, pid=201, status=AppStatus.ONLINE, ready_at=0.0)
    }
    assert record.status is AppStatus.ONLINE


@pytest.mark.parametrize(
    "event",
    [
        ev.EventsDropped(path=POOL, count=3),
        ev.SupervisorGaveUp(path=POOL, restarts=4, window=60.0, child="0"),
        ev.ChildExited(path=POOL, exit=ExitStatus.exited(0)),
    ],
    ids=["dropped", "gave-up-marker", "plain-pool-exit"],
)
def test_events_that_change_nothing_return_the_same_record(
    config: AppConfig, event: ev.Event
) -> None:
    record = AppRecord(config=config, instances=1)
    assert apply(record, event, None) is record
    assert apply(record, ev.EventsDropped(path=at(0), count=1), 0) is record


def test_apply_leaves_its_input_alone(config: AppConfig) -> None:
    before = feed(AppRecord(config=config, instances=1), [started(0, 101)])
    copy = attrs.evolve(before, processes=dict(before.processes))
    after = feed(before, [ready(0, 101), exited(0, 101, ExitStatus.exited(3)), restarting(0, 1)])
    assert before == copy
    assert after != before


def test_recent_events_keep_the_last_fifty(config: AppConfig) -> None:
    record = AppRecord(config=config, instances=1)
    for n in range(RECENT_EVENTS + 7):
        record = feed(record, [started(0, 100 + n, t=n), ready(0, 100 + n, t=n)])
    assert len(record.events) == RECENT_EVENTS
    assert record.events[0].pid == 107
    assert record.events[-1].pid == 100 + RECENT_EVENTS + 6


def test_operator_transitions(config: AppConfig) -> None:
    record = give_up(AppRecord(config=config, instances=1), "cannot run", 5.0)
    assert record.crashed
    assert record.last_error == "cannot run"
    assert give_up(record, "again", 6.0) is record
    stopped_ = intend(record, DesiredStatus.STOPPED)
    assert (stopped_.desired, stopped_.crashed, stopped_.status) == (
        DesiredStatus.STOPPED,
        False,
        AppStatus.STOPPED,
    )
    running = intend(record, DesiredStatus.RUNNING)
    assert (running.crashed, running.last_error, running.status) == (
        False,
        None,
        AppStatus.STARTING,
    )
    noted = remember(running, AppEvent(time=7.0, kind=EventKind.SCALED, previous=1, instances=3))
    assert noted.events[-1].describe() == "scaled 1 -> 3"


def test_an_app_that_cannot_start_as_configured_is_errored_not_crashed(
    config: AppConfig,
) -> None:
    up = feed(AppRecord(config=config, instances=1), [started(0, 100, t=1), ready(0, 100, t=2)])
    record = give_up(up, "speaks worker protocol 2", 5.0, errored=True)
    assert (record.crashed, record.errored, record.status) == (True, True, AppStatus.ERRORED)
    assert record.last_error == "speaks worker protocol 2"
    assert record.processes[0].status is AppStatus.STOPPED
    assert record.events[-1] == AppEvent(
        time=5.0, kind=EventKind.ERRORED, reason="speaks worker protocol 2"
    )
    assert record.events[-1].describe() == (
        "app cannot start as configured: speaks worker protocol 2"
    )
    assert give_up(record, "again", 6.0) is record
    # An operator's start gives it a fresh start; a later crash is a crash.
    running = intend(record, DesiredStatus.RUNNING)
    assert (running.crashed, running.errored, running.status) == (
        False,
        False,
        AppStatus.STOPPED,  # its processes are down until the new start spawns them
    )
    assert give_up(running, "limit", 7.0).status is AppStatus.CRASHED
    stopped_ = intend(record, DesiredStatus.STOPPED)
    assert (stopped_.errored, stopped_.status) == (False, AppStatus.STOPPED)


def test_the_wire_form_of_an_event() -> None:
    assert AppEvent(time=1.5, kind=EventKind.ONLINE, instance=0, pid=9).to_wire() == {
        "time": 1.5,
        "kind": "online",
        "instance": 0,
        "pid": 9,
    }
    assert AppEvent(
        time=2.0, kind=EventKind.STOPPED, instance=1, killed=True, escaped=(4, 5)
    ).to_wire() == {
        "time": 2.0,
        "kind": "stopped",
        "instance": 1,
        "killed": True,
        "escaped": [4, 5],
    }
    assert AppEvent(time=3.0, kind=EventKind.CRASHED, reason="x").describe() == "app crashed: x"


def test_the_direct_record_builders_name_every_field() -> None:
    """``apply`` builds records directly (not with ``attrs.evolve``): a field added
    to a record must be carried by its builder too, or it would be reset."""
    import inspect

    from omnitron.daemon import _records

    process_fields = {f.name for f in attrs.fields(_records.ProcessRecord)}
    built = set(inspect.signature(_records._process).parameters) - {"old"}
    assert built | {"instance"} == process_fields
    source = inspect.getsource(_records._app_with)
    assert {f.name for f in attrs.fields(_records.AppRecord) if f"{f.name}=" in source} == {
        f.name for f in attrs.fields(_records.AppRecord)
    }
