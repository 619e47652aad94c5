"""The listening sockets the daemon owns for its apps (the ``sockets`` app key).

An app's sockets are bound by the daemon, once per app (not per process), when
the app starts, and stay open while it is meant to run: across restarts of its
processes, a ``reload`` (old and new processes accept on the same socket while
they overlap) and a ``scale`` (new processes get the same sockets). Every
process receives them with the socket-activation protocol (fds 3, 4, ... in
config order, ``LISTEN_FDS``, ``LISTEN_FDNAMES``, ``LISTEN_PID``), through
:meth:`supervision.Listen.socket`, which passes a socket without ever closing
it. They are closed when the app is stopped, removed from the config, or the
daemon exits; a changed ``sockets`` config binds anew.
"""

from __future__ import annotations

import os
from typing import Any

from supervision import Listen
from supervision._sockets import ListenSet, open_listen_set

from ..config import AppConfig, SocketConfig
from ._errors import UnsupportedApp

__all__ = ["AppSockets", "SocketsUnavailable"]


class SocketsUnavailable(UnsupportedApp):
    """An app's socket cannot be bound; the message names it and the cause
    (``tcp 127.0.0.1:8000: Address already in use``)."""


def _listen(sock: SocketConfig) -> Listen:
    if sock.path is not None:
        return Listen.unix(os.fspath(sock.path), name=sock.name, backlog=sock.backlog)
    assert sock.port is not None
    return Listen.tcp(sock.port, sock.host or "127.0.0.1", name=sock.name, backlog=sock.backlog)


class AppSockets:
    """The open listening sockets of every app, by app name.

    The orchestrator binds an app's sockets as it starts the app, closes them as
    it stops it, and closes them all when it stops running (:meth:`close_all`).
    """

    def __init__(self) -> None:
        self._open: dict[str, tuple[tuple[SocketConfig, ...], ListenSet, tuple[Listen, ...]]] = {}

    async def bind(self, app: AppConfig) -> None:
        """Bind ``app``'s sockets, unless they are bound already with this config
        (a changed config closes the old ones first).

        Raises:
            SocketsUnavailable: One cannot be bound; none of the app's are open.
        """
        current = self._open.get(app.name)
        if current is not None:
            if current[0] == app.sockets:
                return
            self.close(app.name)
        if not app.sockets:
            return
        try:
            listen_set = await open_listen_set([_listen(s) for s in app.sockets])
        except OSError as exc:
            raise SocketsUnavailable(
                f"app {app.name!r} cannot bind its socket {exc.strerror or exc}"
            ) from None
        shared = tuple(
            Listen.socket(sock, name=config.name)
            for sock, config in zip(listen_set.sockets, app.sockets, strict=True)
        )
        self._open[app.name] = (app.sockets, listen_set, shared)

    def listen(self, name: str) -> tuple[Listen, ...]:
        """What each process of app ``name`` is given: its open sockets, in config
        order (none when it has none, or they are not bound)."""
        current = self._open.get(name)
        return () if current is None else current[2]

    def addresses(self, name: str) -> tuple[Any, ...]:
        """The bound addresses of app ``name``'s sockets (``(host, port)`` or a path)."""
        current = self._open.get(name)
        return () if current is None else current[1].addresses

    def close(self, name: str) -> None:
        """Close app ``name``'s sockets (removing its Unix socket files). Idempotent."""
        current = self._open.pop(name, None)
        if current is not None:
            current[1].close()

    def close_all(self) -> None:
        for name in list(self._open):
            self.close(name)
