"""The network planes' authentication and authorization (FAULTS AU-01..AU-12, AU-16, AU-21, AU-25).

Everything goes over a real TLS connection on loopback to the daemon's own method
registry (``build_dispatcher``, with the token methods), served by ``serve_tls``
with the daemon's self-signed certificate. Forged tokens are signed with the
daemon's real key (or deliberately not), so each case reaches the check it is
about.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_fault_roles import DECLARED, PARAMS, Untouchable

from omnitron._log import capture_logs
from omnitron.daemon._service import DaemonService, build_dispatcher
from omnitron.rpc import ErrorCode, Forbidden, NotFound, RemoteError, Role, Unauthenticated
from omnitron.rpc._auth import (
    MAX_TOKEN_BYTES,
    REFUSAL_DELAY,
    REFUSAL_RATE,
    FailureBackoff,
    TokenAuthority,
    register_auth_methods,
)
from omnitron.rpc._dispatch import Dispatcher, Peer
from omnitron.rpc._protocol import Request
from omnitron.rpc._server import RpcServer, ServerOptions
from omnitron.rpc._tls import ensure_self_signed, open_tls_client, serve_tls, server_context
from omnitron.rpc.sync_client import (
    CertificateMismatch,
    UnknownCertificate,
    connect_tls_sync,
)

pytestmark = pytest.mark.slow

AUTH_METHODS = {
    "auth.login": Role.ANONYMOUS,
    "auth.token": Role.ADMIN,
    "auth.revoke": Role.ADMIN,
    "auth.ls": Role.ADMIN,
}
AUTH_PARAMS: dict[str, dict[str, Any]] = {
    "auth.login": {"token": "x"},
    "auth.token": {"role": "viewer", "ttl": 60},
    "auth.revoke": {"token_id": "0" * 32},
}


class Clock:
    """Wall-clock seconds with an adjustable offset (the daemon's view of "now")."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Plane:
    def __init__(
        self, home: Path, port: int, fingerprint: str, authority: TokenAuthority, server: RpcServer
    ) -> None:
        self.home = home
        self.port = port
        self.fingerprint = fingerprint
        self.authority = authority
        self.server = server
        self.shutdowns: list[str] = []
        self.backoff = FailureBackoff()

    def client(self, token: str | None = None) -> contextlib.AbstractAsyncContextManager[Any]:
        return open_tls_client("127.0.0.1", self.port, fingerprint=self.fingerprint, token=token)

    def token(self, role: str = "viewer", ttl: int = 3600, subject: str = "tester") -> str:
        return self.authority.issue(role=role, ttl=ttl, subject=subject)[0]

    def signing_key(self) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(
            (self.home / "auth" / "signing.key").read_bytes(), password=None
        )
        assert isinstance(key, Ed25519PrivateKey)
        return key

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": "mallory",
            "role": "admin",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": "ab" * 16,
            "iss": self.authority.issuer,
            "aud": "omnitron",
        }
        for name, value in changes.items():
            if value is _DROP:
                claims.pop(name)
            else:
                claims[name] = value
        return claims

    def forge(self, headers: dict[str, Any] | None = None, **changes: Any) -> str:
        return jwt.encode(
            self.claims(**changes), self.signing_key(), algorithm="EdDSA", headers=headers
        )


_DROP = object()


@contextlib.asynccontextmanager
async def serving(
    home: Path,
    *,
    clock: Clock | None = None,
    options: ServerOptions | None = None,
    backoff: FailureBackoff | None = None,
) -> AsyncIterator[Plane]:
    authority = TokenAuthority(home, clock=clock or Clock())
    plane_home = home
    shutdowns: list[str] = []
    service = DaemonService(
        Untouchable(),  # type: ignore[arg-type]
        home=home,
        config_path=home / "missing.toml",
        stack=None,
        request_shutdown=lambda: shutdowns.append("shutdown"),
    )
    # As build_dispatcher(service, authority=...) does, with the backoff in reach.
    dispatcher = build_dispatcher(service)
    backoff = backoff or FailureBackoff()
    register_auth_methods(dispatcher, lambda: authority, backoff)
    identity = ensure_self_signed(home)
    context = server_context(identity)
    async with trio.open_nursery() as nursery:
        serve = functools.partial(serve_tls, "127.0.0.1", 0, dispatcher, context)
        if options is not None:
            serve = functools.partial(serve, options=options)
        server: RpcServer = await nursery.start(serve)
        port = int(server.address.rsplit(":", 1)[1])
        plane = Plane(plane_home, port, identity.fingerprint, authority, server)
        plane.shutdowns = shutdowns
        plane.backoff = backoff
        try:
            yield plane
        finally:
            nursery.cancel_scope.cancel()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


async def reached(client: Any) -> None:
    """Call ``daemon.graph``: past the gate, it meets the refusing orchestrator."""
    with pytest.raises(NotFound):
        await client.call("daemon.graph")


async def login_error(plane: Plane, token: object) -> Unauthenticated:
    async with plane.client() as client:
        with pytest.raises(Unauthenticated) as caught:
            await client.call("auth.login", token=token)
        # The connection stays anonymous: nothing but ping answers.
        with pytest.raises(Unauthenticated):
            await client.call("daemon.status")
        assert await client.call("daemon.ping") == {"pong": True}
    return caught.value


# --------------------------------------------------------------------------- AU-01


async def test_before_login_every_method_but_ping_is_unauthenticated_alike(
    tmp_path: Path,
) -> None:
    """AU-01: an existing and a nonexistent method get the very same reply."""
    async with serving(tmp_path) as plane, plane.client() as client:
        replies = []
        for method in ("daemon.status", "daemon.shutdown", "nope.nothing", "auth.token"):
            with pytest.raises(Unauthenticated) as caught:
                await client.call(method)
            replies.append((caught.value.code, caught.value.message))
        assert len(set(replies)) == 1, replies
        assert replies[0] == (ErrorCode.UNAUTHENTICATED.value, "authentication required")
        assert await client.call("daemon.ping") == {"pong": True}
        assert plane.shutdowns == []


# --------------------------------------------------------------------------- AU-02..AU-11


def _cases(plane: Plane) -> dict[str, tuple[object, set[str]]]:
    """Case name → (token, acceptable reasons)."""
    public_pem = (
        plane.signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    hs_header = {"alg": "HS256", "typ": "JWT"}
    signing_input = ".".join(
        [b64(json.dumps(hs_header).encode()), b64(json.dumps(plane.claims()).encode())]
    )
    confused = (
        signing_input
        + "."
        + b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    )
    other_key = Ed25519PrivateKey.generate()
    return {
        "alg none": (
            unsigned({"alg": "none", "typ": "JWT"}, plane.claims()),
            {"algorithm not allowed"},
        ),
        "alg None spelled": (unsigned({"alg": "None"}, plane.claims()), {"algorithm not allowed"}),
        "HS256 with the public key": (confused, {"algorithm not allowed"}),
        "wrong key": (jwt.encode(plane.claims(), other_key, algorithm="EdDSA"), {"bad signature"}),
        "no exp": (plane.forge(exp=_DROP), {"missing claim exp"}),
        "no iat": (plane.forge(iat=_DROP), {"missing claim iat"}),
        "exp as a string": (plane.forge(exp="9999999999"), {"claim exp must be an integer"}),
        "ten-year lifetime": (
            plane.forge(exp=int(time.time()) + 10 * 366 * 86400),
            {"lifetime too long"},
        ),
        "expired": (plane.forge(exp=int(time.time()) - 3600), {"expired"}),
        "not yet valid": (plane.forge(nbf=int(time.time()) + 3600), {"not yet valid"}),
        "issued in the future": (
            plane.forge(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200),
            {"issued in the future", "not yet valid"},
        ),
        "wrong audience": (plane.forge(aud="someone-else"), {"wrong audience"}),
        "no audience": (plane.forge(aud=_DROP), {"missing claim aud"}),
        "issuer a substring": (plane.forge(iss="omni"), {"wrong issuer"}),
        "another daemon's issuer": (plane.forge(iss="omnitron-0000"), {"wrong issuer"}),
        "crit header": (
            plane.forge(headers={"crit": ["x-policy"]}),
            {"malformed", "unsupported header"},
        ),
        "unknown kid": (plane.forge(headers={"kid": "rotated-away"}), {"unsupported header"}),
        "role a list": (plane.forge(role=["admin"]), {"bad role claim"}),
        "role capitalised": (plane.forge(role="Admin"), {"bad role claim"}),
        "role root": (plane.forge(role="root"), {"bad role claim"}),
        "no role": (plane.forge(role=_DROP), {"bad role claim"}),
        "never issued here": (plane.forge(), {"unknown token id"}),
        "malformed": ("not.a.token", {"malformed"}),
        "garbage": ("%%%", {"malformed"}),
        "not a string": (12345, {"malformed"}),
        "64 KiB": ("a" * 65536, {"too large"}),
    }


async def test_every_forged_or_bad_token_is_rejected_with_its_reason(tmp_path: Path) -> None:
    """AU-02..AU-11: each case is refused, names its reason, and echoes nothing of the token."""
    async with serving(tmp_path) as plane:
        cases = _cases(plane)
        failures = []
        with capture_logs() as logs:
            for name, (token, reasons) in cases.items():
                error = await login_error(plane, token)
                reason = error.data.get("reason")
                if reason not in reasons or error.message != f"invalid token: {reason}":
                    failures.append((name, error.message, error.data))
                # The cases all come from one address: only the reason is under test.
                plane.backoff.succeeded("127.0.0.1")
        assert failures == [], failures
        for entry in logs:
            text = repr(entry)
            for token, _ in cases.values():
                if isinstance(token, str) and len(token) > 20:
                    assert token not in text


def test_a_ten_megabyte_token_is_refused_before_decoding(tmp_path: Path) -> None:
    """AU-10: the size cap comes first (PyJWT would parse all 10 MB)."""
    authority = TokenAuthority(tmp_path)
    big = "e" * (10 << 20)
    started = time.perf_counter()
    with pytest.raises(Unauthenticated) as caught:
        authority.verify(big)
    assert caught.value.data == {"reason": "too large"}
    assert time.perf_counter() - started < 0.5
    assert len(authority.issue(role="admin", ttl=60, subject="a")[0]) < MAX_TOKEN_BYTES


async def test_a_token_dies_with_its_expiry_or_revocation_on_an_open_connection(
    tmp_path: Path,
) -> None:
    """AU-05/AU-11: checked on every call, so neither needs a new connection or a restart."""
    clock = Clock()
    async with serving(tmp_path, clock=clock) as plane:
        expiring = plane.token("viewer", ttl=60)
        revoked = plane.token("viewer", ttl=3600, subject="bob")
        async with plane.client(expiring) as a, plane.client(revoked) as b:
            await reached(a)
            await reached(b)
            record = plane.authority.issued()[-1]
            assert record.subject == "bob"
            plane.authority.revoke(record.token_id)
            with pytest.raises(Unauthenticated) as caught:
                await b.call("daemon.graph")
            assert caught.value.data == {"reason": "revoked"}
            await reached(a)
            clock.offset = 120
            with pytest.raises(Unauthenticated) as caught:
                await a.call("daemon.graph")
            assert caught.value.data == {"reason": "expired"}
        assert (await login_error(plane, revoked)).data == {"reason": "revoked"}
    # The revocation is on disk: a restarted daemon still refuses the token.
    again = TokenAuthority(tmp_path)
    with pytest.raises(Unauthenticated) as caught:
        again.verify(revoked)
    assert caught.value.data == {"reason": "revoked"}
    assert stat.S_IMODE(os.stat(tmp_path / "auth" / "tokens.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "auth" / "signing.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "auth").st_mode) == 0o700
    listed = json.loads((tmp_path / "auth" / "tokens.json").read_text())
    assert revoked not in json.dumps(listed)


# --------------------------------------------------------------------------- AU-12


@pytest.mark.parametrize("role", ["unauthenticated", "viewer", "operator", "admin"])
async def test_every_method_by_every_role_over_tls(tmp_path: Path, role: str) -> None:
    """AU-12/AU-13: the daemon's whole registry, each method called with each role."""
    declared = {**DECLARED, **AUTH_METHODS}
    params = {**PARAMS, **AUTH_PARAMS}
    async with serving(tmp_path) as plane:
        registry = {m.name: m.role for m in plane.server._dispatcher.methods()}
        assert registry == declared  # a new method must be added to this matrix
        token = None if role == "unauthenticated" else plane.token(role)
        have = Role.ANONYMOUS if token is None else Role[role.upper()]
        async with plane.client(token) as client:
            for method, required in sorted(declared.items()):
                if method in {"auth.login", "daemon.shutdown"}:
                    continue  # login re-identifies the connection; shutdown below
                try:
                    await client.call(method, **params.get(method, {}))
                    code = None
                except RemoteError as exc:
                    code = exc.code
                if have >= required:
                    assert code not in {"UNAUTHENTICATED", "FORBIDDEN", "INTERNAL_ERROR"}, method
                elif have is Role.ANONYMOUS:
                    assert code == "UNAUTHENTICATED", method
                else:
                    assert code == "FORBIDDEN", method
            if have >= Role.ADMIN:
                assert (await client.call("daemon.shutdown"))["stopping"] is True
                assert plane.shutdowns == ["shutdown"]
            else:
                with pytest.raises(Unauthenticated if token is None else Forbidden):
                    await client.call("daemon.shutdown")
                assert plane.shutdowns == []


# --------------------------------------------------------------------------- AU-16, pins


async def test_a_certificate_with_another_fingerprint_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as plane:
        other = "SHA256:" + base64.b64encode(b"\0" * 32).decode().rstrip("=")
        with pytest.raises(CertificateMismatch):
            async with open_tls_client("127.0.0.1", plane.port, fingerprint=other):
                pass
        known = tmp_path / "client" / "known_hosts"
        connect = functools.partial(
            connect_tls_sync, "127.0.0.1", plane.port, known_hosts=str(known), timeout=5.0
        )
        # Unknown and unconfirmed: refused, and nothing is pinned.
        with pytest.raises(UnknownCertificate) as unknown:
            await trio.to_thread.run_sync(connect)
        assert unknown.value.fingerprint == plane.fingerprint
        assert not known.exists()
        # Confirmed once (trust on first use): pinned, 0600.
        client = await trio.to_thread.run_sync(
            functools.partial(connect, confirm=lambda w, f: True)
        )
        client.close()
        assert known.read_text() == f"127.0.0.1:{plane.port} {plane.fingerprint}\n"
        assert stat.S_IMODE(known.stat().st_mode) == 0o600
        # The pin now holds without asking; a changed certificate is refused loudly.
        (await trio.to_thread.run_sync(connect)).close()
        known.write_text(f"127.0.0.1:{plane.port} {other}\n")
        with pytest.raises(CertificateMismatch, match="has changed"):
            await trio.to_thread.run_sync(connect)
        with pytest.raises(CertificateMismatch):
            await trio.to_thread.run_sync(functools.partial(connect, fingerprint=other))


async def test_the_blocking_tls_client_sends_each_request_at_once(tmp_path: Path) -> None:
    """With Nagle's algorithm on, ``auth.login`` right after the handshake waited for
    the server's delayed ACK: about 40 ms on Linux, a third of ``-r ALIAS status``."""
    async with serving(tmp_path) as plane:
        client = await trio.to_thread.run_sync(
            functools.partial(
                connect_tls_sync,
                "127.0.0.1",
                plane.port,
                known_hosts=str(tmp_path / "known_hosts"),
                fingerprint=plane.fingerprint,
                timeout=5.0,
            )
        )
        with client:
            assert client._sock is not None
            assert client._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            login = functools.partial(client.call, "auth.login", token=plane.token())
            assert (await trio.to_thread.run_sync(login))["role"] == "viewer"


async def test_plaintext_old_tls_and_stalled_handshakes_fail_fast(tmp_path: Path) -> None:
    """AU-16: the daemon is unaffected and a proper client still gets in."""
    options = ServerOptions(max_connections=16, hello_deadline=1.0)
    async with serving(tmp_path, options=options) as plane:
        with trio.fail_after(10):
            plain = await trio.open_tcp_stream("127.0.0.1", plane.port)
            await plain.send_all(b"\x94\x00\x01\xabdaemon.ping\x91\x80")
            reply = b""
            while chunk := await plain.receive_some(4096):
                reply += chunk
            assert b"pong" not in reply
            await plain.aclose()

            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.check_hostname = False
            old.verify_mode = ssl.CERT_NONE
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, indeed
                old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            with contextlib.suppress(ssl.SSLError):
                old.set_ciphers("ALL:@SECLEVEL=0")
            legacy = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", plane.port), old)
            with pytest.raises(trio.BrokenResourceError):
                await legacy.do_handshake()
            await trio.aclose_forcefully(legacy)

            started = trio.current_time()
            stalled = await trio.open_tcp_stream("127.0.0.1", plane.port)
            assert await stalled.receive_some(4096) == b""  # closed by the server
            assert trio.current_time() - started < 5
            await stalled.aclose()

            async with plane.client(plane.token()) as client:
                await reached(client)


# --------------------------------------------------------------------------- AU-21


def test_failure_backoff_grows_per_peer_and_clears_on_success() -> None:
    now = [100.0]
    backoff = FailureBackoff(free=2, first=1.0, cap=8.0, clock=lambda: now[0])
    for _ in range(2):
        backoff.failed("10.0.0.1")
    assert backoff.blocked_for("10.0.0.1") == 0.0
    delays = []
    for _ in range(6):
        backoff.failed("10.0.0.1")
        delays.append(backoff.blocked_for("10.0.0.1"))
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.blocked_for("10.0.0.2") == 0.0  # per peer
    now[0] += 8.0
    assert backoff.blocked_for("10.0.0.1") == 0.0
    backoff.succeeded("10.0.0.1")
    backoff.failed("10.0.0.1")
    assert backoff.blocked_for("10.0.0.1") == 0.0


class _Host:
    def set_peer(self, peer: Peer) -> None:
        self.peer = peer

    def open_stream(self, method: str, *, capacity: int | None) -> Any:
        raise AssertionError("not used")

    def start_soon(self, async_fn: Any, *args: object) -> None:
        raise AssertionError("not used")


async def test_a_login_refused_by_the_backoff_waits_and_is_logged_as_a_count(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """AU-21: a client retrying in a loop gets ten refusals a second per connection,
    and one log line per second per address, however fast it sends."""
    authority = TokenAuthority(tmp_path)
    dispatcher = Dispatcher()
    backoff = FailureBackoff(free=1, first=30.0, clock=trio.current_time)
    register_auth_methods(dispatcher, lambda: authority, backoff)
    peer = Peer(transport="tls", role=Role.ANONYMOUS, address="10.0.0.9")

    async def login() -> Any:
        request = Request(msgid=1, method="auth.login", params={"token": "bad.token.x"})
        reply = await dispatcher.dispatch(request, peer=peer, host=_Host())
        assert reply.error is not None
        return reply.error.data["reason"]

    with capture_logs() as logs:
        assert [await login(), await login()] == ["malformed", "malformed"]
        started = trio.current_time()
        reasons = [await login() for _ in range(25)]
        assert reasons == ["backoff"] * 25
        assert trio.current_time() - started == pytest.approx(25 * REFUSAL_DELAY)
    refused = [e for e in logs if e["event"] == "auth_refused"]
    # The first at once; then one line per second, counting the refusals since.
    counts = [e["count"] for e in refused]
    assert len(counts) == 3
    assert counts[0] == 1
    assert all(10 <= count <= 11 for count in counts[1:])  # 0.1 s steps on a float clock
    assert all(e["peer"] == "10.0.0.9" for e in refused)


async def test_refusals_of_one_address_are_spaced_however_many_it_sends_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """AU-21: forty logins of one address at once (many connections, or pipelined)
    during its backoff are answered at most REFUSAL_RATE a second, evenly: the first
    after REFUSAL_DELAY, each next one 1/REFUSAL_RATE later, none in a burst."""
    authority = TokenAuthority(tmp_path)
    dispatcher = Dispatcher()
    backoff = FailureBackoff(free=0, first=30.0, clock=trio.current_time)
    register_auth_methods(dispatcher, lambda: authority, backoff)
    peer = Peer(transport="tls", role=Role.ANONYMOUS, address="10.0.0.9")
    answered: list[float] = []

    async def login() -> None:
        request = Request(msgid=1, method="auth.login", params={"token": "bad.token.x"})
        reply = await dispatcher.dispatch(request, peer=peer, host=_Host())
        assert reply.error is not None
        assert reply.error.data["reason"] == "backoff"
        answered.append(trio.current_time() - started)

    backoff.failed("10.0.0.9")  # now in its backoff
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(login)
    expected = [REFUSAL_DELAY + n / REFUSAL_RATE for n in range(40)]
    assert answered == pytest.approx(expected)
    # Another address is not held up by this one's queue.
    other = Peer(transport="tls", role=Role.ANONYMOUS, address="10.0.0.10")
    backoff.failed("10.0.0.10")
    started = trio.current_time()
    reply = await dispatcher.dispatch(
        Request(msgid=2, method="auth.login", params={"token": "x"}), peer=other, host=_Host()
    )
    assert reply.error is not None
    assert trio.current_time() - started == pytest.approx(REFUSAL_DELAY)


async def test_repeated_bad_logins_are_refused_without_verifying_then_audited(
    tmp_path: Path,
) -> None:
    """AU-21: after a few failures the address waits; the log has peer and reason, no token."""
    async with serving(tmp_path) as plane:
        good = plane.token("operator")
        with capture_logs() as logs:
            reasons = []
            for _ in range(8):
                reasons.append((await login_error(plane, "bad.token.here")).data["reason"])
            # Five failures are free; the sixth starts the backoff.
            assert reasons == ["malformed"] * 6 + ["backoff"] * 2
            # Even a good token waits out the backoff from this address.
            assert (await login_error(plane, good)).data == {"reason": "backoff"}
        failed = [e for e in logs if e["event"] in {"auth_failed", "auth_refused"}]
        # Six failures, then the three refusals of the same second as one line.
        assert [e["event"] for e in failed] == ["auth_failed"] * 6 + ["auth_refused"]
        assert failed[-1]["count"] == 1
        assert all(e["peer"] == "127.0.0.1" for e in failed)
        assert all("bad.token.here" not in repr(e) and good not in repr(e) for e in logs)


async def test_concurrent_bad_logins_of_one_address_cannot_slip_past_the_backoff(
    tmp_path: Path,
) -> None:
    """AU-21: ten logins of one address at once: five free failures, the sixth starts
    the backoff, and the other four are refused unverified (the backoff is checked
    again after the login's checkpoint, with no await until the failure is counted)."""
    async with (
        serving(tmp_path, backoff=FailureBackoff(first=60.0)) as plane,
        contextlib.AsyncExitStack() as stack,
    ):
        clients = [await stack.enter_async_context(plane.client()) for _ in range(10)]
        reasons: list[str] = []

        async def login(client: Any) -> None:
            with pytest.raises(Unauthenticated) as caught:
                await client.call("auth.login", token="bad.token.here")
            reasons.append(caught.value.data["reason"])

        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(login, client)
    assert sorted(reasons) == ["backoff"] * 4 + ["malformed"] * 6


# --------------------------------------------------------------------------- AU-25


async def test_every_mutating_call_leaves_one_audit_record(tmp_path: Path) -> None:
    async with serving(tmp_path) as plane:
        token = plane.token("operator", subject="carol")
        async with plane.client(token) as client:
            with capture_logs() as logs:
                await reached(client)  # read-only: no record
                with pytest.raises(RemoteError):
                    await client.call("daemon.restart_app", name="web")
                with pytest.raises(Forbidden):
                    await client.call("daemon.reload_config")
        audits = [e for e in logs if e["event"] == "audit"]
        assert [(a["method"], a["target"], a["result"]) for a in audits] == [
            ("daemon.restart_app", "web", "NOT_FOUND"),
            ("daemon.reload_config", None, "FORBIDDEN"),
        ]
        for audit in audits:
            assert audit["subject"] == "carol"
            assert audit["role"] == "operator"
            assert audit["transport"] == "tls"
            assert audit["peer"] == "127.0.0.1"
            assert len(audit["token_id"]) == 32
            assert token not in repr(audit)


def test_the_self_signed_certificate_is_private_and_stable(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path)
    assert first.created
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    for name in ("cert.pem", "key.pem"):
        assert stat.S_IMODE((tmp_path / "tls" / name).stat().st_mode) == 0o600
    again = ensure_self_signed(tmp_path)
    assert not again.created
    assert again.fingerprint == first.fingerprint
    assert first.fingerprint.startswith("SHA256:")
    assert [p.name for p in (tmp_path / "tls").iterdir() if p.name.endswith(".tmp")] == []


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


ATTACKER = r"""
import json, sys, trio
from omnitron.rpc import Unauthenticated
from omnitron.rpc._tls import open_tls_client

port, fingerprint, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
connections, attempts = int(sys.argv[4]), int(sys.argv[5])
reasons = {}

async def attack():
    async with open_tls_client("127.0.0.1", port, fingerprint=fingerprint) as bad:
        for _ in range(attempts):
            try:
                await bad.call("auth.login", token=token)
            except Unauthenticated as exc:
                reason = exc.data.get("reason")
                reasons[reason] = reasons.get(reason, 0) + 1

async def main():
    print("ready", flush=True)
    await trio.wrap_file(sys.stdin).readline()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(attack)
    print(json.dumps(reasons), flush=True)

trio.run(main)
"""


async def test_500_bad_logins_from_one_peer_barely_slow_a_legitimate_client(
    tmp_path: Path,
) -> None:
    """AU-21: the p99 of a logged-in client's calls, alone and under 500 bad logins.

    The attacker is another process (ten TLS connections of one address, 50 logins
    each with a well-signed token that was never issued). All but a few of the 500
    are refused by the backoff, unverified; the slowdown bound is loose, a
    correctness check only: on this shared machine the ratio is measured by
    ``benchmarks/auth_flood.py`` (rounds, a floor of the same attack on another
    server process; figures in docs/benchmarks.md and docs/security.md).
    """
    async with serving(tmp_path) as plane, plane.client(plane.token()) as client:

        async def measure(samples: list[float], until: trio.Event | None = None) -> None:
            while len(samples) < 1000 or (until is not None and not until.is_set()):
                started = time.perf_counter()
                with contextlib.suppress(NotFound):
                    await client.call("daemon.graph")
                samples.append(time.perf_counter() - started)

        forged = plane.forge(sub="x", jti="cd" * 16)  # well signed, never issued
        alone: list[float] = []
        await measure([])  # warm-up
        await measure(alone)
        attacked: list[float] = []
        done = trio.Event()
        argv = [sys.executable, "-c", ATTACKER, str(plane.port), plane.fingerprint, forged]
        async with trio.open_nursery() as outer:
            attacker: trio.Process = await outer.start(
                functools.partial(
                    trio.run_process,
                    [*argv, "10", "50"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
            assert attacker.stdin is not None
            assert attacker.stdout is not None
            output = b""
            with trio.fail_after(60):
                assert (await attacker.stdout.receive_some(64)).strip() == b"ready"
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(measure, attacked, done)
                    await attacker.stdin.send_all(b"go\n")
                    while chunk := await attacker.stdout.receive_some(4096):
                        output += chunk
                    assert await attacker.wait() == 0
                    done.set()
        alone_again: list[float] = []
        await measure(alone_again)
    # Every login refused; all but the verified few by the backoff, before any crypto
    # (5 free failures, then one per backoff period of 0.5 s, 1 s, 2 s...: under 20).
    reasons = json.loads(output)
    assert sum(reasons.values()) == 500
    assert set(reasons) == {"backoff", "unknown token id"}
    assert reasons["unknown token id"] <= 15
    base = min(percentile(alone, 0.99), percentile(alone_again, 0.99))
    under = percentile(attacked, 0.99)
    print(
        f"p99 alone {base * 1e3:.2f} ms, under 500 bad logins {under * 1e3:.2f} ms "
        f"({under / base:.2f}x, {len(attacked)} calls); p50 {percentile(alone, 0.5) * 1e3:.2f}"
        f" / {percentile(attacked, 0.5) * 1e3:.2f} ms; refusals {reasons}"
    )
    assert under <= 10 * base + 0.010
