"""The live record of every app and its processes: a pure function of the tree's events.

:func:`apply` takes an app's record and one lifecycle event of the supervision
tree and returns the next record; it does no I/O and reads no clock (times come
from the event). The orchestrator feeds it every event, in order, and keeps the
result: there is no other source of app or process state, and nothing reconciles
it with the tree afterwards. Operator actions are pure transitions too
(:func:`intend`, :func:`give_up`, :func:`remember`), given the time by their caller.

Each record keeps its last :data:`RECENT_EVENTS` :class:`AppEvent`\\ s: typed
records (time, kind, fields) that ``inspect`` sends as they are and the CLI
renders.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from supervision import StartFailure, SupervisorGaveUp
from supervision import events as ev

from .._eventtext import describe
from ..config import AppConfig
from ..config._bootstrap import WorkerSlot
from ..state import AppStatus, DesiredStatus, ProcessIdentity

__all__ = [
    "RECENT_EVENTS",
    "AppEvent",
    "AppRecord",
    "EventKind",
    "ProcessRecord",
    "apply",
    "give_up",
    "health_failed",
    "intend",
    "remember",
    "resource_restart",
]

RECENT_EVENTS = 50
"""How many :class:`AppEvent` records an app keeps."""


class EventKind(enum.Enum):
    """What an :class:`AppEvent` records.

    Process events carry the ``instance``; app events do not.
    """

    ONLINE = "online"
    """A process became ready (``instance``, ``pid``)."""
    EXITED = "exited"
    """A process ended without being asked to (``instance``, ``pid``, ``reason``)."""
    RESTARTING = "restarting"
    """A process will be started again after ``delay`` seconds (``instance``)."""
    STOPPED = "stopped"
    """With ``instance``: a process was stopped (``killed`` after its stop timeout,
    ``escaped`` descendants that could not be killed). Without: the operator
    stopped the app."""
    STARTED = "started"
    """The operator started the app."""
    RESTARTED = "restarted"
    """The operator restarted the app (rolling)."""
    RESTART_FAILED = "restart_failed"
    """A rolling restart stopped at an instance that did not come up (``instance``,
    ``reason``)."""
    SCALED = "scaled"
    """The operator changed the number of processes (``previous`` -> ``instances``)."""
    FAILED = "failed"
    """The app failed as a whole and its supervisor restarts it (``reason``;
    ``one_for_all`` / ``rest_for_one``)."""
    CRASHED = "crashed"
    """The app was given up on (``reason``)."""
    ERRORED = "errored"
    """The app cannot be started as configured (``reason``: e.g. its workers'
    omnitron speaks another protocol) and is not tried again until the operator
    starts it."""
    RELOADED = "reloaded"
    """The operator reloaded the app: each process replaced by a new one that was
    ready before the old one stopped."""
    RELOAD_FAILED = "reload_failed"
    """A reload stopped at a new process that did not become ready (``instance``,
    ``reason``); the running processes were kept."""
    HEALTH_FAILED = "health_failed"
    """A process failed its health probe ``retries`` times in a row and is restarted
    (``instance``, ``pid``, ``reason``: the last failure)."""
    MEMORY_RESTART = "memory_restart"
    """A process was restarted for exceeding the app's ``max_memory`` (``instance``,
    ``pid``, ``reason``)."""


@attrs.frozen(kw_only=True)
class AppEvent:
    """One thing that happened to an app, as ``inspect`` reports it.

    Attributes:
        time: When, in seconds since the epoch (the wall clock of the event).
        kind: What happened; decides which of the other fields are set.
        instance: The process concerned, for process events.
        pid: The process's pid, where there was one.
        reason: Why (an exit, a failure, a crash), one line.
        delay: Seconds until a restart.
        killed: The process ignored its stop signal and was killed.
        escaped: Descendants that left the process group and could not be killed.
        previous: The number of processes before a ``scale``.
        instances: The number of processes after a ``scale``.
    """

    time: float
    kind: EventKind
    instance: int | None = None
    pid: int | None = None
    reason: str | None = None
    delay: float | None = None
    killed: bool = False
    escaped: tuple[int, ...] = ()
    previous: int | None = None
    instances: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """``{"time", "kind", ...}`` plus every field that is set, for the control plane."""
        wire: dict[str, Any] = {"time": self.time, "kind": self.kind.value}
        # Field by field, not getattr by name: three of these per restart.
        if self.instance is not None:
            wire["instance"] = self.instance
        if self.pid is not None:
            wire["pid"] = self.pid
        if self.reason is not None:
            wire["reason"] = self.reason
        if self.delay is not None:
            wire["delay"] = self.delay
        if self.previous is not None:
            wire["previous"] = self.previous
        if self.instances is not None:
            wire["instances"] = self.instances
        if self.killed:
            wire["killed"] = True
        if self.escaped:
            wire["escaped"] = list(self.escaped)
        return wire

    def describe(self) -> str:
        """One line for the app's log file (``instance 0 online (pid 887)``)."""
        return describe(self.to_wire())


@attrs.frozen(kw_only=True)
class ProcessRecord:
    """One process of an app, as last seen.

    Attributes:
        instance: Its index in the app's pool.
        pid: Its pid while it exists.
        status: What it is doing.
        restarts: Restarts since the app was started.
        ready_at: When it became ready, on Trio's clock (for uptime).
        last_exit: How its last run ended, one line.
        identity: Who ``pid`` is (to tell it from a recycled pid later); read by
            the orchestrator when it is first needed (the state file, a signal),
            not by :func:`apply`.
        seen_at: When the orchestrator learnt of the spawn, in seconds since boot:
            the process started by then (its identity is only read if so).
        worker: For a module-worker app, the process entry and index within it
            that this process runs; set by the orchestrator from the tree's places.
        health_failure: Why its health probe had it stopped, until it exits (the
            exit's reason then names it).
    """

    instance: int
    pid: int | None = None
    status: AppStatus = AppStatus.STARTING
    restarts: int = 0
    ready_at: float | None = None
    last_exit: str | None = None
    identity: ProcessIdentity | None = None
    seen_at: float | None = None
    worker: WorkerSlot | None = None
    health_failure: str | None = None


@attrs.frozen(kw_only=True)
class AppRecord:
    """An app's live state.

    Attributes:
        config: Its config in force.
        instances: How many processes it should have (the config's, or a ``scale``).
        desired: The operator's intent (persisted).
        crashed: It exceeded its restart limit (or cannot run) and was given up on.
        errored: It was given up on because it cannot be started as configured
            (:func:`give_up` with ``errored``): its status is ``errored``, not
            ``crashed``.
        restarts: Restarts of its processes (and of the app as a whole), all together.
        last_error: The last failure, one line.
        processes: Its processes by instance (never mutated: each change is a new dict).
        events: The last :data:`RECENT_EVENTS` things that happened to it, oldest first.
    """

    config: AppConfig
    instances: int
    desired: DesiredStatus = DesiredStatus.RUNNING
    crashed: bool = False
    errored: bool = False
    restarts: int = 0
    last_error: str | None = None
    processes: dict[int, ProcessRecord] = attrs.field(factory=dict)
    events: tuple[AppEvent, ...] = ()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def status(self) -> AppStatus:
        if self.crashed:
            return AppStatus.ERRORED if self.errored else AppStatus.CRASHED
        if not self.processes:
            if self.desired is DesiredStatus.STOPPED:
                return AppStatus.STOPPED
            return AppStatus.STARTING
        statuses = {p.status for p in self.processes.values()}
        for status in (AppStatus.ERRORED, AppStatus.STARTING, AppStatus.STOPPING):
            if status in statuses:
                return status
        if statuses == {AppStatus.STOPPED}:
            return AppStatus.STOPPED
        online = sum(1 for p in self.processes.values() if p.status is AppStatus.ONLINE)
        if self.desired is DesiredStatus.RUNNING and online < self.instances:
            return AppStatus.STARTING  # some instances are not even spawned yet
        return AppStatus.ONLINE


# --------------------------------------------------------------------------- transitions


def remember(record: AppRecord, event: AppEvent) -> AppRecord:
    """``record`` with ``event`` as its newest recent event."""
    return attrs.evolve(record, events=_recent(record.events, event))


def _recent(events: tuple[AppEvent, ...], event: AppEvent) -> tuple[AppEvent, ...]:
    """``events`` with ``event`` as the newest, the oldest dropped past RECENT_EVENTS."""
    return (*events[-(RECENT_EVENTS - 1) :], event)


def intend(record: AppRecord, desired: DesiredStatus) -> AppRecord:
    """The operator asked for ``desired``: a crashed app is given a fresh start."""
    if desired is DesiredStatus.RUNNING and record.crashed:
        return attrs.evolve(record, desired=desired, crashed=False, errored=False, last_error=None)
    return attrs.evolve(record, desired=desired, crashed=False, errored=False)


def _down(process: ProcessRecord) -> ProcessRecord:
    if process.status is AppStatus.STOPPED and process.pid is None:
        return process
    return attrs.evolve(process, status=AppStatus.STOPPED, pid=None, ready_at=None, identity=None)


def _all_down(record: AppRecord) -> dict[int, ProcessRecord]:
    return {index: _down(process) for index, process in record.processes.items()}


def give_up(record: AppRecord, reason: str, time: float, *, errored: bool = False) -> AppRecord:
    """The app is given up on: ``crashed``, every process down, ``reason`` recorded.

    With ``errored`` it is given up on because it cannot be started as configured
    (not because it crashed too often): its status is ``errored``, and the event
    recorded is :attr:`EventKind.ERRORED`. An app already given up on is returned
    unchanged.
    """
    if record.crashed:
        return record
    crashed = attrs.evolve(
        record, crashed=True, errored=errored, last_error=reason, processes=_all_down(record)
    )
    kind = EventKind.ERRORED if errored else EventKind.CRASHED
    return remember(crashed, AppEvent(time=time, kind=kind, reason=reason))


def health_failed(record: AppRecord, instance: int, reason: str, time: float) -> AppRecord:
    """Process ``instance`` failed its health probe (``reason``) and is being stopped."""
    old = record.processes.get(instance)
    if old is None or old.pid is None:
        return record
    failure = f"health check failed: {reason}"
    process = attrs.evolve(old, health_failure=failure)
    updated = attrs.evolve(
        record,
        processes={**record.processes, instance: process},
        last_error=f"instance {instance}: {failure}",
    )
    event = AppEvent(
        time=time, kind=EventKind.HEALTH_FAILED, instance=instance, pid=old.pid, reason=reason
    )
    return remember(updated, event)


def resource_restart(
    record: AppRecord, index: int, kind: EventKind, reason: str, time: float
) -> AppRecord:
    """Process ``index`` is restarted by the daemon for ``reason`` (its resources):
    counted as a restart of the process and of the app, and recorded."""
    old = record.processes.get(index)
    if old is None:
        return record
    process = attrs.evolve(old, restarts=old.restarts + 1)
    updated = attrs.evolve(
        record,
        processes={**record.processes, index: process},
        restarts=record.restarts + 1,
        last_error=f"instance {index}: {reason}",
    )
    event = AppEvent(time=time, kind=kind, instance=index, pid=old.pid, reason=reason)
    return remember(updated, event)


def apply(
    record: AppRecord,
    event: ev.Event,
    instance: int | None,
    *,
    group_mode: bool = False,
    worker: WorkerSlot | None = None,
    seen_at: float | None = None,
    identity: ProcessIdentity | None = None,
) -> AppRecord:
    """The record after ``event``: of the app's pool (``instance`` is ``None``) or of
    its process ``instance``.

    Args:
        record: The app's record before the event.
        event: One event of the tree, at the path of the app's pool or process.
        instance: The process the event is about; ``None`` for the pool itself.
        group_mode: Whether the root restarts failed pools (``one_for_all`` /
            ``rest_for_one``); otherwise a failed pool is given up on.
        worker, seen_at, identity: For a process's ``ChildStarted``: its
            :class:`ProcessRecord` fields of the same names (given by the caller).

    Returns:
        The new record (``record`` itself when the event changes nothing). At most
        one :class:`AppEvent` is added per event.
    """
    if instance is None:
        return _apply_pool(record, event, group_mode)
    return _apply_process(record, instance, event, worker, seen_at, identity)


def _apply_pool(record: AppRecord, event: ev.Event, group_mode: bool) -> AppRecord:
    match event:
        case ev.ChildStarted():
            # A fresh pool: its processes announce themselves from now on.
            return attrs.evolve(record, processes={})
        case ev.ChildExited() if isinstance(event.exception, SupervisorGaveUp | StartFailure):
            if group_mode:
                reason = str(event.exception)
                return remember(
                    record, AppEvent(time=event.timestamp, kind=EventKind.FAILED, reason=reason)
                )
            policy = record.config.restart_policy
            reason = (
                f"restart limit exceeded ({policy.max_restarts} restarts within {policy.window:g}s)"
            )
            if record.last_error:
                reason += f"; last: {record.last_error}"
            return give_up(record, reason, event.timestamp)
        case ev.ChildRestarting():
            return attrs.evolve(record, restarts=record.restarts + 1)
        case ev.ChildStopped():
            # Processes waiting for a restart are stopped with their pool, silently.
            return attrs.evolve(record, processes=_all_down(record))
    return record


# The transitions below run for every event of every process (a crash storm is
# a few of them per restart): records are built directly, not with
# ``attrs.evolve`` (which looks every field up by name). ``_process`` and
# ``_app_with`` name every field, and a test checks that they still do.


def _process(
    old: ProcessRecord,
    *,
    pid: int | None,
    status: AppStatus,
    restarts: int,
    ready_at: float | None,
    last_exit: str | None,
    identity: ProcessIdentity | None,
    seen_at: float | None,
    worker: WorkerSlot | None,
    health_failure: str | None,
) -> ProcessRecord:
    return ProcessRecord(
        instance=old.instance,
        pid=pid,
        status=status,
        restarts=restarts,
        ready_at=ready_at,
        last_exit=last_exit,
        identity=identity,
        seen_at=seen_at,
        worker=worker,
        health_failure=health_failure,
    )


def _app_with(
    record: AppRecord,
    processes: dict[int, ProcessRecord],
    restarts: int,
    last_error: str | None,
    note: AppEvent | None,
) -> AppRecord:
    events = record.events if note is None else _recent(record.events, note)
    return AppRecord(
        config=record.config,
        instances=record.instances,
        desired=record.desired,
        crashed=record.crashed,
        errored=record.errored,
        restarts=restarts,
        last_error=last_error,
        processes=processes,
        events=events,
    )


def _apply_process(
    record: AppRecord,
    index: int,
    event: ev.Event,
    worker: WorkerSlot | None = None,
    seen_at: float | None = None,
    identity: ProcessIdentity | None = None,
) -> AppRecord:
    old = record.processes.get(index) or ProcessRecord(instance=index)
    note: AppEvent | None = None
    restarts = record.restarts
    last_error = record.last_error
    match event:
        case ev.ChildStarted():
            new = _process(
                old,
                pid=event.pid,
                status=AppStatus.STARTING,
                restarts=old.restarts,
                ready_at=None,
                last_exit=old.last_exit,
                identity=identity,
                seen_at=seen_at,
                worker=worker,
                health_failure=None,
            )
        case ev.ChildReady():
            pid = event.pid if event.pid is not None else old.pid
            new = _process(
                old,
                pid=pid,
                status=AppStatus.ONLINE,
                restarts=old.restarts,
                ready_at=event.monotonic,
                last_exit=old.last_exit,
                identity=old.identity,
                seen_at=old.seen_at,
                worker=old.worker,
                health_failure=old.health_failure,
            )
            note = AppEvent(time=event.timestamp, kind=EventKind.ONLINE, instance=index, pid=pid)
        case ev.ChildExited():
            normal = event.exit.normal
            reason = event.exit.reason
            if old.health_failure is not None:
                reason = f"{old.health_failure}; {reason}"
            new = _process(
                old,
                pid=None,
                status=AppStatus.STOPPED if normal else AppStatus.ERRORED,
                restarts=old.restarts,
                ready_at=None,
                last_exit=reason,
                identity=None,
                seen_at=old.seen_at,
                worker=old.worker,
                health_failure=None,
            )
            if not normal:
                last_error = f"instance {index}: {reason}"
            note = AppEvent(
                time=event.timestamp,
                kind=EventKind.EXITED,
                instance=index,
                pid=event.pid,
                reason=reason,
            )
        case ev.ChildRestarting():
            # Errored until it runs again if it crashed; starting if it exited
            # normally or was stopped for a group restart.
            status = AppStatus.ERRORED if old.status is AppStatus.ERRORED else AppStatus.STARTING
            new = _process(
                old,
                pid=old.pid,
                status=status,
                restarts=old.restarts + 1,
                ready_at=old.ready_at,
                last_exit=old.last_exit,
                identity=old.identity,
                seen_at=old.seen_at,
                worker=old.worker,
                health_failure=old.health_failure,
            )
            restarts += 1
            note = AppEvent(
                time=event.timestamp, kind=EventKind.RESTARTING, instance=index, delay=event.delay
            )
        case ev.ChildStopped():
            new = _down(old)
            note = AppEvent(
                time=event.timestamp,
                kind=EventKind.STOPPED,
                instance=index,
                pid=event.pid,
                killed=event.killed,
                escaped=tuple(event.escaped),
            )
            if event.escaped:
                last_error = note.describe()
        case _:
            return record
    processes = {**record.processes, index: new}
    return _app_with(record, processes, restarts, last_error, note)
