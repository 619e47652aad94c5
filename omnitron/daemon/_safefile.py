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
import logging.handlers
import os
import stat
import sys
from pathlib import Path

__all__ = ["UnsafeLogPath", "SafeFileHandler", "check_log_directory", "open_for_append"]

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


class SafeFileHandler(logging.handlers.WatchedFileHandler):
    """A file handler that opens its file with :func:`open_for_append`.

    Like ``WatchedFileHandler``, it opens the file again when it was removed or
    moved (``rm daemon.log``: the next record starts a new file). A record it cannot
    write (a full disk, a read-only one) is counted in :attr:`failures`, never raised:
    the first failure of a streak is said once on stderr, the rest only counted
    (FAULTS PC-21).
    """

    def __init__(self, filename: Path) -> None:
        super().__init__(filename, mode="a", encoding="utf-8", delay=False)
        self.failures = 0
        self.failing = False

    def _open(self) -> io.TextIOWrapper:
        stream = open(open_for_append(Path(self.baseFilename)), "a", encoding="utf-8")  # noqa: SIM115
        assert isinstance(stream, io.TextIOWrapper)
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        failures = self.failures
        super().emit(record)  # calls handleError on any failure
        if self.failures == failures:
            self.failing = False

    def handleError(self, record: logging.LogRecord) -> None:
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
