"""Collects the output of every managed process into one log file per app.

Children never block on their pipes: the library's batch delivery
(``Output.batches``) hands the sink the complete lines of each read as bytes, and
the sink only tags them (one C pass: the read's timestamp, app, instance and
stream before each line) and appends them to a bounded in-memory buffer. One
writer task drains the buffers to ``$OMNITRON_HOME/logs/<app>.log`` off the event
loop, many lines per write and every app's lines in one thread hop. The bytes go
from the pipe to the file without being decoded: a read of plain ASCII (the usual
case, found in two C passes) is written as it is; only a read with a control or
a non-ASCII byte is escaped, by the writer thread.

Limits, per app (journald style):

- a **rate**: a token bucket of ``rate`` bytes per second holding at most
  ``burst`` bytes (a line costs its bytes plus :data:`LINE_OVERHEAD`). Lines
  beyond it are not kept (of a read, the first lines that fit are kept); the next
  line kept is preceded by a ``suppressed N lines (rate limit)`` marker, and
  :meth:`LogCollector.stats` counts them (``inspect`` shows it);
- a **buffer** of ``buffer_bytes``, the lines being written included: when the
  disk is slower than the app, the oldest buffered lines are dropped and a marker
  line says how many. Memory never holds more than the buffer (plus the ring
  below).

Files are rotated at ``max_size`` bytes (``<app>.log`` -> ``<app>.log.1`` ...,
``max_files`` kept, gzip-compressed when ``compress``), by the writer thread
between two lines: no line is split, lost or written twice across a rotation.
Each app also keeps its last ``ring`` lines in memory for ``omnitron logs`` (the
reads that hold them, decoded into lines when asked), and followers
(``logs --follow``) are handed each line as it is read (decoded only while there
is a follower).

A write the disk refuses (full, read-only, the directory removed) never stops the
daemon nor the app: the daemon keeps draining the pipes, the lines of that write
are lost and counted (``write_errors``, ``lost_lines`` in :meth:`LogCollector.stats`),
the next write that succeeds starts with a ``N lines lost (log write failed: ...)``
marker, and :attr:`LogCollector.degraded` names the app and the error meanwhile. A
removed log directory is created again (0700) on the next write.

Files are opened the safe way (:mod:`._safefile`): never through a symbolic link,
never a file of another user, never in a directory others can write unless it is
sticky. When no thread can be started for a write (a full pids cgroup), the lines
stay buffered, the failure is counted, the collector says it is degraded, and the
write is retried with a growing delay; the daemon never exits over it.
"""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import functools
import gzip
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import trio

from .._eventtext import describe
from .._log import get_logger
from ._safefile import UnsafeLogPath, check_log_directory, open_for_append

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_BURST",
    "DEFAULT_RATE",
    "DEFAULT_RING",
    "LogCollector",
    "LogLine",
]

log = get_logger("omnitron.logs")

MiB = 1024 * 1024
#: What a line costs the rate limit beyond its bytes.
LINE_OVERHEAD = 64
#: What a buffered read costs beyond its bytes (the bytes object, its slot).
CHUNK_OVERHEAD = 64
#: Bytes buffered per app between two writes before the oldest lines are dropped.
DEFAULT_BUFFER_BYTES = 64 * MiB
#: Sustained bytes per second kept per app; lines beyond it are suppressed.
DEFAULT_RATE = 64 * MiB
#: Bytes an app may write at once above the rate (the token bucket's size).
DEFAULT_BURST = 128 * MiB
#: Lines per app kept in memory for ``omnitron logs``.
DEFAULT_RING = 1000
#: While an app is over its rate, seconds between two refills of its bucket.
SUPPRESS_RECHECK = 0.001
#: How often the writer drains buffers when lines keep arriving.
FLUSH_INTERVAL = 0.1
#: Bytes buffered by one app that make the writer start without waiting for the
#: interval (a burst reaches the file sooner, and the buffer stays far from full).
EARLY_WRITE = 2 * MiB
#: Longest wait between two attempts to start a writer thread.
MAX_RETRY_DELAY = 5.0
#: Most buffers one ``writev`` takes (Linux ``IOV_MAX``).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
#: Compression level of rotated files (fast: the writer thread waits for it).
GZIP_LEVEL = 3
#: The streams a ring records, by their number in it (others are added as seen).
_STREAMS = ["out", "err", "sys"]
#: Numbers a ring keeps per read: time, instance (-1: the daemon), stream, lines, end.
_META = 5

RunSync = Callable[..., Awaitable[Any]]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._records import AppEvent

#: Events the daemon log records as warnings (the rest are info).
_WARNING_EVENTS = frozenset({"exited", "restart_failed", "failed", "crashed", "errored"})


class LogLine(NamedTuple):
    """One captured line, as the ring keeps it and followers receive it."""

    time: float
    app: str
    instance: int | None  # None: a line of the daemon itself
    stream: str  # "out", "err" or "sys"
    text: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "app": self.app,
            "instance": self.instance,
            "output": self.stream,
            "line": self.text,
        }


def _escape(line: str) -> str:
    """Keep one log line on one line and free of terminal escapes."""
    if line.isprintable():
        return line
    return "".join(ch if ch.isprintable() or ch == "\t" else f"\\x{ord(ch):02x}" for ch in line)


_CONTROLS = bytes(range(32)).replace(b"\n", b"") + b"\x7f"


class _Unclean(bytes):
    """Buffered lines that hold a control or a non-ASCII byte: the writer thread
    passes them through :func:`_clean`, and writes every other read as it is."""

    __slots__ = ()


def _plain(data: bytes) -> bool:
    """Whether ``data`` is ASCII without a control other than the newline (two C passes)."""
    return data.isascii() and len(data.translate(None, _CONTROLS)) == len(data)


def _clean(batch: bytes) -> bytes:
    """``batch`` (whole lines, UTF-8) with every line kept on one line and free of
    terminal escapes (:func:`_escape`), invalid UTF-8 replaced.

    The usual batch, plain ASCII without a control, is found in two C passes and
    returned as it is; a batch of valid, printable UTF-8 in a few more; only a batch
    with a control or a non-printable character is escaped line by line.
    """
    if batch.isascii():
        if _plain(batch):
            return batch
        text = batch.decode("ascii")
    else:
        try:
            text = batch.decode("utf-8")
        except UnicodeDecodeError:
            text = batch.decode("utf-8", "replace")
        else:
            if text.replace("\n", "").replace("\t", "").isprintable():
                return batch
    *lines, rest = text.split("\n")  # only "\n" ends a line here; rest is ""
    return ("".join(_escape(line) + "\n" for line in lines) + rest).encode("utf-8")


class _Clock:
    """``time.time()`` and its ISO form, formatted once per millisecond (its date
    and time of day once per second)."""

    __slots__ = ("_ms", "_prefix", "_second", "_text")

    def __init__(self) -> None:
        self._ms = -1
        self._second = -1
        self._prefix = ""
        self._text = ""

    def stamp(self, now: float) -> str:
        ms = int(now * 1000)
        if ms != self._ms:
            self._ms = ms
            second, fraction = divmod(ms, 1000)
            if second != self._second:
                self._second = second
                self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._text = f"{self._prefix}.{fraction:03d}Z"
        return self._text


_clock = _Clock()


def _timestamp() -> str:
    return _clock.stamp(time.time())


class _Ring:
    """The reads that hold an app's last lines, packed: their bytes end to end in
    one ``bytearray``, and five numbers per read in one ``array('d')`` (its time,
    instance, stream, lines, and where its bytes end). About 40 bytes a read
    beside its bytes, where a tuple per read took about 150. Lines are split
    and decoded only when asked (:meth:`reads`).

    Reads are forgotten oldest first; their room is given back in bulk, once the
    forgotten reads are a quarter of those held (a copy of the kept reads' numbers
    every quarter ring or so).
    """

    __slots__ = ("_base", "_data", "_first", "_meta", "_start", "lines")

    def __init__(self) -> None:
        self._data = bytearray()
        self._meta = array.array("d")
        self._first = 0  # the oldest read kept, as an index of the reads in _meta
        self._base = 0  # the offset of _data[0] in the stream of bytes ever kept
        self._start = 0  # the offset of the oldest kept read's first byte
        self.lines = 0  # lines of the reads kept

    def __len__(self) -> int:
        return len(self._meta) // _META - self._first

    def append(
        self, when: float, instance: int | None, stream: str, data: bytes, lines: int
    ) -> None:
        try:
            code = _STREAMS.index(stream)
        except ValueError:
            code = len(_STREAMS)
            _STREAMS.append(stream)
        self._data += data
        end = self._base + len(self._data)
        self._meta.extend((when, -1 if instance is None else instance, code, lines, end))
        self.lines += lines

    def trim(self, keep: int) -> None:
        """Forget the oldest reads not needed to hold the last ``keep`` lines."""
        meta, first = self._meta, self._first
        count = len(meta) // _META
        while first < count and self.lines - meta[first * _META + 3] >= keep:
            self.lines -= int(meta[first * _META + 3])
            self._start = int(meta[first * _META + 4])
            first += 1
        self._first = first
        if first and first * 4 >= count:
            del meta[: first * _META]
            del self._data[: self._start - self._base]
            self._base = self._start
            self._first = 0

    def clear(self) -> None:
        self._base = self._start = self._base + len(self._data)
        self._data = bytearray()
        self._meta = array.array("d")
        self._first = self.lines = 0

    def reads(self) -> Iterator[tuple[float, int | None, str, bytes]]:
        """``(time, instance, stream, data)`` of each read kept, oldest first."""
        meta, data, base = self._meta, self._data, self._base
        start = self._start
        for i in range(self._first * _META, len(meta), _META):
            when, instance, code, _, end = meta[i : i + _META]
            yield (
                when,
                None if instance < 0 else int(instance),
                _STREAMS[int(code)],
                bytes(data[start - base : int(end) - base]),
            )
            start = int(end)


def _line_texts(data: bytes) -> list[str]:
    return data.decode("utf-8", "replace").split("\n")[:-1]


class _AppLog:
    """One app's buffer, rate limit, counters and ring.

    Small when idle (the usual app writes a few lines now and then): the write
    buffer is a deque only while lines wait for the writer (``None`` otherwise),
    and the ring packs its reads (:class:`_Ring`).
    """

    __slots__ = (
        "_monotonic",
        "buffer_bytes",
        "buffer_lines",
        "burst",
        "chunks",
        "count",
        "directory",
        "dropped",
        "dropped_total",
        "last_error",
        "lost",
        "lost_total",
        "name",
        "rate",
        "refilled",
        "ring",
        "ring_size",
        "size",
        "suppressed",
        "suppressed_total",
        "tokens",
        "write_errors",
        "writing",
    )

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        buffer_bytes: int,
        buffer_lines: int | None,
        rate: float,
        burst: float,
        ring: int,
        monotonic: Callable[[], float],
    ) -> None:
        self.directory = directory  # shared by every app
        self.name = name
        # Tagged lines waiting for the writer: one ``bytes`` of whole lines per read;
        # ``None`` while nothing waits (an empty deque holds a 0.5 KiB block).
        self.chunks: collections.deque[bytes] | None = None
        self.size = 0  # memory taken by ``chunks``: their bytes plus CHUNK_OVERHEAD each
        self.count = 0  # lines in ``chunks``
        # Bytes taken by the writer and not written yet: still in memory, so they
        # count against the buffer (the buffer then drops from ``chunks``).
        self.writing = 0
        self.buffer_bytes = buffer_bytes
        self.buffer_lines = buffer_lines
        self.rate = rate
        self.burst = burst
        self._monotonic = monotonic
        self.tokens = burst
        self.refilled = monotonic()
        self.dropped = 0  # since the last marker (buffer full)
        self.suppressed = 0  # since the last marker (rate limit)
        self.dropped_total = 0
        self.suppressed_total = 0
        # Writes the disk refused: counted, and their lines, by the writer thread.
        self.write_errors = 0
        self.lost = 0  # since the last marker
        self.lost_total = 0
        self.last_error: str | None = None
        self.ring_size = ring
        self.ring = _Ring()

    @property
    def path(self) -> Path:
        """The app's log file (made when needed: a ``Path`` per app is 0.3 KiB)."""
        return self.directory / f"{self.name}.log"

    def admit(self, data: bytes) -> tuple[bytes, int]:
        """The first lines of ``data`` the bucket holds (refilled if short), and how many.

        The others are counted as suppressed; lines suppressed before and not marked
        yet get their marker ahead of the lines kept. The caller takes the tokens.
        """
        lines = data.count(b"\n")
        end, kept = len(data), lines
        if self.tokens < end + LINE_OVERHEAD * lines:
            now = self._monotonic()
            if now - self.refilled < SUPPRESS_RECHECK and self.suppressed:
                # Suppressing: look at the clock again only now and then (a flood's
                # reads arrive microseconds apart; the bucket would hold a few bytes).
                self._suppress(lines)
                return b"", 0
            self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
            self.refilled = now
            budget = self.tokens
            if end + LINE_OVERHEAD * lines > budget:
                # Keep the lines that fit: a first guess from the read's mean line, then
                # back one line at a time (a few steps) until within the budget.
                guess = int(budget * end / (end + LINE_OVERHEAD * lines))
                end = data.rfind(b"\n", 0, max(0, guess)) + 1
                kept = data.count(b"\n", 0, end)
                while end and end + LINE_OVERHEAD * kept > budget:
                    end = data.rfind(b"\n", 0, end - 1) + 1
                    kept -= 1
        if kept and self.suppressed:
            self.mark_suppressed()
        self._suppress(lines - kept)
        return data[:end], kept

    def _suppress(self, lines: int) -> None:
        self.suppressed += lines
        self.suppressed_total += lines

    def push(self, text: str) -> None:
        if self.suppressed:
            self.mark_suppressed()
        self.append(text.encode("utf-8", "replace"), 1)

    def mark_suppressed(self) -> None:
        """Buffer the ``suppressed N lines`` marker of the lines suppressed so far."""
        count, self.suppressed = self.suppressed, 0
        self.append(
            f"{_timestamp()} omnitron[-] sys | suppressed {count} lines (rate limit)\n".encode(), 1
        )

    def append(self, data: bytes, lines: int) -> None:
        chunks = self.chunks
        if chunks is None:
            chunks = self.chunks = collections.deque()
        chunks.append(data)
        self.size += len(data) + CHUNK_OVERHEAD
        self.count += lines
        if self.size + self.writing > self.buffer_bytes or self.buffer_lines is not None:
            self._trim()

    def remember(
        self, when: float, instance: int | None, stream: str, data: bytes, lines: int
    ) -> None:
        """Keep a read in the ring; forget the oldest reads not needed for its size."""
        self.ring.append(when, instance, stream, data, lines)
        self.ring.trim(self.ring_size)

    def _trim(self) -> None:
        """Drop the oldest lines until the buffer is within its bounds (whole lines)."""
        limit = self.buffer_lines
        chunks = self.chunks
        while chunks and (
            self.size + self.writing > self.buffer_bytes
            or (limit is not None and self.count > limit)
        ):
            oldest = chunks[0]
            lines = oldest.count(b"\n")
            excess = self.size + self.writing - self.buffer_bytes  # bytes to drop
            cut = oldest.find(b"\n", excess - 1) + 1 if excess > 0 else 0
            if limit is not None and self.count > limit:
                end = 0
                for _ in range(min(self.count - limit, lines)):  # lines to drop
                    end = oldest.find(b"\n", end) + 1
                cut = max(cut, end)
            if 0 < cut < len(oldest):  # the first lines of the oldest read
                gone = oldest.count(b"\n", 0, cut)
                chunks[0] = type(oldest)(oldest[cut:])
                self.size -= cut
            else:
                gone = lines
                chunks.popleft()
                self.size -= len(oldest) + CHUNK_OVERHEAD
            self.count -= gone
            self.dropped += gone
            self.dropped_total += gone

    def put_back(self, batch: list[bytes]) -> None:
        """Return a batch that could not be written to the front of the buffer."""
        self.writing = 0
        if self.chunks is None:
            self.chunks = collections.deque()
        self.chunks.extendleft(reversed(batch))
        self.size += sum(len(data) + CHUNK_OVERHEAD for data in batch)
        self.count += sum(data.count(b"\n") for data in batch)
        self._trim()

    def take(self) -> list[bytes]:
        """Everything buffered, with its markers, for the writer (see :attr:`writing`)."""
        batch = list(self.chunks) if self.chunks else []
        self.chunks = None  # (``clear()`` would allocate a new block)
        self.writing += self.size
        self.size = self.count = 0
        if self.dropped:
            marker = f"{_timestamp()} omnitron[-] sys | {self.dropped} lines dropped"
            batch.insert(0, f"{marker} (log buffer full)\n".encode())
            self.dropped = 0
        if self.suppressed:
            count, self.suppressed = self.suppressed, 0
            batch.append(
                f"{_timestamp()} omnitron[-] sys | suppressed {count} lines (rate limit)\n".encode()
            )
        return batch


class LogCollector:
    """Per-app log files fed by non-blocking sinks.

    Args:
        directory: Where ``<app>.log`` files go (created if missing, mode 0700).
        buffer_bytes: Bytes buffered per app between two writes.
        buffer_lines: Optionally, also at most this many lines.
        rate: Bytes per second kept per app (see the module's docstring).
        burst: Bytes kept at once above the rate.
        ring: Lines per app kept in memory for :meth:`tail`.
        max_size: Rotate ``<app>.log`` when it reaches this size (0: never).
        max_files: Rotated files kept per app.
        compress: Gzip rotated files.
        run_sync: Runs the blocking writes in a worker thread (injectable to test
            a machine where no thread can be started).
        monotonic: The clock of the rate limit (injectable for tests).

    Attributes:
        write_errors: Batches the disk refused (full, read-only, unsafe file).
        thread_failures: Writes that could not start a worker thread.
        degraded: Why writing is currently impaired, or ``None``.
        rotations: Files rotated so far.
    """

    def __init__(
        self,
        directory: Path,
        *,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        buffer_lines: int | None = None,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        ring: int = DEFAULT_RING,
        max_size: int = 0,
        max_files: int = 10,
        compress: bool = True,
        run_sync: RunSync = trio.to_thread.run_sync,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self._new_app = functools.partial(
            _AppLog,
            buffer_bytes=buffer_bytes,
            buffer_lines=buffer_lines,
            rate=rate,
            burst=burst,
            ring=ring,
            monotonic=monotonic,
        )
        self.max_size = max_size
        self.max_files = max_files
        self.compress = compress
        self._run_sync = run_sync
        self._apps: dict[str, _AppLog] = {}
        self._wakeup = trio.Event()
        self._early = trio.Event()  # an app has buffered EARLY_WRITE bytes
        self._io = trio.Lock()
        self._refused: set[Path] = set()
        self._followers: set[Callable[[LogLine], None]] = set()
        self.write_errors = 0
        self.thread_failures = 0
        self.rotations = 0
        self._no_thread: str | None = None
        self._failing: dict[str, str] = {}  # app: why its last write failed

    @property
    def degraded(self) -> str | None:
        """Why writing is impaired now (no thread, or an app's file refusing writes)."""
        if self._no_thread is not None:
            return self._no_thread
        if self._failing:
            app, error = next(iter(self._failing.items()))
            more = f" (and {len(self._failing) - 1} more apps)" if len(self._failing) > 1 else ""
            return f"log writes failing: {app}: {error}{more}"
        return None

    def path_for(self, app: str) -> Path:
        """The log file of ``app``."""
        return self.directory / f"{app}.log"

    def _app(self, app: str) -> _AppLog:
        entry = self._apps.get(app)
        if entry is None:
            entry = self._apps[app] = self._new_app(self.directory, app)
        return entry

    def sink(self, app: str, instance: int, stream: str) -> Callable[[bytes], None]:
        """A batch sink for ``Output.batches``: tags and buffers a read's lines, never blocks.

        The sink takes whole lines as bytes (each ending with a newline), any number
        at once: one call per read of the pipe.
        """
        return _Sink(self, self._app(app), app, instance, stream).deliver

    def note(self, app: str, message: str) -> None:
        """Write a line from the daemon itself into ``app``'s log (exits, restarts)."""
        entry = self._app(app)
        now = time.time()
        text = _escape(message)
        entry.push(f"{_clock.stamp(now)} omnitron[-] sys | {text}\n")
        entry.remember(now, None, "sys", text.encode("utf-8", "replace") + b"\n", 1)
        if self._followers:
            self._tell(LogLine(now, app, None, "sys", text))
        self._wakeup.set()

    def event(self, app: str, event: AppEvent) -> None:
        """Record an app's lifecycle event: a line in its log, a structured one in ``daemon.log``.

        The daemon log gets ``event='app_<kind>' app=... instance=... pid=... reason=...
        delay=...`` (the fields the event has). Logging never raises into the caller.
        """
        fields = event.to_wire()
        self.note(app, describe(fields))
        del fields["time"]
        kind = fields.pop("kind")
        level = "warning" if kind in _WARNING_EVENTS else "info"
        try:
            getattr(log, level)(f"app_{kind}", app=app, **fields)
        except Exception:  # a failing daemon log never reaches supervision (PC-21)
            self.write_errors += 1

    def _tell(self, record: LogLine) -> None:
        """Hand ``record`` to every follower; one that fails is dropped, never the line."""
        for follower in list(self._followers):
            try:
                follower(record)
            except Exception as exc:
                self._followers.discard(follower)
                log.error("log_follower_failed", error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ readers

    def apps(self) -> list[str]:
        """Apps that have a buffer (that produced a line or a note)."""
        return list(self._apps)

    def tail(self, app: str) -> list[LogLine]:
        """The last lines of ``app`` kept in memory, oldest first."""
        entry = self._apps.get(app)
        if entry is None:
            return []
        lines = [
            LogLine(when, app, instance, stream, text)
            for when, instance, stream, data in entry.ring.reads()
            for text in _line_texts(data)
        ]
        return lines[-entry.ring_size :] if entry.ring_size else []

    def stats(self, app: str) -> dict[str, Any]:
        """Counters of ``app``'s log, as ``inspect`` shows them."""
        entry = self._apps.get(app)
        return {
            "file": str(self.path_for(app)),
            "buffered_bytes": entry.size + entry.writing if entry else 0,
            "suppressed_lines": entry.suppressed_total if entry else 0,
            "dropped_lines": entry.dropped_total if entry else 0,
            "write_errors": entry.write_errors if entry else 0,
            "lost_lines": entry.lost_total if entry else 0,
            "error": self._failing.get(app),
            "followers": len(self._followers),  # ``logs --follow`` streams (of any app)
        }

    def add_follower(self, follower: Callable[[LogLine], None]) -> Callable[[], None]:
        """Call ``follower`` with every line until the returned function is called."""
        self._followers.add(follower)
        return lambda: self._followers.discard(follower)

    # ------------------------------------------------------------------ writer

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
                self._early = trio.Event()
                if await self.flush():
                    # Many lines per write: wait for more, unless an app has plenty.
                    delay = FLUSH_INTERVAL
                    with trio.move_on_after(delay):
                        await self._early.wait()
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

    def _take_all(self) -> list[tuple[_AppLog, list[bytes]]]:
        return [
            (entry, entry.take())
            for entry in self._apps.values()
            if entry.chunks or entry.dropped or entry.suppressed
        ]

    async def flush(self) -> bool:
        """Write every buffered line now.

        Returns ``False`` if no worker thread could be started: the lines are kept
        for the next attempt and :attr:`degraded` says why.
        """
        async with self._io:
            batches = self._take_all()
            if not batches:
                return True
            try:
                await self._run_sync(self._write, batches)
            except RuntimeError as exc:  # "can't start new thread"
                for entry, lines in batches:
                    entry.put_back(lines)
                self.thread_failures += 1
                if self._no_thread is None:
                    log.error("log_writer_degraded", error=str(exc), failures=self.thread_failures)
                self._no_thread = f"cannot start a thread to write logs: {exc}"
                return False
            finally:
                for entry, _ in batches:
                    entry.writing = 0
        if self._no_thread is not None:
            log.warning("log_writer_recovered", failures=self.thread_failures)
            self._no_thread = None
        return True

    async def empty(self, apps: list[str]) -> list[str]:
        """Empty the log files of ``apps`` (and remove their rotated files), as ``pm2 flush``.

        Lines still buffered are written first, so none lands in the emptied file
        later. The in-memory rings are cleared too. Returns the files emptied.
        """
        await self.flush()
        async with self._io:
            for app in apps:
                entry = self._apps.get(app)
                if entry is not None:
                    entry.ring.clear()
            result: list[str] = await self._run_sync(self._empty, apps)
            return result

    def _empty(self, apps: list[str]) -> list[str]:
        emptied = []
        for app in apps:
            path = self.path_for(app)
            for rotated in self._rotated(path):
                with contextlib.suppress(FileNotFoundError):
                    rotated.unlink()
            try:
                fd = open_for_append(path)
            except OSError as exc:
                log.warning("log_flush_failed", path=str(path), error=str(exc))
                continue
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
            emptied.append(str(path))
        return emptied

    def _rotated(self, path: Path) -> list[Path]:
        prefix = path.name + "."
        try:
            names = os.listdir(path.parent)
        except OSError:
            return []
        found = []
        for name in names:
            number = name[len(prefix) :].removesuffix(".gz")
            if name.startswith(prefix) and number.isdigit():
                found.append(path.parent / name)
        return found

    def _write(self, batches: list[tuple[_AppLog, list[bytes]]]) -> None:
        for entry, chunks in batches:
            app = entry.name
            path = entry.path
            marker = 0
            if entry.lost:
                marker = 1
                chunks = [
                    _Unclean(
                        f"{_timestamp()} omnitron[-] sys | {entry.lost} lines lost "
                        f"(log write failed: {entry.last_error})\n".encode()
                    ),
                    *chunks,
                ]
            # Reads with a control escaped (the others as they are), written in one go.
            parts = [_clean(data) if type(data) is _Unclean else data for data in chunks]
            done = [0]
            try:
                self._append(path, parts, done)
            except OSError as exc:
                # A full or read-only disk loses these lines, never the daemon nor the
                # app: counted, marked in the file at the next write that succeeds.
                marker_pending = marker and not done[0]
                if not marker_pending:
                    entry.lost = 0  # the marker reached the file
                lost = sum(data.count(b"\n") for data in parts[done[0] :]) - marker_pending
                entry.lost += lost
                entry.lost_total += lost
                entry.write_errors += 1
                self.write_errors += 1
                error = str(exc) if isinstance(exc, UnsafeLogPath) else _describe(exc)
                entry.last_error = error
                first = app not in self._failing
                self._failing[app] = error
                if isinstance(exc, UnsafeLogPath):
                    # Never write through a planted link; say so once per file.
                    if path not in self._refused:
                        self._refused.add(path)
                        log.error("log_file_refused", path=str(path), error=error)
                elif first:  # once per failing streak: the daemon log may be on that disk
                    log.warning("log_write_failed", path=str(path), error=error, lines=lost)
            else:
                entry.lost = 0
                if self._failing.pop(app, None) is not None:
                    log.warning("log_write_recovered", path=str(path))

    def _append(self, path: Path, parts: list[bytes], done: list[int]) -> None:
        """Append ``parts`` (each whole lines) to ``path``, rotating between lines at
        ``max_size``; ``done[0]`` counts the parts written whole.

        One open and one ``writev`` for all the parts that fit in the file: every
        system call gives up the GIL, and taking it back waits for the event loop.
        """
        fd = _open(path)
        queued: list[memoryview] = []  # pieces to write, in order
        ready = 0  # parts whose last piece is queued

        def write_queued() -> None:
            nonlocal ready
            _writev_all(fd, queued)
            queued.clear()
            done[0] += ready
            ready = 0

        def next_file() -> None:
            nonlocal fd
            write_queued()
            os.close(fd)
            fd = -1
            self._rotate(path)
            fd = _open(path)

        try:
            size = os.fstat(fd).st_size
            for data in parts:
                view = memoryview(data)
                offset, end = 0, len(data)
                counted = False
                while offset < end:
                    room = self.max_size - size if self.max_size else end - offset
                    if end - offset <= room:
                        cut = end
                    else:
                        cut = data.rfind(b"\n", offset, offset + max(room, 0)) + 1
                        if cut <= offset:
                            if size > 0:  # the next line does not fit: start a new file
                                next_file()
                                size = 0
                                continue
                            # One line longer than max_size: it gets a file of its own.
                            cut = data.find(b"\n", offset) + 1 or end
                    queued.append(view[offset:cut])
                    size += cut - offset
                    offset = cut
                    if self.max_size and size >= self.max_size:
                        if offset == end:
                            ready += 1
                            counted = True
                        next_file()
                        size = 0
                if not counted:
                    ready += 1
                if len(queued) >= _IOV_MAX:
                    write_queued()
            write_queued()
        finally:
            if fd >= 0:
                os.close(fd)

    def _rotate(self, path: Path) -> None:
        """``path`` -> ``path.1`` (gzipped if asked), older ones shifted, the oldest removed."""
        self.rotations += 1
        keep = self.max_files
        base = str(path)
        for suffix in ("", ".gz"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{base}.{keep}{suffix}")
        for number in range(keep - 1, 0, -1):
            for suffix in ("", ".gz"):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{base}.{number}{suffix}", f"{base}.{number + 1}{suffix}")
        if keep == 0:
            os.unlink(base)
            return
        first = f"{base}.1"
        os.rename(base, first)
        if self.compress:
            partial = f"{first}.gz.partial"
            with open(first, "rb") as source:
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with (
                    os.fdopen(fd, "wb") as raw,
                    gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL) as packed,
                ):
                    shutil.copyfileobj(source, packed, 1 << 20)
            os.rename(partial, f"{first}.gz")
            os.unlink(first)


class _Sink:
    """The batch sink of one stream of one process (:meth:`LogCollector.sink`).

    A small object with one bound method rather than a closure: a closure over
    the same names takes about three times the memory, twice per process.
    """

    __slots__ = ("app", "collector", "entry", "instance", "stream", "tag")

    def __init__(
        self, collector: LogCollector, entry: _AppLog, app: str, instance: int, stream: str
    ) -> None:
        self.collector = collector
        self.entry = entry
        self.app = app
        self.instance = instance
        self.stream = stream
        self.tag = f" {app}[{instance}] {stream} | ".encode()

    def deliver(self, data: bytes) -> None:
        # The hot path of every read: the rate first (only a bucket low enough to
        # matter, or lines suppressed before, make it count the lines), then the
        # tagging and the buffer.
        entry = self.entry
        if entry.suppressed or entry.tokens < len(data) * (LINE_OVERHEAD + 1):
            data, lines = entry.admit(data)
            if not lines:
                return
        now = time.time()
        # Each line gets the same head (the time of the read) in one C pass, which
        # also counts them. A read with a control is escaped for the file by the
        # writer thread (``_clean``); the ring and followers get the text as read
        # (``logs`` escapes on display).
        head = _clock.stamp(now).encode() + self.tag
        tagged = data.replace(b"\n", b"\n" + head)
        lines = (len(tagged) - len(data)) // len(head)
        if not lines:
            return
        entry.tokens -= len(data) + LINE_OVERHEAD * lines
        joined = b"".join((head, memoryview(tagged)[: -len(head)]))
        # Checked here, on the loop, where it costs only its own time: done in the
        # writer thread, every hand-over of the GIL between the two would wait for
        # the other thread to be scheduled, which on a busy machine delays timers.
        entry.append(joined if _plain(data) else _Unclean(joined), lines)
        entry.remember(now, self.instance, self.stream, data, lines)
        collector = self.collector
        if collector._followers:
            for text in _line_texts(data):
                collector._tell(LogLine(now, self.app, self.instance, self.stream, text))
        collector._wakeup.set()
        if entry.size > EARLY_WRITE:
            collector._early.set()


def _open(path: Path) -> int:
    """:func:`open_for_append`, creating the directory again (0700) if it was removed."""
    try:
        return open_for_append(path)
    except FileNotFoundError:
        check_log_directory(path.parent)  # raises a clear error if it cannot be made
        return open_for_append(path)


def _describe(exc: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the system's words and the errno's name."""
    if exc.errno is None:
        return str(exc)
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{exc.strerror or os.strerror(exc.errno)} ({name})"


def _writev_all(fd: int, views: list[memoryview]) -> None:
    """Write every byte of ``views`` (at most :data:`_IOV_MAX` at once), in order."""
    start = 0
    while start < len(views):
        batch = views[start : start + _IOV_MAX]
        written = os.writev(fd, batch)
        for view in batch:
            if written < len(view):
                views[start] = view[written:]
                break
            written -= len(view)
            start += 1
