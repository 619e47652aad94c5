"""Collects the output of every managed process into one log file per app.

Children never block on their pipes: the library's line delivery calls a sink that
only appends to a bounded in-memory buffer. One writer task drains the buffers to
``$OMNITRON_HOME/logs/<app>.log`` in batches, off the event loop. When an app
produces lines faster than they can be written, the oldest buffered lines are
dropped and a marker line says how many.

Files are opened the safe way (:mod:`._safefile`): never through a symbolic link,
never a file of another user, never in a directory others can write unless it is
sticky. When no thread can be started for a write (a full pids cgroup), the lines
stay buffered, the failure is counted, the collector says it is degraded, and the
write is retried with a growing delay; the daemon never exits over it.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from ._safefile import UnsafeLogPath, check_log_directory, open_for_append

__all__ = ["LogCollector"]

log = structlog.get_logger("omnitron.logs")

#: Lines kept per app between two flushes before the oldest are dropped.
DEFAULT_BUFFER_LINES = 10_000
#: How often the writer drains buffers when lines keep arriving.
FLUSH_INTERVAL = 0.1
#: Longest wait between two attempts to start a writer thread.
MAX_RETRY_DELAY = 5.0

RunSync = Callable[..., Awaitable[Any]]


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

    def put_back(self, batch: list[str]) -> None:
        """Return a batch that could not be written to the front of the buffer."""
        self.lines.extendleft(reversed(batch))
        while len(self.lines) > self.limit:
            self.lines.popleft()
            self.dropped += 1

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
        run_sync: Runs the blocking writes in a worker thread (injectable to test
            a machine where no thread can be started).

    Attributes:
        write_errors: Batches the disk refused (full, read-only, unsafe file).
        thread_failures: Writes that could not start a worker thread.
        degraded: Why writing is currently impaired, or ``None``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        buffer_lines: int = DEFAULT_BUFFER_LINES,
        run_sync: RunSync = trio.to_thread.run_sync,
    ) -> None:
        self.directory = directory
        self._buffer_lines = buffer_lines
        self._run_sync = run_sync
        self._apps: dict[str, _AppLog] = {}
        self._wakeup = trio.Event()
        self._refused: set[Path] = set()
        self.write_errors = 0
        self.thread_failures = 0
        self.degraded: str | None = None

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

        Raises:
            UnsafeLogPath: The log directory can be written by another user.
        """
        # A mkdir and a stat: not worth a thread, and a thread may not be available.
        check_log_directory(self.directory)
        task_status.started()
        delay = FLUSH_INTERVAL
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                if await self.flush():
                    delay = FLUSH_INTERVAL
                else:
                    # No thread: keep the lines, try again later, a little later each time.
                    self._wakeup.set()
                    delay = min(delay * 2, MAX_RETRY_DELAY)
                await trio.sleep(delay)
        finally:
            with trio.CancelScope(shield=True):
                if not await self.flush():
                    # The last chance: write on the loop rather than lose the lines.
                    self._write(self._take_all())

    def _take_all(self) -> list[tuple[_AppLog, list[str]]]:
        return [
            (entry, entry.take()) for entry in self._apps.values() if entry.lines or entry.dropped
        ]

    async def flush(self) -> bool:
        """Write every buffered line now.

        Returns ``False`` if no worker thread could be started: the lines are kept
        for the next attempt and :attr:`degraded` says why.
        """
        batches = self._take_all()
        if not batches:
            return True
        try:
            await self._run_sync(self._write, batches)
        except RuntimeError as exc:  # "can't start new thread"
            for entry, lines in batches:
                entry.put_back(lines)
            self.thread_failures += 1
            if self.degraded is None:
                log.error("log_writer_degraded", error=str(exc), failures=self.thread_failures)
            self.degraded = f"cannot start a thread to write logs: {exc}"
            return False
        if self.degraded is not None:
            log.warning("log_writer_recovered", failures=self.thread_failures)
            self.degraded = None
        return True

    def _write(self, batches: list[tuple[_AppLog, list[str]]]) -> None:
        for entry, lines in batches:
            try:
                fd = open_for_append(entry.path)
                try:
                    data = "".join(lines).encode("utf-8", "replace")
                    view = memoryview(data)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                finally:
                    os.close(fd)
            except UnsafeLogPath as exc:
                # Never write through a planted link; say so once per file.
                self.write_errors += 1
                if entry.path not in self._refused:
                    self._refused.add(entry.path)
                    log.error("log_file_refused", path=str(entry.path), error=str(exc))
            except OSError as exc:
                # A full or read-only disk loses these lines, never the daemon.
                self.write_errors += 1
                log.warning(
                    "log_write_failed", path=str(entry.path), error=str(exc), lines=len(lines)
                )
