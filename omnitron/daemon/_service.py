"""The ``daemon.*`` RPC methods: thin handlers over the orchestrator.

Each handler validates its named params (from its signature), calls the
orchestrator, and returns plain data in the stable shape documented in
``docs/cli.md``. Roles are declared at registration; the Unix socket's peers are
admins.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import signal as signals
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar

import attrs
import trio

from .. import __version__
from .._log import get_logger
from .._logtail import stderr_tail
from ..config import ConfigError, Ecosystem, load_config, secret_reference
from ..rpc import Call, Dispatcher, Encoded, Handler, InvalidParams, Len, Name, Range, Role
from ..rpc._auth import TokenAuthority, register_auth_methods
from ..state import DesiredStatus
from ._errors import DOMAIN_ERRORS, AppStartFailed, ConfigInvalid, RequestRefused
from ._exec import (
    EXEC_ERRORS,
    describe_ecosystem,
    register_exec,
)
from ._heap import trim_heap
from ._logs import LogLine
from ._metrics import FIELDS, CountingDispatcher, Sampler, aggregate, figures, prometheus_text
from ._orchestrator import AppRecord, Orchestrator
from ._secrets import SecretStore, register_secret_methods
from ._watch import Watching, importers, register_watch_methods

__all__ = ["DaemonService", "Persistence", "Sampler", "build_dispatcher"]

AppName = Name
Target = Name  # an app name, or "all" (a name the config reserves)

_SECRET = re.compile(r"(PASS|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE|AUTH)", re.IGNORECASE)


PERSIST_ACK_TIMEOUT = 5.0
"""How long a state-changing call waits for its change to reach the disk."""

log = get_logger("omnitron.service")

T = TypeVar("T")


#: Uptimes are given to this many seconds; status is built once per tick.
UPTIME_TICK = 0.1


class Persistence(Protocol):
    """What the control plane needs from the writer of the state file."""

    async def flush(self) -> None:
        """Return once every change made so far is on disk (or will never be written)."""

    def permit_empty(self) -> None:
        """Let the next state with no apps replace one that has some."""

    def health(self) -> object:
        """The health record; its ``str()`` is the one-line form ``status`` shows."""


@attrs.frozen
class _View:
    """An app's protocol record, built once per record and sample (both immutable).

    ``processes`` pairs each process's record with the Trio time it became ready,
    for the uptime, which is the one figure that changes on every call.
    """

    record: AppRecord
    samples: dict[int, tuple[float, int]]
    app: dict[str, Any]
    processes: tuple[tuple[dict[str, Any], float | None], ...]

    @classmethod
    def of(cls, record: AppRecord, samples: dict[int, tuple[float, int]]) -> _View:
        processes = []
        for process in sorted(record.processes.values(), key=lambda p: p.instance):
            cpu, memory = samples.get(process.pid or -1, (0.0, 0))
            running = process.ready_at is not None and process.pid
            worker = process.worker  # a module-worker app: its process entry's name
            entry = {
                "name": record.name if worker is None else worker.process,
                # The app-wide number, as in logs, inspect, events and OMNITRON_INSTANCE.
                "instance": process.instance,
                "pid": process.pid,
                "status": process.status.value,
                "restarts": process.restarts,
                "uptime": 0.0,
                "cpu": round(cpu, 1),
                "memory": memory,
            }
            processes.append((entry, process.ready_at if running else None))
        app = {
            "name": record.name,
            "status": record.status.value,
            "mode": record.config.mode,
            "instances": record.instances,
            "restarts": record.restarts,
            "critical": record.config.critical,
            "enabled": record.config.enabled,
            "last_error": record.last_error,
        }
        return cls(record, samples, app, tuple(processes))


@attrs.frozen
class _Listing:
    """The last ``apps()`` result and what it was built from."""

    tick: int
    samples: dict[int, tuple[float, int]]
    records: tuple[AppRecord, ...]
    apps: list[dict[str, Any]]


class DaemonService:
    """Everything the RPC handlers need from the running daemon.

    Args:
        orchestrator: The apps.
        home: The daemon's home directory.
        config_path: The config file in force (re-read by ``reload_config``).
        stack: The stack applied to the config, if any.
        request_shutdown: Asks the daemon to stop (graceful).
        persistence: The state file's writer: a reply to a change is sent once the
            change is on disk. ``None``: nothing is persisted (an embedded service).
        health: Returns extra health records (log write errors, ...).
        sample_interval: Seconds between two samples of CPU and memory; ``None``:
            ``[monitoring] metrics.interval``.
        secrets: The secret store (``secret.*`` methods); one for ``home`` by default.
        watch: ``up --watch`` (``True``), ``--no-watch`` (``False``) or neither.
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        *,
        home: Path,
        config_path: Path,
        stack: str | None,
        request_shutdown: Callable[[], None],
        persistence: Persistence | None = None,
        health: Callable[[], dict[str, Any]] = dict,
        sample_interval: float | None = None,
        secrets: SecretStore | None = None,
        watch: bool | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self.home = home
        self.config_path = config_path
        self.stack = stack
        self._request_shutdown = request_shutdown
        self._persistence = persistence
        self._health = health
        self.sampler = Sampler(
            self._pids,
            settings=(lambda: orchestrator.ecosystem.monitoring.metrics)
            if sample_interval is None
            else None,
            on_sample=self._check_memory,
        )
        if sample_interval is not None:
            self.sampler.interval = sample_interval
        self.dispatcher: CountingDispatcher | None = None
        """Set by :func:`build_dispatcher`: counts the calls answered."""
        self._over_memory: dict[tuple[str, int], tuple[int, int]] = {}
        self.secrets = SecretStore(home) if secrets is None else secrets
        self._views: dict[str, _View] = {}
        self._listing: _Listing | None = None
        self._status_reply: tuple[dict[str, Any], list[dict[str, Any]], Encoded] | None = None
        self._started = time.monotonic()
        self.watching = _watching(self, watch)
        """Hot reload: its :meth:`~Watching.run` is a task of the daemon's nursery."""

    def _pids(self) -> list[int]:
        return [
            p.pid
            for r in self.orchestrator.apps.values()
            for p in r.processes.values()
            if p.pid is not None
        ]

    async def persisted(self) -> None:
        """Return once the changes made so far are on disk (promise 2).

        Never hangs a client on a failing disk: after ``PERSIST_ACK_TIMEOUT`` the
        reply goes out anyway, and ``status`` says ``persistence: degraded``.
        """
        if self._persistence is None:
            return
        with trio.move_on_after(PERSIST_ACK_TIMEOUT):
            await self._persistence.flush()

    async def failure_details(self, app: str) -> dict[str, Any]:
        """``{"app", "log", "stderr_tail"}`` for an app that did not come up.

        The app's buffered output is flushed first, so the lines it printed as it
        failed are in the file; ``stderr_tail`` is the text of its last
        ten stderr lines (any instance), oldest first.
        """
        logs = self.orchestrator.logs
        path = logs.path_for(app)
        await logs.flush()
        try:
            tail = await trio.to_thread.run_sync(stderr_tail, path, app)
        except RuntimeError:  # no thread to be had: the file is small enough to read here
            tail = stderr_tail(path, app)
        return {"app": app, "log": str(path), "stderr_tail": tail}

    # ------------------------------------------------------------------ views

    async def status(self) -> dict[str, Any]:
        """The daemon and every app, from the records and the last sample (no I/O)."""
        await trio.lowlevel.checkpoint()
        return {"daemon": self._daemon(), "apps": self.apps()}

    async def status_encoded(self) -> Encoded:
        """:meth:`status`, encoded once for every call that gets the same answer.

        Within one tick, with the same records and sample, the answer is the
        same, so a burst of ``status`` calls shares one encoding of it.
        """
        await trio.lowlevel.checkpoint()
        daemon, apps = self._daemon(), self.apps()
        cached = self._status_reply
        if cached is not None and cached[1] is apps and cached[0] == daemon:
            return cached[2]
        encoded = Encoded.of({"daemon": daemon, "apps": apps})
        self._status_reply = (daemon, apps, encoded)
        return encoded

    def _daemon(self) -> dict[str, Any]:
        health = {}
        if self._persistence is not None:
            # "ok" or "degraded (ENOSPC)": the key already says what it is about.
            health["persistence"] = str(self._persistence.health()).removeprefix("persistence: ")
        return {
            "pid": os.getpid(),
            "version": __version__,
            "uptime": round(time.monotonic() - self._started, 1),
            "home": str(self.home),
            "config": str(self.config_path),
            **health,
            **self._health(),
        }

    def apps(self) -> list[dict[str, Any]]:
        """Every app with its processes (a list shared by the calls of one tick).

        Uptimes are given to the tenth of a second (a *tick* of Trio's clock), so
        within one tick, with the same records and sample, the list is the same: it
        is built (and, for ``status``, encoded) once and not to be modified by
        callers. A change of any record or a new sample gives a fresh list at once.
        """
        samples, now, records = self.sampler.samples, trio.current_time(), self.orchestrator.apps
        tick = math.floor(now / UPTIME_TICK)
        now = tick * UPTIME_TICK
        listing = self._listing
        if (
            listing is not None
            and listing.tick == tick
            and listing.samples is samples
            and len(listing.records) == len(records)
            and all(a is b for a, b in zip(listing.records, records.values(), strict=True))
        ):
            return listing.apps
        if len(self._views) > len(records):  # apps removed by a reload
            self._views = {name: v for name, v in self._views.items() if name in records}
        apps = [self._app(record, samples, now) for record in records.values()]
        self._listing = _Listing(tick, samples, tuple(records.values()), apps)
        return apps

    def _app(
        self, record: AppRecord, samples: dict[int, tuple[float, int]], now: float
    ) -> dict[str, Any]:
        """The ``APP`` record of the protocol; only uptimes are computed per call."""
        view = self._views.get(record.name)
        if view is None or view.record is not record or view.samples is not samples:
            view = self._views[record.name] = _View.of(record, samples)
        processes = [
            {**process, "uptime": round(max(0.0, now - ready_at), 1)}
            if ready_at is not None
            else process
            for process, ready_at in view.processes
        ]
        return {**view.app, "processes": processes}

    async def get_app(self, name: str) -> dict[str, Any]:
        record = self.orchestrator.record(name)
        await trio.lowlevel.checkpoint()
        return self._app(record, self.sampler.samples, trio.current_time())

    async def inspect(self, name: str) -> dict[str, Any]:
        record = self.orchestrator.record(name)
        app = await self.get_app(name)
        config = record.config
        app["spec"] = {
            "command": list(config.command) if config.command else None,
            "bootstrap": str(config.bootstrap) if config.bootstrap else None,
            "cwd": str(config.cwd),
            "depends_on": list(config.depends_on),
            "ready": config.ready.kind.value,
            "startup_timeout": config.startup_timeout,
            "stop_timeout": config.stop_timeout,
            "stop_signal": config.stop_signal.name,
            "restart": config.restart.value,
            "restart_policy": {
                "max_restarts": config.restart_policy.max_restarts,
                "window": config.restart_policy.window,
            },
        }
        app["last_exits"] = {
            str(p.instance): p.last_exit for p in record.processes.values() if p.last_exit
        }
        app["recent_events"] = [event.to_wire() for event in record.events]
        app["log_file"] = str(self.orchestrator.logs.path_for(name))
        app["health"] = self.health_of(record)
        app["dependencies_health"] = {
            dep: _health_status(self.health_of(self.orchestrator.apps[dep]))
            for dep in config.depends_on
            if dep in self.orchestrator.apps
        }
        app["logs"] = self.orchestrator.logs.stats(name)
        return app

    # ------------------------------------------------------------------ health and events

    def health_of(self, record: AppRecord) -> dict[str, Any]:
        """An app's probe (``None`` without one) and what it found per live process."""
        config = record.config.health
        probe: dict[str, Any] | None = None
        if config is not None:
            target: Any = config.http or (
                f"{config.host}:{config.tcp}" if config.tcp is not None else config.command
            )
            probe = {
                "kind": "http" if config.http else "tcp" if config.tcp is not None else "command",
                "target": list(target) if isinstance(target, tuple) else target,
                "interval": config.interval,
                "timeout": config.timeout,
                "retries": config.retries,
                "start_period": config.start_period,
            }
        live = {p.instance for p in record.processes.values() if p.pid is not None}
        processes = [
            state
            for state in self.orchestrator.health.report(record.name)
            if state["instance"] in live
        ]
        logs = self.orchestrator.logs.stats(record.name)
        return {
            "name": record.name,
            "probe": probe,
            "processes": processes,
            # Log trouble is health trouble an operator must see (FAULTS PC-18).
            "logs": {key: logs[key] for key in ("write_errors", "lost_lines", "error")},
        }

    def health(self, name: str | None) -> list[dict[str, Any]]:
        """``health_of`` every app (or ``name``), in start order."""
        records = [self.orchestrator.record(name)] if name else self.orchestrator.apps.values()
        return [self.health_of(record) for record in records]

    def recent_events(self, name: str | None) -> list[dict[str, Any]]:
        """The recent events of every app (or ``name``), oldest first, each with ``app``."""
        records = [self.orchestrator.record(name)] if name else self.orchestrator.apps.values()
        events = [{"app": r.name, **e.to_wire()} for r in records for e in r.events]
        return sorted(events, key=lambda e: e["time"])

    def env(self, name: str, *, reveal: bool) -> dict[str, str]:
        # A ``secret:NAME`` reference is shown as such, to everyone: the value it
        # stands for is never in the config, nor in this reply.
        record = self.orchestrator.record(name)
        return {
            key: value
            if reveal or secret_reference(value) is not None or not _SECRET.search(key)
            else "<redacted>"
            for key, value in sorted(record.config.env.items())
        }

    def graph(self) -> dict[str, Any]:
        orch = self.orchestrator
        return {
            "strategy": orch.ecosystem.supervision.strategy.value,
            "order": [a.name for a in orch.ecosystem.start_order()],
            "apps": {r.name: list(r.config.depends_on) for r in orch.apps.values()},
        }

    # ------------------------------------------------------------------ metrics

    def metrics(self, name: str | None = None, *, history: int = 0) -> dict[str, Any]:
        """The last sample of every process (or of one app's), per-app sums, and the
        daemon's own figures; ``history``: each process's last N samples too."""
        records = [self.orchestrator.record(name)] if name is not None else None
        sampler, now = self.sampler, trio.current_time()
        apps = []
        for record in records if records is not None else self.orchestrator.apps.values():
            processes = []
            probed = {
                s["instance"]: s["status"] for s in self.orchestrator.health.report(record.name)
            }
            for process in sorted(record.processes.values(), key=lambda p: p.instance):
                pid = process.pid
                entry: dict[str, Any] = {
                    "instance": process.instance,
                    "pid": pid,
                    "status": process.status.value,
                    "restarts": process.restarts,
                    # The probe's verdict ("starting", "healthy", ...); None without one.
                    "health": probed.get(process.instance) if pid else None,
                    "uptime": round(max(0.0, now - process.ready_at), 3)
                    if process.ready_at is not None and pid
                    else 0.0,
                    **figures(sampler.last.get(pid) if pid else None),
                }
                if history:
                    ring = sampler.rings.get(pid) if pid else None
                    entry["history"] = [list(s) for s in ring.last(history)] if ring else []
                processes.append(entry)
            apps.append(
                {
                    "name": record.name,
                    "status": record.status.value,
                    "restarts": record.restarts,
                    "max_memory": record.config.max_memory,
                    **aggregate(processes),
                    "processes": processes,
                }
            )
        generation = getattr(self._persistence, "generation", None)
        daemon = {
            "pid": os.getpid(),
            **figures(sampler.last.get(os.getpid())),
            "rpc_calls": self.dispatcher.calls if self.dispatcher is not None else None,
            "generation": generation if isinstance(generation, int) else None,
            "failures": sampler.failures,
            **sampler.lag.summary(),  # the heartbeat's loop lag: last, p50, p99, max
        }
        return {
            "enabled": sampler.enabled,
            "interval": sampler.interval,
            "retention": sampler.retention,
            "sampled_at": sampler.sampled_at,
            "samples": sampler.taken,
            "fields": list(FIELDS) if history else None,
            "daemon": daemon,
            "apps": apps,
        }

    def prometheus(self) -> str:
        """:meth:`metrics` in the Prometheus text exposition format."""
        return prometheus_text(self.metrics())

    def _check_memory(self, nursery: trio.Nursery) -> None:
        """Restart each process whose RSS exceeded its app's ``max_memory`` in two
        consecutive samples (called after every sample)."""
        over: dict[tuple[str, int], tuple[int, int]] = {}
        for record in self.orchestrator.apps.values():
            limit = record.config.max_memory
            if limit is None:
                continue
            for process in record.processes.values():
                sample = self.sampler.samples.get(process.pid or -1)
                if sample is None or sample[1] <= limit or process.pid is None:
                    continue
                key = (record.name, process.instance)
                pid, count = self._over_memory.get(key, (process.pid, 0))
                count = count + 1 if pid == process.pid else 1
                over[key] = (process.pid, count)
                if count == 2:
                    reason = f"memory {sample[1] // 1_000_000}MB > {limit // 1_000_000}MB"
                    nursery.start_soon(
                        functools.partial(
                            self.orchestrator.restart_process,
                            record.name,
                            process.instance,
                            reason,
                            pid=process.pid,
                        )
                    )
        self._over_memory = over

    # ------------------------------------------------------------------ reload

    async def load_new_config(self) -> Ecosystem:
        try:
            ecosystem = await trio.to_thread.run_sync(load_config, self.config_path)
        except ConfigError as exc:
            raise ConfigInvalid(f"the config was not applied: {exc}") from None
        if self.stack is not None:
            ecosystem = ecosystem.with_stack(self.stack)
        return ecosystem

    async def reload_config(self, *, dry_run: bool) -> dict[str, Any]:
        new = await self.load_new_config()
        # A bootstrap is part of the config: an invalid one leaves the old config in
        # force (CF-07). A worker of another protocol only fails its own app.
        _, problems, mismatches = await describe_ecosystem(new)
        if problems:
            raise ConfigInvalid(f"the config was not applied: {ConfigError(problems)}")
        if dry_run:
            diff = self.orchestrator.plan_reload(new)
        else:
            if not new.apps and self._persistence is not None:
                self._persistence.permit_empty()
            diff = await self.orchestrator.apply_reload(new)
            metrics = new.monitoring.metrics
            self.sampler.configure(interval=metrics.interval, retention=metrics.retention)
            self.watching.refresh()
            trim_heap()  # the old config and specs, and the parse of the new one
        return {
            "applied": not dry_run,
            "added": [a.name for a in diff.added],
            "removed": [a.name for a in diff.removed],
            "changed": {c.name: [str(f) for f in c.changes] for c in diff.changed},
            "settings": [str(s) for s in diff.settings],
            "summary": str(diff),
            "warnings": [str(issue) for issue in (*new.warnings, *mismatches, *new.inert)],
        }

    def shutdown(self) -> None:
        self._request_shutdown()


def _health_status(health: dict[str, Any]) -> str:
    """One word for an app's health: ``none`` (no probe), or its worst process's status."""
    if health["probe"] is None:
        return "none"
    statuses = {p["status"] for p in health["processes"]}
    for status in ("unhealthy", "failing", "starting", "healthy"):
        if status in statuses:
            return status
    return "unknown"


EVENT_BUFFER = 1000
"""Events queued per ``events.subscribe`` stream; a slower reader loses the oldest
and receives an ``rpc.dropped`` notice saying how many."""


def _events_methods(service: DaemonService) -> dict[str, Handler]:
    """``daemon.health``, ``daemon.events`` and ``events.subscribe`` (viewer)."""

    async def health(call: Call, *, name: AppName | None = None) -> list[dict[str, Any]]:
        """Each app's probe and, per process, status, last result, latency and failures."""
        await trio.lowlevel.checkpoint()
        return service.health(name)

    async def events(call: Call, *, name: AppName | None = None) -> list[dict[str, Any]]:
        """The recent lifecycle events of every app (or one), oldest first."""
        await trio.lowlevel.checkpoint()
        return service.recent_events(name)

    async def subscribe(call: Call, *, name: AppName | None = None) -> dict[str, Any]:
        """Stream every new lifecycle event (of ``name``, or all apps) as ``events.event``
        notifications ``{app, time, kind, ...}`` until the connection ends."""
        if name is not None:
            service.orchestrator.record(name)
        stream = call.open_stream("events.event", capacity=EVENT_BUFFER)

        def deliver(app: str, event: Any) -> bool:
            if stream.closed:
                return False
            if name is None or app == name:
                stream.send_nowait({"app": app, **event.to_wire()})
            return True

        service.orchestrator.subscribe(deliver)
        await trio.lowlevel.checkpoint()
        return {"stream": stream.id}

    return {"daemon.health": health, "daemon.events": events, "events.subscribe": subscribe}


def _watching(service: DaemonService, enabled: bool | None) -> Watching:
    """The watchers of ``service``'s apps: a change reloads the app (zero downtime)."""
    orch = service.orchestrator

    def running(app: str) -> bool:
        record = orch.apps.get(app)
        return record is not None and record.desired is DesiredStatus.RUNNING

    def exclude() -> list[Path]:
        logs = orch.ecosystem.logging.directory
        return [service.home] if logs is None else [service.home, logs]

    async def reload(app: str, paths: set[str]) -> None:
        # A module-worker app: only the workers importing a changed module.
        record = orch.apps.get(app)
        indexes = None if record is None else await importers(record, paths)
        if indexes is None:
            await orch.reload(app)
            return
        names = [_worker_name(record, i) for i in sorted(indexes)] if record else []
        orch.logs.note(app, f"watch: reloading only {', '.join(names) or 'nothing'}")
        await orch.reload_processes(app, indexes)

    return Watching(
        lambda: {record.name: record.config for record in orch.apps.values()},
        reload,
        running=running,
        enabled=enabled,
        exclude=exclude,
        note=lambda app, text: orch.logs.note(app, text),
    )


def _worker_name(record: AppRecord, index: int) -> str:
    """``users (instance 1)``: a module-worker app's process entry and the app-wide
    instance number (as ``status``, ``logs`` and ``inspect`` number it)."""
    worker = record.processes[index].worker
    return f"instance {index}" if worker is None else f"{worker.process} (instance {index})"


def parse_signal(text: str) -> int:
    """``"HUP"``, ``"SIGHUP"``, ``"sighup"`` or ``"1"`` → the signal number.

    Raises:
        RequestRefused: Not a signal of this system.
    """
    word = text.strip().upper()
    try:
        if word.isdigit():
            return signals.Signals(int(word)).value
        return signals.Signals[word if word.startswith("SIG") else f"SIG{word}"].value
    except (KeyError, ValueError):
        raise RequestRefused(
            f"unknown signal {text!r}; give a name such as HUP, USR1, TERM, or a number"
        ) from None


def build_dispatcher(
    service: DaemonService, *, authority: Callable[[], TokenAuthority] | None = None
) -> Dispatcher:
    """The management plane's methods, each with its role."""
    dispatcher = CountingDispatcher(error_types=(*DOMAIN_ERRORS, *EXEC_ERRORS))
    service.dispatcher = dispatcher
    orch = service.orchestrator

    async def explained(work: Awaitable[T]) -> T:
        """``await work``; a start failure carries its app's log file and stderr tail."""
        try:
            return await work
        except AppStartFailed as exc:
            if exc.app is not None:
                exc.data = {**exc.data, **await service.failure_details(exc.app)}
            raise

    async def status(call: Call) -> Encoded:
        """The daemon and every app with its processes."""
        return await service.status_encoded()

    async def list_apps(call: Call) -> list[dict[str, Any]]:
        """Every app with its processes."""
        await trio.lowlevel.checkpoint()
        return service.apps()

    async def get_app(call: Call, *, name: AppName) -> dict[str, Any]:
        """One app with its processes."""
        return await service.get_app(name)

    async def inspect(call: Call, *, name: AppName) -> dict[str, Any]:
        """One app: spec, processes, last exits and recent events."""
        return await service.inspect(name)

    async def env(call: Call, *, name: AppName, reveal: bool = False) -> dict[str, str]:
        """An app's configured environment; secret-looking values redacted."""
        return service.env(name, reveal=reveal and call.peer.role >= Role.ADMIN)

    async def graph(call: Call) -> dict[str, Any]:
        """The dependency graph and start order."""
        return service.graph()

    async def start_app(call: Call, *, name: Target) -> dict[str, Any]:
        """Start an app (and what it depends on), or all enabled apps."""
        started = await explained(orch.start(name))
        await service.persisted()
        return {"started": started}

    async def stop_app(call: Call, *, name: Target) -> dict[str, Any]:
        """Stop an app, or all apps (dependents first)."""
        stopped = await orch.stop(name)
        await service.persisted()
        return {"stopped": stopped}

    async def restart_app(call: Call, *, name: Target) -> dict[str, Any]:
        """Restart an app's processes one by one, or all apps."""
        restarted = await explained(orch.restart(name))
        await service.persisted()
        return {"restarted": restarted}

    async def reload(call: Call, *, name: Target) -> dict[str, Any]:
        """Replace an app's processes with zero downtime (each new one ready before
        its old one stops), or those of all running apps."""
        reloaded = await explained(orch.reload(name))
        await service.persisted()
        return {"reloaded": reloaded}

    async def start_all(call: Call) -> dict[str, Any]:
        """Start every enabled app."""
        started = await explained(orch.start("all"))
        await service.persisted()
        return {"started": started}

    async def stop_all(call: Call) -> dict[str, Any]:
        """Stop every app."""
        stopped = await orch.stop("all")
        await service.persisted()
        return {"stopped": stopped}

    async def restart_all(call: Call) -> dict[str, Any]:
        """Restart every running app."""
        restarted = await explained(orch.restart("all"))
        await service.persisted()
        return {"restarted": restarted}

    async def scale(
        call: Call, *, name: AppName, instances: Annotated[int, Range(ge=1, le=1024)]
    ) -> dict[str, Any]:
        """Set an app's number of processes."""
        previous = await explained(orch.scale(name, instances))
        await service.persisted()
        return {"name": name, "previous": previous, "instances": instances}

    async def reset(call: Call, *, name: Target) -> dict[str, Any]:
        """Set the restart counters of an app, or all apps, to zero."""
        names = orch.reset(name)
        await service.persisted()
        return {"reset": names}

    async def signal_app(call: Call, *, name: Target, signal: str) -> dict[str, Any]:
        """Send a signal to every running process of an app, or of all apps."""
        signum = parse_signal(signal)
        sent = orch.signal(name, signum)
        await trio.lowlevel.checkpoint()
        return {"signal": signals.Signals(signum).name, "sent": sent}

    async def reload_config(call: Call, *, dry_run: bool = False) -> dict[str, Any]:
        """Re-read the config file and apply the difference (or only show it)."""
        result = await service.reload_config(dry_run=dry_run)
        if not dry_run:
            await service.persisted()
        return result

    async def shutdown(call: Call) -> dict[str, Any]:
        """Stop every app and the daemon."""
        service.shutdown()
        return {"stopping": True, "pid": os.getpid()}

    # ---- metrics
    async def metrics(
        call: Call,
        *,
        name: AppName | None = None,
        format: str = "json",
        history: Annotated[int, Range(ge=0, le=100_000)] = 0,
    ) -> Any:
        """Samples of every process (or of one app's), per-app sums and the daemon's
        own figures; ``format="prometheus"``: the Prometheus text exposition."""
        await trio.lowlevel.checkpoint()
        if format == "prometheus":
            if name is not None:
                raise RequestRefused("the prometheus format covers every app; omit the name")
            return service.prometheus()
        if format != "json":
            raise RequestRefused(f"unknown format {format!r} (expected json or prometheus)")
        return service.metrics(name, history=history)

    async def set_metrics_enabled(call: Call, *, enabled: bool) -> dict[str, Any]:
        """Turn the sampling of CPU and memory on or off."""
        await trio.lowlevel.checkpoint()
        previous = service.sampler.enabled
        service.sampler.set_enabled(enabled)
        return {"enabled": enabled, "previous": previous}

    dispatcher.register("daemon.metrics", metrics, role=Role.VIEWER)
    dispatcher.register("daemon.set_metrics_enabled", set_metrics_enabled, role=Role.ADMIN)
    # ---- end metrics

    viewer: dict[str, Handler] = {
        "daemon.status": status,
        "daemon.list": list_apps,
        "daemon.get_app": get_app,
        "daemon.inspect": inspect,
        "daemon.env": env,
        "daemon.graph": graph,
        **_events_methods(service),
    }
    operator: dict[str, Handler] = {
        "daemon.start_app": start_app,
        "daemon.stop_app": stop_app,
        "daemon.restart_app": restart_app,
        "daemon.start_all": start_all,
        "daemon.stop_all": stop_all,
        "daemon.restart_all": restart_all,
        "daemon.reload": reload,
        "daemon.scale": scale,
        "daemon.reset": reset,
        "daemon.signal": signal_app,
    }
    admin: dict[str, Handler] = {"daemon.reload_config": reload_config, "daemon.shutdown": shutdown}
    for role, methods in ((Role.VIEWER, viewer), (Role.OPERATOR, operator), (Role.ADMIN, admin)):
        for name, handler in methods.items():
            dispatcher.register(name, handler, role=role)
    register_exec(dispatcher, lambda: orch.router)
    register_secret_methods(dispatcher, service.secrets)
    register_log_methods(dispatcher, service)
    register_watch_methods(dispatcher, service.watching)
    if authority is not None:
        register_auth_methods(dispatcher, authority)
    return dispatcher


# ---------------------------------------------------------------------- logs

LOG_STREAM_METHOD = "logs.line"
"""Notification of ``daemon.logs`` with ``follow``: ``{time, app, instance, output, line}``."""
LOG_STREAM_CAPACITY = 10_000
"""Lines queued for one follower before the oldest are dropped (an ``rpc.dropped`` notice)."""
DAEMON_LOG_TAIL = 1 << 20
"""Bytes read from the end of ``daemon.log`` for ``logs --daemon``."""


def _daemon_log_lines(path: Path) -> list[LogLine]:
    """The last lines of ``daemon.log`` (blocking: run in a thread)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - DAEMON_LOG_TAIL))
            data = f.read()
    except FileNotFoundError:
        return []
    rows = data.decode("utf-8", "replace").splitlines()
    if len(data) == DAEMON_LOG_TAIL:
        rows = rows[1:]  # the first may be the end of a line
    result = []
    for raw in rows:
        stamp = 0.0
        if raw.startswith("timestamp='"):
            with contextlib.suppress(ValueError):
                stamp = datetime.fromisoformat(raw[11:].split("'", 1)[0]).timestamp()
        result.append(LogLine(stamp, "daemon", None, "sys", raw))
    return result


def register_log_methods(dispatcher: Dispatcher, service: DaemonService) -> None:
    """``daemon.logs`` (viewer) and ``daemon.flush_logs`` (operator)."""
    orch = service.orchestrator

    def select(
        apps: list[str], stream: str | None, since: float | None, pattern: re.Pattern[str] | None
    ) -> Callable[[LogLine], bool]:
        wanted = set(apps)

        def matches(line: LogLine) -> bool:
            return (
                (not wanted or line.app in wanted)
                and (stream is None or line.stream == stream)
                and (since is None or line.time >= since)
                and (pattern is None or pattern.search(line.text) is not None)
            )

        return matches

    async def logs(
        call: Call,
        *,
        apps: Annotated[list[AppName], Len(max=256)] = [],  # noqa: B006 - never mutated
        lines: Annotated[int, Range(ge=0, le=100_000)] = 100,
        since: float | None = None,
        grep: Annotated[str, Len(max=1000)] | None = None,
        stream: Literal["out", "err", "sys"] | None = None,
        daemon: bool = False,
        follow: bool = False,
    ) -> dict[str, Any]:
        """The last ``lines`` lines of each app (or of the daemon), in time order.

        With ``follow``, every new line that matches is then pushed as a
        ``logs.line`` notification until the connection closes.
        """
        for name in apps:
            orch.record(name)  # "no app named ..."
        try:
            pattern = re.compile(grep) if grep is not None else None
        except re.error as exc:
            raise InvalidParams(f"params.grep: not a valid regular expression: {exc}") from None
        matches = select(apps, stream, since, pattern)
        if daemon:
            if follow:
                raise InvalidParams("params.follow: cannot follow the daemon's own log yet")
            found = await trio.to_thread.run_sync(
                _daemon_log_lines, service.home / "logs" / "daemon.log"
            )
            picked = [line for line in found if matches(line)]
            return {"lines": [line.to_wire() for line in picked[-lines:] if lines]}
        collector = orch.logs
        names = apps or [name for name in orch.apps if name in collector.apps()]
        picked = []
        for name in names:
            tail = [line for line in collector.tail(name) if matches(line)]
            picked += tail[-lines:] if lines else []
        picked.sort(key=lambda line: line.time)
        result: dict[str, Any] = {"lines": [line.to_wire() for line in picked]}
        if follow:
            feed = call.open_stream(LOG_STREAM_METHOD, capacity=LOG_STREAM_CAPACITY)

            def forward(line: LogLine) -> None:
                if matches(line):
                    feed.send_nowait(line.to_wire())

            stop = collector.add_follower(forward)

            async def unfollow() -> None:
                try:
                    await feed.wait_closed()
                finally:
                    stop()

            call.start_soon(unfollow)
            result["stream"] = feed.id
        return result

    async def flush_logs(
        call: Call,
        *,
        apps: Annotated[list[AppName], Len(max=256)] = [],  # noqa: B006 - never mutated
    ) -> dict[str, Any]:
        """Empty the log files of ``apps`` (every app if none), as ``pm2 flush``."""
        for name in apps:
            orch.record(name)
        return {"emptied": await orch.logs.empty(apps or list(orch.apps))}

    dispatcher.register("daemon.logs", logs, role=Role.VIEWER)
    dispatcher.register("daemon.flush_logs", flush_logs, role=Role.OPERATOR)
