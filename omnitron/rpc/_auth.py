"""Tokens for the network planes: issuing, verifying, revoking (FAULTS AU-02..AU-11).

The daemon signs JSON Web Tokens with its own Ed25519 key (``EdDSA``), kept in
``$OMNITRON_HOME/auth/signing.key`` (0600, directory 0700). Verification accepts
that one algorithm with that one public key: a token whose header names any other
algorithm (``none``, ``HS256`` signed with the public key) is rejected before its
signature is looked at. Every claim is required and type-checked here, because
PyJWT by itself accepts a token without ``exp``, an ``exp`` given as a string and
any value for a custom claim; and a token's size is capped before PyJWT parses it.

Issued tokens (id, subject, role, expiry; never the token itself) and revoked ids
are kept in ``auth/tokens.json``, rewritten atomically: a revocation survives a
restart, and takes effect at once because every call on a token-authenticated
connection checks it (:meth:`TokenAuthority.check`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import attrs

from .._log import get_logger
from .._privatefile import write_private_file
from ._address import MAX_TTL, parse_ttl
from ._dispatch import Call, Dispatcher, Peer, Role
from ._errors import NotFound, Unauthenticated
from ._params import Match, Name, Range

__all__ = [
    "ALGORITHM",
    "MAX_TOKEN_BYTES",
    "MAX_TTL",
    "TokenAuthority",
    "TokenClaims",
    "IssuedToken",
    "FailureBackoff",
    "parse_ttl",
    "register_auth_methods",
    "write_private_file",
]

log = get_logger()

ALGORITHM: Final = "EdDSA"
"""The one signing algorithm accepted (Ed25519)."""
AUDIENCE: Final = "omnitron"
"""The ``aud`` claim of every token."""
MAX_TOKEN_BYTES: Final = 8192
"""Tokens longer than this are rejected before decoding (AU-10)."""
LEEWAY: Final = 30
"""Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (AU-05)."""
REFUSAL_DELAY: Final = 0.1
"""Seconds a login refused by the backoff waits, at least, before its reply: a client
retrying in a loop then costs the daemon ten refusals a second per connection, not as
many as it can send."""
REFUSAL_RATE: Final = 100.0
"""Refusals a second, at most, answered to one address, evenly spaced: beyond it the
replies wait longer than :data:`REFUSAL_DELAY`, so more connections or pipelined
logins from one address do not make the daemon refuse faster (nor in bursts)."""
REFUSAL_LOG_INTERVAL: Final = 1.0
"""Seconds between two ``auth_refused`` lines about one peer (the line counts them)."""
_BACKOFF: Final = {"reason": "backoff"}
_ROLES: Final = {"viewer": Role.VIEWER, "operator": Role.OPERATOR, "admin": Role.ADMIN}
_JTI: Final = re.compile(r"[0-9a-f]{32}")
_SUBJECT: Final = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
TokenId = Annotated[str, Match(r"[0-9a-f]{32}", "a token id (32 hex digits)")]


def ensure_private_directory(path: Path) -> Path:
    """Create ``path`` (0700) if missing; refuse a symlink or one open to others."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path):
        raise OSError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise OSError(f"{path} is owned by uid {info.st_uid}, not {os.getuid()}")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


@attrs.frozen(kw_only=True)
class TokenClaims:
    """A verified token's identity."""

    subject: str
    role: Role
    token_id: str
    issued_at: int
    expires_at: int


@attrs.frozen(kw_only=True)
class IssuedToken:
    """A token the daemon issued (the token itself is never stored)."""

    token_id: str
    subject: str
    role: str
    issued_at: int
    expires_at: int
    revoked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _reject(reason: str) -> Unauthenticated:
    return Unauthenticated(f"invalid token: {reason}", data={"reason": reason})


class TokenAuthority:
    """Signs and verifies this daemon's tokens; keeps the issued and revoked ids.

    Args:
        home: ``$OMNITRON_HOME``; the key and the token list live in ``home/auth``.
        clock: Seconds since the epoch (tests pass their own).

    Raises:
        OSError: The key or the list cannot be read or created.
    """

    def __init__(self, home: Path, *, clock: Callable[[], float] = time.time) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._clock = clock
        self._dir = ensure_private_directory(Path(home) / "auth")
        key_path = self._dir / "signing.key"
        id_path = self._dir / "daemon.id"
        if key_path.exists():
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(loaded, Ed25519PrivateKey):
                raise OSError(f"{key_path} is not an Ed25519 private key")
            key = loaded
        else:
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private_file(key_path, pem)
        if not id_path.exists():
            write_private_file(id_path, os.urandom(8).hex().encode() + b"\n")
        self._key = key
        self._public = key.public_key()
        self.issuer = f"omnitron-{id_path.read_text().strip()}"
        self._list_path = self._dir / "tokens.json"
        self._issued: dict[str, IssuedToken] = self._load()

    # ------------------------------------------------------------------ storage

    def _load(self) -> dict[str, IssuedToken]:
        try:
            raw = json.loads(self._list_path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            # Unreadable: treat every token as unknown-but-not-revoked would be
            # unsafe; refuse to start instead, naming the file.
            raise OSError(f"{self._list_path} is not valid JSON: {exc}") from None
        tokens: dict[str, IssuedToken] = {}
        for entry in raw.get("tokens", []):
            token = IssuedToken(**entry)
            tokens[token.token_id] = token
        return tokens

    def _save(self) -> None:
        now = self._clock()
        # Expired entries are dropped: an expired token is rejected anyway.
        kept = [t.to_dict() for t in self._issued.values() if t.expires_at + LEEWAY > now]
        data = json.dumps({"tokens": kept}, indent=1, sort_keys=True).encode() + b"\n"
        write_private_file(self._list_path, data)

    # ------------------------------------------------------------------ issuing

    def issue(self, *, role: str, ttl: int, subject: str) -> tuple[str, IssuedToken]:
        """Sign a new token; returns it and its record (also saved to the list).

        Raises:
            ValueError: Unknown role, bad subject, or ttl out of range.
        """
        import jwt

        if role not in _ROLES:
            raise ValueError(f"role must be one of viewer, operator, admin; got {role!r}")
        if not _SUBJECT.fullmatch(subject):
            raise ValueError(f"subject {subject!r} must be 1-64 letters, digits or _ . @ + -")
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl must be between 1 s and {MAX_TTL} s, got {ttl}")
        now = int(self._clock())
        record = IssuedToken(
            token_id=os.urandom(16).hex(),  # as secrets.token_hex(16)
            subject=subject,
            role=role,
            issued_at=now,
            expires_at=now + ttl,
        )
        claims = {
            "sub": subject,
            "role": role,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": record.token_id,
            "iss": self.issuer,
            "aud": AUDIENCE,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        self._issued[record.token_id] = record
        self._save()
        return token, record

    def revoke(self, token_id: str) -> IssuedToken:
        """Revoke ``token_id`` (saved before returning).

        Raises:
            KeyError: No unexpired token with that id was issued here.
        """
        record = self._issued.get(token_id)
        if record is None or record.expires_at + LEEWAY <= self._clock():
            raise KeyError(token_id)
        record = attrs.evolve(record, revoked=True)
        self._issued[token_id] = record
        self._save()
        return record

    def issued(self) -> list[IssuedToken]:
        """Issued tokens that have not expired (revoked ones included, marked)."""
        now = self._clock()
        return sorted(
            (t for t in self._issued.values() if t.expires_at > now),
            key=lambda t: (t.expires_at, t.token_id),
        )

    # ------------------------------------------------------------------ verifying

    def verify(self, token: object) -> TokenClaims:
        """Verify ``token`` and return its claims.

        Raises:
            Unauthenticated: With ``data["reason"]`` naming the first check failed;
                the message never repeats the token or its claims.
        """
        import jwt

        if type(token) is not str:
            raise _reject("malformed")
        if len(token) > MAX_TOKEN_BYTES:
            raise _reject("too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _reject("malformed") from None
        if header.get("alg") != ALGORITHM:
            raise _reject("algorithm not allowed")
        if set(header) - {"alg", "typ"}:
            # crit, kid, jku, x5u...: this daemon uses none of them (AU-08, AU-11).
            raise _reject("unsupported header")
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "nbf", "sub", "aud", "iss", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise _reject("expired") from None
        except jwt.ImmatureSignatureError:
            raise _reject("not yet valid") from None
        except jwt.InvalidAudienceError:
            raise _reject("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise _reject("wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise _reject("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _reject(f"missing claim {exc.claim}") from None
        except jwt.InvalidTokenError:
            raise _reject("malformed") from None
        return self._check_claims(claims)

    def _check_claims(self, claims: dict[str, Any]) -> TokenClaims:
        for name in ("exp", "iat", "nbf"):
            value = claims[name]
            # PyJWT accepts "9999999999" as exp (AU-06); bool is an int subclass.
            if type(value) is not int:
                raise _reject(f"claim {name} must be an integer")
        role = claims.get("role")
        if type(role) is not str or role not in _ROLES:
            raise _reject("bad role claim")
        subject, token_id = claims["sub"], claims["jti"]
        if type(subject) is not str or not _SUBJECT.fullmatch(subject):
            raise _reject("bad sub claim")
        if type(token_id) is not str or not _JTI.fullmatch(token_id):
            raise _reject("bad jti claim")
        if claims["exp"] - claims["iat"] > MAX_TTL:
            raise _reject("lifetime too long")
        if claims["iat"] > self._clock() + LEEWAY:
            raise _reject("issued in the future")
        result = TokenClaims(
            subject=subject,
            role=_ROLES[role],
            token_id=token_id,
            issued_at=claims["iat"],
            expires_at=claims["exp"],
        )
        self.check(result)
        return result

    def check(self, claims: TokenClaims) -> None:
        """Raise :class:`Unauthenticated` if ``claims`` expired or were revoked since."""
        record = self._issued.get(claims.token_id)
        if record is None:
            # Signed by our key but not in our list: the list was reset. Refuse.
            raise _reject("unknown token id")
        if record.revoked:
            raise _reject("revoked")
        if claims.expires_at + LEEWAY <= self._clock():
            raise _reject("expired")


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWS uses (for tests that forge tokens)."""
    import base64  # not at import: the daemon never calls it

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FailureBackoff:
    """Per-peer failed-login backoff (AU-21).

    After ``free`` failures from one address, each further failure doubles the
    time (from ``first`` up to ``cap`` seconds) during which logins from that
    address are refused without verifying anything. A success clears it. At most
    ``max_peers`` addresses are tracked (the oldest is forgotten).
    """

    def __init__(
        self,
        *,
        free: int = 5,
        first: float = 0.5,
        cap: float = 60.0,
        max_peers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = free
        self._first = first
        self._cap = cap
        self._max_peers = max_peers
        self._clock = clock
        self._peers: dict[str, tuple[int, float]] = {}
        # Per peer: refusals not logged yet, and when the last line was logged.
        self._refusals: dict[str, tuple[int, float]] = {}
        # Per peer: the earliest time the next refusal may be answered.
        self._next_reply: dict[str, float] = {}

    def blocked_for(self, peer: str) -> float:
        """Seconds before ``peer`` may try again (0 when it may now)."""
        entry = self._peers.get(peer)
        if entry is None:
            return 0.0
        return max(0.0, entry[1] - self._clock())

    def failed(self, peer: str) -> None:
        failures, _until = self._peers.pop(peer, (0, 0.0))
        failures += 1
        until = 0.0
        if failures > self._free:
            delay = min(self._cap, self._first * 2 ** min(failures - self._free - 1, 32))
            until = self._clock() + delay
        self._peers[peer] = (failures, until)
        while len(self._peers) > self._max_peers:
            del self._peers[next(iter(self._peers))]

    def succeeded(self, peer: str) -> None:
        self._peers.pop(peer, None)
        self._refusals.pop(peer, None)
        self._next_reply.pop(peer, None)

    def reply_delay(self, peer: str) -> float:
        """Seconds a refusal of ``peer`` waits before its reply.

        :data:`REFUSAL_DELAY`, or longer when the peer's refusals would otherwise be
        answered more often than :data:`REFUSAL_RATE` a second: each takes the next
        free slot, ``1 / REFUSAL_RATE`` after the previous one.
        """
        now = self._clock()
        due = max(now + REFUSAL_DELAY, self._next_reply.pop(peer, -math.inf))
        self._next_reply[peer] = due + 1 / REFUSAL_RATE
        while len(self._next_reply) > self._max_peers:
            del self._next_reply[next(iter(self._next_reply))]
        return due - now

    def refused(self, peer: str) -> int:
        """Count a login refused during ``peer``'s backoff; how many to log now.

        The first refusal of a peer is reported at once, later ones at most once
        per :data:`REFUSAL_LOG_INTERVAL` as a count: a flood of bad logins must not
        turn into a flood of log writes. Returns 0 when nothing is to be logged.
        """
        now = self._clock()
        count, logged_at = self._refusals.pop(peer, (0, -math.inf))
        count += 1
        if now - logged_at >= REFUSAL_LOG_INTERVAL:
            self._refusals[peer] = (0, now)
        else:
            self._refusals[peer] = (count, logged_at)
            count = 0
        while len(self._refusals) > self._max_peers:
            del self._refusals[next(iter(self._refusals))]
        return count


def register_auth_methods(
    dispatcher: Dispatcher,
    get_authority: Callable[[], TokenAuthority],
    backoff: FailureBackoff | None = None,
) -> None:
    """Register ``auth.login`` (anonymous) and ``auth.token|revoke|ls`` (admin).

    ``get_authority`` is called on each use (memoize it): a daemon without a
    network plane loads its key only when a token is first issued.
    """
    import trio

    failures = backoff if backoff is not None else FailureBackoff()
    lock = trio.Lock()

    async def login(call: Call, *, token: object) -> dict[str, Any]:
        """Authenticate this connection with a token; later calls run with its role."""
        peer = call.peer
        if peer.token_id is None and peer.role is not Role.ANONYMOUS:
            # The Unix socket: already admin by OS identity.
            await trio.lowlevel.checkpoint()
            return {"subject": None, "role": peer.role.label, "expires_at": None}
        address = peer.address or peer.transport
        wait = failures.blocked_for(address)
        if wait <= 0:
            await trio.lowlevel.checkpoint()
            # Checked again after the checkpoint, then nothing awaits until the failure
            # is counted: concurrent logins of one address cannot slip past the backoff.
            wait = failures.blocked_for(address)
        if wait > 0:
            # Refused before anything is parsed or verified, and as cheaply as a call
            # can be (AU-21): no checkpoint but the delay itself, one log line a second
            # per address. The reply waits a little, and the address's replies are
            # spaced out, so that clients retrying in a loop (on many connections, or
            # pipelined) cannot make the daemon spin on them.
            count = failures.refused(address)
            if count:
                log.warning(
                    "auth_refused",
                    transport=peer.transport,
                    peer=address,
                    reason="backoff",
                    count=count,
                )
            await trio.sleep(failures.reply_delay(address))
            raise Unauthenticated(
                f"too many failed logins from this address; retry in {math.ceil(wait)}s",
                data=_BACKOFF,
            )
        authority = get_authority()
        try:
            claims = authority.verify(token)
        except Unauthenticated as exc:
            failures.failed(address)
            log.warning(
                "auth_failed",
                transport=peer.transport,
                peer=address,
                reason=exc.data.get("reason"),
            )
            raise
        failures.succeeded(address)
        call.set_peer(
            Peer(
                transport=peer.transport,
                role=claims.role,
                subject=claims.subject,
                address=peer.address,
                token_id=claims.token_id,
                recheck=functools.partial(authority.check, claims),
            )
        )
        log.info(
            "auth_login",
            transport=peer.transport,
            peer=address,
            subject=claims.subject,
            token_id=claims.token_id,
            role=claims.role.label,
        )
        return {
            "subject": claims.subject,
            "role": claims.role.label,
            "expires_at": claims.expires_at,
        }

    async def issue(
        call: Call,
        *,
        role: Literal["viewer", "operator", "admin"],
        ttl: Annotated[int, Range(ge=1, le=MAX_TTL)],
        subject: Name = "omnitron",
    ) -> dict[str, Any]:
        """Issue a token (the only time it is shown)."""
        async with lock:
            authority = await trio.to_thread.run_sync(get_authority)
            token, record = await trio.to_thread.run_sync(
                functools.partial(authority.issue, role=role, ttl=ttl, subject=subject)
            )
        return {"token": token, **record.to_dict()}

    async def revoke(call: Call, *, token_id: TokenId) -> dict[str, Any]:
        """Revoke an issued token; connections using it fail their next call."""
        async with lock:
            try:
                authority = await trio.to_thread.run_sync(get_authority)
                record = await trio.to_thread.run_sync(authority.revoke, token_id)
            except KeyError:
                raise NotFound(f"no unexpired token with id {token_id}") from None
        return record.to_dict()

    async def list_tokens(call: Call) -> list[dict[str, Any]]:
        """Issued tokens that have not expired (ids, subjects, roles; never the tokens)."""
        authority = await trio.to_thread.run_sync(get_authority)
        return [record.to_dict() for record in authority.issued()]

    dispatcher.register("auth.login", login, role=Role.ANONYMOUS)
    dispatcher.register("auth.token", issue, role=Role.ADMIN)
    dispatcher.register("auth.revoke", revoke, role=Role.ADMIN)
    dispatcher.register("auth.ls", list_tokens, role=Role.ADMIN)
