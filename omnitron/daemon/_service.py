"""The ``daemon.*`` RPC methods: thin handlers over the orchestrator.

Each handler validates its named params (from its signature), calls the
orchestrator, and returns plain data in the stable shape documented in
``docs/cli.md``. Roles are declared at registration; the Unix socket's peers are
admins.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol

import attrs
import psutil
import structlog
import trio

from .. import __version__
from ..config import ConfigError, Ecosystem, load_config
from ..rpc import Call, Dispatcher, Encoded, Handler, Name, Range, Role
from ..rpc._auth import TokenAuthority, register_auth_methods
from ._errors import DOMAIN_ERRORS, ConfigInvalid
from ._orchestrator import AppRecord, Orchestrator

__all__ = ["DaemonService", "Persistence", "Sampler", "build_dispatcher"]

AppName = Name
Target = Name  # an app name, or "all" (a name the config reserves)

_SECRET = re.compile(r"(PASS|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE|AUTH)", re.IGNORECASE)


SAMPLE_INTERVAL = 2.0
"""Seconds between two samples of the CPU and memory of every managed process."""
PERSIST_ACK_TIMEOUT = 5.0
"""How long a state-changing call waits for its change to reach the disk."""

log = structlog.get_logger("omnitron.service")


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


class Sampler:
    """CPU and memory of the managed processes, sampled periodically off the event loop.

    One task (:meth:`run`) samples every ``interval`` seconds in a worker thread;
    every caller reads the last sample (:attr:`samples`), so a ``status`` call
    costs no system call. CPU is the percentage since the previous sample.

    Args:
        pids: Returns the pids to sample (called on the event loop).
        interval: Seconds between samples.
    """

    def __init__(self, pids: Callable[[], list[int]], *, interval: float = SAMPLE_INTERVAL) -> None:
        self._pids = pids
        self._interval = interval
        self._procs: dict[int, psutil.Process] = {}
        self.samples: dict[int, tuple[float, int]] = {}
        """``{pid: (cpu percent, resident bytes)}`` of the last sample."""
        self.failures = 0
        """Samples that could not be taken (no worker thread could be started...)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample until cancelled. A sample that fails is counted and retried next time."""
        task_status.started()
        while True:
            await self.sample()
            await trio.sleep(self._interval)

    async def sample(self) -> None:
        """Take one sample now, in a worker thread; a failure is counted and logged."""
        pids = self._pids()
        try:
            self.samples = await trio.to_thread.run_sync(self._sample, pids)
        except (RuntimeError, OSError) as exc:  # e.g. "can't start new thread"
            self.failures += 1
            log.warning("sampling_failed", error=str(exc), failures=self.failures)

    def _sample(self, pids: list[int]) -> dict[int, tuple[float, int]]:
        result: dict[int, tuple[float, int]] = {}
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)
                result[pid] = (proc.cpu_percent(None), proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
        wanted = set(pids)
        for pid in [p for p in self._procs if p not in wanted]:
            self._procs.pop(pid, None)
        return result


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
            entry = {
                "name": record.name,
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
        sample_interval: Seconds between two samples of CPU and memory.
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
        sample_interval: float = SAMPLE_INTERVAL,
    ) -> None:
        self.orchestrator = orchestrator
        self.home = home
        self.config_path = config_path
        self.stack = stack
        self._request_shutdown = request_shutdown
        self._persistence = persistence
        self._health = health
        self.sampler = Sampler(self._pids, interval=sample_interval)
        self._views: dict[str, _View] = {}
        self._listing: _Listing | None = None
        self._status_reply: tuple[dict[str, Any], list[dict[str, Any]], Encoded] | None = None
        self._started = time.monotonic()

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
        return app

    def env(self, name: str, *, reveal: bool) -> dict[str, str]:
        record = self.orchestrator.record(name)
        return {
            key: value if reveal or not _SECRET.search(key) else "<redacted>"
            for key, value in sorted(record.config.env.items())
        }

    def graph(self) -> dict[str, Any]:
        orch = self.orchestrator
        return {
            "strategy": orch.ecosystem.supervision.strategy.value,
            "order": [a.name for a in orch.ecosystem.start_order()],
            "apps": {r.name: list(r.config.depends_on) for r in orch.apps.values()},
        }

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
        if dry_run:
            diff = self.orchestrator.plan_reload(new)
        else:
            if not new.apps and self._persistence is not None:
                self._persistence.permit_empty()
            diff = await self.orchestrator.apply_reload(new)
        return {
            "applied": not dry_run,
            "added": [a.name for a in diff.added],
            "removed": [a.name for a in diff.removed],
            "changed": {c.name: [str(f) for f in c.changes] for c in diff.changed},
            "settings": [str(s) for s in diff.settings],
            "summary": str(diff),
            "warnings": [str(issue) for issue in (*new.warnings, *new.inert)],
        }

    def shutdown(self) -> None:
        self._request_shutdown()


def build_dispatcher(
    service: DaemonService, *, authority: Callable[[], TokenAuthority] | None = None
) -> Dispatcher:
    """The management plane's methods, each with its role."""
    dispatcher = Dispatcher(error_types=DOMAIN_ERRORS)
    orch = service.orchestrator

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
        started = await orch.start(name)
        await service.persisted()
        return {"started": started}

    async def stop_app(call: Call, *, name: Target) -> dict[str, Any]:
        """Stop an app, or all apps (dependents first)."""
        stopped = await orch.stop(name)
        await service.persisted()
        return {"stopped": stopped}

    async def restart_app(call: Call, *, name: Target) -> dict[str, Any]:
        """Restart an app's processes one by one, or all apps."""
        restarted = await orch.restart(name)
        await service.persisted()
        return {"restarted": restarted}

    async def start_all(call: Call) -> dict[str, Any]:
        """Start every enabled app."""
        started = await orch.start("all")
        await service.persisted()
        return {"started": started}

    async def stop_all(call: Call) -> dict[str, Any]:
        """Stop every app."""
        stopped = await orch.stop("all")
        await service.persisted()
        return {"stopped": stopped}

    async def restart_all(call: Call) -> dict[str, Any]:
        """Restart every running app."""
        restarted = await orch.restart("all")
        await service.persisted()
        return {"restarted": restarted}

    async def scale(
        call: Call, *, name: AppName, instances: Annotated[int, Range(ge=1, le=1024)]
    ) -> dict[str, Any]:
        """Set an app's number of processes."""
        previous = await orch.scale(name, instances)
        await service.persisted()
        return {"name": name, "previous": previous, "instances": instances}

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

    viewer: dict[str, Handler] = {
        "daemon.status": status,
        "daemon.list": list_apps,
        "daemon.get_app": get_app,
        "daemon.inspect": inspect,
        "daemon.env": env,
        "daemon.graph": graph,
    }
    operator: dict[str, Handler] = {
        "daemon.start_app": start_app,
        "daemon.stop_app": stop_app,
        "daemon.restart_app": restart_app,
        "daemon.start_all": start_all,
        "daemon.stop_all": stop_all,
        "daemon.restart_all": restart_all,
        "daemon.scale": scale,
    }
    admin: dict[str, Handler] = {"daemon.reload_config": reload_config, "daemon.shutdown": shutdown}
    for role, methods in ((Role.VIEWER, viewer), (Role.OPERATOR, operator), (Role.ADMIN, admin)):
        for name, handler in methods.items():
            dispatcher.register(name, handler, role=role)
    if authority is not None:
        register_auth_methods(dispatcher, authority)
    return dispatcher
