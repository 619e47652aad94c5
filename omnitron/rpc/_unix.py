"""The management plane: msgpack-rpc over a Unix socket, authenticated by peer uid.

Binding follows AU-14 and PC-14/PC-15: the socket's directory must be a real
directory owned by the daemon's user and closed to group and others (0700); the
socket is bound under umask 0177, so it is 0600 from the instant it exists (a
socket's mode at bind is ``0777 & ~umask``); a leftover socket file is removed only
when nothing answers on it; a path that exists and is not a socket is refused; and
on exit the file is unlinked only if it is still the one this server bound.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Final, NoReturn

import trio

from .._log import get_logger
from ._dispatch import Dispatcher, Peer, Role
from ._errors import (
    Forbidden,
    InsecureSocketPath,
    SocketInUse,
)
from ._server import Authenticator, RpcServer, ServerOptions
from ._util import check_socket_path, collapse_single_exception_group, open_unix_stream

__all__ = [
    "serve_unix",
    "open_unix_server",
    "open_unix_stream",
    "check_socket_path",
    "unix_peer_authenticator",
]

log = get_logger()

_UCRED: Final = struct.Struct("3i")
_STALE_PROBE_TIMEOUT: Final = 1.0


def _parent_directory(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _check_directory(directory: str, uid: int) -> None:
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        raise InsecureSocketPath(directory, "the socket directory is a symlink")
    if not stat.S_ISDIR(info.st_mode):
        raise InsecureSocketPath(directory, "the socket directory is not a directory")
    if info.st_uid != uid:
        raise InsecureSocketPath(
            directory, f"the socket directory is owned by uid {info.st_uid}, not {uid}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise InsecureSocketPath(
            directory, f"the socket directory is open to group or others ({mode:04o}); make it 0700"
        )


async def _remove_stale_socket(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise InsecureSocketPath(path, "the path exists and is not a socket")
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            with trio.move_on_after(_STALE_PROBE_TIMEOUT):
                await probe.connect(path)
        except ConnectionRefusedError:
            # Left behind by a server that died (PC-14): nobody answers, replace it.
            log.warning("rpc_stale_socket_removed", path=path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("rpc_socket_probe_failed", path=path, error=str(exc))
    # Someone accepted (or is about to): a live server's socket is never unlinked.
    raise SocketInUse(path)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _bind(path: str) -> tuple[socket.socket, tuple[int, int]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Synchronous, so no other task runs while the process umask is narrowed.
        with _umask(0o177):
            try:
                sock.bind(path)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise SocketInUse(path) from None
                raise
        info = os.lstat(path)
        if not stat.S_ISSOCK(info.st_mode) or stat.S_IMODE(info.st_mode) & 0o177:
            raise InsecureSocketPath(
                path, f"the bound socket has mode {stat.S_IMODE(info.st_mode):04o}"
            )
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock, (info.st_dev, info.st_ino)


def _unlink_if_ours(path: str, identity: tuple[int, int]) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if (info.st_dev, info.st_ino) == identity:
        os.unlink(path)


def unix_peer_authenticator(allowed_uid: int) -> Authenticator:
    """Admit peers whose ``SO_PEERCRED`` uid is ``allowed_uid``, as :attr:`Role.ADMIN`.

    Anyone else gets ``FORBIDDEN`` and is disconnected (AU-14).
    """

    async def authenticate(stream: trio.abc.Stream) -> Peer:
        await trio.lowlevel.checkpoint()
        if not isinstance(stream, trio.SocketStream):
            raise TypeError(f"expected a Unix SocketStream, got {type(stream).__name__}")
        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, uid, _gid = _UCRED.unpack(raw)
        if uid != allowed_uid:
            raise Forbidden(
                f"peer uid {uid} may not use this socket; "
                f"only uid {allowed_uid} (the daemon's user) may"
            )
        return Peer(transport="unix", role=Role.ADMIN, uid=uid, pid=pid)

    return authenticate


async def serve_unix(
    path: str | os.PathLike[str],
    dispatcher: Dispatcher,
    *,
    options: ServerOptions = ServerOptions(),  # noqa: B008 - frozen, shared safely
    allowed_uid: int | None = None,
    task_status: trio.TaskStatus[RpcServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``dispatcher`` on a Unix socket at ``path`` until cancelled.

    For callers with their own nursery: ``server = await nursery.start(serve_unix,
    path, dispatcher)``. :func:`open_unix_server` is the context-manager form.

    Args:
        path: The socket path (at most 107 bytes), in a 0700 directory owned by the
            current user.
        dispatcher: The methods to serve.
        options: Caps, deadlines and codec limits.
        allowed_uid: The peer uid admitted as admin; defaults to the current uid.
        task_status: Receives the :class:`RpcServer` once the socket accepts.

    Raises:
        SocketPathTooLong: ``path`` does not fit in ``sun_path``.
        InsecureSocketPath: The directory is a symlink, not ours, or not 0700; or
            ``path`` exists and is not a socket.
        SocketInUse: Another server answers on ``path``.
        OSError: The directory does not exist, or binding failed otherwise.

    Cancellation: stops accepting, cancels running calls, closes connections, and
    removes the socket file if it is still the one bound here.
    """
    text = check_socket_path(path)
    uid = os.getuid()
    _check_directory(_parent_directory(text), uid)
    await _remove_stale_socket(text)
    sock, identity = _bind(text)
    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        server = RpcServer(
            dispatcher,
            authenticate=unix_peer_authenticator(uid if allowed_uid is None else allowed_uid),
            options=options,
            address=text,
        )
        log.info("rpc_listening", path=text, transport="unix")
        await server.serve([listener], task_status=task_status)
    finally:
        sock.close()
        _unlink_if_ours(text, identity)


@contextlib.asynccontextmanager
async def open_unix_server(
    path: str | os.PathLike[str],
    dispatcher: Dispatcher,
    *,
    options: ServerOptions = ServerOptions(),  # noqa: B008 - frozen, shared safely
    allowed_uid: int | None = None,
) -> AsyncIterator[RpcServer]:
    """Serve ``dispatcher`` on a Unix socket for the duration of the block.

    Same arguments and errors as :func:`serve_unix`; errors are raised as
    themselves, never wrapped in an ``ExceptionGroup``.
    """
    with collapse_single_exception_group():
        async with trio.open_nursery() as nursery:
            server: RpcServer = await nursery.start(
                functools.partial(
                    serve_unix, path, dispatcher, options=options, allowed_uid=allowed_uid
                )
            )
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
