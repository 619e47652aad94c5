"""``omnitron up`` launches the daemon while it validates the config.

The daemon is handed one end of a socket pair (``--ready-fd``); it loads the
config, then waits for ``go`` before it touches its home. A launch withdrawn
(the launcher's end closed: an invalid config, an interrupted ``up``) makes it
exit with ``EXIT_WITHDRAWN`` and nothing created. Real processes throughout.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from omnitron.daemon._main import EXIT_WITHDRAWN

CONFIG = '[[apps]]\nname = "a"\ncommand = ["sleep", "3600"]\n'
TIMEOUT = 60.0


def launch(home: Path, config: Path) -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = [sys.executable, "-m", "omnitron.daemon", "--home", str(home), "--config"]
    argv += [str(config), "--ready-fd", str(theirs.fileno())]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(theirs.fileno(),),
        start_new_session=True,
    )
    theirs.close()
    return proc, ours


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """What the daemon said until ``marker`` (or its end of file)."""
    said = b""
    deadline = time.monotonic() + TIMEOUT
    while marker not in said:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} within {TIMEOUT} s: {said!r}"
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            chunk = sock.recv(4096)
            if not chunk:
                break
            said += chunk
    return said


def test_a_withdrawn_launch_exits_without_touching_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = tmp_path / "apps.toml"
    config.write_text(CONFIG)
    proc, ours = launch(home, config)
    ours.close()  # withdrawn before the daemon was told to go on
    assert proc.wait(timeout=TIMEOUT) == EXIT_WITHDRAWN
    assert not home.exists()


def test_a_daemon_told_to_go_on_starts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = tmp_path / "apps.toml"
    config.write_text(CONFIG)
    proc, ours = launch(home, config)
    try:
        ours.sendall(b"go\n")
        said = read_until(ours, b"@started")
        assert b"@listening" in said
        assert (home / "daemon.sock").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=TIMEOUT)
        ours.close()
    assert code == 0


def test_up_with_an_invalid_config_leaves_no_daemon_and_no_home(tmp_path: Path) -> None:
    """The real CLI: the config error is ``up``'s own (exit 2), the daemon it had
    launched meanwhile is gone, and the home was never created."""
    home = tmp_path / "home"
    config = tmp_path / "apps.toml"
    config.write_text(CONFIG + 'colour = "red"\n')
    omnitron = Path(sys.executable).with_name("omnitron")
    result = subprocess.run(
        [str(omnitron), "--home", str(home), "up", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert "apps[0].colour: unknown key" in result.stderr
    assert not home.exists()
    left = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"omnitron.daemon" in cmdline and os.fsencode(home) in cmdline:
                left.append(pid)
    assert left == []
