"""The TCP plane: msgpack-rpc over TLS 1.2+, authenticated by token (SPEC §4).

The daemon's certificate is either given (``--tls-cert``/``--tls-key``) or its
own: on first use an ECDSA P-256 key and a self-signed certificate are created in
``$OMNITRON_HOME/tls/`` (directory 0700, files 0600, written atomically), valid
for ten years; clients pin its SHA-256 fingerprint (``SHA256:<base64>``, as SSH
prints host keys). A connection is admitted by the same :class:`RpcServer` as the
Unix socket's, within its caps; the TLS handshake must finish within the server's
hello deadline, and the connection starts anonymous: only ``daemon.ping`` and
``auth.login`` answer until a token is presented (AU-01).

``ssl`` is imported here, so this module is imported only when a TCP or TLS
WebSocket plane is configured.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import attrs
import trio

from .._log import get_logger
from ._address import fingerprint_of_der
from ._auth import ensure_private_directory, write_private_file
from ._client import RpcClient, open_client
from ._dispatch import Dispatcher, Peer, Role
from ._server import RpcServer, ServerOptions
from .sync_client import CertificateMismatch, client_context

__all__ = [
    "TlsIdentity",
    "ensure_self_signed",
    "user_identity",
    "client_context",
    "open_tls_client",
    "server_context",
    "serve_tls",
    "peer_address",
    "NETWORK_OPTIONS",
]

log = get_logger()

NETWORK_OPTIONS = ServerOptions(max_connections=256, hello_deadline=10.0)
"""Caps of a network plane: 256 connections, TLS handshake and first request
within 10 s (AU-16, RP-18); no eviction of idle peers (they are not trusted)."""

_VALIDITY = datetime.timedelta(days=3650)


@attrs.frozen
class TlsIdentity:
    """The certificate and key a TLS plane serves, and the certificate's fingerprint."""

    cert: Path
    key: Path
    fingerprint: str
    created: bool = False


def _fingerprint_of_pem_file(path: Path) -> str:
    pem = path.read_text()
    return fingerprint_of_der(ssl.PEM_cert_to_DER_cert(pem))


def ensure_self_signed(home: Path, hosts: list[str] | None = None) -> TlsIdentity:
    """The daemon's own certificate under ``home/tls``, created on first use.

    Args:
        home: ``$OMNITRON_HOME``.
        hosts: Names and addresses put in the certificate's subjectAltName when it
            is created (clients pin the fingerprint, so these are informative).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = ensure_private_directory(Path(home) / "tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return TlsIdentity(cert_path, key_path, _fingerprint_of_pem_file(cert_path))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in ["127.0.0.1", "::1", socket.gethostname(), *(hosts or [])]:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"omnitron {socket.gethostname()}")]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Key first: a certificate file never exists without its key.
    write_private_file(key_path, key_pem)
    write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    fingerprint = fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))
    return TlsIdentity(cert_path, key_path, fingerprint, created=True)


def user_identity(cert: Path, key: Path) -> TlsIdentity:
    """A user-provided certificate and key (checked to load together)."""
    server_context(TlsIdentity(cert, key, ""))
    return TlsIdentity(cert, key, _fingerprint_of_pem_file(cert))


def server_context(identity: TlsIdentity) -> ssl.SSLContext:
    """A server context: TLS 1.2 or later, the identity's certificate and key.

    Raises:
        OSError, ssl.SSLError: The files cannot be read or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(identity.cert, identity.key)
    return context


def peer_address(stream: trio.abc.Stream) -> str | None:
    """The remote IP address under any number of TLS layers, or ``None``."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if isinstance(inner, trio.SocketStream):
        try:
            return str(inner.socket.getpeername()[0])
        except OSError:
            return None
    return None


async def _tls_authenticate(stream: trio.abc.Stream) -> Peer:
    """Finish the TLS handshake (under the server's hello deadline); anonymous peer."""
    if not isinstance(stream, trio.SSLStream):
        raise TypeError(f"expected an SSLStream, got {type(stream).__name__}")
    await stream.do_handshake()
    return Peer(transport="tls", role=Role.ANONYMOUS, address=peer_address(stream))


async def serve_tls(
    host: str,
    port: int,
    dispatcher: Dispatcher,
    context: ssl.SSLContext,
    *,
    options: ServerOptions = NETWORK_OPTIONS,
    task_status: trio.TaskStatus[RpcServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``dispatcher`` over TLS on ``host:port`` until cancelled.

    ``task_status`` receives the :class:`RpcServer`; its ``address`` is
    ``tls://HOST:PORT`` with the port actually bound (``port=0`` picks a free one).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    address = f"tls://{_host_text(bound[0])}:{bound[1]}"
    server = RpcServer(dispatcher, authenticate=_tls_authenticate, options=options, address=address)
    tls_listeners = [trio.SSLListener(listener, context) for listener in listeners]
    log.info("rpc_listening", address=address, transport="tls")
    await server.serve(tls_listeners, task_status=task_status)


@contextlib.asynccontextmanager
async def open_tls_client(
    host: str, port: int, *, fingerprint: str, token: str | None = None
) -> AsyncIterator[RpcClient]:
    """An async client of a TLS plane whose certificate must have ``fingerprint``.

    With ``token``, the connection logs in first (``auth.login``).

    Raises:
        CertificateMismatch: The server presented another certificate.
        Unauthenticated: The token was refused.
    """
    tcp = await trio.open_tcp_stream(host, port)
    stream = trio.SSLStream(tcp, client_context(), server_hostname=None)
    try:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        presented = fingerprint_of_der(der or b"")
        if presented != fingerprint:
            raise CertificateMismatch(
                f"the certificate of {host}:{port} is {presented}, not the pinned {fingerprint}"
            )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    async with open_client(stream, address=f"tls://{host}:{port}") as client:
        if token is not None:
            await client.call("auth.login", token=token)
        yield client


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host
