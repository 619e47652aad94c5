"""Opening the daemon's log files without being tricked by another user (FAULTS PC-15).

A log directory may be shared (``[logging] directory = "/var/log/apps"``). If another
user can write in it, they can plant ``app.log -> /etc/something`` (a symbolic
link) or a hard link to a file of ours, and a daemon that opens by name appends
app output there. So:

- a directory that another uid can write is refused, unless it is sticky (like
  ``/tmp``: then nobody else can rename or remove our files);
- files are opened with ``O_NOFOLLOW`` and checked after opening: a regular file,
  owned by the daemon's user, with a single link.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["UnsafeLogPath", "SafeFileHandler", "check_log_directory", "open_for_append"]

CHECK_INTERVAL = 1.0
"""Seconds between two looks of :class:`SafeFileHandler` at its file's name."""
CHECK_BYTES = 64 * 1024
"""Bytes written after which :class:`SafeFileHandler` looks at its file's name anyway
(the lines since the last look are kept until it does)."""

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY


class UnsafeLogPath(OSError):
    """A log directory or file another user could redirect; the message says why."""


def check_log_directory(directory: Path) -> None:
    """Create ``directory`` (0700) if missing; refuse one that another uid can write.

    Raises:
        UnsafeLogPath: The directory is writable by another user and not sticky,
            or it is not a directory.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeLogPath(f"log directory {directory} is not a directory")
    me = os.geteuid()
    others_can_write = info.st_uid not in (me, 0) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if others_can_write and not info.st_mode & stat.S_ISVTX:
        mode = stat.filemode(info.st_mode)
        raise UnsafeLogPath(
            f"log directory {directory} ({mode}, owner uid {info.st_uid}) can be written by "
            "another user and is not sticky: they could redirect the daemon's log files; "
            f"use a directory only uid {me} can write (chmod go-w), or set the sticky bit "
            "(chmod +t)"
        )


def open_for_append(path: Path) -> int:
    """Open (or create, 0600) ``path`` for appending; returns the descriptor.

    Raises:
        UnsafeLogPath: ``path`` is a symbolic link, not a regular file, owned by
            another user, or has other hard links.
        OSError: Anything else the system refuses (full disk, permissions...).
    """
    try:
        fd = os.open(path, _FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise UnsafeLogPath(
                f"refusing to write log file {path}: it is a symbolic link "
                f"(to {os.readlink(path)!r})"
            ) from exc
        raise
    try:
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "it is not a regular file"
        elif info.st_uid != os.geteuid():
            problem = f"it belongs to uid {info.st_uid}, not to uid {os.geteuid()}"
        elif info.st_nlink != 1:
            problem = f"it has {info.st_nlink} hard links"
        if problem is not None:
            raise UnsafeLogPath(f"refusing to write log file {path}: {problem}")
    except BaseException:
        os.close(fd)
        raise
    return fd


class SafeFileHandler(logging.FileHandler):
    """A file handler that opens its file with :func:`open_for_append`.

    Like ``logging.handlers.WatchedFileHandler`` (not its subclass: that module
    imports ``pickle``, for handlers the daemon has no use for), it opens the file
    again when it was removed or moved (``rm daemon.log``, ``logrotate``), but it
    looks (one ``stat``) at most
    once per ``check_interval`` seconds and once per :data:`CHECK_BYTES` written,
    not before every line: a crash storm writes three lines per restart. The lines
    written since the last look are kept meanwhile: when the file was removed,
    they are written again to the new one, so none is lost (the first of them
    may predate the removal); a moved file keeps its own (nothing doubled).

    Each line is written with one ``write`` on the file's descriptor. A record it
    cannot write (a full disk, a read-only one) is counted in :attr:`failures`,
    never raised: the first failure of a streak is said once on stderr, the rest
    only counted (FAULTS PC-21).

    Args:
        filename: The file.
        check_interval: Seconds between two looks at the file's name.
        clock: Where the time comes from (seconds; tests pass their own).
    """

    def __init__(
        self,
        filename: Path,
        *,
        check_interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(filename, mode="a", encoding="utf-8", delay=False)
        self.failures = 0
        self.failing = False
        self._check_interval = check_interval
        self._clock = clock
        self._next_check = clock() + check_interval
        self._unchecked: list[bytes] = []  # written since the last look at the name
        self._unchecked_bytes = 0

    def _open(self) -> io.TextIOWrapper:
        stream = open(open_for_append(Path(self.baseFilename)), "a", encoding="utf-8")  # noqa: SIM115
        assert isinstance(stream, io.TextIOWrapper)
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """Write ``line`` (rendered, without its newline) as a record would be.

        Never raises: a failure is counted as for a record.
        """
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            try:
                data = (line + self.terminator).encode("utf-8")
                now = self._clock()
                if now >= self._next_check or self._unchecked_bytes >= CHECK_BYTES:
                    self._next_check = now + self._check_interval
                    self._check()
                stream = self.stream
                if stream is None:
                    stream = self.stream = self._open()
                _write_all(stream.fileno(), data)
                self._unchecked.append(data)
                self._unchecked_bytes += len(data)
            except Exception:
                self.handleError(None)
                return
            self.failing = False

    def _check(self) -> None:
        """Open the file again if its name no longer leads to the file written; if
        that file was removed, write again what went to it since the last look."""
        unchecked, self._unchecked, self._unchecked_bytes = self._unchecked, [], 0
        stream = self.stream
        if stream is None:
            return
        try:
            info: os.stat_result | None = os.stat(self.baseFilename)
        except FileNotFoundError:
            info = None
        fd = stream.fileno()
        mine = os.fstat(fd)
        if info is not None and (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino):
            return
        self.stream = None
        stream.close()
        self.stream = self._open()
        if mine.st_nlink == 0 and unchecked:  # removed, not moved: those lines are gone
            _write_all(self.stream.fileno(), b"".join(unchecked))

    def reopenIfNeeded(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._next_check = self._clock() + self._check_interval
            self._check()

    def handleError(self, record: logging.LogRecord | None) -> None:
        self.failures += 1
        if self.failing:
            return
        self.failing = True
        error = sys.exc_info()[1]
        with contextlib.suppress(Exception):
            print(
                f"omnitron: cannot write {self.baseFilename}: {error} "
                "(the daemon goes on; records are counted, not written)",
                file=sys.stderr,
                flush=True,
            )


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written == len(data):
        return  # the usual case: one write, no view
    view = memoryview(data)[written:]
    while view:
        view = view[os.write(fd, view) :]
