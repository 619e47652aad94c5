"""Liveness probes: one task per ready process that has a ``health`` config.

A probe is an HTTP ``GET`` (any status below 400 is healthy), a TCP connect, or a
command run in the app's ``cwd`` (exit 0 is healthy), each bounded by ``timeout``.
The first probe runs ``start_period`` seconds after the process became ready, the
next ones every ``interval``. After ``retries`` consecutive failures the monitor
calls ``on_unhealthy``, which records the reason and stops the process; its
supervisor then restarts it like any crash (backoff, intensity).

The tasks live in the monitor's nursery; the orchestrator starts one when a
process becomes ready (:meth:`HealthMonitor.watch`) and cancels it when the
process exits or stops (:meth:`HealthMonitor.unwatch`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

from .._log import get_logger
from ..config import AppConfig, HealthConfig

__all__ = ["HealthMonitor", "ProbeFailed", "ProcessHealth", "probe"]

log = get_logger("omnitron.health")

_MAX_OUTPUT = 200
"""Characters of a failing command's output kept in the failure text."""


class ProbeFailed(Exception):
    """A probe answered, but not healthily (its message says how)."""


@attrs.define
class ProcessHealth:
    """What the probes of one process found so far.

    Attributes:
        status: ``starting`` (within ``start_period``), ``healthy``, ``unhealthy``
            (``retries`` failures: being restarted) or ``failing`` (failed, not yet
            ``retries`` times).
        checks: Probes run.
        failures: Consecutive failures.
        last_result: ``ok`` or the last probe's failure text.
        last_latency: Seconds the last probe took.
        last_checked: When, in seconds since the epoch.
        last_failure: The last failure's text (kept after a success).
    """

    app: str
    instance: int
    pid: int
    kind: str
    status: str = "starting"
    checks: int = 0
    failures: int = 0
    last_result: str | None = None
    last_latency: float | None = None
    last_checked: float | None = None
    last_failure: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _kind(config: HealthConfig) -> str:
    if config.http is not None:
        return "http"
    if config.tcp is not None:
        return "tcp"
    return "command"


async def _http(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme == "https":
        raise ProbeFailed("https probes are not supported; probe the plain HTTP port")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        request = f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode("latin-1"))
        received = b""
        while b"\r\n" not in received and len(received) < 8192:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            received += chunk
    line = received.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    fields = line.split()
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise ProbeFailed(f"not an HTTP response: {line[:80]!r}" if line else "no HTTP response")
    if int(fields[1]) >= 400:
        raise ProbeFailed(f"HTTP {' '.join(fields[1:])}")


async def _tcp(host: str, port: int) -> None:
    stream = await trio.open_tcp_stream(host, port)
    await stream.aclose()


async def _command(argv: tuple[str, ...], app: AppConfig) -> None:
    result = await trio.run_process(
        list(argv),
        cwd=app.cwd,
        env={**os.environ, **app.env},
        stdin=b"",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stderr or result.stdout).decode("utf-8", "replace").strip()
        how = f"exit code {result.returncode}" if result.returncode > 0 else "killed"
        raise ProbeFailed(f"{how}: {output[:_MAX_OUTPUT]}" if output else how)


async def probe(app: AppConfig, config: HealthConfig) -> None:
    """Run one probe of ``app``, within ``config.timeout``.

    Raises:
        ProbeFailed: Unhealthy, with the reason (refused, timed out, HTTP 500...).
    """
    try:
        with trio.fail_after(config.timeout):
            if config.http is not None:
                await _http(config.http)
            elif config.tcp is not None:
                await _tcp(config.host or "127.0.0.1", config.tcp)
            else:
                assert config.command is not None
                await _command(config.command, app)
    except trio.TooSlowError:
        raise ProbeFailed(f"timed out after {config.timeout:g}s") from None
    except OSError as exc:
        raise ProbeFailed(exc.strerror or str(exc)) from None


Unhealthy = Callable[[str, int, int, str], Awaitable[None]]
"""``on_unhealthy(app, instance, pid, reason)``: stop the process; returns when done."""


class HealthMonitor:
    """The probe tasks of every process, and what they found (:meth:`report`).

    Args:
        on_unhealthy: Called by a process's task after ``retries`` consecutive
            failures; the task ends when it returns (the process's next run gets a
            new task once ready).
    """

    def __init__(self, on_unhealthy: Unhealthy) -> None:
        self._on_unhealthy = on_unhealthy
        self._nursery: trio.Nursery | None = None
        self._tasks: dict[tuple[str, int], trio.CancelScope] = {}
        self.states: dict[tuple[str, int], ProcessHealth] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the probe tasks until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def watch(self, app: AppConfig, instance: int, pid: int) -> None:
        """Probe process ``instance`` (``pid``) of ``app`` from now on, if it has a probe."""
        self.unwatch(app.name, instance)
        if app.health is None or self._nursery is None:
            return
        scope = trio.CancelScope()
        key = (app.name, instance)
        self._tasks[key] = scope
        previous = self.states.get(key)
        state = self.states[key] = ProcessHealth(
            app=app.name,
            instance=instance,
            pid=pid,
            kind=_kind(app.health),
            last_failure=previous.last_failure if previous is not None else None,
        )
        self._nursery.start_soon(self._probe_loop, scope, app, app.health, state)

    def unwatch(self, app: str, instance: int) -> None:
        """Stop probing that process (it exited or is being stopped)."""
        scope = self._tasks.pop((app, instance), None)
        if scope is not None:
            scope.cancel()

    def forget(self, app: str) -> None:
        """Stop probing every process of ``app`` and drop what was found."""
        for key in [k for k in self._tasks if k[0] == app]:
            self.unwatch(*key)
        for key in [k for k in self.states if k[0] == app]:
            del self.states[key]

    def report(self, app: str | None = None) -> list[dict[str, Any]]:
        """What the probes found, per process (of ``app``, or all), sorted."""
        return [
            state.to_wire()
            for key, state in sorted(self.states.items())
            if app is None or key[0] == app
        ]

    async def _probe_loop(
        self, scope: trio.CancelScope, app: AppConfig, config: HealthConfig, state: ProcessHealth
    ) -> None:
        with scope:
            await trio.sleep(config.start_period)
            while True:
                started = trio.current_time()
                try:
                    await probe(app, config)
                except Exception as exc:  # a probe that cannot run is a failed probe
                    text = str(exc) if isinstance(exc, ProbeFailed) else f"probe error: {exc!r}"
                    state.failures += 1
                    state.last_result = state.last_failure = text
                    state.status = "failing"
                else:
                    state.failures = 0
                    state.last_result = "ok"
                    state.status = "healthy"
                state.checks += 1
                state.last_latency = round(trio.current_time() - started, 6)
                state.last_checked = time.time()
                if state.failures >= config.retries:
                    state.status = "unhealthy"
                    reason = f"{state.failures} consecutive failures, last: {state.last_failure}"
                    try:
                        await self._on_unhealthy(app.name, state.instance, state.pid, reason)
                    except Exception:  # never let one process's probe take the daemon down
                        log.exception("health_restart_failed", app=app.name, pid=state.pid)
                    return
                await trio.sleep(config.interval)
