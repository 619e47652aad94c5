"""Atomic, private file writes (standard library only: the CLI's fast path uses it)."""

from __future__ import annotations

import contextlib
import os

__all__ = ["write_private_file"]


def write_private_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data``, mode 0600 from the first byte.

    A temporary file beside it (exclusive create, not following links) is written,
    fsynced and renamed over ``path``; the directory is fsynced after the rename.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
