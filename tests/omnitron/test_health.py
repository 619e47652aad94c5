"""Liveness probes: real apps that stop answering are restarted by their supervisor."""

from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from orchestrator_harness import open_orchestrator

from omnitron.config import define_ecosystem
from omnitron.daemon._health import HealthMonitor
from omnitron.daemon._records import EventKind

# An app serving HTTP on a port; once the file "hang" appears it removes it and
# stops answering: "http" mode keeps accepting but never replies, "tcp" mode
# closes its listening socket. Its next run answers again.
APP = textwrap.dedent(
    """
    import os, socket, sys, time
    port, mode = int(sys.argv[1]), sys.argv[2]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    held = []
    while True:
        conn, _ = server.accept()
        if os.path.exists("hang"):
            os.remove("hang")
            if mode == "tcp":
                server.close()
                conn.close()
                time.sleep(3600)
            held.append(conn)
            while True:
                conn, _ = server.accept()
                held.append(conn)
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
        conn.close()
    """
)

HANG_WITHIN = 60.0


async def until(predicate: Callable[[], object]) -> None:
    """Return once ``predicate()`` holds (checked every 50 ms; bound it with fail_after)."""
    while True:
        if predicate():
            return
        await trio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_config(tmp_path: Path, port: int, mode: str, health: dict[str, Any]) -> dict[str, Any]:
    (tmp_path / "app.py").write_text(APP)
    return {
        "name": "api",
        "command": [sys.executable, "app.py", str(port), mode],
        "ready": {"tcp": port},
        "stop_timeout": "2s",
        "health": {"interval": "0.2s", "timeout": "0.5s", "retries": 2, **health},
    }


@pytest.mark.parametrize(
    ("mode", "probe"),
    [
        ("http", "http"),
        ("tcp", "tcp"),
        ("tcp", "command"),
    ],
)
async def test_a_hung_app_is_detected_and_restarted(tmp_path: Path, mode: str, probe: str) -> None:
    port = free_port()
    health: dict[str, Any] = {
        "http": {"http": f"http://127.0.0.1:{port}/health"},
        "tcp": {"tcp": port},
        "command": {
            "command": [
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=0.4)",
            ]
        },
    }[probe]
    config = app_config(tmp_path, port, mode, health)
    async with open_orchestrator(tmp_path, [config]) as (orchestrator, _):
        with trio.fail_after(HANG_WITHIN):
            await orchestrator.wait_launched()
            await until(
                lambda: any(s["status"] == "healthy" for s in orchestrator.health.report("api"))
            )
        first_pid = orchestrator.apps["api"].processes[0].pid
        (tmp_path / "hang").write_text("")

        def replaced() -> bool:
            process = orchestrator.apps["api"].processes.get(0)
            return bool(process and process.pid not in (None, first_pid) and process.ready_at)

        with trio.fail_after(HANG_WITHIN):
            await until(replaced)
        record = orchestrator.apps["api"]
        process = record.processes[0]
        kinds = [e.kind for e in record.events]
        assert EventKind.HEALTH_FAILED in kinds
        failed = next(e for e in record.events if e.kind is EventKind.HEALTH_FAILED)
        assert failed.pid == first_pid
        assert "2 consecutive failures" in (failed.reason or "")
        assert record.restarts >= 1
        assert "health check failed" in (record.last_error or "")
        exited = next(e for e in record.events if e.kind is EventKind.EXITED)
        assert (exited.reason or "").startswith("health check failed")
        # The new process is probed again and is healthy.
        with trio.fail_after(HANG_WITHIN):
            await until(
                lambda: any(
                    s["status"] == "healthy" and s["pid"] == process.pid
                    for s in orchestrator.health.report("api")
                )
            )
        state = orchestrator.health.report("api")[0]
        assert state["failures"] == 0
        assert state["last_failure"]


async def test_health_restarts_count_toward_the_restart_intensity(tmp_path: Path) -> None:
    # The probe never succeeds: every run is stopped after `retries` failures,
    # and the supervisor gives up after max_restarts, as for crashes.
    port = free_port()
    config = app_config(tmp_path, port, "http", {"tcp": free_port()})
    config["restart_policy"] = {"max_restarts": 2, "window": "60s", "backoff": {"initial": "0s"}}
    async with open_orchestrator(tmp_path, [config]) as (orchestrator, _):
        with trio.fail_after(HANG_WITHIN):
            await until(lambda: orchestrator.apps["api"].crashed)
        record = orchestrator.apps["api"]
        assert sum(e.kind is EventKind.HEALTH_FAILED for e in record.events) == 3
        assert "restart limit exceeded" in (record.last_error or "")
        assert "health check failed" in (record.last_error or "")


async def test_no_probe_before_start_period_and_retries_then_unhealthy(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    port = free_port()  # nothing listens: every probe fails at once
    ecosystem = define_ecosystem(
        project="t",
        base_dir=tmp_path,
        apps=[
            {
                "name": "api",
                "command": ["x"],
                "health": {"tcp": port, "interval": "10s", "start_period": "30s", "retries": 3},
            }
        ],
    )
    app = ecosystem.apps[0]
    calls: list[tuple[str, int, int, str]] = []

    async def unhealthy(name: str, instance: int, pid: int, reason: str) -> None:
        calls.append((name, instance, pid, reason))

    monitor = HealthMonitor(unhealthy)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        monitor.watch(app, 0, 4242)
        await trio.sleep(29.9)
        assert monitor.report()[0]["checks"] == 0
        assert monitor.report()[0]["status"] == "starting"
        await trio.sleep(0.2)
        assert monitor.report()[0]["checks"] == 1
        assert monitor.report()[0]["status"] == "failing"
        assert calls == []
        await trio.sleep(25)  # probes at 40 and 50: the third failure
        assert monitor.report()[0]["failures"] == 3
        assert monitor.report()[0]["status"] == "unhealthy"
        assert [c[:3] for c in calls] == [("api", 0, 4242)]
        assert "3 consecutive failures" in calls[0][3]
        checks = monitor.report()[0]["checks"]
        await trio.sleep(100)  # the task ended with the call: no more probes
        assert monitor.report()[0]["checks"] == checks
        nursery.cancel_scope.cancel()


async def test_unwatch_cancels_the_probe_task(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ecosystem = define_ecosystem(
        project="t",
        base_dir=tmp_path,
        apps=[{"name": "api", "command": ["x"], "health": {"tcp": free_port(), "interval": "1s"}}],
    )

    async def unhealthy(name: str, instance: int, pid: int, reason: str) -> None:
        raise AssertionError("not reached")

    monitor = HealthMonitor(unhealthy)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        monitor.watch(ecosystem.apps[0], 0, 1)
        await trio.sleep(1.5)
        monitor.unwatch("api", 0)
        checks = monitor.report()[0]["checks"]
        await trio.sleep(10)
        assert monitor.report()[0]["checks"] == checks
        nursery.cancel_scope.cancel()


async def test_a_probe_command_that_cannot_run_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    # Real time: spawning a process runs in a worker thread.
    ecosystem = define_ecosystem(
        project="t",
        base_dir=tmp_path,
        apps=[
            {
                "name": "api",
                "command": ["x"],
                "health": {
                    "command": [str(tmp_path / "missing")],
                    "interval": "0.1s",
                    "retries": 2,
                },
            }
        ],
    )
    reasons: list[str] = []

    async def unhealthy(name: str, instance: int, pid: int, reason: str) -> None:
        reasons.append(reason)

    monitor = HealthMonitor(unhealthy)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        monitor.watch(ecosystem.apps[0], 0, 1)
        with trio.fail_after(HANG_WITHIN):
            await until(lambda: reasons)
        assert len(reasons) == 1
        assert "No such file" in reasons[0]
        assert monitor.report()[0]["status"] == "unhealthy"
        nursery.cancel_scope.cancel()
