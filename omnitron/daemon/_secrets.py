"""The daemon's secret store: ``$OMNITRON_HOME/secrets.enc``, encrypted.

Secrets are named values (``omnitron secret set db``) that apps receive in their
environment through a reference in the config (``env = { DB_PASSWORD =
"secret:db" }``), resolved each time the app's processes are built for a start.
The value lives only in ``secrets.enc`` (encrypted), in the daemon's memory and in
the environment of the app's processes: never in ``state.json``, the logs, a reply
other than ``secret.get`` (admin) or an error message.

File format (one JSON object)::

    {"format": "omnitron-secrets", "version": 1, "key": "file" | "passphrase",
     "kdf": {"name": "scrypt", "salt": B64, "n": 32768, "r": 8, "p": 1},   # passphrase only
     "nonce": B64, "data": B64}

``data`` is AES-256-GCM over the JSON ``{"secrets": {NAME: VALUE}}``, with the
header (every field but ``nonce`` and ``data``) as associated data, so an edited
header fails authentication like an edited ciphertext. Every write uses a fresh
random 96-bit nonce.

The key comes from one of two places, chosen when the store is created and
recorded in its header:

- ``key: "file"`` (default): 32 random bytes in ``$OMNITRON_HOME/secret.key``
  (base64, mode 0600, created on first use; a key file readable by other users is
  refused).
- ``key: "passphrase"``: when the daemon starts with ``OMNITRON_SECRETS_PASSPHRASE``
  in its environment. The key is derived with scrypt (n=2**15, r=8, p=1; a random
  16-byte salt kept in the header), once per daemon run. The variable is removed
  from the daemon's environment at start-up, so apps never inherit it.

``cryptography`` is imported only when a secret is read or written: a daemon whose
apps use no secret never loads it.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import os
import stat
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import trio

from ..rpc import (
    Call,
    Dispatcher,
    Handler,
    InvalidParams,
    Name,
    NotFound,
    Role,
    Unavailable,
)
from ..state import FileSystem
from ._errors import DaemonError

__all__ = [
    "KEY_FILE",
    "PASSPHRASE_ENV",
    "SECRETS_FILE",
    "SecretError",
    "SecretNotSet",
    "SecretStore",
    "SecretStoreUnavailable",
    "register_secret_methods",
]

SECRETS_FILE = "secrets.enc"
KEY_FILE = "secret.key"
PASSPHRASE_ENV = "OMNITRON_SECRETS_PASSPHRASE"

MAX_VALUE = 64 * 1024
"""Characters of one secret value."""
MAX_SECRETS = 1000
"""Secrets in one store."""
MAX_FILE = 16 * 1024 * 1024
"""Bytes of ``secrets.enc`` read at most (a bigger file is refused, not read)."""

_FORMAT = "omnitron-secrets"
_VERSION = 1
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
_SCRYPT: dict[str, object] = {"name": "scrypt", "n": _SCRYPT_N, "r": _SCRYPT_R, "p": _SCRYPT_P}
_KEY_BYTES = 32
_NONCE_BYTES = 12
_SALT_BYTES = 16
_START_OVER = "restore it from a backup, or remove it to start a new store"


class SecretError(DaemonError):
    """A secret could not be read, stored or resolved; the message names the
    secret or the file, never a value."""


class SecretNotSet(SecretError, NotFound):
    """No secret of that name in the store."""

    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name!r} is not set (omnitron secret set {name})")
        self.name = name


class SecretStoreUnavailable(SecretError, Unavailable):
    """``secrets.enc`` or its key cannot be used (corrupt, wrong key or passphrase,
    key file missing or unsafe). Nothing was changed."""


class SecretRefused(SecretError, InvalidParams):
    """A value or name the store does not accept (the message says why)."""


def _b64(data: bytes) -> str:
    import base64  # loaded with the store's first write, not by every daemon

    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} is not a base64 string")
    import base64

    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{what} is not valid base64") from None


def _associated_data(header: Mapping[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def check_value(value: object) -> str:
    """``value`` if the store accepts it as a secret value; messages never echo it.

    Raises:
        SecretRefused: Not a string, empty, too long, or holding a NUL character
            (an environment variable cannot).
    """
    if not isinstance(value, str):
        raise SecretRefused(f"a secret value must be a string, got {type(value).__name__}")
    if not value:
        raise SecretRefused("a secret value must not be empty")
    if len(value) > MAX_VALUE:
        raise SecretRefused(f"a secret value must be at most {MAX_VALUE} characters")
    if "\0" in value:
        raise SecretRefused("a secret value must not contain a NUL character")
    return value


class SecretStore:
    """The encrypted store of one home.

    Reads are synchronous and short (two small files and one AES-GCM pass; a
    passphrase's key is derived once and kept). Writes are serialised by a lock
    and atomic, as ``state.json``'s: temporary file, fsync, rename, directory fsync.

    Args:
        home: The daemon's home directory.
        passphrase: Derive the key from this instead of using ``secret.key``
            (for a store created now; an existing store's header decides).
        fs: The filesystem layer (a fault-injecting one in tests).
    """

    def __init__(
        self, home: Path, *, passphrase: str | None = None, fs: FileSystem | None = None
    ) -> None:
        self.home = home
        self.path = home / SECRETS_FILE
        self.key_path = home / KEY_FILE
        self._passphrase = passphrase or None
        self._fs = FileSystem() if fs is None else fs
        self._lock = trio.Lock()
        self._derived: dict[bytes, bytes] = {}

    @classmethod
    def from_environ(
        cls, home: Path, environ: MutableMapping[str, str] | None = None
    ) -> SecretStore:
        """The store of ``home``, with the passphrase taken *out of* ``environ``
        (``os.environ`` by default), so that apps never inherit it."""
        env = os.environ if environ is None else environ
        return cls(home, passphrase=env.pop(PASSPHRASE_ENV, None))

    # ------------------------------------------------------------------ reading

    def read(self) -> dict[str, str]:
        """Every secret (empty when there is no store yet).

        Raises:
            SecretStoreUnavailable: The store cannot be read or decrypted.
        """
        return self._load()[0]

    def _load(self) -> tuple[dict[str, str], dict[str, Any] | None]:
        """Every secret and the file's header (``None`` when there is no store yet)."""
        try:
            with open(self.path, "rb", opener=_nofollow) as file:
                raw = file.read(MAX_FILE + 1)
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            raise SecretStoreUnavailable(f"cannot read {self.path}: {exc.strerror}") from None
        if len(raw) > MAX_FILE:
            raise SecretStoreUnavailable(f"{self.path} is larger than {MAX_FILE} bytes; refused")
        return self._decrypt(raw)

    def resolve(self, names: Iterable[str]) -> dict[str, str]:
        """The values of ``names``.

        Raises:
            SecretNotSet: One of them is not in the store (the first one missing).
            SecretStoreUnavailable: The store cannot be read or decrypted.
        """
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        secrets = self.read()
        for name in wanted:
            if name not in secrets:
                raise SecretNotSet(name)
        return {name: secrets[name] for name in wanted}

    def _corrupt(self, why: str) -> SecretStoreUnavailable:
        return SecretStoreUnavailable(f"{self.path} is corrupt ({why}); {_START_OVER}")

    def _decrypt(self, raw: bytes) -> tuple[dict[str, str], dict[str, Any]]:
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise self._corrupt("not a secrets file, or truncated") from None
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise self._corrupt("not a secrets file")
        if document.get("version") != _VERSION:
            raise SecretStoreUnavailable(
                f"{self.path} has format version {document.get('version')!r}, which this "
                f"omnitron does not read (it reads version {_VERSION})"
            )
        header = {k: v for k, v in document.items() if k not in ("nonce", "data")}
        try:
            nonce = _unb64(document.get("nonce"), "nonce")
            data = _unb64(document.get("data"), "data")
            key = self._key_for(header, create=False)
        except ValueError as exc:
            raise self._corrupt(str(exc)) from None
        if len(nonce) != _NONCE_BYTES:
            raise self._corrupt("bad nonce length")

        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            plain = AESGCM(key).decrypt(nonce, data, _associated_data(header))
        except InvalidTag:
            if header.get("key") == "passphrase":
                raise SecretStoreUnavailable(
                    f"cannot decrypt {self.path}: wrong passphrase ({PASSPHRASE_ENV}), "
                    "or the file was altered"
                ) from None
            raise SecretStoreUnavailable(
                f"cannot decrypt {self.path} with {self.key_path}: the key does not "
                "match, or the file was altered"
            ) from None
        try:
            secrets = json.loads(plain)["secrets"]
            if not isinstance(secrets, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in secrets.items()
            ):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise self._corrupt("unexpected content") from None
        return secrets, header

    # ------------------------------------------------------------------ keys

    def _key_for(self, header: Mapping[str, Any], *, create: bool) -> bytes:
        """The AES key the store with ``header`` is encrypted with.

        Raises:
            ValueError: The header is malformed (the caller calls the file corrupt).
            SecretStoreUnavailable: The key is not available.
        """
        mode = header.get("key")
        if mode == "passphrase":
            kdf = header.get("kdf")
            if (
                not isinstance(kdf, dict)
                or {k: v for k, v in kdf.items() if k != "salt"} != _SCRYPT
            ):
                raise ValueError("unknown key derivation")
            salt = _unb64(kdf.get("salt"), "salt")
            if self._passphrase is None:
                raise SecretStoreUnavailable(
                    f"{self.path} is protected by a passphrase: start the daemon with "
                    f"{PASSPHRASE_ENV} set"
                )
            return self._derive(salt)
        if mode == "file":
            return self._key_file(create=create)
        raise ValueError("unknown key kind")

    def _derive(self, salt: bytes) -> bytes:
        key = self._derived.get(salt)
        if key is None:
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            assert self._passphrase is not None
            key = Scrypt(
                salt=salt, length=_KEY_BYTES, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P
            ).derive(self._passphrase.encode())
            self._derived[salt] = key
        return key

    def _key_file(self, *, create: bool) -> bytes:
        path = self.key_path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise SecretStoreUnavailable(
                    f"{path} is missing: {self.path} cannot be decrypted without it "
                    "(restore the key file, or remove secrets.enc to start a new store)"
                ) from None
            return self._new_key_file()
        except OSError as exc:
            raise SecretStoreUnavailable(f"cannot read {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                raise SecretStoreUnavailable(
                    f"{path} is not a regular file owned by this user; refused"
                )
            if info.st_mode & 0o077:
                raise SecretStoreUnavailable(
                    f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):04o});"
                    f" run: chmod 600 {path}"
                )
            text = os.read(fd, 256)
        finally:
            os.close(fd)
        try:
            key = _unb64(text.strip().decode("ascii"), "key")
        except (UnicodeDecodeError, ValueError):
            key = b""
        if len(key) != _KEY_BYTES:
            raise SecretStoreUnavailable(f"{path} is not a key file (expected 32 bytes, base64)")
        return key

    def _new_key_file(self) -> bytes:
        key = os.urandom(_KEY_BYTES)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.key_path, flags, 0o600)
        try:
            os.write(fd, (_b64(key) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return key

    def _encrypt(self, secrets: Mapping[str, str], previous: Mapping[str, Any] | None) -> bytes:
        """The new file: the previous header (same key, same salt) or a new one."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if previous is not None:
            header = dict(previous)
        elif self._passphrase is not None:
            header = {
                "format": _FORMAT,
                "version": _VERSION,
                "key": "passphrase",
                "kdf": {**_SCRYPT, "salt": _b64(os.urandom(_SALT_BYTES))},
            }
        else:
            header = {"format": _FORMAT, "version": _VERSION, "key": "file"}
        key = self._key_for(header, create=previous is None)
        nonce = os.urandom(_NONCE_BYTES)
        plain = json.dumps({"secrets": dict(sorted(secrets.items()))}).encode()
        data = AESGCM(key).encrypt(nonce, plain, _associated_data(header))
        document = {**header, "nonce": _b64(nonce), "data": _b64(data)}
        return json.dumps(document, indent=1).encode() + b"\n"

    # ------------------------------------------------------------------ writing

    async def _write(self, data: bytes) -> None:
        fs = self._fs
        fd, tmp = await fs.create_temp(self.home, SECRETS_FILE + ".")
        open_fd: int | None = fd
        try:
            await fs.write(fd, data)
            await fs.fsync(fd)
            open_fd = None
            await fs.close(fd)
            await fs.replace(tmp, self.path)
        except BaseException:
            with trio.CancelScope(shield=True):
                if open_fd is not None:
                    with contextlib.suppress(OSError):
                        await fs.close(open_fd)
                with contextlib.suppress(OSError):
                    await fs.unlink(tmp)
            raise
        await fs.fsync_dir(self.home)

    async def _update(self, change: Any) -> Any:
        async with self._lock:
            # An unusable store raises here: it is never overwritten.
            secrets, header = await trio.to_thread.run_sync(self._load)
            result = change(secrets)
            data = await trio.to_thread.run_sync(self._encrypt, secrets, header)
            try:
                await self._write(data)
            except OSError as exc:
                raise SecretStoreUnavailable(
                    f"cannot write {self.path}: {exc.strerror}; nothing was changed"
                ) from None
            return result

    async def set(self, name: str, value: str) -> bool:
        """Store ``value`` as ``name``; returns whether the secret is new."""
        check_value(value)

        def change(secrets: dict[str, str]) -> bool:
            new = name not in secrets
            if new and len(secrets) >= MAX_SECRETS:
                raise SecretRefused(f"the store holds {MAX_SECRETS} secrets already")
            secrets[name] = value
            return new

        return bool(await self._update(change))

    async def remove(self, name: str) -> None:
        """Remove ``name``.

        Raises:
            SecretNotSet: It is not in the store (nothing is written).
        """

        def change(secrets: dict[str, str]) -> None:
            if name not in secrets:
                raise SecretNotSet(name)
            del secrets[name]

        await self._update(change)

    async def get(self, name: str) -> str:
        """The value of ``name``."""
        return (await trio.to_thread.run_sync(self.resolve, [name]))[name]

    async def names(self) -> list[str]:
        """The names in the store, sorted."""
        return sorted(await trio.to_thread.run_sync(self.read))


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def register_secret_methods(dispatcher: Dispatcher, store: SecretStore) -> None:
    """The ``secret.*`` methods, all for admins only."""

    async def set_secret(call: Call, *, name: Name, value: object) -> dict[str, Any]:
        """Store a secret (apps using it get it at their next start)."""
        # ``value: object``: the params layer quotes a value it rejects; this never does.
        created = await store.set(name, check_value(value))
        return {"name": name, "created": created}

    async def get_secret(call: Call, *, name: Name) -> dict[str, Any]:
        """A secret's value."""
        return {"name": name, "value": await store.get(name)}

    async def list_secrets(call: Call) -> dict[str, Any]:
        """The names of the stored secrets (never their values)."""
        return {"names": await store.names()}

    async def remove_secret(call: Call, *, name: Name) -> dict[str, Any]:
        """Remove a secret."""
        await store.remove(name)
        return {"name": name, "removed": True}

    methods: dict[str, Handler] = {
        "secret.set": set_secret,
        "secret.get": get_secret,
        "secret.list": list_secrets,
        "secret.remove": remove_secret,
    }
    for method, handler in methods.items():
        dispatcher.register(method, handler, role=Role.ADMIN)
