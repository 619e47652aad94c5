"""Small helpers shared by the server and client halves.

The client path (:mod:`omnitron.rpc._client`, :mod:`omnitron.rpc._connect`) imports
this module, so it stays light: the standard library, Trio and the RPC's own error
and wire modules, never the server or the ``supervision`` package.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import trio

from ._errors import SocketPathTooLong, connect_error
from ._wire import UNIX_PATH_MAX

__all__ = ["collapse_single_exception_group", "check_socket_path", "open_unix_stream"]


@contextlib.contextmanager
def collapse_single_exception_group() -> Iterator[None]:
    """Re-raise a nursery's group as its one meaningful exception (the library's rule).

    Public context managers own nurseries, and Trio nurseries always wrap; callers
    should be able to ``except DaemonNotRunning`` or ``except NotFound`` directly.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        # Imported here: the ``supervision`` package is heavy and only a failure needs it.
        from supervision._groups import raise_collapsed

        raise_collapsed(group)


def check_socket_path(path: str | os.PathLike[str]) -> str:
    """Return ``path`` as a string, checking it fits in ``sun_path``.

    Raises:
        SocketPathTooLong: The encoded path is longer than 107 bytes.
    """
    text = os.fspath(path)
    length = len(os.fsencode(text))
    if length > UNIX_PATH_MAX:
        raise SocketPathTooLong(text, length, UNIX_PATH_MAX)
    return text


async def open_unix_stream(path: str | os.PathLike[str]) -> trio.SocketStream:
    """Connect to a daemon's Unix socket.

    Raises:
        SocketPathTooLong: ``path`` does not fit in ``sun_path``.
        DaemonNotRunning: The socket does not exist or nothing listens on it.
        DaemonUnreachable: Connecting failed otherwise (permissions, backlog).
    """
    text = check_socket_path(path)
    try:
        return await trio.open_unix_socket(text)
    except OSError as exc:
        raise connect_error(text, exc) from None
