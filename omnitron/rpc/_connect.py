"""The async client by URL or by alias: ``connect_url("tls://...")``, ``connect_remote("prod")``.

The same connections as the blocking :func:`~omnitron.rpc.sync_client.connect_url_sync`
and :func:`~omnitron.rpc.sync_client.connect_remote_sync`: a Unix socket, or a TLS
plane whose certificate is checked against its pin (``--fingerprint``, the alias's
fingerprint, or ``known_hosts``) before anything is sent, then ``auth.login``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable

import trio

from ._client import RpcClient, connect_unix, open_client
from ._errors import RemoteError, RpcTimeout, connect_error
from ._wire import DEFAULT_LIMITS, Limits

__all__ = ["connect_remote", "connect_url"]

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds the TCP connect and the TLS handshake may take together."""


@contextlib.asynccontextmanager
async def connect_url(
    url: str,
    *,
    token: str | None = None,
    fingerprint: str | None = None,
    known_hosts: str | None = None,
    confirm: Callable[[str, str], bool] | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    limits: Limits = DEFAULT_LIMITS,
    error_types: Iterable[type[RemoteError]] = (),
) -> AsyncIterator[RpcClient]:
    """``async with connect_url("tls://10.0.0.5:9700", token=t) as client``.

    ``unix:///PATH`` connects to a local socket; ``tls://HOST:PORT`` to a TCP plane
    (``known_hosts`` defaults to ``$OMNITRON_HOME/known_hosts``; ``confirm`` is
    asked about an unknown certificate, and is blocking: pass it only from a
    terminal program). With ``token`` the connection logs in first.

    Raises:
        ValueError: ``url`` is malformed or of another scheme.
        RpcTimeout: Connecting and the handshake took longer than ``connect_timeout``.
        CertificateMismatch, UnknownCertificate: The certificate is not the pinned one.
        RpcError: Connecting failed, or the token was refused.
    """
    if url.startswith("unix://"):
        async with connect_unix(
            url.removeprefix("unix://"), limits=limits, error_types=error_types
        ) as client:
            if token is not None:
                await client.call("auth.login", token=token)
            yield client
        return
    from omnitron.remotes import default_home

    from ._address import fingerprint_of_der, parse_url
    from .sync_client import check_pin, client_context

    scheme, host, port = parse_url(url)
    if scheme != "tls":
        raise ValueError(f"URL {url!r}: connect_url speaks unix:// and tls:// only")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    stream: trio.SSLStream[trio.SocketStream] | None = None
    with trio.move_on_after(connect_timeout) as scope:
        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise connect_error(f"tls://{where}", _first_cause(exc)) from None
        stream = trio.SSLStream(tcp, client_context(), server_hostname=None)
        try:
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, OSError) as exc:
                cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
                raise connect_error(f"tls://{where}", cause) from None  # type: ignore[arg-type]
            check_pin(
                where,
                fingerprint_of_der(stream.getpeercert(binary_form=True) or b""),
                known_hosts=known_hosts or os.path.join(default_home(), "known_hosts"),
                fingerprint=fingerprint,
                confirm=confirm,
            )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    if scope.cancelled_caught or stream is None:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise RpcTimeout(f"connecting to tls://{where} took longer than {connect_timeout:g}s")
    async with open_client(
        stream, limits=limits, error_types=error_types, address=f"tls://{where}"
    ) as client:
        if token is not None:
            await client.call("auth.login", token=token)
        yield client


@contextlib.asynccontextmanager
async def connect_remote(
    name: str,
    *,
    home: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    limits: Limits = DEFAULT_LIMITS,
    error_types: Iterable[type[RemoteError]] = (),
) -> AsyncIterator[RpcClient]:
    """``async with connect_remote("prod") as client``: the daemon added with
    ``omnitron remote add prod ...`` in ``home`` (default ``$OMNITRON_HOME``), logged in.

    An alias whose certificate is not pinned yet is refused (no prompt here): pin
    it with ``omnitron remote add --fingerprint``.

    Raises:
        RemotesError: No such alias, an unusable remotes file, or its token unset.
        RpcError: As :func:`connect_url`.
    """
    from omnitron.remotes import default_home, lookup_remote

    home = home or default_home()
    remote = lookup_remote(home, name)
    async with connect_url(
        remote.url,
        token=remote.resolve_token(),
        fingerprint=remote.fingerprint,
        known_hosts=os.path.join(home, "known_hosts"),
        connect_timeout=connect_timeout,
        limits=limits,
        error_types=error_types,
    ) as client:
        yield client


def _first_cause(exc: OSError) -> OSError:
    """Trio's "all attempts to connect failed" wraps each attempt's error: the first."""
    group = exc.__cause__
    if exc.errno is None and isinstance(group, BaseExceptionGroup):
        for inner in group.exceptions:
            if isinstance(inner, OSError):
                return inner
    return exc
