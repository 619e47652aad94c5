"""A blocking client for one-shot commands: the CLI's fast path.

``import trio`` alone costs about 160 ms, more than the whole ``omnitron status``
budget, so this module uses only the standard ``socket`` module and msgpack (no
trio, no attrs). It speaks the same protocol with the same decoder limits and raises
the same errors as :class:`omnitron.rpc.RpcClient`, and every call has a deadline so
the CLI never hangs::

    from omnitron.rpc.sync_client import connect_unix_sync

    with connect_unix_sync(home / "daemon.sock", timeout=5.0) as client:
        status = client.call("daemon.status")
"""

from __future__ import annotations

import os
import socket
import time

from . import _wire
from ._errors import (
    ConnectionLost,
    RemoteError,
    RpcError,
    RpcTimeout,
    SocketPathTooLong,
    check_domain_error_types,
    connect_error,
    error_class_for,
)
from ._wire import DEFAULT_LIMITS, Limits

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing import at run time: this module is the CLI fast path
    import ssl
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = [
    "SyncClient",
    "connect_unix_sync",
    "connect_tls_sync",
    "connect_url_sync",
    "connect_remote_sync",
    "check_pin",
    "CertificateMismatch",
    "UnknownCertificate",
    "DEFAULT_TIMEOUT",
]

DEFAULT_TIMEOUT = 10.0
"""Seconds a call (or the connect) may take before :class:`RpcTimeout`."""


class SyncClient:
    """A blocking msgpack-rpc client over a connected Unix socket; one call at a time.

    Not thread-safe. After any connection-level failure (timeout, protocol error,
    lost connection) the client is closed and further calls raise.

    Args:
        sock: A connected, blocking ``AF_UNIX`` stream socket; the client owns it.
        timeout: Seconds each :meth:`call` may take in total.
        limits: Decoder limits applied to the server's replies.
        error_types: Domain error classes to raise for their codes.
        address: For error messages.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
        error_types: Iterable[type[RemoteError]] = (),
        address: str = "",
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self._sock: socket.socket | None = sock
        self._timeout = timeout
        self._limits = limits
        self._domain = check_domain_error_types(error_types)
        self._address = address
        self._decoder = _wire.FrameDecoder(limits)
        self._next_msgid = 0
        self._failure: RpcError | None = None

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        """Close the socket (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, method: str, /, **params: object) -> Any:
        """Call ``method`` with named ``params``; block for at most ``timeout`` seconds.

        Raises:
            RemoteError: The server replied with an error (subclass by code).
            RpcTimeout: No complete reply within the timeout.
            ProtocolError: The reply is malformed or over a limit, or the request
                breaks the limits (then nothing was sent and the client stays usable).
            ConnectionLost: The connection closed, or the client was already closed.
            TypeError: A param value cannot be encoded.
        """
        if self._failure is not None:
            raise self._failure
        if self._sock is None:
            raise ConnectionLost(f"{self._where()}the client is closed")
        msgid = self._next_msgid
        self._next_msgid = (msgid + 1) % (_wire.MAX_MSGID + 1)
        frame = _wire.pack_request(msgid, method, params, self._limits)
        deadline = time.monotonic() + self._timeout
        try:
            self._send(frame, deadline)
            return self._receive(msgid, deadline)
        except RemoteError:
            if self._failure is not None:
                self.close()  # a connection-level error: the server hangs up
            raise
        except RpcError as exc:
            self._failure = exc
            self.close()
            raise

    def _where(self) -> str:
        return f"{self._address}: " if self._address else ""

    def _timed_out(self) -> RpcTimeout:
        return RpcTimeout(f"{self._where()}no reply from the daemon within {self._timeout:g}s")

    def _settimeout(self, deadline: float) -> socket.socket:
        assert self._sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out()
        self._sock.settimeout(remaining)
        return self._sock

    def _send(self, frame: bytes, deadline: float) -> None:
        view = memoryview(frame)
        while view:
            sock = self._settimeout(deadline)
            try:
                sent = sock.send(view)
            except TimeoutError:
                raise self._timed_out() from None
            except OSError as exc:
                # The server may have hung up with a reason (BUSY, TIMEOUT, ...)
                # that is already waiting in our receive buffer: prefer it.
                parting = self._parting_error()
                if parting is not None:
                    raise parting from None
                raise ConnectionLost(
                    f"{self._where()}connection lost while sending: {exc}"
                ) from None
            view = view[sent:]

    def _parting_error(self) -> RemoteError | None:
        """A connection-level error the server sent before closing, if one is buffered."""
        assert self._sock is not None
        self._sock.setblocking(False)
        try:
            while True:
                while (frame := self._decoder.next_frame()) is not None:
                    parts = _wire.split_server_message(frame)
                    if parts[0] == _wire.RESPONSE and parts[1] is None:
                        code, message, correlation_id, details = _wire.parse_error_map(parts[2])
                        error = error_class_for(code, self._domain)(
                            message, code=code, correlation_id=correlation_id, data=details
                        )
                        self._failure = error
                        return error
                data = self._sock.recv(self._limits.read_size)
                if not data:
                    return None
                self._decoder.feed(data)
        except (OSError, RpcError):
            return None

    def _receive(self, msgid: int, deadline: float) -> Any:
        while True:
            frame = self._decoder.next_frame()
            if frame is None:
                sock = self._settimeout(deadline)
                try:
                    data = sock.recv(self._limits.read_size)
                except TimeoutError:
                    raise self._timed_out() from None
                except OSError as exc:
                    raise ConnectionLost(f"{self._where()}connection lost: {exc}") from None
                if not data:
                    raise ConnectionLost(f"{self._where()}the daemon closed the connection")
                self._decoder.feed(data)
                continue
            parts = _wire.split_server_message(frame)
            if parts[0] == _wire.NOTIFICATION:
                continue  # server push is for the async client; a one-shot call ignores it
            _, reply_id, error, result = parts
            if reply_id is not None and reply_id != msgid:
                continue  # a late reply to an earlier, timed-out call
            if error is None:
                return result
            code, message, correlation_id, details = _wire.parse_error_map(error)
            remote = error_class_for(code, self._domain)(
                message, code=code, correlation_id=correlation_id, data=details
            )
            if reply_id is None:
                # Connection-level (BUSY, TIMEOUT, FORBIDDEN...): the server hangs up.
                self._failure = remote
            raise remote


_BACKLOG_RETRY_FIRST = 0.001
_BACKLOG_RETRY_MAX = 0.05


def connect_unix_sync(
    path: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    limits: Limits = DEFAULT_LIMITS,
    error_types: Iterable[type[RemoteError]] = (),
) -> SyncClient:
    """Connect to the daemon's Unix socket, waiting at most ``timeout`` seconds.

    Raises:
        DaemonNotRunning: The socket does not exist or nothing listens on it.
        DaemonUnreachable: Connecting failed otherwise (permissions).
        RpcTimeout: Connecting took longer than ``timeout`` (a full listen
            backlog is retried until then).
        SocketPathTooLong: ``path`` exceeds 107 bytes.
    """
    text = os.fspath(path)
    length = len(os.fsencode(text))
    if length > _wire.UNIX_PATH_MAX:
        raise SocketPathTooLong(text, length, _wire.UNIX_PATH_MAX)
    deadline = time.monotonic() + timeout
    pause = _BACKLOG_RETRY_FIRST
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(text)
        except TimeoutError:
            sock.close()
            raise RpcTimeout(
                f"connecting to the daemon at {text} took longer than {timeout:g}s"
            ) from None
        except BlockingIOError:
            # EAGAIN: the listen backlog is full (a storm of other connections).
            # A socket with a timeout fails at once instead of waiting its turn,
            # so wait here: the daemon drains its backlog quickly.
            sock.close()
            if time.monotonic() + pause > deadline:
                raise RpcTimeout(
                    f"connecting to the daemon at {text} took longer than {timeout:g}s: "
                    "its connection backlog stayed full"
                ) from None
            time.sleep(pause)
            pause = min(2 * pause, _BACKLOG_RETRY_MAX)
        except OSError as exc:
            sock.close()
            raise connect_error(text, exc) from None
        else:
            return SyncClient(
                sock, timeout=timeout, limits=limits, error_types=error_types, address=text
            )


# --------------------------------------------------------------------------- TLS


class CertificateMismatch(RpcError):
    """The server's certificate is not the one pinned for it: possibly an attacker."""


class UnknownCertificate(RpcError):
    """The server's certificate is not pinned yet and nobody confirmed it."""

    def __init__(self, message: str, fingerprint: str) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


def read_known_hosts(path: str) -> dict[str, str]:
    """``host:port`` → pinned fingerprint, from a known-hosts file (missing: empty)."""
    known: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as file:
            for line in file:
                parts = line.split()
                if len(parts) == 2 and not parts[0].startswith("#"):
                    known[parts[0]] = parts[1]
    except FileNotFoundError:
        pass
    return known


def pin_certificate(path: str, where: str, fingerprint: str) -> None:
    """Record ``fingerprint`` for ``where`` in the known-hosts file (0600, atomic)."""
    known = read_known_hosts(path)
    known[where] = fingerprint
    from omnitron._privatefile import write_private_file

    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    text = "".join(f"{name} {value}\n" for name, value in sorted(known.items()))
    write_private_file(path, text.encode("utf-8"))


def check_pin(
    where: str,
    presented: str,
    *,
    known_hosts: str,
    fingerprint: str | None = None,
    confirm: Callable[[str, str], bool] | None = None,
) -> None:
    """Accept the certificate ``presented`` by ``where`` (``HOST:PORT``), or raise.

    Expected is ``fingerprint`` if given, else the pin in ``known_hosts``; with
    neither, ``confirm(where, presented)`` decides (trust on first use). An
    accepted certificate that is not yet the recorded pin is recorded.

    Raises:
        CertificateMismatch: ``presented`` is not the expected fingerprint.
        UnknownCertificate: Nothing expected and not confirmed.
    """
    known = read_known_hosts(known_hosts).get(where)
    expected = fingerprint or known
    if expected is not None and presented != expected:
        source = "--fingerprint" if fingerprint else f"{known_hosts}"
        raise CertificateMismatch(
            f"the certificate of {where} has changed: it presents {presented}, "
            f"but {expected} is pinned ({source}). Someone may be intercepting the "
            "connection; if the daemon's certificate really changed, pass the new "
            "fingerprint with --fingerprint"
        )
    if expected is None and (confirm is None or not confirm(where, presented)):
        raise UnknownCertificate(
            f"the certificate of {where} is not known: it presents {presented}; "
            "if that is the fingerprint the daemon printed, pass it with --fingerprint",
            presented,
        )
    if known != presented:
        pin_certificate(known_hosts, where, presented)


def client_context() -> ssl.SSLContext:
    """TLS 1.2+ without CA checks: the caller checks the pinned fingerprint.

    ``ssl`` is imported on the first call, so the Unix-socket fast path never loads it.
    """
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect_tls_sync(
    host: str,
    port: int,
    *,
    known_hosts: str,
    fingerprint: str | None = None,
    confirm: Callable[[str, str], bool] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    limits: Limits = DEFAULT_LIMITS,
    error_types: Iterable[type[RemoteError]] = (),
) -> SyncClient:
    """Connect to a daemon's TLS plane and check its certificate's pin.

    The certificate is trusted by fingerprint, as SSH trusts host keys: the one
    given (``fingerprint``), else the one in ``known_hosts`` for ``host:port``,
    else, if ``confirm(where, fingerprint)`` says yes, the one presented (then
    recorded). TLS 1.2 or later.

    Raises:
        CertificateMismatch: The server presented another certificate than pinned.
        UnknownCertificate: Nothing pinned and not confirmed.
        DaemonUnreachable: Connecting or the handshake failed.
        RpcTimeout: Connecting took longer than ``timeout``.
    """
    import ssl

    from ._address import fingerprint_of_der

    shown = f"[{host}]" if ":" in host else host
    where = f"{shown}:{port}"
    # Trust comes from the pinned fingerprint, checked below, not from a CA.
    context = client_context()
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise RpcTimeout(f"connecting to {where} took longer than {timeout:g}s") from None
    except OSError as exc:
        raise connect_error(f"tls://{where}", exc) from None
    try:
        # Each request is one small write followed by a wait for its reply: with
        # Nagle's algorithm on, the request after the handshake waits for the
        # server's delayed ACK (about 40 ms on Linux) before it leaves.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(timeout)
        sock = context.wrap_socket(raw, server_hostname=None)
    except TimeoutError:
        raw.close()
        raise RpcTimeout(f"the TLS handshake with {where} took longer than {timeout:g}s") from None
    except (OSError, ssl.SSLError) as exc:
        raw.close()
        raise connect_error(f"tls://{where}", exc) from None
    try:
        der = sock.getpeercert(binary_form=True)
        check_pin(
            where,
            fingerprint_of_der(der or b""),
            known_hosts=known_hosts,
            fingerprint=fingerprint,
            confirm=confirm,
        )
    except BaseException:
        sock.close()
        raise
    return SyncClient(
        sock, timeout=timeout, limits=limits, error_types=error_types, address=f"tls://{where}"
    )


# --------------------------------------------------------------------------- URLs and aliases


def connect_url_sync(
    url: str,
    *,
    token: str | None = None,
    fingerprint: str | None = None,
    known_hosts: str | None = None,
    confirm: Callable[[str, str], bool] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    limits: Limits = DEFAULT_LIMITS,
    error_types: Iterable[type[RemoteError]] = (),
) -> SyncClient:
    """A client of the daemon at ``url``, logged in with ``token`` if given.

    ``unix:///PATH/daemon.sock`` is a local daemon's socket; ``tls://HOST:PORT`` a
    daemon's TCP plane, its certificate checked as :func:`connect_tls_sync` does
    (``known_hosts`` defaults to ``$OMNITRON_HOME/known_hosts``).

    Raises:
        ValueError: ``url`` is malformed or of another scheme.
        RpcError: As :func:`connect_unix_sync` / :func:`connect_tls_sync`; a
            refused token as :class:`~omnitron.rpc.Unauthenticated`.
    """
    from omnitron.remotes import default_home

    from ._address import parse_url

    if url.startswith("unix://"):
        client = connect_unix_sync(
            url.removeprefix("unix://"), timeout=timeout, limits=limits, error_types=error_types
        )
    else:
        scheme, host, port = parse_url(url)
        if scheme != "tls":
            raise ValueError(f"URL {url!r}: the blocking client speaks unix:// and tls:// only")
        client = connect_tls_sync(
            host,
            port,
            known_hosts=known_hosts or os.path.join(default_home(), "known_hosts"),
            fingerprint=fingerprint,
            confirm=confirm,
            timeout=timeout,
            limits=limits,
            error_types=error_types,
        )
    if token is not None:
        try:
            client.call("auth.login", token=token)
        except BaseException:
            client.close()
            raise
    return client


def connect_remote_sync(
    name: str,
    *,
    home: str | None = None,
    confirm: Callable[[str, str], bool] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    limits: Limits = DEFAULT_LIMITS,
    error_types: Iterable[type[RemoteError]] = (),
) -> SyncClient:
    """A logged-in client of the daemon known as ``name`` in ``home``'s ``remotes.toml``
    (added with ``omnitron remote add``; ``home`` defaults to ``$OMNITRON_HOME``).

    Raises:
        RemotesError: No such alias, an unusable remotes file, or its token unset.
        RpcError: As :func:`connect_url_sync`.
    """
    from omnitron.remotes import default_home, lookup_remote

    home = home or default_home()
    remote = lookup_remote(home, name)
    return connect_url_sync(
        remote.url,
        token=remote.resolve_token(),
        fingerprint=remote.fingerprint,
        known_hosts=os.path.join(home, "known_hosts"),
        confirm=confirm,
        timeout=timeout,
        limits=limits,
        error_types=error_types,
    )
