"""The daemon's home directory: ``$OMNITRON_HOME``, default ``~/.omnitron``.

Everything a daemon owns lives there (pid lock, control socket, state file,
logs, TLS material), so one home means one daemon and several daemons on one
machine use several homes. The directory must be private to its user: it is
created mode 0700, a wider but harmless mode (readable by others) is narrowed
with a warning, and anything that would let another user plant files (a
symbolic link, another owner, group/world write) is refused (PC-15).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

import attrs

from .._log import get_logger
from ._errors import HomeUnavailable, SocketInUse, SocketPathTooLong, UnsafeHome

__all__ = ["AF_UNIX_PATH_MAX", "Home", "remove_stale_socket"]

_log = get_logger()

AF_UNIX_PATH_MAX = 107
"""Longest socket path (in bytes) ``bind`` accepts on Linux: 108 minus the NUL."""

ENV_VAR = "OMNITRON_HOME"


def _absolute(value: str | os.PathLike[str]) -> Path:
    # abspath, not resolve(): a symlinked home must stay visible so ensure() can refuse it.
    return Path(os.path.abspath(os.path.expanduser(os.fspath(value))))


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


@attrs.frozen
class Home:
    """One daemon's home directory and the paths inside it.

    ``Home(path)`` takes the directory as given (``~`` expanded, made absolute,
    symbolic links kept); :meth:`from_env` finds it the way the daemon and the
    CLI do. Nothing touches the disk until :meth:`ensure`.

    Attributes:
        path: The absolute path of the home directory.
    """

    path: Path = attrs.field(converter=_absolute)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Home:
        """The home named by ``$OMNITRON_HOME``, or ``~/.omnitron`` when it is unset or empty."""
        env = os.environ if environ is None else environ
        value = env.get(ENV_VAR, "")
        return cls(value if value else "~/.omnitron")

    @property
    def pid_file(self) -> Path:
        """The pid lock file, ``daemon.pid``."""
        return self.path / "daemon.pid"

    @property
    def socket_path(self) -> Path:
        """The management socket, ``daemon.sock``."""
        return self.path / "daemon.sock"

    @property
    def state_file(self) -> Path:
        """The persisted intent, ``state.json``."""
        return self.path / "state.json"

    @property
    def backup_file(self) -> Path:
        """The previous good state, ``state.json.bak``."""
        return self.path / "state.json.bak"

    @property
    def logs_dir(self) -> Path:
        """Where app and daemon logs go, ``logs/``."""
        return self.path / "logs"

    @property
    def tls_dir(self) -> Path:
        """Certificates and keys for the TCP plane, ``tls/``."""
        return self.path / "tls"

    @property
    def secrets_file(self) -> Path:
        """The encrypted secret store, ``secrets.enc``."""
        return self.path / "secrets.enc"

    @property
    def remotes_file(self) -> Path:
        """Remote daemon aliases, ``remotes.toml``."""
        return self.path / "remotes.toml"

    def check_socket_path(self) -> None:
        """Check that :attr:`socket_path` fits in an ``AF_UNIX`` address.

        Raises:
            SocketPathTooLong: It is longer than :data:`AF_UNIX_PATH_MAX` bytes.
        """
        size = len(os.fsencode(self.socket_path))
        if size > AF_UNIX_PATH_MAX:
            raise SocketPathTooLong(str(self.socket_path), size, AF_UNIX_PATH_MAX)

    def ensure(self) -> None:
        """Create the home (mode 0700) with ``logs/`` and ``tls/``, and check it is private.

        Blocking; async callers run it with ``trio.to_thread.run_sync``.

        Raises:
            HomeUnavailable: A directory cannot be created (the message names it and
                the OS reason, e.g. ``Read-only file system``).
            UnsafeHome: A directory is a symbolic link, not a directory, owned by
                another user, or group/world-writable.
            SocketPathTooLong: The socket path would not fit in ``AF_UNIX``.
        """
        self.check_socket_path()
        _ensure_private_dir(self.path, what="home directory", create_parents=True)
        _ensure_private_dir(self.logs_dir, what="log directory")
        _ensure_private_dir(self.tls_dir, what="TLS directory")


def _ensure_private_dir(path: Path, *, what: str, create_parents: bool = False) -> None:
    try:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            if not create_parents:
                raise
            os.makedirs(path.parent, mode=0o700, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
        st = os.lstat(path)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise HomeUnavailable(
            f"cannot create {what} {path}: {exc.strerror}{where}; "
            f"set {ENV_VAR} to a writable directory",
            errno=exc.errno,
            filename=str(path),
        ) from exc
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeHome(
            f"{what} {path} is a symbolic link; refusing (point {ENV_VAR} at the real directory)",
            errno=errno.ELOOP,
            filename=str(path),
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeHome(
            f"{what} {path} is not a directory; refusing",
            errno=errno.ENOTDIR,
            filename=str(path),
        )
    euid = os.geteuid()
    if st.st_uid != euid:
        raise UnsafeHome(
            f"{what} {path} is owned by uid {st.st_uid}, not by uid {euid}; refusing",
            errno=errno.EPERM,
            filename=str(path),
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        who = "group-writable" if mode & 0o020 else "world-writable"
        raise UnsafeHome(
            f"{what} {path} is {who} ({_mode(st)}); refusing (run: chmod 700 {path})",
            errno=errno.EPERM,
            filename=str(path),
        )
    if mode != 0o700:
        # Readable by others but not writable: nothing can have been planted, so narrow it.
        os.chmod(path, 0o700)
        _log.warning("home_permissions_fixed", path=str(path), old_mode=_mode(st), new_mode="0700")


def remove_stale_socket(home: Home) -> bool:
    """Remove a socket file left behind by a daemon that died (PC-14).

    Call it only while holding the home's pid lock. A socket that still accepts
    connections is never removed.

    Blocking; async callers run it with ``trio.to_thread.run_sync``.

    Returns:
        ``True`` if a stale socket was removed, ``False`` if there was none.

    Raises:
        SocketInUse: Something accepts connections on the socket.
        UnsafeHome: The path exists but is not a socket (e.g. a symbolic link).
    """
    path = home.socket_path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a socket"
        raise UnsafeHome(
            f"{path} is {kind}; refusing to replace it", errno=errno.EEXIST, filename=str(path)
        )
    listening = False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: stale
    except TimeoutError:
        listening = True  # a full backlog still means a live listener
    else:
        listening = True
    finally:
        probe.close()
    if listening:
        raise SocketInUse(
            str(path),
            f"a process is accepting connections on {path}, but this daemon holds the lock; "
            "refusing to remove the socket",
        )
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    _log.info("stale_socket_removed", path=str(path))
    return True
