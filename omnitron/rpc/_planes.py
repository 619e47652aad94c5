"""Which network planes a daemon serves, checked before anything listens.

``--tcp HOST:PORT`` serves msgpack-rpc over TLS; ``--http HOST:PORT`` serves it
over WebSocket at ``/rpc`` (``ws://`` on a loopback address, ``wss://`` with the
daemon's certificate on any other: never plaintext beyond this machine). There
is no plaintext TCP plane at all (AU-17). Modules that import ``ssl`` and the
cryptography package are imported only when a plane is configured.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from .._log import get_logger
from ._address import DEFAULT_HTTP_PORT, DEFAULT_TCP_PORT, is_loopback, parse_host_port
from ._errors import RpcError

if TYPE_CHECKING:
    from ._auth import TokenAuthority
    from ._dispatch import Dispatcher

__all__ = ["DEFAULT_MAX_CONNECTIONS", "PlaneConfig", "PlaneError", "start_network_planes"]

log = get_logger()

DEFAULT_MAX_CONNECTIONS = 256
"""Connections each network plane serves at once (``--max-connections``; RP-18)."""


class PlaneError(RpcError):
    """A network plane cannot be configured as asked; the message says why."""


@attrs.frozen(kw_only=True)
class PlaneConfig:
    """The ``--tcp``/``--http``/``--tls-cert``/``--tls-key``/``--max-connections`` options
    of ``omnitron up``."""

    tcp: str | None = None
    http: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @property
    def any(self) -> bool:
        return self.tcp is not None or self.http is not None

    def check(self) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
        """The parsed ``(host, port)`` of each plane.

        Raises:
            PlaneError: A malformed address, or only one of cert and key.
        """
        if (self.tls_cert is None) != (self.tls_key is None):
            raise PlaneError("--tls-cert and --tls-key must be given together")
        if self.tls_cert is not None and not self.any:
            raise PlaneError("--tls-cert/--tls-key need --tcp or --http")
        if not 1 <= self.max_connections <= 65536:
            raise PlaneError(f"--max-connections must be 1 to 65536, got {self.max_connections}")
        try:
            tcp = (
                None
                if self.tcp is None
                else parse_host_port(self.tcp, default_port=DEFAULT_TCP_PORT)
            )
            http = (
                None
                if self.http is None
                else parse_host_port(self.http, default_port=DEFAULT_HTTP_PORT)
            )
        except ValueError as exc:
            raise PlaneError(str(exc)) from None
        return tcp, http


async def start_network_planes(
    nursery: trio.Nursery,
    config: PlaneConfig,
    *,
    home: Path,
    dispatcher: Dispatcher,
    authority: Callable[[], TokenAuthority],
) -> list[str]:
    """Start the configured planes in ``nursery``; returns lines to print about them
    (``listening on ADDRESS``, ``certificate fingerprint: SHA256:...``).

    The token key is loaded (or created) first, so a broken home fails here.

    Raises:
        PlaneError: Bad options (see :meth:`PlaneConfig.check`).
        OSError: An address cannot be bound, or the TLS files cannot be used.
    """
    tcp, http = config.check()
    if tcp is None and http is None:
        return []
    from . import _tls

    await trio.to_thread.run_sync(authority)
    needs_tls = tcp is not None or (http is not None and not is_loopback(http[0]))
    context = None
    identity = None
    if needs_tls:
        if config.tls_cert is not None and config.tls_key is not None:
            identity = await trio.to_thread.run_sync(
                _tls.user_identity, config.tls_cert, config.tls_key
            )
        else:
            hosts = [address[0] for address in (tcp, http) if address is not None]
            identity = await trio.to_thread.run_sync(_tls.ensure_self_signed, home, hosts)
        context = _tls.server_context(identity)
        log.info(
            "tls_certificate",
            fingerprint=identity.fingerprint,
            cert=str(identity.cert),
            created=identity.created,
        )
    options = attrs.evolve(_tls.NETWORK_OPTIONS, max_connections=config.max_connections)
    addresses = []
    if tcp is not None:
        assert context is not None
        server = await nursery.start(
            functools.partial(_tls.serve_tls, tcp[0], tcp[1], dispatcher, context, options=options)
        )
        addresses.append(f"listening on {server.address}")
    if http is not None:
        from . import _ws

        ws_context = None if is_loopback(http[0]) else context
        server = await nursery.start(
            functools.partial(
                _ws.serve_websocket_plane,
                http[0],
                http[1],
                dispatcher,
                context=ws_context,
                options=options,
            )
        )
        addresses.append(f"listening on {server.address}")
    if identity is not None:
        addresses.append(f"certificate fingerprint: {identity.fingerprint}")
    return addresses
