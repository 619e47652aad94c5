"""The orchestrator: runs the ecosystem's tree and keeps the table of apps.

It owns three things: the supervision tree built by :class:`TreeBuilder`, the
live record of every app and process, and the operations the control plane
exposes (start, stop, restart, scale, reload). The records are a pure function of
the tree's events (:func:`~omnitron.daemon._records.apply`, fed synchronously by
the tree's observer, so they are right from the first event); nothing else
writes them and nothing reconciles them with the tree. It never writes files:
each change is announced through ``on_change`` and the persistence task takes a
snapshot when it is ready to write.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from supervision import (
    ChildInfo,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ChildState,
    StartFailure,
    Supervisor,
    SupervisorGaveUp,
    SupervisorNotRunning,
    run_supervisor,
)
from supervision import events as ev

from .._log import get_logger
from ..config import AppConfig, Ecosystem, EcosystemDiff, diff_ecosystems
from ..config._bootstrap import BootstrapInvalid, WorkerSlot, WorkerSystem
from ..state import AppMode, AppState, DaemonState, DesiredStatus, ProcessIdentity, ProcessState
from ._errors import AppNotFound, AppStartFailed, DaemonBusy, RequestRefused, UnsupportedApp
from ._exec import Router, describe_app
from ._health import HealthMonitor
from ._logs import LogCollector
from ._records import (
    AppEvent,
    AppRecord,
    EventKind,
    ProcessRecord,
    apply,
    give_up,
    health_failed,
    intend,
    remember,
    resource_restart,
)
from ._sockets import AppSockets, SocketsUnavailable
from ._tree import TreeBuilder, secret_references

if TYPE_CHECKING:
    from ._secrets import SecretStore

__all__ = ["AppRecord", "Orchestrator", "ProcessRecord"]

log = get_logger("omnitron.orchestrator")


_LAZY_IDENTITY = sys.platform.startswith("linux")
"""Whether a process's identity is read only when it is needed (see :func:`_child_identity`);
elsewhere it is read when the process is spawned."""


def _identity(pid: int | None) -> ProcessIdentity | None:
    """Who ``pid`` is (to tell it from a recycled pid later); ``None`` if unknowable."""
    if pid is None:
        return None
    try:
        return ProcessIdentity.of(pid)
    except (OSError, ValueError):  # gone already, or /proc unreadable (EMFILE, ...)
        return None


def _boot_clock() -> float:
    """Now, in seconds since boot: the clock of :attr:`ProcessIdentity.start_time` on Linux."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _child_identity(pid: int, seen_at: float) -> ProcessIdentity | None:
    """The identity of ``pid`` if it is still the child of this process that was
    running at ``seen_at`` (:func:`_boot_clock`); ``None`` otherwise.

    The tree publishes a child's exit only some checkpoints after it reaped it:
    meanwhile the record still holds the pid, which may already name another
    process. So the pid must still be an unreaped child of this process (the
    supervision library reaps on this thread only, so nothing is reaped between
    this check and the read, which happen with no checkpoint in between), and the
    process must have started by ``seen_at``: a child of ours that got the number
    again after the reap started later.
    """
    try:
        exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except OSError:  # ECHILD: reaped already; its number may be anyone's now
        return None
    if exited is not None:
        return None  # a zombie: it has no identity left to take
    identity = _identity(pid)
    if identity is None or identity.start_time is None or identity.start_time > seen_at:
        return None
    return identity


class BootstrapUnusable(UnsupportedApp):
    """A module-worker app cannot be started as configured: its bootstrap is
    invalid, or its workers' omnitron speaks another protocol (status ``errored``)."""


SCALE_SETTLE = 1.0
"""Seconds each instance added by ``scale`` must stay up for the scale to hold."""
SCALE_POLL = 0.02
"""Seconds between two looks at the added instances while they settle."""

LAUNCH_WINDOW = 8
"""Apps whose starts :meth:`Orchestrator._in_dependency_order` has begun and that
have not reached the tree yet, at most (see there)."""
LAUNCH_STAGGER = 0.005
"""Seconds at most that :meth:`Orchestrator._in_dependency_order` waits for the
oldest of those to reach the tree before it begins the next app's start anyway."""
_GONE = (StartFailure, ChildNotFound, SupervisorNotRunning)
"""What a call on an app's subtree raises when the app was stopped meanwhile."""


class _AppLock:
    """Holds an app's :class:`trio.Lock` for an ``async with`` block.

    The lock is made when first needed and forgotten when released with no task
    waiting for it: an idle daemon keeps no lock per app (about 0.4 KiB each with
    its parking lot).
    """

    __slots__ = ("_held", "_locks", "_name")

    def __init__(self, locks: dict[str, trio.Lock], name: str) -> None:
        self._locks = locks
        self._name = name
        self._held: trio.Lock | None = None

    async def __aenter__(self) -> None:
        lock = self._locks.get(self._name)
        if lock is None:
            lock = self._locks[self._name] = trio.Lock()
        await lock.acquire()
        self._held = lock

    async def __aexit__(self, *exc_info: object) -> None:
        lock, self._held = self._held, None
        assert lock is not None
        lock.release()
        # Released to nobody (a waiter would own it now): forget it. A later block
        # makes a new one; no task holds or waits for this one.
        if (
            not lock.locked()
            and not lock.statistics().tasks_waiting
            and self._locks.get(self._name) is lock
        ):
            del self._locks[self._name]


class Orchestrator:
    """Runs the ecosystem and answers for it.

    Commands on different apps never wait for each other: each app has its own
    lock, held by whatever starts, restarts or scales it, and ``stop`` takes none
    (it cancels a start in progress). In ``one_for_one`` mode the root supervisor
    runs from the first moment and the apps are added to it one by one, in start
    order, so the control plane can act on every app while another one starts.

    Args:
        ecosystem: The validated config in force.
        home: The daemon's home directory (a marker in children's environment).
        logs: Where the children's output goes.
        on_change: Called (synchronously) after every change worth persisting.
        on_critical: Called with a reason when a critical app is given up on.
        subreaper: Make the daemon a child subreaper (Linux).
        leaf: See :class:`TreeBuilder` (tests only).
        secrets: Where apps' ``secret:NAME`` env values are resolved.
    """

    def __init__(
        self,
        ecosystem: Ecosystem,
        *,
        home: Path,
        logs: LogCollector,
        on_change: Callable[[], None] = lambda: None,
        on_critical: Callable[[str], None] = lambda reason: None,
        subreaper: bool = True,
        leaf: Callable[[AppConfig, int], Any] | None = None,
        secrets: SecretStore | None = None,
    ) -> None:
        self.ecosystem = ecosystem
        self.home = home
        self.logs = logs
        self._on_change = on_change
        self._on_critical = on_critical
        self._subreaper = subreaper
        self._leaf = leaf
        self._secrets = secrets
        self.systems: dict[str, WorkerSystem] = {}
        """The described bootstrap of each module-worker app (described at its start)."""
        self.sockets = AppSockets()
        """The apps' listening sockets (``sockets``), bound as each app starts."""
        self._builder = TreeBuilder(
            ecosystem,
            home=home,
            sink=logs.sink,
            leaf=leaf,
            secrets=secrets,
            sockets=self.sockets.listen,
            systems=self.systems,
        )
        self.router = Router(lambda: self.apps, self.systems)
        """Carries ``exec`` calls to module-worker apps (run it in the daemon's nursery)."""
        self._group_mode = self._builder.group_mode
        self.apps: dict[str, AppRecord] = {
            app.name: AppRecord(
                config=app,
                instances=app.instances,
                desired=DesiredStatus.RUNNING if app.enabled else DesiredStatus.STOPPED,
            )
            for app in ecosystem.start_order()
        }
        self._root: Supervisor | None = None
        self._building = True  # a tree is (about to be) built: wait for its root
        self._ready = trio.Event()
        self._launched = trio.Event()
        self._restart_requested = trio.Event()
        self._locks: dict[str, trio.Lock] = {}
        self._starting: dict[str, trio.CancelScope] = {}  # starts in progress, by app
        self._reached: dict[str, trio.Event] = {}  # set once the app's start reaches the tree
        # The pool spec each app was last started with (see _pool_spec).
        self._pool_specs: dict[str, tuple[TreeBuilder, AppConfig, int, ChildSpec]] = {}
        self._shutting_down = False
        self._reloading = trio.Lock()
        # Zero-downtime reload: the child that is process ``index`` of an app now,
        # when it is not the pool's first one (a successor took over), and the
        # events of successors still starting, held until they take over.
        self._current: dict[tuple[str, int], str] = {}
        self._incoming: dict[tuple[str, ...], list[ev.Event]] = {}
        self._successors = 0
        self.started_at = time.time()
        self.health = HealthMonitor(self._stop_unhealthy)
        self._event_listeners: list[Callable[[str, AppEvent], bool]] = []
        self.stop_reason: str | None = None
        """Why the daemon stops on its own (a critical app crashed), for the state file."""

    @property
    def router_socket(self) -> Path:
        """Where workers call the services their process accesses."""
        return self._builder.router_socket

    # ------------------------------------------------------------------ records

    def _commit(self, old: AppRecord, new: AppRecord, *, note: bool) -> None:
        """Keep ``new`` in place of ``old``; then log, escalate and persist as needed."""
        if new is old:
            return
        self.apps[new.name] = new
        if new.events and (not old.events or new.events[-1] is not old.events[-1]):
            if note:
                self.logs.event(new.name, new.events[-1])
            self._publish(new.name, new.events[-1])
        if new.crashed and not old.crashed:
            self.sockets.close(new.name)  # given up on: clients are refused, not queued
        critical = new.crashed and not old.crashed and new.config.critical
        if critical and self.stop_reason is None:
            self.stop_reason = f"critical app {new.name!r} crashed: {new.last_error}"
        self._on_change()
        if critical:
            self._on_critical(f"critical app {new.name!r} crashed: {new.last_error}")

    def _update(
        self, name: str, change: Callable[[AppRecord], AppRecord], *, note: bool = False
    ) -> None:
        old = self.apps.get(name)
        if old is not None:
            self._commit(old, change(old), note=note)

    def _remember(self, name: str, kind: EventKind, **fields: Any) -> None:
        event = AppEvent(time=time.time(), kind=kind, **fields)
        self._update(name, lambda record: remember(record, event))

    def _give_up_on(self, name: str, reason: str, *, errored: bool = False) -> None:
        now = time.time()
        self._update(name, lambda record: give_up(record, reason, now, errored=errored), note=True)

    def _observe(self, event: ev.Event) -> None:
        place = self._builder.places.get(event.path)
        if place is None:
            return
        if place.instance is None and isinstance(event, ev.ChildStarted):
            # A pool starts from its spec: its processes have their first names.
            for key in [k for k in self._current if k[0] == place.app]:
                del self._current[key]
            reached = self._reached.pop(place.app, None)
            if reached is not None:
                reached.set()
        elif place.instance is not None and event.path[-1] != self._child(
            place.app, place.instance
        ):
            held = self._incoming.get(event.path)
            if held is not None:
                held.append(event)  # a successor still starting: applied if it takes over
            return  # else a process replaced by a reload: its end changes nothing
        old = self.apps.get(place.app)
        if old is None:
            return
        new = self._applied(old, event, place.instance, place.worker)
        self._commit(old, new, note=True)
        self._probe_hook(new, event, place.instance)

    def _applied(
        self,
        record: AppRecord,
        event: ev.Event,
        instance: int | None,
        worker: WorkerSlot | None = None,
    ) -> AppRecord:
        if instance is not None and isinstance(event, ev.ChildStarted):
            # Its identity is read when first needed (see identify), so a process
            # that lives a moment costs no read of /proc.
            if _LAZY_IDENTITY:
                return apply(record, event, instance, worker=worker, seen_at=_boot_clock())
            identity = _identity(event.pid)
            return apply(record, event, instance, worker=worker, identity=identity)
        return apply(record, event, instance, group_mode=self._group_mode)

    def identify(self) -> None:
        """Read the identity of every live process that has none yet (each once).

        Called before the identities are used (the state file's snapshot, a
        signal, a stop): a process read here is provably the one spawned
        (:func:`_child_identity`), never a stranger that got its pid.
        """
        if not _LAZY_IDENTITY:
            return
        for name, record in self.apps.items():
            found: dict[int, ProcessRecord] | None = None
            for index, process in record.processes.items():
                if process.identity is not None or process.pid is None:
                    continue
                if process.seen_at is None:
                    continue
                identity = _child_identity(process.pid, process.seen_at)
                if identity is not None:
                    if found is None:
                        found = dict(record.processes)
                    found[index] = attrs.evolve(process, identity=identity)
            if found is not None:
                # Not a change of state (no event, nothing to persist): the same
                # process, now known well enough to be told from a stranger.
                self.apps[name] = attrs.evolve(record, processes=found)

    # ------------------------------------------------------------------ health and events

    def _probe_hook(self, record: AppRecord, event: ev.Event, instance: int | None) -> None:
        """Probe a process from when it is ready until it exits or stops."""
        if instance is None:
            if isinstance(event, ev.ChildStopped | ev.ChildExited):
                self.health.forget(record.name)
            return
        if isinstance(event, ev.ChildReady):
            pid = record.processes[instance].pid
            if pid is not None:
                self.health.watch(record.config, instance, pid)
        elif isinstance(event, ev.ChildStarted | ev.ChildExited | ev.ChildStopped):
            self.health.unwatch(record.name, instance)

    async def _stop_unhealthy(self, name: str, instance: int, pid: int, reason: str) -> None:
        """Record the failed probe and stop the process; its supervisor restarts it
        as after any crash (counted toward the restart intensity)."""
        record = self.apps.get(name)
        process = record.processes.get(instance) if record is not None else None
        if record is None or process is None or process.pid != pid:
            return  # gone meanwhile
        log.warning("health_failed", app=name, instance=instance, pid=pid, reason=reason)
        self.identify()
        process = self.apps[name].processes[instance]
        now = time.time()
        self._update(name, lambda r: health_failed(r, instance, reason, now), note=True)
        config = record.config
        await _terminate(process.identity, config.stop_signal, config.stop_timeout)

    def subscribe(self, listener: Callable[[str, AppEvent], bool]) -> None:
        """Call ``listener(app, event)`` for every new event, synchronously, until it
        returns ``False``. It must not block (queue and return)."""
        self._event_listeners.append(listener)

    def _publish(self, name: str, event: AppEvent) -> None:
        if self._event_listeners:
            self._event_listeners = [f for f in self._event_listeners if f(name, event)]

    # ------------------------------------------------------------------ running

    def restore(self, desired: Mapping[str, DesiredStatus]) -> None:
        """Apply the persisted intent ``{app: running | stopped}``.

        The operator's run/stop choice survives a daemon restart (and a ``scale``:
        :meth:`restore_scale`); the config wins over it: an app the config
        disables stays stopped.
        """
        for name, want in desired.items():
            record = self.apps.get(name)
            if record is None or not record.config.enabled:
                continue
            self.apps[name] = attrs.evolve(record, desired=want)

    def restore_scale(self, apps: Iterable[AppState]) -> None:
        """Bring back the instance counts set by ``scale`` before the daemon stopped.

        A recorded count is used only while the config's ``instances`` is still
        the one recorded with it (``config_instances``): once the config's own
        number changed, the config wins, as a ``reload-config`` would do.
        """
        for app in apps:
            record = self.apps.get(app.name)
            if record is None or app.config_instances != record.config.instances:
                continue
            if record.config.bootstrap is not None:
                continue  # counted from its bootstrap at each start
            if app.instances != record.instances and 1 <= app.instances <= 1024:
                self.apps[app.name] = attrs.evolve(record, instances=app.instances)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the tree until cancelled; returns once apps are launched (not ready).

        ``task_status.started()`` fires at once: the tree comes up in the background,
        and operations wait for its root (``wait_ready``). A root that gives up (only
        in one_for_all / rest_for_one mode) marks its apps crashed; the daemon stays
        up and ``start`` builds a new tree.

        Cancellation: the tree stops, apps in reverse dependency order.
        """
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.health.run)
                task_status.started()
                await self._run_trees()
                nursery.cancel_scope.cancel()
        finally:
            self.sockets.close_all()  # the tree has stopped: no process uses them

    async def _run_trees(self) -> None:
        while True:
            self._building = True
            try:
                await self._run_tree()
            except SupervisorGaveUp as exc:
                self._root_gave_up(str(exc))
            except BaseExceptionGroup as group:
                gave_up, rest = group.split(SupervisorGaveUp)
                if rest is not None:
                    raise
                assert gave_up is not None
                self._root_gave_up(str(gave_up.exceptions[0]))
            finally:
                self._root = None
                self._building = False
                self._ready = trio.Event()
            # The root gave up: wait until an operator asks for something to run.
            await self._restart_requested.wait()
            self._restart_requested = trio.Event()

    def _wanted(self) -> list[str]:
        return [
            r.name
            for r in self.apps.values()
            if r.desired is DesiredStatus.RUNNING and not r.crashed
        ]

    async def _run_tree(self) -> None:
        pools: list[ChildSpec] = []
        if self._group_mode:
            # The apps form one group: the root starts them as its own children.
            for name in self._wanted():
                try:
                    await self._describe(name)
                    record = self.apps[name]
                    await self.sockets.bind(record.config)
                    pools.append(self._builder.app(record.config, record.instances))
                except UnsupportedApp as exc:
                    self._give_up_on(name, str(exc), errored=isinstance(exc, BootstrapUnusable))
        root_spec = self._builder.root(pools)
        async with trio.open_nursery() as nursery:
            root = await nursery.start(
                functools.partial(
                    run_supervisor, root_spec, subreaper=self._subreaper, observer=self._observe
                )
            )
            self._root = root
            self._ready.set()
            if not self._group_mode:
                await self._launch(root)
            self._launched.set()
            log.info("apps_started", apps=[n for n in self._wanted() if self.pool(n) is not None])

    async def _launch(self, root: Supervisor) -> None:
        """Add the apps to the root, each once the apps it depends on are ready (or
        have failed): apps that do not depend on each other start together."""

        async def launch(name: str) -> None:
            if self._shutting_down:
                return
            record = self.apps.get(name)
            if record is None or record.desired is DesiredStatus.STOPPED or record.crashed:
                return  # stopped (or removed) while the apps before it started
            with contextlib.suppress(AppStartFailed, RequestRefused):
                await self._start_one(name, launch=True)

        await self._in_dependency_order(self._wanted(), launch)

    async def _in_dependency_order(
        self, names: list[str], act: Callable[[str], Awaitable[None]]
    ) -> None:
        """Run ``act(name)`` for every name, each once ``act`` has returned for the
        names among ``names`` that it depends on; the others run together.

        The tasks are started in order, at most :data:`LAUNCH_WINDOW` of them on
        their way to the tree at a time: one leaves the window once its start has
        reached the tree (its pool's task runs; readiness is then waited for in
        parallel), while it waits for the apps it depends on, once it has ended,
        or (the oldest) after :data:`LAUNCH_STAGGER` (a step that takes longer,
        such as describing a worker app's bootstrap, runs beside the next apps'
        starts). Started all at once, each task would wait its turn in the root's
        queue: about 5 KiB each, held until the last app is ready, which a
        100-app daemon keeps as resident memory afterwards (0.4 MiB).
        """
        done = {name: trio.Event() for name in names}

        async def one(name: str, reached: trio.Event) -> None:
            try:
                record = self.apps.get(name)
                waits = [
                    done[dependency]
                    for dependency in (record.config.depends_on if record is not None else ())
                    if dependency in done and not done[dependency].is_set()
                ]
                if waits:
                    reached.set()  # the next app need not wait for these
                for dependency in waits:
                    await dependency.wait()
                self._reached[name] = reached
                await act(name)
            finally:
                if self._reached.get(name) is reached:
                    del self._reached[name]
                reached.set()
                done[name].set()

        on_the_way: list[trio.Event] = []
        async with trio.open_nursery() as nursery:
            for name in names:
                on_the_way = [e for e in on_the_way if not e.is_set()]
                if len(on_the_way) >= LAUNCH_WINDOW:
                    with trio.move_on_after(LAUNCH_STAGGER):
                        await on_the_way[0].wait()
                    del on_the_way[0]  # reached the tree, or waited for long enough
                reached = trio.Event()
                nursery.start_soon(one, name, reached)
                on_the_way.append(reached)

    def _root_gave_up(self, reason: str) -> None:
        log.error("tree_gave_up", reason=reason)
        for name in self._wanted():
            self._give_up_on(name, reason)

    async def wait_ready(self, within: float = 60.0) -> Supervisor:
        """The root handle, once the tree runs (waiting at most ``within`` s)."""
        root = self._root
        if root is not None and self._ready.is_set():
            # The usual case (every start of a ``start all``): no timeout scope.
            return root
        with trio.move_on_after(within):
            await self._ready.wait()
            assert self._root is not None
            return self._root
        raise DaemonBusy("the apps are still starting; try again in a moment")

    async def wait_launched(self, within: float = 60.0) -> None:
        """Wait until the first launch of the apps has ended (each ready or failed).

        Raises:
            DaemonBusy: Still launching after ``within`` seconds.
        """
        with trio.move_on_after(within):
            await self._launched.wait()
            return
        raise DaemonBusy("the apps are still starting")

    async def _handle(self) -> Supervisor | None:
        """The root; waits while a tree is being built; ``None`` if the tree gave up."""
        if self._root is not None:
            return self._root
        if self._building:
            return await self.wait_ready()
        return None

    # ------------------------------------------------------------------ queries

    def snapshot(self) -> DaemonState:
        """The intent and last known state of every app, for the state file."""
        self.identify()
        apps = []
        for record in self.apps.values():
            processes = tuple(
                ProcessState(
                    name=record.name,
                    instance=p.instance,
                    status=p.status,
                    pid=p.pid if p.identity is not None else None,
                    start_time=p.identity.start_time if p.identity and p.pid else None,
                    boot_id=p.identity.boot_id if p.identity and p.pid else None,
                    restarts=p.restarts,
                )
                for p in sorted(record.processes.values(), key=lambda p: p.instance)
            )
            apps.append(
                AppState(
                    name=record.name,
                    mode=AppMode(record.config.mode),
                    desired=record.desired,
                    status=record.status,
                    instances=record.instances,
                    config_instances=record.config.instances,
                    restarts=record.restarts,
                    last_error=(record.last_error or "")[:4000] or None,
                    processes=processes,
                )
            )
        reason = self.stop_reason[:4000] if self.stop_reason else None
        return DaemonState(apps=tuple(apps), stop_reason=reason)

    def record(self, name: str) -> AppRecord:
        try:
            return self.apps[name]
        except KeyError:
            raise AppNotFound(name, known=list(self.apps)) from None

    def pool(self, name: str) -> Supervisor | None:
        root = self._root
        if root is None:
            return None
        try:
            return root.child_supervisor(name)
        except ChildNotFound:
            return None

    def names(self, target: str) -> list[str]:
        """``"all"`` or one app name → app names in start order."""
        if target == "all":
            return list(self.apps)
        self.record(target)
        return [target]

    def _child(self, name: str, index: int) -> str:
        """The name, in its app's pool, of the child that is process ``index`` now."""
        return self._current.get((name, index)) or TreeBuilder.instance_name(index)

    def _lock(self, name: str) -> _AppLock:
        """``name``'s lock: one operation on an app at a time (``async with``)."""
        return _AppLock(self._locks, name)

    def _stopped(self, name: str) -> bool:
        """Whether the operator stopped (or a reload removed) ``name`` meanwhile, or
        the daemon is shutting down."""
        record = self.apps.get(name)
        return self._shutting_down or record is None or record.desired is DesiredStatus.STOPPED

    # ------------------------------------------------------------------ operations

    async def start(self, target: str) -> list[str]:
        """Start an app (and the apps it depends on) or all enabled apps."""
        names = [n for n in self.names(target) if target != "all" or self.apps[n].config.enabled]
        order = self._with_dependencies(names)
        outcomes: dict[str, bool | Exception] = {}

        async def start(name: str) -> None:
            try:
                outcomes[name] = await self._start_one(name)
            except Exception as exc:  # reported below, in start order, as it was raised
                outcomes[name] = exc

        await self._in_dependency_order(order, start)
        results = [outcomes[name] for name in order if name in outcomes]
        refused = [
            o for o in results if isinstance(o, Exception) and not isinstance(o, AppStartFailed)
        ]
        if refused:
            raise refused[0]
        started = [name for name in order if outcomes.get(name) is True]
        failed = [o for o in results if isinstance(o, AppStartFailed)]
        if failed:
            done = f" (started: {', '.join(started)})" if started else ""
            message = "; ".join(exc.message for exc in failed) + done
            raise AppStartFailed(message, app=failed[0].app)
        return started

    def _with_dependencies(self, names: Iterable[str]) -> list[str]:
        wanted: set[str] = set()

        def visit(name: str) -> None:
            if name in wanted:
                return
            wanted.add(name)
            for dep in self.apps[name].config.depends_on:
                visit(dep)

        for name in names:
            visit(name)
        return [n for n in self.apps if n in wanted]

    async def _start_one(self, name: str, *, launch: bool = False) -> bool:
        """Start one app; ``launch``: as part of the daemon's first launch, where the
        intent is already recorded (and an operator's stop meanwhile wins)."""
        async with self._lock(name):
            if name not in self.apps or (launch and self._stopped(name)):
                return False  # removed by a reload, or stopped, meanwhile
            was_crashed = self.apps[name].crashed
            self._update(name, lambda record: intend(record, DesiredStatus.RUNNING))
            if self._root is None and not self._building:
                # The whole tree had given up: it is rebuilt with this app in it.
                self._restart_requested.set()
                await self.wait_ready()
                self._remember(name, EventKind.STARTED)
                return True
            root = await self.wait_ready()
            info = _child_info(root, name)
            if info is not None and info.state in (ChildState.RUNNING, ChildState.STARTING):
                return False
            record = self.apps[name]
            spec = None
            try:
                await self.sockets.bind(record.config)
            except SocketsUnavailable as exc:
                self._give_up_on(name, str(exc))
                raise AppStartFailed(f"{name} failed to start: {exc}", app=name) from None
            if info is not None and (
                secret_references(record.config) or record.config.sockets or record.config.bootstrap
            ):
                # Secrets are read, a bootstrap described, at every start, and
                # sockets closed at every stop: a new pool, not the stopped one's
                # specs (one waiting for its restart delay is restarted as it is).
                with contextlib.suppress(ChildRunning):
                    with contextlib.suppress(ChildNotFound):
                        await root.delete_child(name)
                    info = None
            if info is None:  # not in the tree: its pool is built now (a stopped one is reused)
                try:
                    await self._describe(name)
                    record = self.apps[name]
                    spec = self._pool_spec(record)
                except UnsupportedApp as exc:
                    self._give_up_on(name, str(exc), errored=isinstance(exc, BootstrapUnusable))
                    raise RequestRefused(str(exc)) from None
            if self._stopped(name):
                return False  # stopped while this call waited for the tree
            try:
                # A stop of this app cancels the wait (see stop()).
                with trio.CancelScope() as self._starting[name]:
                    if spec is not None:
                        await root.start_child(spec)
                    else:
                        await root.restart_child(name)
            except _GONE as exc:
                if self._stopped(name):
                    return False  # stopped while it started: not a failure
                reason = exc.reason if isinstance(exc, StartFailure) else str(exc)
                self._give_up_on(name, reason)
                raise AppStartFailed(
                    f"{name} failed to start: {self.apps[name].last_error}", app=name
                ) from None
            finally:
                del self._starting[name]
            if self._stopped(name):
                # Stopped before its start reached the tree: the start was queued
                # behind the stop, so take it down again (queued behind the start).
                with contextlib.suppress(ChildNotFound, SupervisorNotRunning):
                    await root.terminate_child(name)
                return False
            if not launch or was_crashed:
                self._remember(name, EventKind.STARTED)
            return True

    def _pool_spec(self, record: AppRecord) -> ChildSpec:
        """The spec of ``record``'s pool: the one built at its last start when nothing
        it was built from has changed (the builder, the config, the instances, the
        places of its paths), else a new one.

        Apps whose start reads something anew (secrets, sockets, a bootstrap) and
        test leaves are always built anew. A stopped pool leaves the root (it is
        temporary), so ``start all`` after ``stop all`` would build every app's
        specs (environments, sinks, places) again.
        """
        config = record.config
        reusable = self._leaf is None and not (
            secret_references(config) or config.sockets or config.bootstrap
        )
        cached = self._pool_specs.get(config.name) if reusable else None
        if (
            cached is not None
            and cached[0] is self._builder
            and cached[1] is config
            and cached[2] == record.instances
            and self._has_places(config.name, record.instances)
        ):
            return cached[3]
        spec = self._builder.app(config, record.instances)
        if reusable:
            self._pool_specs[config.name] = (self._builder, config, record.instances, spec)
        return spec

    def _has_places(self, name: str, instances: int) -> bool:
        places, project = self._builder.places, self.ecosystem.project
        if (project, name) not in places:
            return False
        return all(
            (project, name, TreeBuilder.instance_name(index)) in places
            for index in range(instances)
        )

    async def _describe(self, name: str) -> None:
        """Describe app ``name``'s bootstrap (if it has one) before its pool is built:
        the file may have changed since the last start.

        Raises:
            UnsupportedApp: The bootstrap cannot run (the message has every problem,
                or the worker's protocol mismatch, naming both versions).
        """
        config = self.apps[name].config
        if config.bootstrap is None:
            return
        index = next(i for i, app in enumerate(self.ecosystem.apps) if app.name == name)
        try:
            system = await describe_app(config, index)
        except BootstrapInvalid as exc:
            raise BootstrapUnusable(f"app {name!r} cannot start: {exc}") from None
        self.systems[name] = system
        self._update(name, lambda record: attrs.evolve(record, instances=system.size))

    async def stop(self, target: str) -> list[str]:
        """Stop an app or all apps (dependents first); returns the names stopped.

        Takes no lock: a start in progress is cancelled, not waited for.
        """
        names = self.names(target)
        stopped: list[str] = []
        for name in reversed(names):
            self._update(name, lambda record: intend(record, DesiredStatus.STOPPED))
            starting = self._starting.get(name)
            if starting is not None:
                starting.cancel()  # its starter takes down whatever it started
            root = await self._handle()
            if root is not None:
                try:
                    await root.terminate_child(name)
                except ChildNotFound:
                    if starting is not None:
                        stopped.append(name)  # its start had not reached the tree yet
                else:
                    stopped.append(name)
            if self._stopped(name):  # (not started again meanwhile)
                self.sockets.close(name)
            self._remember(name, EventKind.STOPPED)
        return stopped

    async def restart(self, target: str) -> list[str]:
        """Restart running apps instance by instance; start stopped ones."""
        return await self._each_pool(target, self._restart_pool)

    async def _each_pool(
        self, target: str, act: Callable[[str, Supervisor], Awaitable[bool]]
    ) -> list[str]:
        """``act(name, pool)`` on each running app of ``target``; a stopped app named
        explicitly is started (``"all"`` skips apps stopped on purpose). Returns the
        names acted on (or started)."""
        names = self.names(target)
        done: list[str] = []
        await self.wait_ready()  # the tree must exist to find the pools
        for name in names:
            record = self.apps.get(name)
            if record is None:
                continue
            pool = self.pool(name)
            if pool is None:
                if target == "all" and record.desired is DesiredStatus.STOPPED:
                    continue
                if await self._start_one(name):
                    done.append(name)
                continue
            if await act(name, pool):
                done.append(name)
        return done

    async def _restart_pool(self, name: str, pool: Supervisor) -> bool:
        async with self._lock(name):
            fresh = bool(secret_references(self.apps[name].config))
            for index in range(self.apps[name].instances):
                try:
                    if fresh:  # secrets are read at every start: a new spec
                        await self._replace_instance(name, pool, index)
                    else:
                        await pool.restart_child(self._child(name, index))
                except _GONE as exc:
                    if self._stopped(name) or not isinstance(exc, StartFailure):
                        return False  # stopped (or scaled down) meanwhile
                    # Stop the rolling restart here: the other instances keep
                    # running the old code; this one is retried per the policy.
                    error = f"instance {index}: {exc.reason}"
                    self._update(name, functools.partial(attrs.evolve, last_error=error))
                    self._remember(
                        name, EventKind.RESTART_FAILED, instance=index, reason=exc.reason
                    )
                    raise AppStartFailed(
                        f"{name}: instance {index} failed to restart ({exc.reason}); "
                        "the remaining instances were left running",
                        app=name,
                    ) from None
            self._remember(name, EventKind.RESTARTED)
            return True

    async def restart_process(
        self, name: str, index: int, reason: str, *, pid: int | None = None
    ) -> bool:
        """Restart process ``index`` of ``name`` gracefully because of its resources
        (``reason``, e.g. ``memory 530MB > 512MB``): counted and recorded.

        Returns whether it was restarted: not when the app was stopped meanwhile, nor
        when the process is no longer ``pid`` (restarted meanwhile).
        """
        async with self._lock(name):
            pool = self.pool(name)
            record = self.apps.get(name)
            if pool is None or record is None or self._stopped(name):
                return False
            process = record.processes.get(index)
            if process is None or index >= record.instances:
                return False
            if pid is not None and process.pid != pid:
                return False
            log.warning("resource_restart", app=name, instance=index, reason=reason)
            self._update(
                name,
                functools.partial(
                    resource_restart,
                    index=index,
                    kind=EventKind.MEMORY_RESTART,
                    reason=reason,
                    time=time.time(),
                ),
                note=True,
            )
            try:
                await pool.restart_child(self._child(name, index))
            except _GONE:
                return False
            return True

    async def _replace_instance(self, name: str, pool: Supervisor, index: int) -> None:
        """Restart process ``index`` of app ``name`` from a newly built spec.

        Raises:
            SecretsUnavailable: Its secrets cannot be resolved (it keeps running).
            StartFailure: The new process did not come up.
        """
        spec = self._builder.instance(self.apps[name].config, index)
        running = self._child(name, index)
        await pool.terminate_child(running)
        await pool.delete_child(running)
        self._current.pop((name, index), None)
        await pool.start_child(spec)

    async def scale(self, name: str, instances: int) -> int:
        """Set the number of processes of an app; returns the previous number.

        New instances are started one at a time, each ready before the next, and
        must then stay up for :data:`SCALE_SETTLE` seconds. If one does not (it
        fails to start, or exits: a port already bound by instance 0), every
        instance this call added is stopped and removed, the count goes back to
        the previous one, and :class:`AppStartFailed` says why; the instances
        that ran before are not touched.
        """
        if not 1 <= instances <= 1024:
            raise RequestRefused(f"instances must be within 1..1024, got {instances}")
        if self.record(name).config.bootstrap is not None:
            raise RequestRefused(
                f"{name} is a module-worker app: `scale` sets one count for the whole app, "
                "but each of its processes has its own (Process(..., instances=N) in its "
                f"bootstrap); change that, then `omnitron reload {name}` applies it with no "
                "downtime"
            )
        async with self._lock(name):
            record = self.record(name)
            previous = record.instances
            if previous == instances and self.pool(name) is not None:
                return previous
            self._update(name, lambda r: attrs.evolve(r, instances=instances))
            pool = self.pool(name)
            if pool is None:
                return previous
            added = 0
            try:
                for index in range(previous, instances):
                    await pool.start_child(self._builder.instance(record.config, index))
                    added += 1
                failure = await self._new_instance_exit(name, range(previous, instances))
                for index in reversed(range(instances, previous)):
                    await self._remove_instance(name, pool, index)
            except _GONE as exc:
                if self._stopped(name) or not isinstance(exc, StartFailure):
                    return previous  # stopped meanwhile: the number is recorded
                failure = (previous + added, exc.reason)
            if failure is not None:
                index, reason = failure
                for added_index in reversed(range(previous, max(index + 1, previous + added))):
                    with contextlib.suppress(*_GONE):
                        await self._remove_instance(name, pool, added_index)
                    # Also the record of one that never joined the pool.
                    self._update(name, functools.partial(_without_process, index=added_index))
                self._update(name, lambda r: attrs.evolve(r, instances=previous))
                self._remember(name, EventKind.RESTART_FAILED, instance=index, reason=reason)
                raise AppStartFailed(
                    f"{name}: instance {index} failed to start ({reason}); the scale was "
                    f"undone: the app runs its {previous} instance{'s' if previous != 1 else ''}",
                    app=name,
                )
            self._remember(name, EventKind.SCALED, previous=previous, instances=instances)
        return previous

    async def _remove_instance(self, name: str, pool: Supervisor, index: int) -> None:
        child = self._child(name, index)
        await pool.terminate_child(child)
        with contextlib.suppress(ChildNotFound):
            await pool.delete_child(child)
        self._current.pop((name, index), None)
        self._update(name, functools.partial(_without_process, index=index))

    async def _new_instance_exit(self, name: str, indexes: range) -> tuple[int, str] | None:
        """``(instance, how it ended)`` for the first of ``indexes`` that exits within
        :data:`SCALE_SETTLE` seconds, or ``None`` once they have all stayed up."""
        if not indexes:
            return None
        with trio.move_on_after(SCALE_SETTLE):
            while True:
                record = self.apps.get(name)
                if record is None:
                    return None
                for index in indexes:
                    process = record.processes.get(index)
                    if process is not None and (process.last_exit or process.restarts):
                        return index, process.last_exit or "exited"
                await trio.sleep(SCALE_POLL)
        return None

    async def reload(self, target: str) -> list[str]:
        """Replace the processes of an app (or of all running apps) with zero downtime.

        Each process is replaced in turn by a new one started beside it, from a
        newly built spec (the config in force, secrets read again); only once the
        new one is ready is the old one stopped, gracefully. So a pool of N keeps
        N ready processes throughout (N + 1 for a moment), and a single process
        keeps serving until its successor is ready. With ``sockets`` in the
        config, old and new processes accept on the same daemon-owned sockets.

        A stopped app named explicitly is started; ``"all"`` skips stopped apps.

        Returns:
            The names reloaded (or started).

        Raises:
            AppStartFailed: A new process did not become ready (it exited, or
                missed ``startup_timeout``): that reload stops there, the process
                it was to replace and every later one keep running untouched.
        """
        return await self._each_pool(target, self._reload_pool)

    async def reload_processes(self, name: str, indexes: Iterable[int]) -> list[int]:
        """Replace only processes ``indexes`` of app ``name``, as :meth:`reload` does
        (each successor ready before its predecessor stops); the others run on.

        Hot reload of a module-worker app uses it for the workers that import a
        changed module. An app not running is left alone.

        Returns:
            The indexes replaced.

        Raises:
            AppStartFailed: A new process did not become ready (that one and the
                later ones keep their old process).
        """
        self.record(name)
        await self.wait_ready()
        pool = self.pool(name)
        replaced: list[int] = []
        if pool is None:
            return replaced
        async with self._lock(name):
            for index in sorted(set(indexes)):
                if index >= self.apps[name].instances:
                    continue  # scaled down meanwhile
                if self._stopped(name) or not await self._succeed(name, pool, index):
                    break  # stopped (or removed) meanwhile
                replaced.append(index)
            if replaced:
                self._remember(name, EventKind.RELOADED)
        return replaced

    async def _reload_pool(self, name: str, pool: Supervisor) -> bool:
        async with self._lock(name):
            if self.apps[name].config.bootstrap is not None:
                return await self._reload_workers(name, pool)
            for index in range(self.apps[name].instances):
                if self._stopped(name) or not await self._succeed(name, pool, index):
                    return False  # stopped (or removed) meanwhile
            self._remember(name, EventKind.RELOADED)
            return True

    async def _reload_workers(self, name: str, pool: Supervisor) -> bool:
        """Reload a module-worker app from its bootstrap described again: workers
        added to the process list start first (beside the running ones), then each
        running index is replaced by the worker it now stands for, then the workers
        beyond the new count stop. No process entry loses its last worker meanwhile.

        Raises:
            AppStartFailed: The bootstrap cannot run now, or an added worker did not
                become ready (nothing was changed: the running workers were kept), or
                a successor did not (as :meth:`_succeed`).
        """
        config = self.apps[name].config
        index = next(i for i, app in enumerate(self.ecosystem.apps) if app.name == name)
        try:
            system = await describe_app(config, index)
        except BootstrapInvalid as exc:
            raise AppStartFailed(
                f"{name}: not reloaded, the running workers were kept: {exc}", app=name
            ) from None
        old_system, previous = self.systems.get(name), self.apps[name].instances
        self.systems[name] = system
        self._update(name, lambda r: attrs.evolve(r, instances=system.size))
        added = previous
        try:
            for added in range(previous, system.size):
                # A generation of its own: the worker it stands for may still run
                # at another index (on that slot's socket) until it is replaced.
                self._successors += 1
                child = TreeBuilder.successor_name(added, self._successors)
                self._current[(name, added)] = child
                await pool.start_child(self._builder.instance(config, added, child=child))
        except _GONE as exc:
            for undo in reversed(range(previous, added + 1)):
                with contextlib.suppress(*_GONE):
                    await self._remove_instance(name, pool, undo)
                self._update(name, functools.partial(_without_process, index=undo))
            if old_system is not None:
                self.systems[name] = old_system
            self._update(name, lambda r: attrs.evolve(r, instances=previous))
            if self._stopped(name) or not isinstance(exc, StartFailure):
                return False
            self._remember(name, EventKind.RELOAD_FAILED, instance=added, reason=exc.reason)
            raise AppStartFailed(
                f"{name}: the new worker {added} did not become ready ({exc.reason}); "
                "not reloaded, the running workers were kept",
                app=name,
            ) from None
        for replaced in range(min(previous, system.size)):
            if self._stopped(name) or not await self._succeed(name, pool, replaced):
                return False
        for extra in reversed(range(system.size, previous)):
            with contextlib.suppress(*_GONE):
                await self._remove_instance(name, pool, extra)
        self._remember(name, EventKind.RELOADED)
        return True

    async def _succeed(self, name: str, pool: Supervisor, index: int) -> bool:
        """Start a successor of process ``index`` beside it; once it is ready, it
        becomes process ``index`` and the old one is stopped.

        Until the switch, the successor's events are held (the records still show
        the old process); at the switch they are applied in order, and from then
        on nothing the old process does changes the records (its stop, a late
        exit: PL-10), since its name is no longer the instance's.

        Returns:
            ``False`` when the app was stopped meanwhile.

        Raises:
            AppStartFailed: The successor did not become ready (the old one stays).
        """
        self._successors += 1
        successor = TreeBuilder.successor_name(index, self._successors)
        spec = self._builder.instance(self.apps[name].config, index, child=successor)
        path = (*pool.path, successor)
        self._incoming[path] = []
        try:
            await pool.start_child(spec)
        except _GONE as exc:
            self._incoming.pop(path, None)
            self._builder.places.pop(path, None)
            if self._stopped(name) or not isinstance(exc, StartFailure):
                return False
            reason = exc.reason
            error = f"instance {index}: reload: {reason}"
            self._update(name, functools.partial(attrs.evolve, last_error=error))
            self._remember(name, EventKind.RELOAD_FAILED, instance=index, reason=reason)
            raise AppStartFailed(
                f"{name}: the new instance {index} did not become ready ({reason}); the "
                "reload stopped there: the running instances were kept and keep serving",
                app=name,
            ) from None
        except BaseException:
            # Cancelled while it started: take it down, the old one stays.
            self._incoming.pop(path, None)
            with trio.CancelScope(shield=True), contextlib.suppress(*_GONE):
                await pool.terminate_child(successor)
            raise
        predecessor = self._child(name, index)
        previous = self.apps[name].processes.get(index)
        # The switch: the successor's events so far are applied at once (the
        # records go from the old process online to the new one online).
        self._current[(name, index)] = successor
        old = new = self.apps[name]
        place = self._builder.places.get(path)
        held = self._incoming.pop(path)
        for event in held:
            new = self._applied(new, event, index, place.worker if place else None)
        self._commit(old, new, note=True)
        for event in held:  # health probes follow the successor from now on
            self._probe_hook(new, event, index)
        if previous is not None and previous.pid is not None and previous.worker is not None:
            # exec calls go to the successor from now on; those the old worker is
            # running end before it is stopped.
            await self.router.drain(name, index, previous.pid, within=new.config.stop_timeout)
        with contextlib.suppress(ChildNotFound):
            await pool.terminate_child(predecessor)
            await pool.delete_child(predecessor)
        if predecessor != TreeBuilder.instance_name(index):
            self._builder.places.pop((*pool.path, predecessor), None)
        return True

    def reset(self, target: str) -> list[str]:
        """Set the restart counters of an app (or all apps) and its processes to zero.

        Only the counters shown (``RESTARTS``, ``restarts``) are reset: the restart
        policy's own window of recent restarts is the supervisor's, and stays.
        """
        names = self.names(target)
        for name in names:
            self._update(name, _without_restarts)
            self.logs.note(name, "restart counters reset by the operator")
        return names

    def signal(self, target: str, signum: int) -> dict[str, list[int]]:
        """Send ``signum`` to every running process of an app (or all apps).

        Only a process that is still the one started (pid, start time and boot
        match) is signalled, never a stranger that got a recycled pid.

        Returns:
            ``{app: [pids signalled]}``, an empty list for an app with none running.
        """
        sent: dict[str, list[int]] = {}
        names = self.names(target)
        self.identify()
        for name in names:
            pids = sent[name] = []
            for process in sorted(self.apps[name].processes.values(), key=lambda p: p.instance):
                identity = process.identity
                if process.pid is None or identity is None or not identity.is_running():
                    continue
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    continue  # it exited meanwhile
                pids.append(process.pid)
            if pids:
                text = ", ".join(map(str, pids))
                self.logs.note(name, f"signal {signum} sent by the operator to pid {text}")
        return sent

    async def stop_everything(self) -> None:
        """Stop all apps, dependents first (daemon shutdown).

        Nothing is launched afterwards, and a start cut short by it is no failure.
        """
        self._shutting_down = True
        for scope in self._starting.values():
            scope.cancel()
        root = self._root
        if root is None:
            return
        in_tree = {info.name for info in root.which_children()}
        for name in reversed([n for n in self.apps if n in in_tree]):
            with contextlib.suppress(ChildNotFound):
                await root.terminate_child(name)

    # ------------------------------------------------------------------ reload

    def plan_reload(self, new: Ecosystem) -> EcosystemDiff:
        """What :meth:`apply_reload` would change."""
        return diff_ecosystems(self.ecosystem, new)

    async def apply_reload(self, new: Ecosystem) -> EcosystemDiff:
        """Start added apps, stop removed ones, restart changed ones; leave the rest.

        One reload at a time; commands on apps go on meanwhile.
        """
        async with self._reloading:
            return await self._apply_reload(new)

    async def _delete(self, name: str) -> None:
        root = self._root
        if root is not None:
            with contextlib.suppress(ChildNotFound):
                await root.delete_child(name)

    async def _apply_reload(self, new: Ecosystem) -> EcosystemDiff:
        diff = diff_ecosystems(self.ecosystem, new)
        frozen = [s for s in diff.settings if s.path.split(".")[0] in {"project", "supervision"}]
        if frozen:
            raise RequestRefused(
                "these settings take effect only when the daemon restarts (omnitron down; "
                "omnitron up): " + ", ".join(str(s) for s in frozen)
            )
        for app in diff.removed:
            if app.name in self.apps:
                await self.stop(app.name)
                async with self._lock(app.name):
                    await self._delete(app.name)
                    del self.apps[app.name]
        self.ecosystem = new
        self._builder = TreeBuilder(
            new,
            home=self.home,
            sink=self.logs.sink,
            places=self._builder.places,
            leaf=self._leaf,
            secrets=self._secrets,
            sockets=self.sockets.listen,
            systems=self.systems,
        )
        # A change of ``watch`` only is the watcher's business: the app runs on.
        changed = [c.name for c in diff.changed if not c.only("watch")]
        apps: dict[str, AppRecord] = {}
        for app in new.start_order():  # the records in the new start order
            record = self.apps.get(app.name)
            if record is None:
                apps[app.name] = AppRecord(config=app, instances=app.instances)
            elif app.name in changed:
                apps[app.name] = attrs.evolve(record, config=app, instances=app.instances)
            else:
                apps[app.name] = attrs.evolve(record, config=app)
        self.apps = apps
        for name in changed:
            record = self.apps[name]
            if not record.config.enabled:
                await self.stop(name)
            elif record.desired is DesiredStatus.RUNNING:
                await self.stop(name)
                async with self._lock(name):
                    await self._delete(name)
                await self.start(name)
        for app in diff.added:
            if self.apps[app.name].config.enabled:
                await self.start(app.name)
        self._on_change()
        return diff


def _child_info(root: Supervisor, name: str) -> ChildInfo | None:
    """Child ``name`` of the root, if it has one.

    Looked up by spec first, which builds nothing: at launch no app is in the tree
    yet, and a listing of every child for each of N starts costs N² records.
    """
    try:
        root.child_spec(name)
    except ChildNotFound:
        return None
    return next((info for info in root.which_children() if info.name == name), None)


async def _terminate(
    identity: ProcessIdentity | None, stop_signal: signal.Signals, stop_timeout: float
) -> None:
    """Send ``stop_signal`` to the process ``identity`` names, then SIGKILL after
    ``stop_timeout`` seconds if it still runs. Through a pidfd checked against the
    identity first, so a recycled pid is never signalled; a process gone is done."""
    if identity is None:
        return
    try:
        fd = os.pidfd_open(identity.pid)
    except OSError:
        return  # gone already
    try:
        if not identity.is_running():
            return
        try:
            signal.pidfd_send_signal(fd, stop_signal)
        except ProcessLookupError:
            return
        with trio.move_on_after(stop_timeout):
            await trio.lowlevel.wait_readable(fd)  # readable once it has exited
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)


def _without_restarts(record: AppRecord) -> AppRecord:
    processes = {i: attrs.evolve(p, restarts=0) for i, p in record.processes.items()}
    return attrs.evolve(record, restarts=0, processes=processes)


def _without_process(record: AppRecord, *, index: int) -> AppRecord:
    processes = {i: p for i, p in record.processes.items() if i != index}
    return attrs.evolve(record, processes=processes)
