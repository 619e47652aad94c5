"""Network addresses, URLs and certificate fingerprints (standard library only).

Used by the daemon and by the CLI's fast path alike, so nothing here imports
Trio, ``ssl`` or the cryptography package.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

__all__ = ["fingerprint_of_der", "is_loopback", "parse_host_port", "parse_ttl", "parse_url"]

DEFAULT_TCP_PORT = 9700
DEFAULT_HTTP_PORT = 9800
MAX_TTL = 366 * 24 * 3600
"""The longest lifetime a token may be issued with, or carry (AU-06)."""
_TTL = re.compile(r"(\d+)\s*([smhdw]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def fingerprint_of_der(der: bytes) -> str:
    """``SHA256:<base64 without padding>`` of a DER certificate (as SSH prints keys)."""
    import base64  # only for TLS: not loaded by a daemon without it

    digest = hashlib.sha256(der).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_host_port(text: str, *, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` or ``:PORT`` → ``(host, port)``.

    Raises:
        ValueError: Malformed, or the port is not 0-65535.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"address {text!r} must look like HOST:PORT or [V6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"address {text!r} needs a host, e.g. 127.0.0.1:{default_port}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"address {text!r}: the port must be a number 0-65535")
    return host, int(port_text)


def parse_url(url: str) -> tuple[str, str, int]:
    """``tls://HOST:PORT`` or ``ws://``/``wss://HOST:PORT`` → ``(scheme, host, port)``.

    Raises:
        ValueError: Another scheme, or a malformed address.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in {"tls", "ws", "wss"}:
        raise ValueError(f"URL {url!r} must start with tls://, ws:// or wss://")
    rest = rest.removesuffix("/rpc").rstrip("/")
    default = DEFAULT_TCP_PORT if scheme == "tls" else DEFAULT_HTTP_PORT
    host, port = parse_host_port(rest, default_port=default)
    return scheme, host, port


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_ttl(text: str) -> int:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"30d"``, ``"2w"`` or plain seconds → seconds.

    Raises:
        ValueError: Malformed, zero, or longer than :data:`MAX_TTL`.
    """
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"ttl {text!r} must look like 90s, 15m, 1h, 30d or 2w")
    seconds = int(match.group(1)) * _TTL_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"ttl {text!r} must be positive")
    if seconds > MAX_TTL:
        raise ValueError(f"ttl {text!r} is longer than the maximum of 366 days")
    return seconds
