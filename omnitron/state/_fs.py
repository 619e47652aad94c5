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
import errno
import os
from pathlib import Path

import attrs
import trio

__all__ = ["FileSystem", "Step", "WriteProgress"]

_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV}
)
"""Why ``link()`` fails where the filesystem has no hard links: copy instead."""


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


@attrs.define
class WriteProgress:
    """How far :meth:`FileSystem.write_atomically` got, read by the writer afterwards.

    Attributes:
        step: The step running (the one that failed, after a failure).
        backup_fresh: ``state.json.bak`` holds the current ``state.json`` (set when
            the backup was refreshed, cleared once ``state.json`` may be the new file).
    """

    step: Step | None = None
    backup_fresh: bool = False


# The blocking steps, shared by the one-call-per-step methods and the one-thread write.


_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""A fresh private file, never through a symlink, not inherited (PC-15): what
``tempfile.mkstemp`` opens, without loading ``tempfile`` into the daemon (about
0.1 MiB)."""
_TEMP_ATTEMPTS = 100
"""Random names tried before giving up (a clash of 48 random bits is rare already)."""


def _create_temp(directory: Path, prefix: str) -> tuple[int, Path]:
    for _ in range(_TEMP_ATTEMPTS):
        path = Path(os.path.abspath(directory / f"{prefix}{os.urandom(6).hex()}.tmp"))
        try:
            return os.open(path, _TEMP_FLAGS, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", os.fspath(directory))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _link(src: Path, dst: Path) -> None:
    os.link(src, dst, follow_symlinks=False)


def _copy_file(src: Path, dst: Path) -> None:
    with open(src, "rb", opener=_nofollow_reader) as source:
        data = source.read()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)
    with contextlib.suppress(FileNotFoundError):
        if os.path.samestat(os.lstat(src), os.lstat(dst)):
            os.unlink(src)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _refresh_backup(target: Path, backup: Path, progress: WriteProgress) -> None:
    bak_tmp = backup.with_name(backup.name + ".tmp")
    try:
        progress.step = Step.BACKUP_LINK
        try:
            _link(target, bak_tmp)
        except FileExistsError:  # left by an earlier failure
            _remove(bak_tmp)
            _link(target, bak_tmp)
    except FileNotFoundError:
        return  # no previous state.json: nothing to keep
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _copy_file(target, bak_tmp)
    progress.step = Step.BACKUP_REPLACE
    try:
        _rename(bak_tmp, backup)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(bak_tmp)
        raise
    progress.backup_fresh = True


def _write_atomically(
    target: Path, backup: Path, prefix: str, data: bytes, progress: WriteProgress
) -> None:
    if not progress.backup_fresh:
        _refresh_backup(target, backup, progress)
    directory = target.parent
    progress.step = Step.CREATE
    fd, tmp = _create_temp(directory, prefix)
    open_fd: int | None = fd
    try:
        progress.step = Step.WRITE
        _write_all(fd, data)
        progress.step = Step.FSYNC
        os.fsync(fd)
        progress.step = Step.CLOSE
        open_fd = None
        os.close(fd)
        progress.backup_fresh = False  # from here on, state.json may be the new file
        progress.step = Step.REPLACE
        _rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            if open_fd is not None:
                os.close(open_fd)
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise
    progress.step = Step.FSYNC_DIR
    _sync_dir(directory)
    progress.step = None


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

        return await trio.to_thread.run_sync(_create_temp, directory, prefix)

    async def write(self, fd: int, data: bytes) -> None:
        """Write all of ``data`` to ``fd``."""

        await trio.to_thread.run_sync(_write_all, fd, data)

    async def fsync(self, fd: int) -> None:
        """Flush ``fd``'s data and metadata to stable storage."""
        await trio.to_thread.run_sync(os.fsync, fd)

    async def close(self, fd: int) -> None:
        """Close ``fd``."""
        await trio.to_thread.run_sync(os.close, fd)

    async def link(self, src: Path, dst: Path) -> None:
        """Make ``dst`` a hard link to ``src`` (not following a symlink at ``src``)."""
        await trio.to_thread.run_sync(_link, src, dst)

    async def copy(self, src: Path, dst: Path) -> None:
        """Copy ``src`` to a new file ``dst`` (exclusive create, mode 0600) and fsync it."""

        await trio.to_thread.run_sync(_copy_file, src, dst)

    async def replace(self, src: Path, dst: Path) -> None:
        """Atomically rename ``src`` over ``dst``; afterwards ``src`` no longer exists.

        When both names are hard links to one file, rename(2) succeeds without
        doing anything; ``src`` is then unlinked, so it is not left behind.
        """

        await trio.to_thread.run_sync(_rename, src, dst)

    async def fsync_dir(self, directory: Path) -> None:
        """Flush ``directory`` so renames and unlinks in it are durable."""

        await trio.to_thread.run_sync(_sync_dir, directory)

    async def unlink(self, path: Path) -> None:
        """Remove ``path``; a missing file is not an error."""

        await trio.to_thread.run_sync(_remove, path)

    async def write_atomically(
        self, target: Path, backup: Path, prefix: str, data: bytes, progress: WriteProgress
    ) -> None:
        """Every step of one state write, from the backup to ``FSYNC_DIR``, in one worker thread.

        The same steps as the writer makes one call at a time (one thread hop
        each), for a file system whose :meth:`before` and :meth:`after` do
        nothing: hand-offs to a worker thread cost the event loop while it is busy.
        ``progress`` says how far it got, for the writer's bookkeeping and
        error messages; after a failure the temporary files are gone.
        """
        await trio.to_thread.run_sync(_write_atomically, target, backup, prefix, data, progress)


def _nofollow_reader(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
