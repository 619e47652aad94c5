"""``omnitron kill`` (and ``down`` when it has to kill) removes a dead daemon's
socket and pid file, and waits for the lock of a daemon whose last threads are
still exiting (its main thread already a zombie) instead of leaving the files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from omnitron.cli._daemon import KILL_WAIT, _remove_stale_files
from omnitron.state import Home

HOLDER = Path(__file__).parent / "fixtures_state" / "lock_holder.py"


def _stale_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
    finally:
        sock.close()  # the file stays; nothing listens: stale


def test_the_files_of_a_daemon_still_letting_go_of_its_lock_are_removed(
    tmp_path: Path,
) -> None:
    home = Home(tmp_path / "h")
    home.path.mkdir(mode=0o700)
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), os.fspath(home.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        assert holder.stdout.readline().startswith("locked ")
        _stale_socket(home.socket_path)

        # While the lock is held, nothing is removed: it may be a live daemon's.
        assert _remove_stale_files(home) == []
        assert home.socket_path.exists()

        # The holder lets go as it exits, after the cleanup has begun: waited for.
        holder.stdin.close()
        removed = _remove_stale_files(home, wait=KILL_WAIT)
        assert str(home.socket_path) in removed
        assert not home.socket_path.exists()
        assert holder.wait(timeout=KILL_WAIT) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
