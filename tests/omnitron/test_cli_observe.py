"""``omnitron health`` and ``omnitron events``, end to end: the real CLI, a real daemon,
real apps that hang and crash, and a subscriber that never reads."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from test_cli_e2e import (
    CLI_TIMEOUT,
    Omnitron,
    app_toml,
    home,
    omnitron,
    toml_string,
    wait_for,
)
from test_health import APP, free_port

__all__ = ["home", "omnitron"]  # fixtures used here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

PROMPT = 5.0
"""A loose bound for one CLI call while the daemon is busy (a stuck daemon takes forever)."""


def hanging_app(omnitron: Omnitron, port: int) -> str:
    (omnitron.project / "app.py").write_text(APP)
    command = f'[{toml_string(sys.executable)}, "app.py", "{port}", "tcp"]'
    return (
        'project = "obs"\n\n[[apps]]\nname = "api"\n'
        f"command = {command}\n"
        f"ready = {{ tcp = {port} }}\n"
        'stop_timeout = "2s"\n'
        f'health = {{ tcp = {port}, interval = "0.2s", timeout = "0.5s", retries = 2 }}\n'
    )


def health_of(omnitron: Omnitron) -> dict[str, Any]:
    """``--json health api``; it exits 1 exactly while a process fails its probe."""
    result = omnitron.run("--json", "health", "api")
    [api] = json.loads(result.stdout)
    failing = any(p["status"] in ("failing", "unhealthy") for p in api["processes"])
    assert result.returncode == (1 if failing else 0), result.stderr
    return dict(api)


def test_health_shows_a_hung_app_restarted_and_why(omnitron: Omnitron) -> None:
    port = free_port()
    omnitron.write_config(hanging_app(omnitron, port))
    omnitron.up()
    first = wait_for(
        lambda: [p for p in health_of(omnitron)["processes"] if p["status"] == "healthy"],
        "api healthy",
    )[0]
    assert health_of(omnitron)["probe"]["kind"] == "tcp"
    text = omnitron.ok("health").stdout
    assert "api" in text
    assert "healthy" in text
    assert f"tcp 127.0.0.1:{port}" in text

    (omnitron.project / "hang").write_text("")
    second = wait_for(
        lambda: [
            p
            for p in health_of(omnitron)["processes"]
            if p["status"] == "healthy" and p["pid"] != first["pid"]
        ],
        "api restarted and healthy again",
        timeout=60,
    )[0]
    assert second["failures"] == 0
    assert second["last_failure"]  # why the last run was restarted, kept

    inspect = omnitron.ok("inspect", "api").stdout
    assert "health check failed" in inspect
    assert f"probe  tcp 127.0.0.1:{port}" in inspect
    events = [json.loads(line) for line in omnitron.ok("--json", "events").stdout.splitlines()]
    failed = [e for e in events if e["kind"] == "health_failed"]
    assert failed[0]["app"] == "api"
    assert failed[0]["pid"] == first["pid"]
    assert "health check failed" in omnitron.ok("events", "api").stdout


def test_events_follow_streams_restarts_and_ends_with_the_daemon(omnitron: Omnitron) -> None:
    omnitron.write_config('project = "obs"\n\n' + app_toml("sleeper"))
    omnitron.up()
    follower = subprocess.Popen(
        omnitron.argv("--json", "events", "--follow", "--lines", "0"),
        cwd=omnitron.project,
        env=omnitron.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The follower has subscribed once it prints an event: restart until it does.
        assert follower.stdout is not None
        seen: list[dict[str, Any]] = []
        pending = b""
        deadline = time.monotonic() + CLI_TIMEOUT
        while not any(e["kind"] == "online" for e in seen):
            assert time.monotonic() < deadline, seen
            assert follower.poll() is None, follower.stderr.read() if follower.stderr else ""
            if not seen:
                omnitron.ok("restart", "sleeper")
            if select.select([follower.stdout], [], [], 2.0)[0]:
                chunk = os.read(follower.stdout.fileno(), 65536)
                assert chunk, follower.stderr.read() if follower.stderr else ""
                pending += chunk
                *lines, pending = pending.split(b"\n")
                seen += [json.loads(line) for line in lines]
        assert {e["app"] for e in seen} == {"sleeper"}
        assert "stopped" in [e["kind"] for e in seen]
        omnitron.ok("down")
        assert follower.wait(timeout=CLI_TIMEOUT) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
        follower.communicate(timeout=CLI_TIMEOUT)  # reaps it and closes its pipes


def restarts(omnitron: Omnitron, app: str) -> int:
    apps = {a["name"]: a for a in omnitron.call("daemon.status")["apps"]}
    return int(apps[app]["restarts"])


def test_a_subscriber_that_never_reads_does_not_slow_supervision(omnitron: Omnitron) -> None:
    # An app that exits at once (no interpreter start-up), restarted without delay:
    # hundreds of events a second.
    flapping = (
        "[[apps]]\n"
        'name = "flapper"\n'
        'command = ["false"]\n'
        "enabled = false\n"
        'restart_policy = { max_restarts = 1000000, window = "1s", backoff = { initial = "0s" } }\n'
    )
    omnitron.write_config('project = "obs"\n\n' + app_toml("sleeper") + flapping)
    omnitron.up()
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(str(Path(omnitron.home) / "daemon.sock"))
    try:
        stalled.sendall(msgpack.packb([0, 1, "events.subscribe", [{}]]))
        omnitron.run("start", "flapper")  # it may count as failed to start: it flaps
        start = omnitron.apps()["flapper"]["restarts"]
        # Supervision goes on at full speed while the subscriber reads nothing.
        for _ in range(10):
            began = time.monotonic()
            apps = omnitron.apps()
            assert time.monotonic() - began < PROMPT
            assert apps["sleeper"]["status"] == "online"
            time.sleep(0.3)
        # Each restart is at least two events (exited, started): 4,000 are enough to overflow
        # the subscriber's buffer (EVENT_BUFFER = 1000) and both kernel socket
        # buffers, so the daemon must drop and say so (or hang up).
        # (Polled over the socket: a CLI start per poll would only slow the wait.)
        wait_for(
            lambda: restarts(omnitron, "flapper") > start + 2000,
            "thousands of restarts while the subscriber is stalled",
            timeout=180,
        )
        began = time.monotonic()
        omnitron.ok("restart", "sleeper")
        assert time.monotonic() - began < PROMPT
        # The stalled subscriber lost the oldest events and is told how many
        # (or the daemon hung up on it): never an unbounded queue.
        omnitron.ok("stop", "flapper")
        stalled.settimeout(CLI_TIMEOUT)
        unpacker = msgpack.Unpacker()
        dropped = 0
        while not dropped:
            data = stalled.recv(65536)
            if not data:
                break  # disconnected by the daemon
            unpacker.feed(data)
            for message in unpacker:
                if message[0] == 2 and message[1] == "rpc.dropped":
                    dropped = message[2][0]["dropped"]
        assert dropped > 0 or not data
    finally:
        stalled.close()


class Terminal:
    """``omnitron monit`` in a pseudo-terminal of ``rows`` x ``cols``; ``screen`` is
    every byte it wrote so far."""

    def __init__(self, omnitron: Omnitron, rows: int, cols: int) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**omnitron.env(), "TERM": "xterm-256color"}
        self.proc = subprocess.Popen(
            omnitron.argv("monit", "--interval", "0.2"),
            cwd=omnitron.project,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.screen = b""

    def read_until(self, predicate: Callable[[bytes], bool]) -> None:
        deadline = time.monotonic() + CLI_TIMEOUT
        while not predicate(self.screen):
            assert time.monotonic() < deadline, self.screen.decode(errors="replace")[-3000:]
            if select.select([self.master], [], [], 0.5)[0]:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:  # the terminal closed: monit exited
                    return

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def test_monit_shows_the_apps_live_in_a_terminal_and_q_quits(omnitron: Omnitron) -> None:
    omnitron.write_config('project = "obs"\n\n' + app_toml("sleeper") + app_toml("second"))
    omnitron.up()
    terminal = Terminal(omnitron, 30, 140)
    proc, master, read_until = terminal.proc, terminal.master, terminal.read_until
    try:
        read_until(lambda s: b"sleeper" in s and b"second" in s and b"online" in s)
        assert b"omnitron monit" in terminal.screen
        assert b"RESTARTS" in terminal.screen
        # It refreshes in place: the restarted process's new pid shows up.
        old = {p["pid"] for p in omnitron.apps()["second"]["processes"]}
        omnitron.ok("restart", "second")
        [new] = {p["pid"] for p in omnitron.apps()["second"]["processes"]} - old
        read_until(lambda s: str(new).encode() in s)
        assert proc.poll() is None
        os.write(master, b"q")
        assert proc.wait(timeout=CLI_TIMEOUT) == 0
    finally:
        terminal.close()


# Prints its name and a counter every 50 ms.
TALKER = (
    "import sys, time\nn = 0\nwhile True:\n"
    "    print(f'{sys.argv[1]} says {n}', flush=True)\n    n += 1\n    time.sleep(0.05)\n"
)


def test_monit_draws_cpu_history_and_shows_the_selected_apps_log_tail(
    omnitron: Omnitron,
) -> None:
    """The sparkline column fills from the daemon's samples; j/k and the arrow keys move
    the selection, and the pane under the table shows that app's last lines."""
    talkers = "".join(
        "[[apps]]\n"
        f'name = "{name}"\n'
        f'command = [{toml_string(sys.executable)}, "-c", {toml_string(TALKER)}, "{name}"]\n'
        for name in ("alpha", "beta")
    )
    omnitron.write_config('project = "obs"\n[monitoring.metrics]\ninterval = "200ms"\n\n' + talkers)
    omnitron.up()
    terminal = Terminal(omnitron, 40, 160)
    master, read_until = terminal.master, terminal.read_until

    def fresh(marker: bytes) -> Callable[[bytes], bool]:
        """True once ``marker`` appears after what has been read so far."""
        start = len(terminal.screen)
        return lambda s: marker in s[start:]

    try:
        read_until(lambda s: b"log tail \xc2\xb7 alpha" in s and b"alpha says" in s)
        assert b"CPU HISTORY" in terminal.screen
        # Several samples drawn: a run of bars (the lowest ones for idle talkers).
        read_until(lambda s: any(bar * 4 in s for bar in (b"\xe2\x96\x81", b"\xe2\x96\x82")))
        os.write(master, b"j")
        read_until(fresh(b"log tail \xc2\xb7 beta"))
        read_until(fresh(b"beta says"))
        os.write(master, b"\x1b[A")  # arrow up
        read_until(fresh(b"log tail \xc2\xb7 alpha"))
        os.write(master, b"\x1b[B")  # arrow down
        read_until(fresh(b"log tail \xc2\xb7 beta"))
        os.write(master, b"k")
        read_until(fresh(b"log tail \xc2\xb7 alpha"))
        os.write(master, b"q")
        assert terminal.proc.wait(timeout=CLI_TIMEOUT) == 0
    finally:
        terminal.close()


def test_a_sparkline_scales_to_the_busiest_sample() -> None:
    from omnitron.cli._monit import keys, sparkline

    assert sparkline([]) == ""
    assert sparkline([0, 50, 100]) == "▁▅█"
    assert sparkline([0, 200]) == "▁█"  # two cores' worth: scaled to the largest
    assert keys("j\x1b[Ak\x1bOBq") == ["j", "\x1b[A", "k", "\x1bOB", "q"]


def test_only_monit_imports_rich() -> None:
    code = (
        "import sys\n"
        "import omnitron.cli._main, omnitron.cli._observe, omnitron.cli._monit\n"
        "print('rich' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
