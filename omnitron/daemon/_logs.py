"""Collects the output of every managed process into one log file per app.

Children never block on their pipes: the library's line delivery calls a sink that
only appends to a bounded in-memory buffer. One writer task drains the buffers to
``$OMNITRON_HOME/logs/<app>.log`` in batches, off the event loop. When an app
produces lines faster than they can be written, the oldest buffered lines are
dropped and a marker line says how many.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

__all__ = ["LogCollector"]

log = structlog.get_logger("omnitron.logs")

#: Lines kept per app between two flushes before the oldest are dropped.
DEFAULT_BUFFER_LINES = 10_000
#: How often the writer drains buffers when lines keep arriving.
FLUSH_INTERVAL = 0.1


def _escape(line: str) -> str:
    """Keep one log line on one line and free of terminal escapes."""
    if line.isprintable():
        return line
    return "".join(ch if ch.isprintable() or ch == "\t" else f"\\x{ord(ch):02x}" for ch in line)


class _AppLog:
    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.lines: collections.deque[str] = collections.deque()
        self.limit = limit
        self.dropped = 0

    def push(self, text: str) -> None:
        if len(self.lines) >= self.limit:
            self.lines.popleft()
            self.dropped += 1
        self.lines.append(text)

    def take(self) -> list[str]:
        batch = list(self.lines)
        self.lines.clear()
        if self.dropped:
            stamp = _timestamp()
            batch.insert(
                0, f"{stamp} omnitron[-] sys | {self.dropped} lines dropped (log buffer full)\n"
            )
            self.dropped = 0
        return batch


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class LogCollector:
    """Per-app log files fed by non-blocking sinks.

    Args:
        directory: Where ``<app>.log`` files go (created if missing, mode 0700).
        buffer_lines: Lines buffered per app between flushes.
    """

    def __init__(self, directory: Path, *, buffer_lines: int = DEFAULT_BUFFER_LINES) -> None:
        self.directory = directory
        self._buffer_lines = buffer_lines
        self._apps: dict[str, _AppLog] = {}
        self._wakeup = trio.Event()
        self.write_errors = 0

    def path_for(self, app: str) -> Path:
        """The log file of ``app``."""
        return self.directory / f"{app}.log"

    def _app(self, app: str) -> _AppLog:
        entry = self._apps.get(app)
        if entry is None:
            entry = self._apps[app] = _AppLog(self.path_for(app), self._buffer_lines)
        return entry

    def sink(self, app: str, instance: int, stream: str) -> Callable[[str], None]:
        """A line sink for ``Output.lines``: tags and buffers each line, never blocks."""
        entry = self._app(app)
        tag = f"{app}[{instance}] {stream} | "

        def deliver(line: str) -> None:
            entry.push(f"{_timestamp()} {tag}{_escape(line)}\n")
            self._wakeup.set()

        return deliver

    def note(self, app: str, message: str) -> None:
        """Write a line from the daemon itself into ``app``'s log (exits, restarts)."""
        self._app(app).push(f"{_timestamp()} omnitron[-] sys | {_escape(message)}\n")
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain buffers to disk until cancelled; flushes what is left on the way out.

        Cancellation: a final flush runs shielded, then ``Cancelled`` propagates.
        """
        await trio.to_thread.run_sync(self._prepare)
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self.flush()
                await trio.sleep(FLUSH_INTERVAL)
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    def _prepare(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def flush(self) -> None:
        """Write every buffered line now."""
        batches = [
            (entry, entry.take()) for entry in self._apps.values() if entry.lines or entry.dropped
        ]
        if not batches:
            return
        await trio.to_thread.run_sync(self._write, batches)

    def _write(self, batches: list[tuple[_AppLog, list[str]]]) -> None:
        for entry, lines in batches:
            try:
                fd = os.open(
                    entry.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
                try:
                    data = "".join(lines).encode("utf-8", "replace")
                    view = memoryview(data)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                finally:
                    os.close(fd)
            except OSError as exc:
                # A full or read-only disk loses these lines, never the daemon.
                self.write_errors += 1
                log.warning(
                    "log_write_failed", path=str(entry.path), error=str(exc), lines=len(lines)
                )
