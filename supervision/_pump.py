"""The output line pump: a child's output pipe, read and cut into lines."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from typing import Final

import trio

from ._spec import OutputLines

__all__: list[str] = []

_log = logging.getLogger("supervision.process")

_PUMP_CHUNK: Final = 65536
_PIPE_SIZE: Final = 1 << 20
"""Capacity asked for each output pipe (Linux ``F_SETPIPE_SZ``; 1 MiB is the default
most an unprivileged process may ask): a child writing a burst runs ahead of the
reader instead of blocking on 64 KiB."""
_LINES_PER_STEP: Final = 256
"""Lines delivered between two checkpoints (a few hundred microseconds of sink calls)."""


def _utf8_cut(data: bytearray, limit: int) -> int:
    """A cut point ``<= limit`` that does not split a UTF-8 sequence (if there is one)."""
    for cut in range(limit, max(limit - 4, 0), -1):
        if data[cut] & 0xC0 != 0x80:
            return cut
    return limit


class _LinePump:
    """Reads a child's output pipe and hands complete lines to a sink.

    Memory is bounded by ``max_line`` plus one read: a longer line is delivered in
    pieces, each but the last ending with ``"…"``. A final line without newline is
    delivered at EOF. The pump is shielded from the generation's cancellation (the
    child's last words during a graceful stop matter); the runner ends it with
    :meth:`stop` after the child exited and the pipe drained (or did not in time).
    """

    def __init__(self, fd: int, output: OutputLines) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or over the cap
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
        self._stream = trio.lowlevel.FdStream(fd)
        self._sink = output.sink
        self._max = output.max_line
        self._scope = trio.CancelScope(shield=True)
        self._sink_failed = False
        self.done = trio.Event()

    def _deliver(self, data: bytes | bytearray, *, piece: bool) -> None:
        text = bytes(data).decode("utf-8", errors="replace")
        try:
            self._sink(text + "…" if piece else text)
        except Exception:
            if not self._sink_failed:
                self._sink_failed = True
                _log.exception("output sink %r failed; later failures are not logged", self._sink)

    def _deliver_line(self, line: bytearray) -> None:
        while len(line) > self._max:
            cut = _utf8_cut(line, self._max)
            self._deliver(line[:cut], piece=True)
            del line[:cut]
        self._deliver(line, piece=False)

    async def run(self) -> None:
        buffer = bytearray()
        try:
            with self._scope:
                while True:
                    try:
                        chunk = await self._stream.receive_some(_PUMP_CHUNK)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not chunk:
                        break
                    buffer += chunk
                    start = lines = 0
                    while (end := buffer.find(b"\n", start)) >= 0:
                        self._deliver_line(buffer[start:end])
                        start = end + 1
                        lines += 1
                        if lines % _LINES_PER_STEP == 0:
                            # Let other tasks run: a read of short lines is thousands
                            # of sink calls, and ten floods would hold the loop for
                            # one read each before a timer could fire (FAULTS RX-08).
                            del buffer[:start]
                            start = 0
                            await trio.lowlevel.checkpoint()
                    del buffer[:start]
                    while len(buffer) > self._max:
                        cut = _utf8_cut(buffer, self._max)
                        self._deliver(buffer[:cut], piece=True)
                        del buffer[:cut]
        finally:
            # Stopped between two steps, the buffer may hold several lines.
            *complete, last = bytes(buffer).split(b"\n")
            for line in complete:
                self._deliver_line(bytearray(line))
            if last:
                self._deliver_line(bytearray(last))
            self._stream.close()
            self.done.set()

    def stop(self) -> None:
        self._scope.cancel()

    def close(self) -> None:
        """Close without running (spawn failed)."""
        self._stream.close()
        self.done.set()
