"""The orchestrator: runs the ecosystem's tree and keeps the table of apps.

It owns three things: the supervision tree built by :class:`TreeBuilder`, the
live record of every app and process (fed synchronously by the tree's event
observer, so it is right from the first event), and the operations the control
plane exposes (start, stop, restart, scale, reload). It never writes files: each
change is announced through ``on_change`` and the persistence task decides when
to write.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import structlog
import trio

from supervision import (
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ChildState,
    StartFailure,
    Supervisor,
    SupervisorGaveUp,
    run_supervisor,
)
from supervision import events as ev

from ..config import AppConfig, Ecosystem, EcosystemDiff, diff_ecosystems
from ..state import (
    AppMode,
    AppState,
    AppStatus,
    DaemonState,
    DesiredStatus,
    ProcessIdentity,
    ProcessState,
)
from ._errors import AppNotFound, AppStartFailed, DaemonBusy, RequestRefused, UnsupportedApp
from ._logs import LogCollector
from ._tree import TreeBuilder, secret_references

if TYPE_CHECKING:
    from ._secrets import SecretStore

__all__ = ["AppRecord", "Orchestrator", "ProcessRecord"]

log = structlog.get_logger("omnitron.orchestrator")


@attrs.define
class ProcessRecord:
    """One process of an app, as last seen."""

    instance: int
    pid: int | None = None
    status: AppStatus = AppStatus.STARTING
    restarts: int = 0
    ready_at: float | None = None  # Trio's clock (monotonic), for uptime
    last_exit: str | None = None
    identity: ProcessIdentity | None = None


@attrs.define
class AppRecord:
    """An app's live state.

    Attributes:
        desired: ``"running"`` or ``"stopped"``: the operator's intent (persisted).
        crashed: It exceeded its restart limit (or cannot run) and was given up on.
    """

    config: AppConfig
    instances: int
    desired: str = "running"
    crashed: bool = False
    restarts: int = 0
    last_error: str | None = None
    processes: dict[int, ProcessRecord] = attrs.field(factory=dict)
    events: list[str] = attrs.field(factory=list)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def status(self) -> AppStatus:
        if self.crashed:
            return AppStatus.CRASHED
        if not self.processes:
            return AppStatus.STOPPED if self.desired == "stopped" else AppStatus.STARTING
        statuses = {p.status for p in self.processes.values()}
        for status in (
            AppStatus.ERRORED,
            AppStatus.STARTING,
            AppStatus.STOPPING,
        ):
            if status in statuses:
                return status
        if statuses == {AppStatus.STOPPED}:
            return AppStatus.STOPPED
        online = sum(1 for p in self.processes.values() if p.status is AppStatus.ONLINE)
        if self.desired == "running" and online < self.instances:
            return AppStatus.STARTING  # some instances are not even spawned yet
        return AppStatus.ONLINE

    def remember(self, line: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {line}")
        del self.events[:-50]


def _identity(pid: int | None) -> ProcessIdentity | None:
    """Who ``pid`` is (to tell it from a recycled pid later); ``None`` if unknowable."""
    if pid is None:
        return None
    try:
        return ProcessIdentity.of(pid)
    except (OSError, ValueError):  # gone already, or /proc unreadable (EMFILE, ...)
        return None


_STATE_STATUS = {
    ChildState.STARTING: AppStatus.STARTING,
    ChildState.RUNNING: AppStatus.ONLINE,
    ChildState.RESTARTING: AppStatus.ERRORED,
    ChildState.STOPPING: AppStatus.STOPPING,
    ChildState.STOPPED: AppStatus.STOPPED,
    ChildState.EXITED: AppStatus.STOPPED,
}


class Orchestrator:
    """Runs the ecosystem and answers for it.

    Args:
        ecosystem: The validated config in force.
        home: The daemon's home directory (a marker in children's environment).
        logs: Where the children's output goes.
        on_change: Called (synchronously) after every change worth persisting.
        on_critical: Called with a reason when a critical app is given up on.
        subreaper: Make the daemon a child subreaper (Linux).
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
        secrets: SecretStore | None = None,
    ) -> None:
        self.ecosystem = ecosystem
        self.home = home
        self.logs = logs
        self._on_change = on_change
        self._on_critical = on_critical
        self._subreaper = subreaper
        self._secrets = secrets
        self._builder = TreeBuilder(ecosystem, home=home, sink=logs.sink, secrets=secrets)
        self.apps: dict[str, AppRecord] = {
            app.name: AppRecord(config=app, instances=app.instances)
            for app in ecosystem.start_order()
        }
        self._root: Supervisor | None = None
        for record in self.apps.values():
            if not record.config.enabled:
                record.desired = "stopped"
        self._ready = trio.Event()
        self._restart_requested = trio.Event()
        self._lock = trio.Lock()
        self.started_at = time.time()

    # ------------------------------------------------------------------ running

    def restore(self, desired: dict[str, str]) -> None:
        """Apply the persisted intent ``{app: "running" | "stopped"}``.

        Only the operator's run/stop choice survives a daemon restart; everything
        else (instances included) comes from the config, which wins: an app the
        config disables stays stopped, and a ``scale`` lasts until the daemon stops.
        """
        for name, want in desired.items():
            record = self.apps.get(name)
            if record is None or not record.config.enabled:
                continue
            record.desired = "stopped" if want == "stopped" else "running"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the tree until cancelled; returns once apps are launched (not ready).

        ``task_status.started()`` fires at once: the tree comes up in the background,
        and operations wait for it (``wait_ready``). A root that gives up (only in
        one_for_all / rest_for_one mode) marks its apps crashed; the daemon stays up
        and ``start`` builds a new tree.

        Cancellation: the tree stops, apps in reverse dependency order.
        """
        task_status.started()
        while True:
            apps = []
            for record in self.apps.values():
                if record.desired == "running" and not record.crashed:
                    apps.append(record)
            pools: list[ChildSpec] = []
            for record in apps:
                try:
                    pools.append(self._builder.app(record.config, record.instances))
                except UnsupportedApp as exc:
                    self._give_up_on(record, str(exc))
            root = self._builder.root(pools)
            try:
                async with trio.open_nursery() as nursery:
                    self._root = await nursery.start(
                        functools.partial(
                            run_supervisor,
                            root,
                            subreaper=self._subreaper,
                            observer=self._observe,
                        )
                    )
                    self._ready.set()
                    log.info("apps_started", apps=[a.name for a in apps])
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
                self._ready = trio.Event()
            # The root gave up: wait until an operator asks for something to run.
            await self._restart_requested.wait()
            self._restart_requested = trio.Event()

    def _root_gave_up(self, reason: str) -> None:
        log.error("tree_gave_up", reason=reason)
        for record in self.apps.values():
            if record.desired == "running" and not record.crashed:
                self._give_up_on(record, reason)

    def _give_up_on(self, record: AppRecord, reason: str) -> None:
        if record.crashed:
            return
        record.crashed = True
        record.last_error = reason
        for process in record.processes.values():
            process.status = AppStatus.STOPPED
            process.pid = None
        record.remember(f"crashed: {reason}")
        self.logs.note(record.name, f"app crashed: {reason}")
        self._on_change()
        if record.config.critical:
            self._on_critical(f"critical app {record.name!r} crashed: {reason}")

    async def wait_ready(self, within: float = 60.0) -> Supervisor:
        """The root handle, once the tree has started (waiting at most ``within`` s)."""
        with trio.move_on_after(within):
            await self._ready.wait()
            assert self._root is not None
            return self._root
        raise DaemonBusy("the apps are still starting; try again in a moment")

    # ------------------------------------------------------------------ events

    def _observe(self, event: ev.Event) -> None:
        path = event.path
        if len(path) == 2:
            self._observe_app(path[1], event)
        elif len(path) == 3:
            self._observe_process(path[1], path[2], event)

    def _observe_app(self, name: str, event: ev.Event) -> None:
        record = self.apps.get(name)
        if record is None:
            return
        if isinstance(event, ev.ChildExited) and isinstance(
            event.exception, SupervisorGaveUp | StartFailure
        ):
            # The pool exceeded its restart limit. In one_for_one mode it is removed
            # from the tree; in group mode the root restarts it per its strategy.
            if not self._builder.group_mode:
                policy = record.config.restart_policy
                reason = (
                    f"restart limit exceeded ({policy.max_restarts} restarts within "
                    f"{policy.window:g}s)"
                )
                if record.last_error:
                    reason += f"; last: {record.last_error}"
                self._give_up_on(record, reason)
            else:
                record.remember(f"app failed: {event.exit.reason}")
                self._on_change()
        elif isinstance(event, ev.ChildRestarting):
            record.restarts += 1
            self._on_change()

    def _observe_process(self, name: str, instance: str, event: ev.Event) -> None:
        record = self.apps.get(name)
        if record is None or not instance.isdigit():
            return
        index = int(instance)
        process = record.processes.setdefault(index, ProcessRecord(instance=index))
        match event:
            case ev.ChildStarted():
                process.pid = event.pid
                process.identity = _identity(event.pid)
                process.status = AppStatus.STARTING
            case ev.ChildReady():
                process.pid = event.pid
                process.status = AppStatus.ONLINE
                process.ready_at = event.monotonic
                record.remember(f"instance {index} online (pid {event.pid})")
                self.logs.note(name, f"instance {index} online (pid {event.pid})")
            case ev.ChildExited():
                process.pid = None
                process.ready_at = None
                process.status = AppStatus.ERRORED if not event.exit.normal else AppStatus.STOPPED
                process.last_exit = event.exit.reason
                if not event.exit.normal:
                    record.last_error = f"instance {index}: {event.exit.reason}"
                record.remember(f"instance {index} {event.exit.reason}")
                self.logs.note(name, f"instance {index} {event.exit.reason}")
            case ev.ChildRestarting():
                process.restarts += 1
                record.restarts += 1
                process.status = AppStatus.ERRORED if process.last_exit else AppStatus.STARTING
                self.logs.note(name, f"instance {index} restarting in {event.delay:g}s")
            case ev.ChildStopped():
                process.pid = None
                process.ready_at = None
                process.status = AppStatus.STOPPED
                note = f"instance {index} stopped"
                if event.killed:
                    note += " (killed after stop timeout)"
                if event.escaped:
                    note += f"; escaped: {list(event.escaped)}"
                    record.last_error = note
                record.remember(note)
                self.logs.note(name, note)
            case _:
                return
        self._on_change()

    # ------------------------------------------------------------------ queries

    def snapshot(self) -> DaemonState:
        """The intent and last known state of every app, for the state file."""
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
                    desired=DesiredStatus(record.desired),
                    status=record.status,
                    instances=record.instances,
                    restarts=record.restarts,
                    last_error=(record.last_error or "")[:4000] or None,
                    processes=processes,
                )
            )
        return DaemonState(apps=tuple(apps))

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

    def refresh(self) -> None:
        """Reconcile process records with the tree (pids, states, instance set)."""
        if self._root is None:
            return  # starting (or given up): the event records are all there is
        for record in self.apps.values():
            pool = self.pool(record.name)
            if pool is None:
                if not record.crashed:
                    for process in record.processes.values():
                        process.status = AppStatus.STOPPED
                        process.pid = None
                continue
            seen = set()
            for info in pool.which_children():
                if not info.name.isdigit():
                    continue
                index = int(info.name)
                seen.add(index)
                process = record.processes.setdefault(index, ProcessRecord(instance=index))
                process.pid = info.pid
                process.status = _STATE_STATUS[info.state]
                process.restarts = info.restarts
            for index in list(record.processes):
                if index not in seen:
                    del record.processes[index]

    def names(self, target: str) -> list[str]:
        """``"all"`` or one app name → app names in start order."""
        if target == "all":
            return list(self.apps)
        self.record(target)
        return [target]

    # ------------------------------------------------------------------ operations

    async def start(self, target: str) -> list[str]:
        """Start an app (and the apps it depends on) or all enabled apps."""
        names = [n for n in self.names(target) if target != "all" or self.apps[n].config.enabled]
        started: list[str] = []
        failed: list[str] = []
        async with self._lock:
            for name in self._with_dependencies(names):
                try:
                    if await self._start_one(name):
                        started.append(name)
                except AppStartFailed as exc:
                    failed.append(exc.message)
        if failed:
            done = f" (started: {', '.join(started)})" if started else ""
            raise AppStartFailed("; ".join(failed) + done)
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

    async def _start_one(self, name: str) -> bool:
        record = self.apps[name]
        record.desired = "running"
        was_crashed, record.crashed = record.crashed, False
        self._on_change()
        if self._root is None and was_crashed:
            # The whole tree had given up: it is rebuilt with this app in it.
            self._restart_requested.set()
            await self.wait_ready()
            record.remember("started")
            return True
        root = await self.wait_ready()
        names = {info.name: info for info in root.which_children()}
        info = names.get(name)
        if info is not None and info.state in (ChildState.RUNNING, ChildState.STARTING):
            return False
        spec = None
        if info is not None and secret_references(record.config):
            # Secrets are read at every start: a new pool, not the stopped one's specs
            # (one waiting for its restart delay is restarted as it is).
            with contextlib.suppress(ChildRunning):
                with contextlib.suppress(ChildNotFound):
                    await root.delete_child(name)
                info = None
        if info is None:  # not in the tree: its pool is built now (a stopped one is reused)
            try:
                spec = self._builder.app(record.config, record.instances)
            except UnsupportedApp as exc:
                self._give_up_on(record, str(exc))
                raise RequestRefused(str(exc)) from None
        record.last_error = None if was_crashed else record.last_error
        try:
            if spec is not None:
                await root.start_child(spec)
            else:
                await root.restart_child(name)
        except StartFailure as exc:
            self._give_up_on(record, exc.reason)
            raise AppStartFailed(f"{name} failed to start: {record.last_error}") from None
        record.remember("started")
        return True

    async def stop(self, target: str) -> list[str]:
        """Stop an app or all apps (dependents first); returns the names stopped."""
        names = self.names(target)
        stopped: list[str] = []
        async with self._lock:
            root = self._root
            for name in reversed(names):
                record = self.apps[name]
                record.desired = "stopped"
                record.crashed = False
                if root is not None:
                    try:
                        await root.terminate_child(name)
                    except ChildNotFound:
                        pass  # not in the tree: nothing runs
                    else:
                        stopped.append(name)
                record.remember("stopped")
                self._on_change()
        self.refresh()
        return stopped

    async def restart(self, target: str) -> list[str]:
        """Restart running apps instance by instance; start stopped ones."""
        names = self.names(target)
        restarted: list[str] = []
        async with self._lock:
            await self.wait_ready()  # the tree must exist to find the pools
            for name in names:
                record = self.apps[name]
                pool = self.pool(name)
                if pool is None:
                    if target == "all" and record.desired == "stopped":
                        continue
                    if await self._start_one(name):
                        restarted.append(name)
                    continue
                fresh = bool(secret_references(record.config))
                for info in pool.which_children():
                    try:
                        if fresh:  # secrets are read at every start: a new spec
                            await self._replace_instance(pool, record, info.name)
                        else:
                            await pool.restart_child(info.name)
                    except StartFailure as exc:
                        # Stop the rolling restart here: the other instances keep
                        # running the old code; this one is retried per the policy.
                        record.last_error = f"instance {info.name}: {exc.reason}"
                        record.remember(f"restart failed: {record.last_error}")
                        self._on_change()
                        raise AppStartFailed(
                            f"{name}: instance {info.name} failed to restart ({exc.reason}); "
                            "the remaining instances were left running"
                        ) from None
                record.remember("restarted")
                restarted.append(name)
        self._on_change()
        return restarted

    async def _replace_instance(self, pool: Supervisor, record: AppRecord, name: str) -> None:
        """Restart process ``name`` of ``record``'s pool from a newly built spec.

        Raises:
            SecretsUnavailable: Its secrets cannot be resolved (it keeps running).
            StartFailure: The new process did not come up.
        """
        spec = self._builder.instance(record.config, int(name))
        await pool.terminate_child(name)
        await pool.delete_child(name)
        await pool.start_child(spec)

    async def scale(self, name: str, instances: int) -> int:
        """Set the number of processes of an app; returns the previous number."""
        if not 1 <= instances <= 1024:
            raise RequestRefused(f"instances must be within 1..1024, got {instances}")
        record = self.record(name)
        async with self._lock:
            previous = record.instances
            if previous == instances and self.pool(name) is not None:
                return previous
            record.instances = instances
            self._on_change()
            pool = self.pool(name)
            if pool is None:
                return previous
            current = sorted(int(i.name) for i in pool.which_children() if i.name.isdigit())
            for index in range(len(current), instances):
                await pool.start_child(self._builder.instance(record.config, index))
            for index in reversed(current[instances:]):
                await pool.terminate_child(str(index))
                with contextlib.suppress(ChildNotFound):
                    await pool.delete_child(str(index))
                record.processes.pop(index, None)
            record.remember(f"scaled {previous} -> {instances}")
        self._on_change()
        return previous

    async def stop_everything(self) -> None:
        """Stop all apps, dependents first (daemon shutdown)."""
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
        """Start added apps, stop removed ones, restart changed ones; leave the rest."""
        diff = diff_ecosystems(self.ecosystem, new)
        frozen = [s for s in diff.settings if s.path.split(".")[0] in {"project", "supervision"}]
        if frozen:
            raise RequestRefused(
                "these settings take effect only when the daemon restarts (omnitron down; "
                "omnitron up): " + ", ".join(str(s) for s in frozen)
            )
        removed = [app.name for app in diff.removed]
        for name in removed:
            if name in self.apps:
                await self.stop(name)
                async with self._lock:
                    root = self._root
                    if root is not None:
                        with contextlib.suppress(ChildNotFound):
                            await root.delete_child(name)
                    del self.apps[name]
        self.ecosystem = new
        self._builder = TreeBuilder(new, home=self.home, sink=self.logs.sink, secrets=self._secrets)
        changed = [c.name for c in diff.changed]
        for app in new.start_order():
            if app.name in self.apps:
                record = self.apps[app.name]
                record.config = app
                if app.name in changed:
                    record.instances = app.instances
            else:
                self.apps[app.name] = AppRecord(config=app, instances=app.instances)
        # Keep the records in the new start order.
        self.apps = {app.name: self.apps[app.name] for app in new.start_order()}
        for name in changed:
            record = self.apps[name]
            if not record.config.enabled:
                await self.stop(name)
            elif record.desired == "running":
                await self.stop(name)
                async with self._lock:
                    root = self._root
                    if root is not None:
                        with contextlib.suppress(ChildNotFound):
                            await root.delete_child(name)
                await self.start(name)
        added = [app.name for app in diff.added]
        for name in added:
            if self.apps[name].config.enabled:
                await self.start(name)
        self._on_change()
        return diff
