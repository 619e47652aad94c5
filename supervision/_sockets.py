"""Listening sockets owned by the supervisor and passed to process children.

A slot's sockets are opened when the slot first runs and stay open across its
generations, so clients queue in the kernel's backlog instead of being refused
while a child is replaced. They reach the child with the systemd
socket-activation protocol: file descriptors 3, 4, ... in spec order,
``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` (see :mod:`._spawn` for
how ``LISTEN_PID`` is set to the child's own pid).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import trio

from ._spec import Listen, ListenSocket, ListenTcp, ListenUnix

__all__ = ["LISTEN_FDS_START", "ListenSet", "describe_listen", "open_listen_set"]

LISTEN_FDS_START: Final = 3
"""The first file descriptor of the socket-activation protocol (``SD_LISTEN_FDS_START``)."""

_DEFAULT_FDNAME: Final = "unknown"


def describe_listen(spec: Listen) -> str:
    """A short human label for a listening socket spec: ``tcp 127.0.0.1:8000``."""
    if isinstance(spec, ListenTcp):
        host = f"[{spec.host}]" if ":" in spec.host else spec.host
        return f"tcp {host}:{spec.port}"
    if isinstance(spec, ListenUnix):
        return f"unix {spec.path}"
    if isinstance(spec, ListenSocket):
        return f"socket {spec.name or 'unknown'}"
    return repr(spec)


@attrs.frozen
class _Bound:
    spec: Listen
    sock: socket.socket = attrs.field(eq=False)
    address: Any
    inode: tuple[int, int] | None  # (st_dev, st_ino) of a Unix socket file we created
    owned: bool = True  # False: the caller's socket (Listen.socket), never closed here


class ListenSet:
    """The listening sockets of one child slot.

    Build it with :func:`open_listen_set`. The sockets stay blocking (as a child
    expects from socket activation) and close-on-exec in the supervisor; the
    process runner places them at fds ``3..3+N-1`` of each child.
    """

    def __init__(self, bound: Sequence[_Bound]) -> None:
        self._bound = tuple(bound)
        self._closed = False

    def __len__(self) -> int:
        return len(self._bound)

    @property
    def fds(self) -> tuple[int, ...]:
        """The supervisor-side file descriptors, in spec order."""
        return tuple(b.sock.fileno() for b in self._bound)

    @property
    def names(self) -> tuple[str, ...]:
        """The ``LISTEN_FDNAMES`` entries: each spec's ``name``, or ``"unknown"``."""
        return tuple(getattr(b.spec, "name", None) or _DEFAULT_FDNAME for b in self._bound)

    @property
    def addresses(self) -> tuple[Any, ...]:
        """The bound addresses (``(host, port)`` for TCP, the path for Unix sockets).

        Useful when a spec asked for port 0.
        """
        return tuple(b.address for b in self._bound)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The socket objects (owned by this set: do not close them)."""
        return tuple(b.sock for b in self._bound)

    def child_env(self) -> Mapping[str, str]:
        """``LISTEN_FDS`` and ``LISTEN_FDNAMES`` (``LISTEN_PID`` is set in the child)."""
        if not self._bound:
            return {}
        return {"LISTEN_FDS": str(len(self._bound)), "LISTEN_FDNAMES": ":".join(self.names)}

    def child_fds(self) -> dict[int, int]:
        """Where each socket goes in the child: ``{target_fd: supervisor_fd}``."""
        return {LISTEN_FDS_START + i: fd for i, fd in enumerate(self.fds)}

    def close(self) -> None:
        """Close every socket and remove the Unix socket files this set created.

        Idempotent. A socket file replaced by someone else since is left alone, and
        a socket given with :meth:`Listen.socket` stays open (its owner closes it).
        """
        if self._closed:
            return
        self._closed = True
        for b in self._bound:
            if not b.owned:
                continue
            b.sock.close()
            if isinstance(b.spec, ListenUnix) and b.inode is not None:
                _unlink_if_same(b.spec.path, b.inode)


def _unlink_if_same(path: str, inode: tuple[int, int]) -> None:
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == inode:
            os.unlink(path)
    except OSError:
        pass


async def open_listen_set(specs: Sequence[Listen]) -> ListenSet:
    """Open, bind and listen on every socket of ``specs``.

    TCP sockets get ``SO_REUSEADDR``; a stale Unix socket file (nobody accepts on
    it) is replaced, while a live one or a non-socket file is an error.

    Raises:
        OSError: a socket could not be opened; its ``strerror`` says which one
            (e.g. ``"tcp 127.0.0.1:8000: Address already in use"``). Sockets opened
            before the failure are closed.

    Cancellation: safe at any point; sockets opened so far are closed.
    """
    bound: list[_Bound] = []
    try:
        for spec in specs:
            try:
                bound.append(await _open_one(spec))
            except OSError as exc:
                raise OSError(exc.errno, f"{describe_listen(spec)}: {exc.strerror or exc}") from exc
    except BaseException:
        ListenSet(bound).close()
        raise
    return ListenSet(bound)


async def _open_one(spec: Listen) -> _Bound:
    if isinstance(spec, ListenTcp):
        return await _open_tcp(spec)
    if isinstance(spec, ListenUnix):
        return await _open_unix(spec)
    if isinstance(spec, ListenSocket):
        await trio.lowlevel.checkpoint()
        return _given(spec)
    raise TypeError(f"unsupported listening socket spec: {spec!r}")


async def _open_tcp(spec: ListenTcp) -> _Bound:
    infos = await trio.socket.getaddrinfo(
        spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(errno.EADDRNOTAVAIL, "no address to bind")
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(spec.backlog)
        address = sock.getsockname()
    except BaseException:
        sock.close()
        raise
    return _Bound(spec=spec, sock=sock, address=address[:2], inode=None)


async def _open_unix(spec: ListenUnix) -> _Bound:
    await trio.to_thread.run_sync(_remove_stale_unix_socket, spec.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(spec.path)
        st = os.lstat(spec.path)
        sock.listen(spec.backlog)
    except BaseException:
        sock.close()
        raise
    return _Bound(spec=spec, sock=sock, address=spec.path, inode=(st.st_dev, st.st_ino))


def _given(spec: ListenSocket) -> _Bound:
    """A caller's socket, as it is: it must still be open and listening."""
    sock = spec.sock
    if sock.fileno() < 0:
        raise OSError(errno.EBADF, "the socket was closed by its owner")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise OSError(errno.EINVAL, "the socket is not listening")
    address = sock.getsockname()
    if isinstance(address, tuple):
        address = address[:2]
    return _Bound(spec=spec, sock=sock, address=address, inode=None, owned=False)


def _remove_stale_unix_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        # Nobody accepts on it: a leftover of a previous run.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError:
        # Unreachable for another reason (EAGAIN on a full backlog, EACCES, ...): in use.
        pass
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "a live listener already owns this socket path")
