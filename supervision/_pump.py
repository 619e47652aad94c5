"""The output line pump: a child's output pipe, read and cut into lines."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
from typing import Final

import trio

from ._flag import Flag
from ._spec import OutputBatches, OutputLines

__all__: list[str] = []

_log = logging.getLogger("supervision.process")

_PUMP_CHUNK: Final = 65536
"""Bytes asked of each read: enough that a read's fixed cost is small against its
lines, little enough that a full read is a scheduler turn of well under a
millisecond, and ten busy pipes let other tasks run between each two of their
reads (FAULTS RX-08)."""
_PIPE_SIZE: Final = 1 << 20
"""Capacity asked for each output pipe (Linux ``F_SETPIPE_SZ``; 1 MiB is the default
most an unprivileged process may ask): a child writing a burst runs ahead of the
reader instead of blocking on 64 KiB."""
_SETTLE: Final = 0.005
"""After a read that emptied the pipe (for the :class:`PumpHub`, a round whose
reads all emptied theirs), seconds the reader lets it fill before the next read:
a writer of small blocks (8 KiB for Python's buffered stdout) then costs one read
per few milliseconds instead of one wake-up per block, and the pipe holds far
more than a writer puts in it meanwhile."""
_LINES_PER_STEP: Final = 256
"""Lines handed to a per-line sink between two checkpoints (a few hundred
microseconds of sink calls)."""
_PIECE_END: Final = "…\n".encode()
_HAVE_EPOLL = hasattr(select, "epoll")
"""Whether one :class:`PumpHub` task reads all pipes (tests turn it off)."""


def _open_epoll() -> select.epoll:
    return select.epoll()


def _utf8_cut(data: bytes | bytearray, limit: int) -> int:
    """A cut point ``<= limit`` that does not split a UTF-8 sequence (if there is one)."""
    for cut in range(limit, max(limit - 4, 0), -1):
        if data[cut] & 0xC0 != 0x80:
            return cut
    return limit


def _pieces(line: bytes, limit: int, out: list[bytes]) -> None:
    """Append ``line`` (no newline) to ``out`` in pieces of at most ``limit`` bytes,
    each but the last ending with ``…``, each ending with a newline."""
    while len(line) > limit:
        cut = _utf8_cut(line, limit)
        out.append(line[:cut] + _PIECE_END)
        line = line[cut:]
    out.append(line + b"\n")


def _has_long_line(data: bytes, limit: int) -> bool:
    """Whether ``data`` (whole lines) holds a line of more than ``limit`` bytes.

    A window of ``limit + 1`` bytes without a newline is such a line; each step
    skips to the last newline of the window, so long data costs a few C scans.
    """
    start, end = 0, len(data)
    while end - start > limit + 1:
        newline = data.rfind(b"\n", start, start + limit + 1)
        if newline < 0:
            return True
        start = newline + 1
    return False


class _LinePump:
    """Reads a child's output pipe and hands its lines to a sink.

    Each read is cut at its last newline: the complete lines go to the sink (one
    ``bytes`` per read for :class:`OutputBatches`, one decoded ``str`` per line for
    :class:`OutputLines`), the rest waits for the next read. Memory is bounded by
    ``max_line`` plus one read: a longer line is delivered in pieces, each but the
    last ending with ``"…"``. A final line without newline is delivered at EOF.

    A :class:`PumpHub` reads the pipe, outside the generation's cancellation (the
    child's last words during a graceful stop matter); the runner ends the pump
    with :meth:`stop` after the child exited and the pipe drained (or did not in
    time).
    """

    __slots__ = (
        "_batch_sink",
        "_fd",
        "_hub",
        "_line_sink",
        "_max",
        "_output",
        "_pending",
        "_rest",
        "_scope",
        "_sink_failed",
        "done",
        "received",
    )

    def __init__(self, fd: int, output: OutputLines | OutputBatches) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or over the cap
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
        os.set_blocking(fd, False)
        self._fd = fd
        self._output = output
        self._batch_sink = output.sink if isinstance(output, OutputBatches) else None
        self._line_sink = output.sink if isinstance(output, OutputLines) else None
        self._max = output.max_line
        self._hub: PumpHub | None = None  # the hub reading it (epoll)
        self._scope: trio.CancelScope | None = None  # its own task's (no epoll)
        self._sink_failed = False
        self._rest = b""  # the start of a line not ended yet (at most max_line bytes)
        self._pending: list[str] = []  # per-line form: lines read, not yet delivered
        self.received = 0  # bytes read so far: the drain after an exit watches it move
        self.done = Flag()  # the pipe's end was read, or the pump was stopped

    def _failed(self) -> None:
        if not self._sink_failed:
            self._sink_failed = True
            _log.exception(
                "output sink %r failed; later failures are not logged", self._output.sink
            )

    def _cut(self, chunk: bytes) -> bytes:
        """The complete lines of what was read so far, with ``chunk``; keeps the rest."""
        data = self._rest + chunk if self._rest else chunk
        end = data.rfind(b"\n") + 1
        if end == len(data):
            complete, rest = data, b""
        else:
            complete, rest = data[:end], data[end:]
        limit = self._max
        if len(complete) > limit + 1 and _has_long_line(complete, limit):
            parts: list[bytes] = []
            for line in complete[:-1].split(b"\n"):
                _pieces(line, limit, parts)
            complete = b"".join(parts)
        if len(rest) > limit:
            parts = [complete]
            while len(rest) > limit:
                cut = _utf8_cut(rest, limit)
                parts.append(rest[:cut] + _PIECE_END)
                rest = rest[cut:]
            complete = b"".join(parts)
        self._rest = rest
        return complete

    def _hand(self, batch: bytes) -> None:
        """Give ``batch`` (whole lines) to a batch sink."""
        assert self._batch_sink is not None
        try:
            self._batch_sink(batch)
        except Exception:
            self._failed()

    def _hand_lines(self, count: int) -> None:
        """Give the first ``count`` pending lines to a per-line sink."""
        sink = self._line_sink
        assert sink is not None
        lines = self._pending
        for line in lines[:count]:
            try:
                sink(line)
            except Exception:
                self._failed()
        del lines[:count]

    def _read(self) -> int | None:
        """Read the pipe once and hand over its complete lines (to a per-line sink,
        the first :data:`_LINES_PER_STEP`; the rest wait in ``_pending``).

        Returns:
            The number of bytes read: ``None`` when none were waiting, 0 at the
            pipe's end (or when it cannot be read).
        """
        # Read directly (no stream object per pipe), and only when the pipe is
        # readable or was just read: an idle pipe keeps no BlockingIOError alive.
        try:
            chunk = os.read(self._fd, _PUMP_CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            return 0
        if chunk:
            self.received += len(chunk)
            batch = self._cut(chunk)
            if batch:
                if self._batch_sink is not None:
                    self._hand(batch)
                else:
                    self._pending += batch.decode("utf-8", errors="replace").split("\n")[:-1]
                    self._hand_lines(_LINES_PER_STEP)
        return len(chunk)

    async def run(self) -> None:
        """Read until the pipe's end or :meth:`stop`: the pump's own task, where the
        platform has no epoll for a :class:`PumpHub` to read all pipes at once."""
        fd = self._fd
        try:
            assert self._scope is not None
            with self._scope:
                # The pipe is new and the child just started: a read now would
                # only fail (an exception raised and caught per stream and start,
                # in a crash storm), so the first read waits until there is data.
                with contextlib.suppress(OSError):  # a bad fd: the read below says so
                    await trio.lowlevel.wait_readable(fd)
                while True:
                    count = self._read()
                    if count is None:
                        await trio.lowlevel.wait_readable(fd)
                        continue
                    if not count:
                        break
                    while self._pending:
                        # Let other tasks run: a read of short lines is thousands
                        # of sink calls, and ten floods would hold the loop for one
                        # read each before a timer could fire (FAULTS RX-08).
                        await trio.lowlevel.checkpoint()
                        self._hand_lines(_LINES_PER_STEP)
                    if count < _PUMP_CHUNK:
                        await trio.sleep(_SETTLE)
                    else:
                        await trio.lowlevel.checkpoint()
        except trio.ClosedResourceError:  # stopped while waiting: the pipe is closed
            pass
        finally:
            self._finish()

    def stop(self) -> None:
        """Stop reading: hand over what was read (and the unfinished line), close the
        pipe and set :attr:`done`. Idempotent.

        Cancellation: not a checkpoint; always completes.
        """
        if self._hub is not None:
            self._hub.remove(self)
        if self._scope is not None:
            self._scope.cancel()
        self._finish()

    def close(self) -> None:
        """Close without running (spawn failed)."""
        self._finish()

    def _finish(self) -> None:
        """Hand over what is left and close the pipe. Idempotent."""
        if self.done.is_set():
            return
        # Stopped between two steps, lines may wait; then the unfinished line.
        last = self._rest + b"\n" if self._rest else b""
        self._rest = b""
        if self._batch_sink is not None:
            if last:
                self._hand(last)
        else:
            if last:
                self._pending.append(last[:-1].decode("utf-8", errors="replace"))
            self._hand_lines(len(self._pending))
        if self._fd >= 0:
            if self._scope is not None:  # its task may wait on the fd
                trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1
        self.done.set()


class PumpHub:
    """Reads the output pipes of a process host's children.

    On Linux one task reads them all: each pipe is registered with an epoll
    instance of the hub's own, and the task waits for that instance's descriptor
    to become readable, then reads each ready pipe once per round. A child's pipes
    thus cost no task, no cancel scope and no frame of their own, and a restart
    starts no task for them. After a round that read only a little, the task lets
    the pipes fill for :data:`_SETTLE` seconds; after a full read, or while a
    per-line sink has lines waiting (handed :data:`_LINES_PER_STEP` per round), it
    only yields to other tasks (FAULTS RX-08). Elsewhere, and while no descriptor
    is left for the epoll instance, each pipe is read by a task of its own
    (:meth:`_LinePump.run`). Either way the tasks run in the
    host's nursery, outside any generation's cancellation.
    """

    __slots__ = ("_backlog", "_epoll", "_nursery", "_pumps")

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._epoll: select.epoll | None = None
        self._pumps: dict[int, _LinePump] = {}  # read end -> its pump
        self._backlog: list[_LinePump] = []  # per-line pumps with lines waiting

    def add(self, pump: _LinePump) -> None:
        """Start reading ``pump``'s pipe (until its end or :meth:`_LinePump.stop`)."""
        epoll = self._epoll
        if epoll is None and _HAVE_EPOLL:
            try:
                epoll = self._epoll = _open_epoll()
            except OSError:  # no descriptor left for it (RX-01): tried again next time
                epoll = None
            else:
                self._nursery.start_soon(self._run, epoll)
        if epoll is None:
            pump._scope = trio.CancelScope(shield=True)
            self._nursery.start_soon(pump.run)
            return
        try:
            epoll.register(pump._fd, select.EPOLLIN)
        except OSError:  # not a pipe that can be read: nothing will come
            pump._finish()
            return
        pump._hub = self
        self._pumps[pump._fd] = pump

    def remove(self, pump: _LinePump) -> None:
        """Stop reading ``pump``'s pipe (it stays open)."""
        pump._hub = None
        fd = pump._fd
        if self._pumps.get(fd) is pump:
            del self._pumps[fd]
            assert self._epoll is not None
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    async def _run(self, epoll: select.epoll) -> None:
        pumps = self._pumps
        full = False
        try:
            while True:
                if not self._backlog and not full:  # after a full read, look again first
                    await trio.lowlevel.wait_readable(epoll.fileno())
                backlog, self._backlog = self._backlog, []
                for waiting in backlog:
                    if waiting._hub is self:  # not stopped meanwhile
                        waiting._hand_lines(_LINES_PER_STEP)
                        if waiting._pending:
                            self._backlog.append(waiting)
                        # One step of lines, then other tasks run (FAULTS RX-08).
                        await trio.lowlevel.checkpoint()
                short = full = False
                for fd, _ in epoll.poll(0):
                    pump = pumps.get(fd)  # None: stopped during a step below
                    if pump is None or pump._pending:  # its lines first
                        continue
                    try:
                        count = pump._read()
                    except Exception:  # a bug: this pipe is lost, the others are not
                        _log.exception("output pump of fd %d failed", fd)
                        count = 0
                    if count is None:
                        continue
                    if not count:
                        pump.stop()
                    elif count == _PUMP_CHUNK or pump._pending:
                        full = True
                        if pump._pending:
                            self._backlog.append(pump)
                        # A full step: other tasks run before the next (RX-08).
                        await trio.lowlevel.checkpoint()
                    else:
                        short = True
                if short and not full and not self._backlog:
                    await trio.sleep(_SETTLE)  # let the pipes fill (see _SETTLE)
        finally:
            self._backlog = []
            for pump in list(pumps.values()):
                pump.stop()

    def close(self) -> None:
        """Release the epoll instance (the host's nursery has ended). Idempotent."""
        epoll, self._epoll = self._epoll, None
        if epoll is not None:
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()
