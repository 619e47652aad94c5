"""The pid lock: one daemon per home (promise 7).

The daemon opens ``daemon.pid`` and takes ``flock(LOCK_EX | LOCK_NB)`` on it for
its whole life. The kernel lock is the only source of truth: whoever holds it
is the daemon, a file nobody has locked is stale whatever pid it names, and the
lock disappears with its holder however that holder dies. The file's content
(pid, start time, boot id, start date) is information for humans and for the
CLI, which uses :func:`read_lock_info` to find the daemon without taking the
lock, and recognises a recycled pid by its start time.

The lock fd is close-on-exec, so a child that outlives a SIGKILLed daemon does
not keep the home locked (PC-16).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import attrs
import trio

from .._log import get_logger
from ._errors import DaemonAlreadyRunning, HomeUnavailable, UnsafeHome
from ._home import Home
from ._identity import ProcessIdentity

__all__ = ["LockInfo", "PidLock", "acquire_pid_lock", "open_pid_lock", "read_lock_info"]

_log = get_logger()

_MAX_RECORD = 4096
_ACQUIRE_ATTEMPTS = 20
# A daemon that just took the lock writes its record right after; give it a moment.
_RECORD_WAIT = (0.005, 0.01, 0.02, 0.05)


@attrs.frozen(kw_only=True)
class LockInfo:
    """What a pid file says about the daemon that wrote it, checked against the live system.

    Attributes:
        path: The pid file.
        pid: The pid recorded in it.
        identity: The recorded identity (pid, start time, boot id).
        since: When that daemon started (ISO 8601, UTC), if recorded.
        alive: The recorded process is running, and is the same process
            (start time and boot id match): the pid is not a recycled one.
        locked: Whether the kernel reports a lock on the file (from ``/proc/locks``),
            or ``None`` when that cannot be told.
    """

    path: Path
    pid: int
    identity: ProcessIdentity
    since: str | None
    alive: bool
    locked: bool | None


def _format_record(identity: ProcessIdentity, since: str) -> bytes:
    lines = [str(identity.pid)]
    if identity.start_time is not None:
        lines.append(f"start_time={identity.start_time!r}")
    if identity.boot_id is not None:
        lines.append(f"boot_id={identity.boot_id}")
    lines.append(f"since={since}")
    return ("\n".join(lines) + "\n").encode("ascii")


def _parse_record(raw: bytes) -> tuple[ProcessIdentity, str | None] | None:
    """Parse a pid file; ``None`` if it is empty or not ours."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.splitlines()
    if not lines:
        return None
    try:
        pid = int(lines[0].strip())
    except ValueError:
        return None
    if pid <= 0:
        return None
    fields = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    start_time: float | None
    try:
        start_time = float(fields["start_time"]) if "start_time" in fields else None
    except ValueError:
        start_time = None
    identity = ProcessIdentity(pid=pid, start_time=start_time, boot_id=fields.get("boot_id"))
    return identity, fields.get("since")


def _read_fd(fd: int) -> bytes:
    return os.pread(fd, _MAX_RECORD, 0)


def _kernel_lock_held(path: Path) -> bool | None:
    """Whether ``/proc/locks`` lists a lock on ``path``'s inode (``None``: cannot tell)."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii") as f:
            entries = f.read().splitlines()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; blocked waiters are "-> ..." lines.
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    same_inode = False
    for entry in entries:
        parts = entry.split()
        if len(parts) < 6 or parts[1] == "->":
            continue
        if parts[5] == wanted:
            return True
        same_inode = same_inode or parts[5].rsplit(":", 1)[-1] == str(st.st_ino)
    # Stacked filesystems (overlayfs) may report another device number: then we cannot tell.
    return None if same_inode else False


def read_lock_info(home: Home) -> LockInfo | None:
    """Read the pid file of ``home`` without taking the lock.

    This is how the CLI finds the daemon's pid: use it only when
    :attr:`LockInfo.alive` is true, which guarantees the pid has not been
    recycled by an unrelated process.

    Blocking (reads two small files); async callers use ``trio.to_thread.run_sync``.

    Returns:
        The recorded daemon, or ``None`` if there is no readable pid file.
    """
    path = home.pid_file
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = _read_fd(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    parsed = _parse_record(raw)
    if parsed is None:
        return None
    identity, since = parsed
    return LockInfo(
        path=path,
        pid=identity.pid,
        identity=identity,
        since=since,
        alive=identity.is_running(),
        locked=_kernel_lock_held(path),
    )


class PidLock:
    """The held pid lock of one home, from :func:`acquire_pid_lock` or :func:`open_pid_lock`.

    Attributes:
        path: The pid file.
        identity: The identity written into the file (this process).
        since: When the lock was taken (ISO 8601, UTC).
        reclaimed: The file was there, not empty: an earlier daemon did not
            release its lock (it was killed, or its machine went down), so it may
            have left processes behind. ``False`` when there was no file: every
            daemon that stops, by any path short of dying, removes it.
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        identity: ProcessIdentity,
        since: str,
        *,
        reclaimed: bool = False,
    ) -> None:
        self.path = path
        self.identity = identity
        self.since = since
        self.reclaimed = reclaimed
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Whether the lock is still held (``release`` not called yet)."""
        return self._fd is not None

    def release(self) -> None:
        """Remove the pid file and drop the lock. Idempotent.

        The file is unlinked while the lock is still held, and only if the path
        still names the locked file, so a live daemon's file is never removed.
        Blocking but quick.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            mine = os.fstat(fd)
            try:
                current = os.lstat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (
                mine.st_dev,
                mine.st_ino,
            ):
                os.unlink(self.path)
        except OSError as exc:
            _log.warning("pid_lock_cleanup_failed", path=str(self.path), error=str(exc))
        finally:
            os.close(fd)  # drops the flock
        _log.info("pid_lock_released", path=str(self.path), pid=self.identity.pid)

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<PidLock {self.path} pid={self.identity.pid} {state}>"


def _holder_of(fd: int, path: Path) -> DaemonAlreadyRunning:
    """Build the error for a lock held by someone else, naming them if we can."""
    parsed = None
    for delay in (*_RECORD_WAIT, None):
        try:
            parsed = _parse_record(_read_fd(fd))
        except OSError:
            parsed = None
        if parsed is not None or delay is None:
            break
        time.sleep(delay)  # the holder locks first and writes its record just after
    if parsed is None:
        return DaemonAlreadyRunning(None, path=str(path))
    identity, since = parsed
    return DaemonAlreadyRunning(identity.pid, since=since, path=str(path))


def acquire_pid_lock(home: Home, *, _decided: Callable[[], None] | None = None) -> PidLock:
    """Take the pid lock of ``home``; the blocking core of :func:`open_pid_lock`.

    A pid file that nobody has locked is stale and is taken over, whatever pid
    it names (even a live, unrelated one: PC-13). The caller must call
    :meth:`PidLock.release` when it exits.

    Raises:
        DaemonAlreadyRunning: Another process holds the lock (``"daemon already
            running (pid N)"``).
        HomeUnavailable: The lock file cannot be created or locked
            (``"cannot create lock file …: Read-only file system"``).
        UnsafeHome: The lock file is a symbolic link, not a regular file, or owned
            by another user.

    ``_decided`` is a seam for tests: called once the lock is ours, before the
    record is written, so a test can hold a winner at the moment a racy lock
    would let a second contender in (PC-12).
    """
    path = home.pid_file
    for _ in range(_ACQUIRE_ATTEMPTS):
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, 0o600
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeHome(
                    f"lock file {path} is a symbolic link; refusing",
                    errno=exc.errno,
                    filename=str(path),
                ) from exc
            raise HomeUnavailable(
                f"cannot create lock file {path}: {exc.strerror}",
                errno=exc.errno,
                filename=str(path),
            ) from exc
        try:
            lock = _lock_opened(path, fd, _decided)
        except BaseException:
            os.close(fd)
            raise
        if lock is not None:
            return lock
        os.close(fd)  # the file we locked was unlinked or replaced meanwhile: try again
    raise HomeUnavailable(
        f"cannot lock {path}: the file keeps being replaced by another process",
        errno=errno.EAGAIN,
        filename=str(path),
    )


def _lock_opened(path: Path, fd: int, decided: Callable[[], None] | None) -> PidLock | None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _holder_of(fd, path) from None
    except OSError as exc:
        raise HomeUnavailable(
            f"cannot lock {path}: {exc.strerror}", errno=exc.errno, filename=str(path)
        ) from exc
    mine = os.fstat(fd)
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return None
    if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
        # A daemon releasing its lock unlinks the file before unlocking; we locked
        # that unlinked file. Locking it means nothing: retry on the new path.
        return None
    if not stat.S_ISREG(mine.st_mode):
        raise UnsafeHome(
            f"lock file {path} is not a regular file; refusing",
            errno=errno.EINVAL,
            filename=str(path),
        )
    if mine.st_uid != os.geteuid():
        raise UnsafeHome(
            f"lock file {path} is owned by uid {mine.st_uid}, not by uid {os.geteuid()}; refusing",
            errno=errno.EPERM,
            filename=str(path),
        )
    if decided is not None:
        decided()
    previous = _read_fd(fd)
    stale = _parse_record(previous)
    identity = ProcessIdentity.current()
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = _format_record(identity, since)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        if mine.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except OSError as exc:
        raise HomeUnavailable(
            f"cannot write lock file {path}: {exc.strerror}", errno=exc.errno, filename=str(path)
        ) from exc
    if stale is not None:
        old, old_since = stale
        _log.warning(
            "stale_pid_file_reclaimed",
            path=str(path),
            stale_pid=old.pid,
            stale_since=old_since,
            stale_pid_alive=old.is_running(),
        )
    _log.info("pid_lock_acquired", path=str(path), pid=identity.pid)
    return PidLock(path, fd, identity, since, reclaimed=bool(previous.strip()))


@contextlib.asynccontextmanager
async def open_pid_lock(home: Home) -> AsyncIterator[PidLock]:
    """Hold the pid lock of ``home`` for the duration of the block.

    On exit (normal, exception or cancellation) the pid file is removed and the
    lock dropped; the release is shielded from cancellation.

    Raises:
        DaemonAlreadyRunning: Another daemon holds the lock.
        HomeUnavailable: The lock file cannot be created.
        UnsafeHome: The lock file is a symbolic link or not ours.
    """
    lock = await trio.to_thread.run_sync(acquire_pid_lock, home)
    try:
        yield lock
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lock.release)
