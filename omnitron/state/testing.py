"""Test doubles for the state writer: fault injection and an in-memory disk.

:class:`FaultyFileSystem` wraps any :class:`~omnitron.state.FileSystem` and
fires a :class:`Fault` at a named :class:`~omnitron.state.Step`: raise an
``OSError`` with a chosen errno (``ENOSPC``, ``EROFS``, ``EIO``...), sleep
(Trio's clock, so virtual under ``autojump_clock``), or ``os._exit`` to
simulate a crash at that instant::

    fs = FaultyFileSystem(FileSystem())
    fs.inject(Step.FSYNC, Fault.error(errno.ENOSPC))
    fs.inject(Step.REPLACE, Fault.exit(137), when="after")

:class:`MemoryFileSystem` keeps files in a dict and never uses threads: pair it
with ``autojump_clock`` for exact virtual-time tests of coalescing, baseline
flushes and retry backoff. Real-disk tests use the real :class:`FileSystem`
and the real clock, since autojump would advance time while a worker thread
is busy.
"""

from __future__ import annotations

import enum
import errno as _errno
import os
from pathlib import Path
from typing import Literal

import attrs
import trio

from ._codec import decode_state
from ._fs import FileSystem, Step
from ._records import DaemonState

__all__ = ["Fault", "FaultyFileSystem", "MemoryFileSystem"]

When = Literal["before", "after"]


class _Kind(enum.Enum):
    ERROR = "error"
    DELAY = "delay"
    EXIT = "exit"


@attrs.frozen
class Fault:
    """What happens at an injection point. Build with :meth:`error`, :meth:`delay`, :meth:`exit`."""

    kind: _Kind
    errno: int | None = None
    exception: BaseException | None = None
    seconds: float = 0.0
    exit_code: int = 137

    @classmethod
    def error(cls, error: int | BaseException) -> Fault:
        """Raise ``OSError(error)`` for an errno, or the given exception."""
        if isinstance(error, int):
            return cls(_Kind.ERROR, errno=error)
        return cls(_Kind.ERROR, exception=error)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Sleep ``seconds`` on Trio's clock (the step then runs normally)."""
        return cls(_Kind.DELAY, seconds=seconds)

    @classmethod
    def exit(cls, code: int = 137) -> Fault:
        """End the process at once with ``os._exit(code)``: a crash, no cleanup."""
        return cls(_Kind.EXIT, exit_code=code)

    async def fire(self) -> None:
        """Apply the fault."""
        if self.kind is _Kind.DELAY:
            await trio.sleep(self.seconds)
        elif self.kind is _Kind.EXIT:
            os._exit(self.exit_code)
        elif self.exception is not None:
            raise self.exception
        else:
            assert self.errno is not None
            raise OSError(self.errno, os.strerror(self.errno))


@attrs.define
class _Armed:
    fault: Fault
    remaining: int | None


class FaultyFileSystem(FileSystem):
    """A :class:`FileSystem` that injects faults at named steps.

    Attributes:
        inner: The filesystem that does the work.
        calls: Every step started, as ``(trio.current_time(), step)``.
    """

    def __init__(self, inner: FileSystem | None = None) -> None:
        self.inner = FileSystem() if inner is None else inner
        self.calls: list[tuple[float, Step]] = []
        self._armed: dict[tuple[Step, When], list[_Armed]] = {}

    def inject(
        self, step: Step, fault: Fault, *, when: When = "before", times: int | None = None
    ) -> None:
        """Arm ``fault`` at ``step`` (``before`` it runs or ``after`` it succeeded).

        Args:
            step: Where.
            fault: What.
            when: ``"before"``: the step does not happen; ``"after"``: it did.
            times: Fire this many times, then disarm; ``None``: until :meth:`clear`.
        """
        self._armed.setdefault((step, when), []).append(_Armed(fault, times))

    def clear(self, step: Step | None = None) -> None:
        """Disarm every fault, or those at ``step``."""
        if step is None:
            self._armed.clear()
        else:
            for key in [key for key in self._armed if key[0] is step]:
                del self._armed[key]

    def count(self, step: Step) -> int:
        """How many times ``step`` was started."""
        return sum(1 for _, s in self.calls if s is step)

    async def _fire(self, step: Step, when: When) -> None:
        armed = self._armed.get((step, when))
        if not armed:
            return
        entry = armed[0]
        if entry.remaining is not None:
            entry.remaining -= 1
            if entry.remaining <= 0:
                armed.pop(0)
        await entry.fault.fire()

    async def before(self, step: Step) -> None:
        self.calls.append((trio.current_time(), step))
        await self.inner.before(step)
        await self._fire(step, "before")

    async def after(self, step: Step) -> None:
        await self.inner.after(step)
        await self._fire(step, "after")

    async def create_temp(self, directory: Path, prefix: str) -> tuple[int, Path]:
        return await self.inner.create_temp(directory, prefix)

    async def write(self, fd: int, data: bytes) -> None:
        await self.inner.write(fd, data)

    async def fsync(self, fd: int) -> None:
        await self.inner.fsync(fd)

    async def close(self, fd: int) -> None:
        await self.inner.close(fd)

    async def link(self, src: Path, dst: Path) -> None:
        await self.inner.link(src, dst)

    async def copy(self, src: Path, dst: Path) -> None:
        await self.inner.copy(src, dst)

    async def replace(self, src: Path, dst: Path) -> None:
        await self.inner.replace(src, dst)

    async def fsync_dir(self, directory: Path) -> None:
        await self.inner.fsync_dir(directory)

    async def unlink(self, path: Path) -> None:
        await self.inner.unlink(path)


def _oserror(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


class MemoryFileSystem(FileSystem):
    """An in-memory disk: no threads, every call is one Trio checkpoint.

    Attributes:
        files: Path → content of every file, temporary ones included.
        open_fds: The fds that are open, with the file each one writes to.
    """

    def __init__(self) -> None:
        self.files: dict[Path, bytes] = {}
        self.open_fds: dict[int, Path] = {}
        self._counter = 0

    def decode(self, path: Path) -> tuple[int, DaemonState]:
        """Decode a state file held here: ``(generation, state)``."""
        decoded = decode_state(self.files[path])
        return decoded.generation, decoded.state

    def temp_files(self) -> list[Path]:
        """The ``*.tmp`` files present."""
        return sorted(p for p in self.files if p.name.endswith(".tmp"))

    async def create_temp(self, directory: Path, prefix: str) -> tuple[int, Path]:
        await trio.lowlevel.checkpoint()
        self._counter += 1
        path = directory / f"{prefix}{self._counter:08x}.tmp"
        fd = 1000 + self._counter
        self.files[path] = b""
        self.open_fds[fd] = path
        return fd, path

    def _fd(self, fd: int) -> Path:
        try:
            return self.open_fds[fd]
        except KeyError:
            raise OSError(_errno.EBADF, os.strerror(_errno.EBADF)) from None

    async def write(self, fd: int, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        path = self._fd(fd)
        self.files[path] = self.files.get(path, b"") + data

    async def fsync(self, fd: int) -> None:
        await trio.lowlevel.checkpoint()
        self._fd(fd)

    async def close(self, fd: int) -> None:
        await trio.lowlevel.checkpoint()
        self._fd(fd)
        del self.open_fds[fd]

    async def link(self, src: Path, dst: Path) -> None:
        await self.copy(src, dst)

    async def copy(self, src: Path, dst: Path) -> None:
        await trio.lowlevel.checkpoint()
        if src not in self.files:
            raise _oserror(_errno.ENOENT, src)
        if dst in self.files:
            raise _oserror(_errno.EEXIST, dst)
        self.files[dst] = self.files[src]

    async def replace(self, src: Path, dst: Path) -> None:
        await trio.lowlevel.checkpoint()
        if src not in self.files:
            raise _oserror(_errno.ENOENT, src)
        self.files[dst] = self.files.pop(src)

    async def fsync_dir(self, directory: Path) -> None:
        await trio.lowlevel.checkpoint()

    async def unlink(self, path: Path) -> None:
        await trio.lowlevel.checkpoint()
        self.files.pop(path, None)
