"""The filesystem seam of the state writer.

The writer replaces ``state.json`` through a :class:`FileSystem`, one method
call per step, so a test can put a fake underneath (an in-memory one for
virtual-time tests, see :mod:`omnitron.state.testing`) or inject faults at a
named :class:`Step` (``ENOSPC`` on fsync, a slow disk, ``os._exit`` right after
the rename). The real implementation runs every blocking call in a worker
thread, so a slow disk never stalls the Trio loop (PC-08).
"""

from __future__ import annotations

import contextlib
import enum
import os
import tempfile
from pathlib import Path

import trio

__all__ = ["FileSystem", "Step"]


class Step(enum.Enum):
    """The named steps of one atomic state write, in order.

    The backup steps run only when a previous ``state.json`` exists.
    """

    BACKUP_LINK = "backup_link"
    """Hard-link ``state.json`` to ``state.json.bak.tmp`` (copy if links are unsupported)."""
    BACKUP_REPLACE = "backup_replace"
    """Rename ``state.json.bak.tmp`` over ``state.json.bak``."""
    CREATE = "create"
    """Create the temporary file ``state.json.<random>.tmp`` (exclusive, mode 0600)."""
    WRITE = "write"
    """Write the new content into it."""
    FSYNC = "fsync"
    """Flush it to stable storage."""
    CLOSE = "close"
    """Close it."""
    REPLACE = "replace"
    """Rename it over ``state.json``: from here on the new generation is visible."""
    FSYNC_DIR = "fsync_dir"
    """Flush the directory, making both renames durable: the write is acknowledged."""
    CLEANUP = "cleanup"
    """After a failure: remove the temporary file (not part of a successful write)."""


class FileSystem:
    """Real disk access for the state writer, each call in a worker thread.

    Subclass it (or wrap it, like :class:`omnitron.state.testing.FaultyFileSystem`)
    to change behaviour. :meth:`before` and :meth:`after` are called around every
    :class:`Step`; they do nothing here and exist as fault-injection points.

    Every method may raise ``OSError``. Cancellation: a call already running in
    its thread finishes before ``Cancelled`` is delivered, so an fd is never
    leaked half-way.
    """

    async def before(self, step: Step) -> None:
        """Called just before ``step``."""

    async def after(self, step: Step) -> None:
        """Called just after ``step`` succeeded."""

    async def create_temp(self, directory: Path, prefix: str) -> tuple[int, Path]:
        """Create a new private file ``<prefix><random>.tmp`` in ``directory``.

        Returns:
            The open fd (write-only) and the file's path.
        """

        def create() -> tuple[int, Path]:
            # mkstemp: O_EXCL | O_NOFOLLOW, mode 0600, close-on-exec (PC-15).
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
            return fd, Path(name)

        return await trio.to_thread.run_sync(create)

    async def write(self, fd: int, data: bytes) -> None:
        """Write all of ``data`` to ``fd``."""

        def write_all() -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

        await trio.to_thread.run_sync(write_all)

    async def fsync(self, fd: int) -> None:
        """Flush ``fd``'s data and metadata to stable storage."""
        await trio.to_thread.run_sync(os.fsync, fd)

    async def close(self, fd: int) -> None:
        """Close ``fd``."""
        await trio.to_thread.run_sync(os.close, fd)

    async def link(self, src: Path, dst: Path) -> None:
        """Make ``dst`` a hard link to ``src`` (not following a symlink at ``src``)."""
        await trio.to_thread.run_sync(lambda: os.link(src, dst, follow_symlinks=False))

    async def copy(self, src: Path, dst: Path) -> None:
        """Copy ``src`` to a new file ``dst`` (exclusive create, mode 0600) and fsync it."""

        def copy_file() -> None:
            with open(src, "rb", opener=_nofollow_reader) as source:
                data = source.read()
            fd = os.open(
                dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)

        await trio.to_thread.run_sync(copy_file)

    async def replace(self, src: Path, dst: Path) -> None:
        """Atomically rename ``src`` over ``dst``; afterwards ``src`` no longer exists.

        When both names are hard links to one file, rename(2) succeeds without
        doing anything; ``src`` is then unlinked, so it is not left behind.
        """

        def rename() -> None:
            os.replace(src, dst)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.lstat(src), os.lstat(dst)):
                    os.unlink(src)

        await trio.to_thread.run_sync(rename)

    async def fsync_dir(self, directory: Path) -> None:
        """Flush ``directory`` so renames and unlinks in it are durable."""

        def sync_dir() -> None:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        await trio.to_thread.run_sync(sync_dir)

    async def unlink(self, path: Path) -> None:
        """Remove ``path``; a missing file is not an error."""

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        await trio.to_thread.run_sync(remove)


def _nofollow_reader(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
