"""The daemon under systemd: sd_notify client, unit rendering and installation."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnitron.daemon._systemd import (
    enable_command,
    install_unit,
    notify,
    render_unit,
    unit_directory,
)

# --------------------------------------------------------------------------- notify


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit AF_UNIX's 107 bytes (tmp_path may not)."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="omn-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sock.bind(address)
    return sock


def test_notify_sends_a_datagram(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(short_dir / "notify")
    with _receiver(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1")
        assert sock.recv(4096) == b"READY=1"
        assert notify("STATUS=3 apps online\nMAINPID=42")
        assert sock.recv(4096) == b"STATUS=3 apps online\nMAINPID=42"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
def test_notify_to_an_abstract_socket() -> None:
    name = f"omnitron-test-{secrets.token_hex(8)}"
    with _receiver("\0" + name) as sock:
        assert notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_notify_outside_systemd_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": "relative/path"}) is False


def test_notify_never_raises_on_a_missing_socket(short_dir: Path) -> None:
    missing = {"NOTIFY_SOCKET": str(short_dir / "gone")}
    assert notify("READY=1", environ=missing) is False
    too_long = {"NOTIFY_SOCKET": "/" + "x" * 200}
    assert notify("READY=1", environ=too_long) is False
    abstract = {"NOTIFY_SOCKET": f"@omnitron-nobody-{secrets.token_hex(8)}"}
    assert notify("READY=1", environ=abstract) is False


def test_notify_to_a_stream_socket_is_false(short_dir: Path) -> None:
    path = str(short_dir / "stream")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        assert notify("READY=1", environ={"NOTIFY_SOCKET": path}) is False


# --------------------------------------------------------------------------- render_unit


def test_render_user_unit() -> None:
    text = render_unit(
        executable="/home/ann/.venv/bin/omnitron",
        config=Path("/home/ann/shop/omnitron.toml"),
        home=Path("/home/ann/.omnitron"),
        user=True,
        description="omnitron (shop)",
    )
    assert text == textwrap.dedent(
        """\
        # Written by omnitron: the daemon runs in the foreground and supervises the apps.
        [Unit]
        Description=omnitron (shop)

        [Service]
        Type=notify
        NotifyAccess=main
        ExecStart=/home/ann/.venv/bin/omnitron up --foreground --config /home/ann/shop/omnitron.toml
        Environment="OMNITRON_HOME=/home/ann/.omnitron"
        Restart=on-failure
        RestartSec=200ms
        KillMode=mixed
        TimeoutStopSec=75

        [Install]
        WantedBy=default.target
        """
    )


def test_render_system_unit_without_config() -> None:
    text = render_unit(
        executable="/usr/local/bin/omnitron",
        config=None,
        home=Path("/var/lib/omnitron"),
        user=False,
        description="omnitron",
        stop_timeout=120.5,
    )
    assert text == textwrap.dedent(
        """\
        # Written by omnitron: the daemon runs in the foreground and supervises the apps.
        [Unit]
        Description=omnitron
        After=network.target

        [Service]
        Type=notify
        NotifyAccess=main
        ExecStart=/usr/local/bin/omnitron up --foreground
        Environment="OMNITRON_HOME=/var/lib/omnitron"
        Restart=on-failure
        RestartSec=200ms
        KillMode=mixed
        TimeoutStopSec=136

        [Install]
        WantedBy=multi-user.target
        """
    )


def _line(text: str, key: str) -> str:
    [line] = [line for line in text.splitlines() if line.startswith(key + "=")]
    return line.removeprefix(key + "=")


def test_render_unit_escapes_for_systemd() -> None:
    text = render_unit(
        executable="/opt/my tools/$omni%tron",
        config=Path('/srv/100% sure/$HOME/"q"\\x.toml'),
        home=Path("/home/ann/my home %h"),
        user=True,
        description="50% of $HOME",
    )
    assert _line(text, "ExecStart") == (
        '"/opt/my tools/$omni%%tron" up --foreground'
        ' --config "/srv/100%% sure/$$HOME/\\"q\\"\\\\x.toml"'
    )
    assert _line(text, "Environment") == '"OMNITRON_HOME=/home/ann/my home %%h"'
    assert _line(text, "Description") == "50%% of $HOME"


def test_render_unit_quotes_only_what_needs_it() -> None:
    text = render_unit(
        executable="/opt/it's/omnitron",
        config=Path("/srv/$x/a.toml"),
        home=Path("/h"),
        user=True,
    )
    assert _line(text, "ExecStart") == (
        '"/opt/it\'s/omnitron" up --foreground --config /srv/$$x/a.toml'
    )
    assert _line(text, "Description") == "omnitron process supervisor"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("executable", "omnitron", "executable must be an absolute path"),
        ("config", Path("eco.toml"), "config must be an absolute path"),
        ("home", Path("~/.omnitron"), "home must be an absolute path"),
        ("home", Path("/a\nb"), "home must be printable text on one line"),
        ("description", "two\nlines", "description must be printable"),
        ("description", "ends with \\", "must not end with a backslash"),
        ("stop_timeout", -1.0, "stop_timeout must be a finite number"),
        ("stop_timeout", float("inf"), "stop_timeout must be a finite number"),
    ],
)
def test_render_unit_refuses_bad_values(field: str, value: object, message: str) -> None:
    arguments: dict[str, object] = {
        "executable": "/usr/bin/omnitron",
        "config": None,
        "home": Path("/h"),
        "user": True,
    }
    arguments[field] = value
    with pytest.raises(ValueError, match=message):
        render_unit(**arguments)  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_rendered_unit_passes_systemd_analyze_verify(short_dir: Path) -> None:
    # The executable's own path holds a space, '%' and '$': verify only passes if
    # systemd unquotes it back to the real file (it checks the file is executable).
    tools = short_dir / "my tools $x 100%"
    tools.mkdir()
    executable = tools / "omni tron"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    unit = short_dir / "omnitron-test.service"
    unit.write_text(
        render_unit(
            executable=str(executable),
            config=Path('/srv/100% "sure"/eco.toml'),
            home=short_dir / "home %h",
            user=False,
            description="omnitron 100%",
        )
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "omnitron-test.service" not in result.stderr, result.stderr


# --------------------------------------------------------------------------- install_unit


def test_install_unit_writes_atomically(tmp_path: Path) -> None:
    directory = tmp_path / "units"
    path = install_unit(
        "[Unit]\nDescription=one\n", name="omnitron", user=True, directory=directory
    )
    assert path == directory / "omnitron.service"
    assert path.read_text() == "[Unit]\nDescription=one\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    again = install_unit(
        "[Unit]\nDescription=two\n", name="omnitron.service", user=True, directory=directory
    )
    assert again == path
    assert path.read_text() == "[Unit]\nDescription=two\n"
    assert sorted(os.listdir(directory)) == ["omnitron.service"]  # no temporary file left


def test_install_unit_defaults_to_the_user_unit_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = install_unit("[Unit]\n", name="shop", user=True)
    assert path == tmp_path / "config" / "systemd" / "user" / "shop.service"
    assert path.read_text() == "[Unit]\n"


def test_unit_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert unit_directory(user=True, environ={}) == tmp_path / ".config" / "systemd" / "user"
    assert unit_directory(user=True, environ={"XDG_CONFIG_HOME": "relative"}) == (
        tmp_path / ".config" / "systemd" / "user"
    )
    assert unit_directory(user=True, environ={"XDG_CONFIG_HOME": "/x"}) == Path("/x/systemd/user")
    assert unit_directory(user=False) == Path("/etc/systemd/system")


def test_install_unit_error_names_the_unit_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"omnitron\.service") as caught:
        install_unit("[Unit]\n", name="omnitron", user=True, directory=blocker / "units")
    assert caught.value.filename == str(blocker / "units" / "omnitron.service")


def test_install_unit_failure_leaves_the_old_unit_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = install_unit("[Unit]\nDescription=old\n", name="omnitron", user=True, directory=tmp_path)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="Input/output error") as caught:
        install_unit("[Unit]\nDescription=new\n", name="omnitron", user=True, directory=tmp_path)
    assert caught.value.filename == str(path)
    assert path.read_text() == "[Unit]\nDescription=old\n"
    assert sorted(os.listdir(tmp_path)) == ["omnitron.service"]


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "-x", "sp ace", "x\n", "x" * 300])
def test_install_unit_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid unit name"):
        install_unit("[Unit]\n", name=name, user=True, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_enable_command() -> None:
    assert enable_command("omnitron", user=True) == (
        "systemctl --user daemon-reload && systemctl --user enable --now omnitron"
    )
    assert enable_command("shop.service", user=False) == (
        "systemctl daemon-reload && systemctl enable --now shop"
    )


def test_keep_on_daemon_death_leaves_the_apps_to_the_restarted_daemon(tmp_path: Path) -> None:
    unit = render_unit(
        executable="/usr/bin/omnitron",
        config=None,
        home=tmp_path,
        user=True,
        keep_apps=True,
    )
    assert "KillMode=process\n" in unit
    assert "KillMode=mixed" not in unit
    assert "Restart=on-failure\nRestartSec=200ms\n" in unit
