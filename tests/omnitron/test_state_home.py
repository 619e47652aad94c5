"""The home directory: where it is, how it is created, and what is refused (PC-07, PC-14, PC-15)."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnitron._log import capture_logs
from omnitron.state import (
    AF_UNIX_PATH_MAX,
    Home,
    HomeUnavailable,
    SocketInUse,
    SocketPathTooLong,
    UnsafeHome,
    remove_stale_socket,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- where


def test_from_env_uses_omnitron_home(tmp_path: Path) -> None:
    assert Home.from_env({"OMNITRON_HOME": str(tmp_path / "h")}).path == tmp_path / "h"


@pytest.mark.parametrize("environ", [{}, {"OMNITRON_HOME": ""}])
def test_from_env_defaults_to_dot_omnitron(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Home.from_env(environ).path == tmp_path / ".omnitron"


def test_from_env_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OMNITRON_HOME", str(tmp_path / "x"))
    assert Home.from_env().path == tmp_path / "x"


def test_path_is_made_absolute_but_symlinks_are_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert Home("link").path == tmp_path / "link"
    assert Home(tmp_path / "a" / ".." / "b").path == tmp_path / "b"


def test_paths_inside_home(tmp_path: Path) -> None:
    home = Home(tmp_path)
    assert home.pid_file == tmp_path / "daemon.pid"
    assert home.socket_path == tmp_path / "daemon.sock"
    assert home.state_file == tmp_path / "state.json"
    assert home.backup_file == tmp_path / "state.json.bak"
    assert home.logs_dir == tmp_path / "logs"
    assert home.tls_dir == tmp_path / "tls"
    assert home.secrets_file == tmp_path / "secrets.enc"
    assert home.remotes_file == tmp_path / "remotes.toml"


# --------------------------------------------------------------------------- ensure


@pytest.mark.usefixtures("umask_zero")
def test_ensure_creates_private_directories_even_with_umask_zero(tmp_path: Path) -> None:
    home = Home(tmp_path / "deep" / "home")
    home.ensure()
    for path in (home.path, home.logs_dir, home.tls_dir):
        assert path.is_dir()
        assert mode(path) == 0o700


def test_ensure_is_idempotent(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.ensure()
    (home.path / "state.json").write_text("keep me")
    home.ensure()
    assert (home.path / "state.json").read_text() == "keep me"


@pytest.mark.parametrize("wide", [0o755, 0o750, 0o711])
def test_ensure_narrows_a_readable_home_and_says_so(tmp_path: Path, wide: int) -> None:
    home = Home(tmp_path / "home")
    home.path.mkdir()
    home.path.chmod(wide)
    with capture_logs() as logs:
        home.ensure()
    assert mode(home.path) == 0o700
    fixed = [e for e in logs if e["event"] == "home_permissions_fixed"]
    assert fixed == [
        {
            "event": "home_permissions_fixed",
            "log_level": "warning",
            "path": str(home.path),
            "old_mode": f"{wide:04o}",
            "new_mode": "0700",
        }
    ]


@pytest.mark.parametrize(
    ("wide", "word"),
    [(0o775, "group-writable (0775)"), (0o770, "group-writable (0770)"), (0o707, "world-writable")],
)
def test_ensure_refuses_a_writable_home(tmp_path: Path, wide: int, word: str) -> None:
    home = Home(tmp_path / "home")
    home.path.mkdir()
    home.path.chmod(wide)
    with pytest.raises(UnsafeHome, match="refusing") as info:
        home.ensure()
    assert f"home directory {home.path} is {word}" in str(info.value)
    assert mode(home.path) == wide  # refused, not "fixed": files may already be planted


def test_ensure_refuses_a_symlinked_home(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "home").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafeHome, match=r"home directory .*/home is a symbolic link; refusing"):
        Home(tmp_path / "home").ensure()


def test_ensure_refuses_a_home_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("")
    with pytest.raises(UnsafeHome, match="is not a directory"):
        Home(tmp_path / "home").ensure()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_ensure_refuses_a_home_owned_by_another_user(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.path.mkdir(mode=0o700)
    os.chown(home.path, 65534, 65534)
    with pytest.raises(UnsafeHome, match=r"is owned by uid 65534, not by uid 0; refusing"):
        home.ensure()


@pytest.mark.parametrize("sub", ["logs", "tls"])
def test_ensure_refuses_symlinked_subdirectories(tmp_path: Path, sub: str) -> None:
    home = Home(tmp_path / "home")
    home.path.mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir()
    (home.path / sub).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeHome, match=rf"/{sub} is a symbolic link"):
        home.ensure()


def test_ensure_fixes_a_readable_tls_directory(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.ensure()
    home.tls_dir.chmod(0o755)
    home.ensure()
    assert mode(home.tls_dir) == 0o700


def test_ensure_reports_a_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    home = Home(tmp_path / "file" / "home")
    with pytest.raises(HomeUnavailable) as info:
        home.ensure()
    assert str(info.value).startswith(f"cannot create home directory {home.path}: Not a directory")
    assert "OMNITRON_HOME" in str(info.value)
    assert info.value.errno == errno.ENOTDIR
    assert isinstance(info.value, OSError)


def test_ensure_on_a_read_only_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root ignores directory modes, so the EROFS comes from a patched mkdir.
    home = Home(tmp_path / "home")
    real_mkdir = os.mkdir

    def read_only(path: os.PathLike[str] | str, mode: int = 0o777) -> None:
        if Path(path) == home.path:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        real_mkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(HomeUnavailable, match=r": Read-only file system;") as info:
        home.ensure()
    assert info.value.errno == errno.EROFS
    assert info.value.filename == str(home.path)


# --------------------------------------------------------------------------- socket path


def _home_with_socket_length(tmp_path: Path, length: int) -> Home:
    base = str(tmp_path)
    suffix = "/daemon.sock"
    pad = length - len(base) - len(suffix) - 1
    assert pad > 0
    return Home(f"{base}/{'h' * pad}")


def test_socket_path_of_107_bytes_is_accepted(tmp_path: Path) -> None:
    home = _home_with_socket_length(tmp_path, AF_UNIX_PATH_MAX)
    assert len(os.fsencode(home.socket_path)) == 107
    home.check_socket_path()
    home.ensure()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(home.socket_path))  # the kernel agrees


def test_socket_path_of_108_bytes_is_refused_naming_omnitron_home(tmp_path: Path) -> None:
    home = _home_with_socket_length(tmp_path, AF_UNIX_PATH_MAX + 1)
    with pytest.raises(SocketPathTooLong) as info:
        home.ensure()
    message = str(info.value)
    assert f"socket path {home.socket_path} is 108 bytes long" in message
    assert "at most 107" in message
    assert "set OMNITRON_HOME to a shorter directory" in message
    assert not home.path.exists()  # checked before anything is created


# --------------------------------------------------------------------------- stale socket (PC-14)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.ensure()
    return h


def test_no_socket_nothing_to_remove(home: Home) -> None:
    assert remove_stale_socket(home) is False


def test_stale_socket_is_removed(home: Home) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(home.socket_path))  # a daemon that died without unlinking
    assert home.socket_path.exists()
    assert remove_stale_socket(home) is True
    assert not home.socket_path.exists()


def test_listening_socket_is_never_removed(home: Home) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(home.socket_path))
        sock.listen(1)
        with pytest.raises(SocketInUse, match="accepting connections"):
            remove_stale_socket(home)
        assert home.socket_path.exists()


def test_non_socket_at_socket_path_is_refused(home: Home, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("precious")
    home.socket_path.symlink_to(target)
    with pytest.raises(UnsafeHome, match="is a symbolic link; refusing"):
        remove_stale_socket(home)
    home.socket_path.unlink()
    home.socket_path.write_text("")
    with pytest.raises(UnsafeHome, match="is not a socket"):
        remove_stale_socket(home)
    assert target.read_text() == "precious"
