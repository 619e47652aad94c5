"""Running the daemon as a systemd service.

* :func:`notify` is a tiny ``sd_notify`` client: the daemon tells systemd when
  it is ready (``READY=1``), what it is doing (``STATUS=...``) and that it is
  stopping (``STOPPING=1``).
* :func:`render_unit` writes the unit (``Type=notify``, ``omnitron up
  --foreground``), :func:`install_unit` puts it in place atomically, and
  :func:`enable_command` says what to run next. Nothing here runs
  ``systemctl``: enabling a service is left to the user.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_STOP_TIMEOUT",
    "enable_command",
    "install_unit",
    "notify",
    "render_unit",
    "unit_directory",
]

DEFAULT_STOP_TIMEOUT: Final = 60.0
"""Default ``stop_timeout`` of :func:`render_unit`: how long stopping all apps may take."""

_STOP_MARGIN: Final = 15
"""Seconds added to ``TimeoutStopSec`` for the daemon's own shutdown (final state flush)."""

_UNIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,200}")


# --------------------------------------------------------------------------- sd_notify


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to the service manager, as ``sd_notify`` does.

    The socket is ``$NOTIFY_SOCKET``: a path, or an abstract socket written with
    a leading ``@``. The datagram is sent without blocking, so a stalled
    manager cannot stall the caller.

    Args:
        message: Newline-separated ``KEY=VALUE`` assignments.
        environ: Where to look for ``NOTIFY_SOCKET`` (default: ``os.environ``).

    Returns:
        ``True`` if the datagram was sent; ``False`` when not run by systemd
        (no ``NOTIFY_SOCKET``, or an address this client does not support) or
        when sending failed. It never raises ``OSError``.
    """
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if target.startswith("@"):
        address = "\0" + target[1:]
    elif target.startswith("/"):
        address = target
    else:
        return False  # unset, or an address family we do not speak (vsock:...)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- unit file


def _check_text(what: str, value: str) -> None:
    if not value.isprintable():
        raise ValueError(f"{what} must be printable text on one line, got {value!r}")


def _specifiers(value: str) -> str:
    # systemd expands %-specifiers in nearly every setting.
    return value.replace("%", "%%")


def _quoted(value: str) -> str:
    """A double-quoted word, with C escapes for ``\\`` and ``"`` (systemd's unquoting)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exec_word(value: str, *, argument: bool = True) -> str:
    """One ``ExecStart=`` word: specifiers (and ``$`` in arguments) escaped, quoted if needed."""
    word = _specifiers(value)
    if argument:  # $VAR and ${VAR} are expanded in the arguments, not in the executable's path
        word = word.replace("$", "$$")
    if not word or any(ch.isspace() or ch in "\"'\\;" for ch in word):
        return _quoted(word)
    return word


def _absolute(what: str, value: str | os.PathLike[str]) -> str:
    path = os.fspath(value)
    _check_text(what, path)
    if not os.path.isabs(path):
        raise ValueError(f"{what} must be an absolute path, got {path!r}")
    return os.path.normpath(path)


def render_unit(
    *,
    executable: str | os.PathLike[str],
    config: Path | None,
    home: Path,
    user: bool,
    description: str = "omnitron process supervisor",
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    keep_apps: bool = False,
) -> str:
    """The text of a systemd service unit that runs ``omnitron up --foreground``.

    The daemon reports readiness with ``sd_notify`` (``Type=notify``) and is
    restarted by systemd if it fails. Paths are escaped for systemd: ``%``
    becomes ``%%``, ``$`` in the command's arguments becomes ``$$``, and values
    with spaces, quotes or backslashes are double-quoted (with ``\\`` and ``\"``).

    Args:
        executable: Absolute path of the ``omnitron`` command.
        config: The ecosystem file to pass as ``--config``, or ``None`` to let
            the daemon find it.
        home: The daemon's home, set as ``OMNITRON_HOME``.
        user: A ``systemctl --user`` unit (wanted by ``default.target``)
            rather than a system one (``multi-user.target``).
        description: The unit's ``Description=``.
        stop_timeout: Seconds the daemon may need to stop every app (their
            ``stop_timeout``s, in dependency order); ``TimeoutStopSec=`` adds a
            margin for the daemon's own shutdown.
        keep_apps: The config says ``on_daemon_death = "keep"``: if the daemon
            dies, systemd leaves the apps running (``KillMode=process``) for the
            restarted daemon to terminate and relaunch. Otherwise
            (``KillMode=mixed``) systemd kills what is left of a dead daemon.

    Returns:
        The unit file's text.

    Raises:
        ValueError: A path is relative or a value is not printable one-line text.
    """
    exe = _absolute("executable", executable)
    home_path = _absolute("home", home)
    _check_text("description", description)
    if description.endswith("\\"):
        raise ValueError("description must not end with a backslash (a line continuation)")
    if not (stop_timeout >= 0 and math.isfinite(stop_timeout)):
        raise ValueError(f"stop_timeout must be a finite number >= 0, got {stop_timeout}")
    args = ["up", "--foreground"]
    if config is not None:
        args += ["--config", _absolute("config", config)]
    exec_start = " ".join([_exec_word(exe, argument=False), *map(_exec_word, args)])
    environment = _quoted(_specifiers(f"OMNITRON_HOME={home_path}"))
    target = "default.target" if user else "multi-user.target"
    after = "" if user else "After=network.target\n"
    return (
        "# Written by omnitron: the daemon runs in the foreground and supervises the apps.\n"
        "[Unit]\n"
        f"Description={_specifiers(description)}\n"
        f"{after}"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        "NotifyAccess=main\n"
        f"ExecStart={exec_start}\n"
        f"Environment={environment}\n"
        # A daemon that dies is back promptly; its apps are stopped (mixed) or
        # kept for it (process), as the config's on_daemon_death says.
        "Restart=on-failure\n"
        "RestartSec=200ms\n"
        # On stop, SIGTERM goes to the daemon only: it stops the apps itself, in
        # reverse dependency order, each with its own stop_timeout and a whole-tree
        # kill. With the default KillMode=control-group every app would get SIGTERM
        # at once, behind the daemon's back, and be seen as crashing. With mixed,
        # the final SIGKILL still goes to the whole cgroup, so nothing outlives a
        # daemon that hangs or dies: the unit never leaves orphans.
        f"KillMode={'process' if keep_apps else 'mixed'}\n"
        f"TimeoutStopSec={math.ceil(stop_timeout) + _STOP_MARGIN}\n"
        "\n"
        "[Install]\n"
        f"WantedBy={target}\n"
    )


# --------------------------------------------------------------------------- install


def _unit_name(name: str) -> str:
    stem = name.removesuffix(".service")
    if not _UNIT_NAME.fullmatch(stem):
        raise ValueError(
            f"invalid unit name {name!r}: use letters, digits and _ . : - "
            "(starting with a letter or digit)"
        )
    return stem


def unit_directory(*, user: bool, environ: Mapping[str, str] | None = None) -> Path:
    """Where :func:`install_unit` puts units.

    Args:
        user: ``$XDG_CONFIG_HOME/systemd/user`` (default ``~/.config/systemd/user``)
            rather than ``/etc/systemd/system``.
        environ: Where to look for ``XDG_CONFIG_HOME`` (default: ``os.environ``).
    """
    if not user:
        return Path("/etc/systemd/system")
    env = os.environ if environ is None else environ
    config_home = env.get("XDG_CONFIG_HOME", "")
    base = Path(config_home) if os.path.isabs(config_home) else Path.home() / ".config"
    return base / "systemd" / "user"


def enable_command(name: str, *, user: bool) -> str:
    """The shell command that loads and starts an installed unit.

    ``systemctl [--user] daemon-reload && systemctl [--user] enable --now NAME``.
    """
    stem = _unit_name(name)
    scope = "systemctl --user" if user else "systemctl"
    return f"{scope} daemon-reload && {scope} enable --now {stem}"


def install_unit(unit_text: str, *, name: str, user: bool, directory: Path | None = None) -> Path:
    """Write ``unit_text`` as ``<name>.service``, atomically; do not run ``systemctl``.

    The file is written to a temporary file in the same directory, flushed and
    renamed over the old unit, so systemd never reads half a unit. Tell the
    user to run :func:`enable_command` next. Blocking.

    Args:
        unit_text: What :func:`render_unit` returned.
        name: The unit's name, with or without ``.service``.
        user: Install for ``systemctl --user`` (see :func:`unit_directory`).
        directory: Install there instead (tests, packaging).

    Returns:
        The unit file's path.

    Raises:
        ValueError: ``name`` is not a valid unit name.
        OSError: The directory cannot be created or written (``/etc`` needs
            root); the error names the unit file.
    """
    path = (unit_directory(user=user) if directory is None else directory) / (
        _unit_name(name) + ".service"
    )
    try:
        _write_atomically(path, unit_text)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    return path


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # mkstemp made it 0600; units are world-readable
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the rename is durable
    finally:
        os.close(dir_fd)
