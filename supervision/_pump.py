"""The output line pump: a child's output pipe, read and cut into lines."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from typing import Final

import trio

from ._flag import Flag
from ._spec import OutputBatches, OutputLines

__all__: list[str] = []

_log = logging.getLogger("supervision.process")

_PUMP_CHUNK: Final = 65536
"""Bytes asked of each read: enough that a read's fixed cost is small against its
lines, little enough that ten busy pipes take a scheduler turn of under a
millisecond or so between them (FAULTS RX-08)."""
_PIPE_SIZE: Final = 1 << 20
"""Capacity asked for each output pipe (Linux ``F_SETPIPE_SZ``; 1 MiB is the default
most an unprivileged process may ask): a child writing a burst runs ahead of the
reader instead of blocking on 64 KiB."""
_SETTLE: Final = 0.005
"""After a read that emptied the pipe, seconds the pump lets it fill before the
next read: a writer of small blocks (8 KiB for Python's buffered stdout) then
costs one read per few milliseconds instead of one wake-up per block, and the
pipe holds far more than a writer puts in it meanwhile."""
_LINES_PER_STEP: Final = 256
"""Lines handed to a per-line sink between two checkpoints (a few hundred
microseconds of sink calls)."""
_PIECE_END: Final = "…\n".encode()


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
    last ending with ``"…"``. A final line without newline is delivered at EOF. The
    pump is shielded from the generation's cancellation (the child's last words
    during a graceful stop matter); the runner ends it with :meth:`stop` after the
    child exited and the pipe drained (or did not in time).
    """

    def __init__(self, fd: int, output: OutputLines | OutputBatches) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or over the cap
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
        os.set_blocking(fd, False)
        self._fd = fd
        self._output = output
        self._batch_sink = output.sink if isinstance(output, OutputBatches) else None
        self._line_sink = output.sink if isinstance(output, OutputLines) else None
        self._max = output.max_line
        self._scope = trio.CancelScope(shield=True)
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

    async def _deliver(self, batch: bytes) -> None:
        if not batch:
            return
        if self._batch_sink is not None:
            self._hand(batch)
            return
        self._pending += batch.decode("utf-8", errors="replace").split("\n")[:-1]
        while self._pending:
            self._hand_lines(_LINES_PER_STEP)
            if self._pending:
                # Let other tasks run: a read of short lines is thousands of sink
                # calls, and ten floods would hold the loop for one read each before
                # a timer could fire (FAULTS RX-08).
                await trio.lowlevel.checkpoint()

    async def run(self) -> None:
        fd = self._fd
        try:
            with self._scope:
                # The pipe is new and the child just started: a read now would
                # only fail (an exception raised and caught per stream and start,
                # in a crash storm), so the first read waits until there is data.
                with contextlib.suppress(OSError):  # a bad fd: the read below says so
                    await trio.lowlevel.wait_readable(fd)
                while True:
                    # Read directly (no stream object per pipe): the wait happens
                    # outside the ``except``, so no BlockingIOError and traceback
                    # stay alive while the pipe is idle.
                    chunk: bytes | None
                    try:
                        chunk = os.read(fd, _PUMP_CHUNK)
                    except BlockingIOError:
                        chunk = None
                    except OSError:
                        break
                    if chunk is None:
                        await trio.lowlevel.wait_readable(fd)
                        continue
                    if not chunk:
                        break
                    self.received += len(chunk)
                    await self._deliver(self._cut(chunk))
                    if len(chunk) < _PUMP_CHUNK:
                        await trio.sleep(_SETTLE)
                    else:
                        await trio.lowlevel.checkpoint()
        finally:
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
            self._close()
            self.done.set()

    def stop(self) -> None:
        self._scope.cancel()

    def _close(self) -> None:
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Close without running (spawn failed)."""
        self._close()
        self.done.set()
