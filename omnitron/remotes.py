"""Remote daemons by alias: ``$OMNITRON_HOME/remotes.toml``.

Each alias names a daemon's TCP plane (``tls://HOST:PORT``), the token to log in
with, and optionally its certificate's pinned fingerprint::

    [remotes.prod]
    url = "tls://10.0.0.5:9700"
    token = "eyJhbGciOi..."        # stored (from --token-file), or
    token_env = "PROD_TOKEN"       # read from this environment variable when used
    fingerprint = "SHA256:..."

The file holds tokens, so it is written atomically with mode 0600 and, as SSH does
with its private files, refused when group or others may read it. Standard
library only: it is read on the CLI's fast path (``omnitron -r prod status``),
and ``omnitron up`` imports it before it launches the daemon (``json`` loads
when a file is written).
"""

from __future__ import annotations

import os
import re
import stat

from omnitron._privatefile import write_private_file
from omnitron.errors import OmnitronError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "Remote",
    "RemotesError",
    "check_fingerprint",
    "check_name",
    "check_url",
    "default_home",
    "load_remotes",
    "lookup_remote",
    "remotes_path",
    "save_remotes",
    "write_private_file",
]

FILE_NAME = "remotes.toml"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_FILE = 1024 * 1024
"""The largest remotes file read (a few hundred aliases take a few KiB)."""
MAX_TOKEN = 16384


class RemotesError(OmnitronError, ValueError):
    """A bad alias, URL or fingerprint, or a remotes file that cannot be used."""


class Remote:
    """One alias: where the daemon is, how to log in, which certificate to expect.

    Attributes:
        name: The alias.
        url: ``tls://HOST:PORT``.
        token: The token stored in the file, if any.
        token_env: The environment variable holding the token, if any.
        fingerprint: The pinned ``SHA256:...`` fingerprint, if any.
    """

    __slots__ = ("fingerprint", "name", "token", "token_env", "url")

    def __init__(
        self,
        name: str,
        url: str,
        *,
        token: str | None = None,
        token_env: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.name = check_name(name)
        self.url = check_url(url)
        if token is not None and token_env is not None:
            raise RemotesError(f"remote {name!r}: a token or a token_env, not both")
        if token is not None:
            token = check_token(token, f"remote {name!r}")
        if token_env is not None and not _ENV.fullmatch(token_env):
            raise RemotesError(
                f"remote {name!r}: {token_env!r} is not an environment variable name"
            )
        self.token = token
        self.token_env = token_env
        self.fingerprint = None if fingerprint is None else check_fingerprint(fingerprint)

    def __repr__(self) -> str:  # never the token
        return f"Remote({self.name!r}, {self.url!r}, fingerprint={self.fingerprint!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Remote):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def _key(self) -> tuple[str | None, ...]:
        return (self.name, self.url, self.token, self.token_env, self.fingerprint)

    @property
    def has_token(self) -> bool:
        """Whether a token is stored, or its environment variable is set and not empty."""
        return self.token is not None or bool(
            self.token_env and os.environ.get(self.token_env, "").strip()
        )

    def resolve_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The token to log in with: stored, else from ``token_env``.

        Raises:
            RemotesError: ``token_env`` is set but the variable is empty or unset.
        """
        if self.token is not None:
            return self.token
        if self.token_env is None:
            return None
        env = os.environ if environ is None else environ
        value = env.get(self.token_env, "").strip()
        if not value:
            raise RemotesError(
                f"remote {self.name!r} reads its token from ${self.token_env}, which is not set"
            )
        return check_token(value, f"${self.token_env}")

    def to_json(self) -> dict[str, object]:
        """For ``remote ls --json``: everything but the token itself."""
        return {
            "name": self.name,
            "url": self.url,
            "fingerprint": self.fingerprint,
            "token": self.has_token,
            "token_env": self.token_env,
        }


def check_name(name: str) -> str:
    """An alias: letters, digits, ``_.-``, starting with a letter or digit, ≤ 63 characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RemotesError(
            f"bad remote name {name!r}: use letters, digits, '_', '.' and '-' "
            "(starting with a letter or digit, at most 63 characters; no ',')"
        )
    return name


def check_url(url: str) -> str:
    """``tls://HOST[:PORT]``, normalised to ``tls://HOST:PORT``."""
    from omnitron.rpc._address import parse_url

    try:
        scheme, host, port = parse_url(url)
    except ValueError as exc:
        raise RemotesError(f"bad remote URL: {exc}") from None
    if scheme != "tls":
        raise RemotesError(
            f"bad remote URL {url!r}: remotes are tls://HOST:PORT (the TCP plane, "
            "`omnitron up --tcp`)"
        )
    if port == 0:
        raise RemotesError(f"bad remote URL {url!r}: port 0 is not a daemon's port")
    shown = f"[{host}]" if ":" in host else host
    return f"tls://{shown}:{port}"


def check_fingerprint(value: str) -> str:
    """``SHA256:`` and 43 base64 characters, as ``omnitron up`` prints it."""
    if not isinstance(value, str) or not _FINGERPRINT.fullmatch(value.strip()):
        raise RemotesError(
            f"bad fingerprint {value!r}: expected SHA256: and 43 base64 characters, "
            "as `omnitron up --tcp` prints it"
        )
    return value.strip()


def check_token(value: str, source: str) -> str:
    token = value.strip()
    if not token:
        raise RemotesError(f"{source}: the token is empty")
    if len(token) > MAX_TOKEN or any(c.isspace() or not c.isprintable() for c in token):
        raise RemotesError(f"{source}: this is not a token (from `omnitron auth token`)")
    return token


def default_home(value: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The daemon home: ``value``, else ``$OMNITRON_HOME``, else ``~/.omnitron``.

    Normalised as :class:`omnitron.state.Home` does (``~`` expanded, made absolute,
    symbolic links kept), without importing it (that package pulls in Trio).
    """
    env = os.environ if environ is None else environ
    raw = value or env.get("OMNITRON_HOME", "") or "~/.omnitron"
    return os.path.abspath(os.path.expanduser(raw))


def lookup_remote(home: str, name: str) -> Remote:
    """The alias ``name`` of ``home``.

    Raises:
        RemotesError: No such alias (the known ones are named), or a bad file.
    """
    remotes = load_remotes(home)
    remote = remotes.get(name)
    if remote is None:
        known = ", ".join(remotes) or "none yet"
        raise RemotesError(
            f"no remote named {name!r} in {remotes_path(home)} (known: {known}); "
            "add it with `omnitron remote add NAME tls://HOST:PORT --token-file FILE`"
        )
    return remote


def remotes_path(home: str) -> str:
    return os.path.join(home, FILE_NAME)


def load_remotes(home: str) -> dict[str, Remote]:
    """Every alias of ``home``, in file order (a missing file: none).

    Raises:
        RemotesError: The file is readable by group or others, is not a regular
            file, is not valid TOML, or holds a bad entry (named).
    """
    import tomllib

    path = remotes_path(home)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise RemotesError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RemotesError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise RemotesError(
                f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}) and "
                f"holds tokens; refusing to use it. Fix it with `chmod 600 {path}` "
                "(and revoke the tokens if someone may have read them)"
            )
        raw = file.read(MAX_FILE + 1)
    if len(raw) > MAX_FILE:
        raise RemotesError(f"{path} is larger than {MAX_FILE} bytes")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RemotesError(f"{path} is not valid TOML: {exc}") from None
    table = doc.get("remotes", {})
    if not isinstance(table, dict) or set(doc) - {"remotes"}:
        raise RemotesError(f"{path}: expected only [remotes.NAME] tables")
    remotes: dict[str, Remote] = {}
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise RemotesError(f"{path}: remotes.{name} must be a table")
        unknown = set(entry) - {"url", "token", "token_env", "fingerprint"}
        if unknown:
            raise RemotesError(f"{path}: remotes.{name}: unknown key {sorted(unknown)[0]!r}")
        if not all(isinstance(v, str) for v in entry.values()):
            raise RemotesError(f"{path}: remotes.{name}: every value must be a string")
        if "url" not in entry:
            raise RemotesError(f"{path}: remotes.{name} has no url")
        try:
            remotes[name] = Remote(
                name,
                entry["url"],
                token=entry.get("token"),
                token_env=entry.get("token_env"),
                fingerprint=entry.get("fingerprint"),
            )
        except RemotesError as exc:
            raise RemotesError(f"{path}: {exc}") from None
    return remotes


def _toml_string(value: str) -> str:
    import json  # not at import: `up` reads this module before it launches the daemon

    return json.dumps(value)  # a JSON string (ASCII, \uXXXX escapes) is a TOML basic string


def render_remotes(remotes: Iterable[Remote]) -> str:
    lines = ["# omnitron remotes: written by `omnitron remote add|rm`; holds tokens (0600)"]
    for remote in remotes:
        lines += ["", f"[remotes.{_toml_string(remote.name)}]"]
        lines.append(f"url = {_toml_string(remote.url)}")
        for key in ("token", "token_env", "fingerprint"):
            value = getattr(remote, key)
            if value is not None:
                lines.append(f"{key} = {_toml_string(value)}")
    return "\n".join(lines) + "\n"


def save_remotes(home: str, remotes: Iterable[Remote]) -> None:
    """Write the remotes file atomically, mode 0600 (see :func:`write_private_file`)."""
    os.makedirs(home, mode=0o700, exist_ok=True)
    write_private_file(remotes_path(home), render_remotes(remotes).encode("utf-8"))
