"""The output line pump: a child's output pipe, read and cut into lines."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
from collections.abc import Callable, Sequence
from typing import Final

import trio

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

    The pipe is read with plain non-blocking reads: either by :meth:`run`, a task
    of its own, or by :func:`watch_generation`, which reads every pipe of a
    generation (and watches its exit) in one task.
    """

    def __init__(self, fd: int, output: OutputLines | OutputBatches) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or over the cap
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
        os.set_blocking(fd, False)
        self.fd = fd
        self._output = output
        self._batch_sink = output.sink if isinstance(output, OutputBatches) else None
        self._line_sink = output.sink if isinstance(output, OutputLines) else None
        self._max = output.max_line
        self._scope: trio.CancelScope | None = None
        self._sink_failed = False
        self._rest = b""  # the start of a line not ended yet (at most max_line bytes)
        self._pending: list[str] | None = None  # per-line form: lines not yet delivered
        self.received = 0  # bytes read so far: the drain after an exit watches it move
        self.done = trio.Event()

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
        lines = self._pending
        assert sink is not None
        if not lines:
            return
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
        if self._pending is None:
            self._pending = []
        pending = self._pending
        pending += batch.decode("utf-8", errors="replace").split("\n")[:-1]
        while pending:
            self._hand_lines(_LINES_PER_STEP)
            if pending:
                # Let other tasks run: a read of short lines is thousands of sink
                # calls, and ten floods would hold the loop for one read each before
                # a timer could fire (FAULTS RX-08).
                await trio.lowlevel.checkpoint()

    def read(self) -> bytes | None:
        """One non-blocking read: the bytes, ``b""`` at the pipe's end, ``None`` if empty."""
        try:
            chunk = os.read(self.fd, _PUMP_CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            return b""  # an error on a pipe is its end
        self.received += len(chunk)
        return chunk

    async def feed(self, chunk: bytes) -> None:
        """Hand the lines completed by ``chunk`` (a non-empty read) to the sink."""
        await self._deliver(self._cut(chunk))

    async def run(self) -> None:
        """Read the pipe to its end in a task of its own (without :func:`watch_generation`)."""
        self._scope = trio.CancelScope(shield=True)
        try:
            with self._scope:
                while True:
                    await trio.lowlevel.wait_readable(self.fd)
                    chunk = self.read()
                    if chunk is None:
                        continue
                    if not chunk:
                        break
                    await self.feed(chunk)
                    if len(chunk) < _PUMP_CHUNK:
                        await trio.sleep(_SETTLE)
        finally:
            self.finish()

    def finish(self) -> None:
        """Deliver what is left (an unfinished line too), close the pipe. Idempotent."""
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
                if self._pending is None:
                    self._pending = []
                self._pending.append(last[:-1].decode("utf-8", errors="replace"))
            if self._pending:
                self._hand_lines(len(self._pending))
        # No task waits on the fd here (the reader is in its ``finally`` or never
        # ran): a plain close is safe for Trio's registrations.
        os.close(self.fd)
        self.done.set()

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def close(self) -> None:
        """Close without running (spawn failed)."""
        if not self.done.is_set():
            os.close(self.fd)
            self.done.set()


async def watch_generation(
    pidfd: int,
    pumps: Sequence[_LinePump],
    exited: Callable[[], None],
    scope: trio.CancelScope,
) -> None:
    """One task for a generation's exit (its leader's ``pidfd``) and all its output pipes.

    The fds are watched through one epoll instance of their own, so a child costs
    one task, one Trio registration and one cancel scope instead of one of each
    per fd. ``exited()`` is called once when the pidfd becomes readable (the
    leader stays unreaped). Returns once the leader has exited and every pipe has
    reached its end, or when ``scope`` (shielded) is cancelled; the pumps are
    then finished (their last lines delivered, their fds closed).
    """
    poller = select.epoll(len(pumps) + 1)
    try:
        by_fd = {pump.fd: pump for pump in pumps}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        poller.register(pidfd, select.EPOLLIN)
        watching_exit = True
        live = len(by_fd)
        with scope:
            while watching_exit or live:
                await trio.lowlevel.wait_readable(poller)
                short = full = False
                for fd, _ in poller.poll(0):
                    if fd == pidfd and watching_exit:
                        poller.unregister(fd)
                        watching_exit = False
                        exited()
                        continue
                    pump = by_fd.get(fd)
                    if pump is None or pump.done.is_set():
                        continue
                    chunk = pump.read()
                    if chunk is None:
                        continue
                    if not chunk:
                        poller.unregister(fd)
                        pump.finish()
                        live -= 1
                        continue
                    await pump.feed(chunk)
                    if len(chunk) < _PUMP_CHUNK:
                        short = True
                    else:
                        full = True
                # As a pump of its own would: after reads that emptied their pipes,
                # let them fill (not while another pipe is being flooded).
                if short and not full and live:
                    await trio.sleep(_SETTLE)
    finally:
        for pump in pumps:
            pump.finish()
        # Nothing waits on the epoll fd any more: closing it needs no notice.
        poller.close()
