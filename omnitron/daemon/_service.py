"""The ``daemon.*`` RPC methods: thin handlers over the orchestrator.

Each handler validates its named params (from its signature), calls the
orchestrator, and returns plain data in the stable shape documented in
``docs/cli.md``. Roles are declared at registration; the Unix socket's peers are
admins.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import psutil
import trio

from .. import __version__
from ..config import ConfigError, Ecosystem, load_config
from ..rpc import Call, Dispatcher, Handler, Name, Range, Role
from ..rpc._auth import TokenAuthority, register_auth_methods
from ._errors import DOMAIN_ERRORS, AppNotFound, ConfigInvalid
from ._orchestrator import AppRecord, Orchestrator

__all__ = ["DaemonService", "build_dispatcher"]

AppName = Name
Target = Name  # an app name, or "all" (a name the config reserves)

_SECRET = re.compile(r"(PASS|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE|AUTH)", re.IGNORECASE)


class _Sampler:
    """CPU and memory of managed processes, from psutil (CPU % since the last look)."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pids: list[int]) -> dict[int, tuple[float, int]]:
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


async def _nothing() -> None:
    await trio.lowlevel.checkpoint()


class DaemonService:
    """Everything the RPC handlers need from the running daemon.

    Args:
        orchestrator: The apps.
        home: The daemon's home directory.
        config_path: The config file in force (re-read by ``reload_config``).
        stack: The stack applied to the config, if any.
        request_shutdown: Asks the daemon to stop (graceful).
        health: Returns extra health records (persistence, ...).
        permit_empty: Lets the state file go empty (a reload that removes every app).
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        *,
        home: Path,
        config_path: Path,
        stack: str | None,
        request_shutdown: Callable[[], None],
        health: Callable[[], dict[str, str]] = dict,
        permit_empty: Callable[[], None] = lambda: None,
    ) -> None:
        self.orchestrator = orchestrator
        self.home = home
        self.config_path = config_path
        self.stack = stack
        self._request_shutdown = request_shutdown
        self._health = health
        self._permit_empty = permit_empty
        self.persisted: Callable[[], Awaitable[None]] = _nothing
        self._sampler = _Sampler()
        self._sampling = trio.Lock()
        self._started = time.monotonic()

    # ------------------------------------------------------------------ views

    async def status(self) -> dict[str, Any]:
        orch = self.orchestrator
        orch.refresh()
        pids = [
            p.pid for r in orch.apps.values() for p in r.processes.values() if p.pid is not None
        ]
        samples: dict[int, tuple[float, int]] = {}
        if pids:
            # One sample at a time: concurrent calls would share psutil's CPU
            # counters (and the cache) from two threads.
            async with self._sampling:
                samples = await trio.to_thread.run_sync(self._sampler.sample, pids)
        now = trio.current_time()
        return {
            "daemon": {
                "pid": os.getpid(),
                "version": __version__,
                "uptime": round(time.monotonic() - self._started, 3),
                "home": str(self.home),
                "config": str(self.config_path),
                **self._health(),
            },
            "apps": [self._app(record, samples, now) for record in orch.apps.values()],
        }

    def _app(
        self, record: AppRecord, samples: dict[int, tuple[float, int]], now: float
    ) -> dict[str, Any]:
        processes = []
        for process in sorted(record.processes.values(), key=lambda p: p.instance):
            cpu, memory = samples.get(process.pid or -1, (0.0, 0))
            uptime = (
                max(0.0, now - process.ready_at)
                if process.ready_at is not None and process.pid
                else 0.0
            )
            processes.append(
                {
                    "name": record.name,
                    "instance": process.instance,
                    "pid": process.pid,
                    "status": process.status.value,
                    "restarts": process.restarts,
                    "uptime": round(uptime, 3),
                    "cpu": round(cpu, 1),
                    "memory": memory,
                }
            )
        return {
            "name": record.name,
            "status": record.status.value,
            "mode": record.config.mode,
            "instances": record.instances,
            "restarts": record.restarts,
            "critical": record.config.critical,
            "enabled": record.config.enabled,
            "last_error": record.last_error,
            "processes": processes,
        }

    async def get_app(self, name: str) -> dict[str, Any]:
        status = await self.status()
        for app in status["apps"]:
            if app["name"] == name:
                return app  # type: ignore[no-any-return]
        raise AppNotFound(name, known=list(self.orchestrator.apps))

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
        app["recent_events"] = list(record.events)
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
            if not new.apps:
                self._permit_empty()
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

    async def status(call: Call) -> dict[str, Any]:
        """The daemon and every app with its processes."""
        return await service.status()

    async def list_apps(call: Call) -> list[dict[str, Any]]:
        """Every app with its processes."""
        return (await service.status())["apps"]  # type: ignore[no-any-return]

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
