"""Logs through a real daemon and the real CLI: no line lost, tail, grep, follow, flush."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from pathlib import Path

from test_cli_e2e import (
    CLI_TIMEOUT,
    CRASH_SOON,
    FAST_BACKOFF,
    Omnitron,
    app_toml,
    home,
    omnitron,
    wait_for,
)

__all__ = ["home", "omnitron"]  # fixtures used by name

BURST_LINES = 60_000
# 60,000 lines of ~92 bytes (5.5 MB) in one burst at start-up, then idle.
BURST = (
    "import sys, time\n"
    f"for i in range({BURST_LINES}):\n"
    "    sys.stdout.write(f'line {i:08d} ' + 'x' * 78 + '\\n')\n"
    "sys.stdout.flush()\n"
    "time.sleep(3600)\n"
)


def start_cli(omnitron: Omnitron, *args: str) -> subprocess.Popen[str]:
    """The CLI running in the background, its output on pipes."""
    return subprocess.Popen(
        omnitron.argv(*args),
        cwd=omnitron.project,
        env=omnitron.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def app_lines(path: Path, marker: str) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if marker in line]


def test_a_burst_of_60000_lines_at_start_up_loses_none(omnitron: Omnitron) -> None:
    omnitron.write_config('project = "logs"\n\n' + app_toml("burst", BURST))
    omnitron.up()
    log_file = Path(omnitron.home) / "logs" / "burst.log"
    lines = wait_for(
        lambda: (
            (found := app_lines(log_file, "burst[0] out | line "))
            and len(found) >= BURST_LINES
            and found
        ),
        "every line in the file",
        timeout=60,
    )
    numbers = [int(line.split("| line ")[1][:8]) for line in lines]
    assert numbers == list(range(BURST_LINES))
    text = log_file.read_text()
    assert "dropped" not in text
    assert "suppressed" not in text
    inspect = omnitron.json("inspect", "burst")
    assert inspect["logs"]["suppressed_lines"] == 0
    assert inspect["logs"]["dropped_lines"] == 0


COUNTED = (
    "import sys, time\n"
    "for i in range(100):\n"
    "    print(f'count {i}')\n"
    "    print(f'warn {i}', file=sys.stderr) if i % 10 == 0 else None\n"
    "time.sleep(3600)\n"
)
HELLO = "import os, time; print('hello from', os.getpid(), flush=True); time.sleep(3600)"


def test_logs_shows_the_last_lines_filtered_by_grep_and_stream(omnitron: Omnitron) -> None:
    omnitron.write_config('project = "logs"\n\n' + app_toml("counter", COUNTED))
    omnitron.up()
    wait_for(
        lambda: (
            "count 99" in omnitron.ok("logs", "counter", "-n", "1", "--stream", "stdout").stdout
        ),
        "the last line in `logs`",
    )
    out = omnitron.ok("logs", "counter", "--lines", "3", "--stream", "stdout").stdout.splitlines()
    assert [line.split(" | ", 1)[1] for line in out] == ["count 97", "count 98", "count 99"]
    assert all(" counter[0] out | " in line for line in out)
    grep = omnitron.ok("logs", "counter", "--grep", r"^warn [5-9]0$", "--lines", "50").stdout
    assert [line.split(" | ", 1)[1] for line in grep.splitlines()] == [
        f"warn {i}" for i in (50, 60, 70, 80, 90)
    ]
    assert all(" counter[0] err | " in line for line in grep.splitlines())
    listed = omnitron.ok("--json", "logs", "-n", "2", "--stream", "stdout").stdout
    entries = [json.loads(line) for line in listed.splitlines()]
    assert [(e["app"], e["instance"], e["output"], e["line"]) for e in entries] == [
        ("counter", 0, "out", "count 98"),
        ("counter", 0, "out", "count 99"),
    ]
    bad = omnitron.run("logs", "--grep", "(")
    assert bad.returncode == 2
    assert "not a valid regular expression" in bad.stderr
    unknown = omnitron.run("logs", "nosuchapp")
    assert unknown.returncode == 1
    assert "nosuchapp" in unknown.stderr
    assert omnitron.ok("logs", "--since", "1h", "-n", "1").stdout.strip()
    assert omnitron.run("logs", "--since", "soon").returncode == 2


def test_flush_empties_the_files(omnitron: Omnitron) -> None:
    omnitron.write_config('project = "logs"\n\n' + app_toml("counter", COUNTED))
    omnitron.up()
    log_file = Path(omnitron.home) / "logs" / "counter.log"
    wait_for(lambda: log_file.exists() and "count 99" in log_file.read_text(), "the log file")
    assert str(log_file) in omnitron.ok("flush", "counter").stdout
    assert log_file.read_text() == ""
    assert omnitron.ok("logs", "counter").stdout == ""


def test_follow_sees_a_restarted_process_and_ends_when_the_daemon_stops(
    omnitron: Omnitron,
) -> None:
    omnitron.write_config(
        'project = "logs"\n\n' + app_toml("hello", HELLO) + app_toml("other", HELLO)
    )
    omnitron.up()
    first = omnitron.apps()["hello"]["processes"][0]["pid"]
    wait_for(lambda: str(first) in omnitron.ok("logs", "hello").stdout, "the first line")
    seen: queue.Queue[str] = queue.Queue()
    follower = start_cli(omnitron, "logs", "hello", "other", "--follow")
    assert follower.stdout is not None
    reader = threading.Thread(target=lambda: [seen.put(line) for line in follower.stdout or ()])
    reader.start()
    try:
        lines: list[str] = []

        def saw(text: str) -> bool:
            while not seen.empty():
                lines.append(seen.get())
            return any(text in line for line in lines)

        wait_for(lambda: saw(f"hello from {first}"), "the first process's line")
        assert saw(" other[0] out | hello from ")  # two apps, one stream
        omnitron.ok("restart", "hello")
        second = omnitron.apps()["hello"]["processes"][0]["pid"]
        assert second != first
        wait_for(lambda: saw(f"hello from {second}"), "the restarted process's line")
        assert saw("hello[-] sys | ")  # the daemon's note about the restart
        omnitron.ok("down")
        assert follower.wait(timeout=CLI_TIMEOUT) == 0
        assert "Traceback" not in (follower.stderr.read() if follower.stderr else "")
    finally:
        if follower.poll() is None:
            follower.send_signal(signal.SIGKILL)
        follower.wait(timeout=CLI_TIMEOUT)
        reader.join(timeout=CLI_TIMEOUT)
        for pipe in (follower.stdout, follower.stderr):
            if pipe is not None:
                pipe.close()


def test_follow_stops_quietly_on_ctrl_c(omnitron: Omnitron) -> None:
    omnitron.write_config('project = "logs"\n\n' + app_toml("hello", HELLO))
    omnitron.up()
    follower = start_cli(omnitron, "logs", "--follow")
    assert follower.stdout is not None
    wait_for(lambda: "hello from" in follower.stdout.readline(), "a line", timeout=30)
    follower.send_signal(signal.SIGINT)
    try:
        _, err = follower.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        follower.kill()  # never leave it behind for the tests that count children
        follower.communicate()
        raise
    assert follower.returncode == 0
    assert "Traceback" not in err


def test_lifecycle_events_reach_the_daemon_log_as_structured_lines(omnitron: Omnitron) -> None:
    policy = f'{{ max_restarts = 1, window = "60s", {FAST_BACKOFF} }}'
    omnitron.write_config(
        'project = "logs"\n\n' + app_toml("flaky", CRASH_SOON, restart_policy=policy)
    )
    omnitron.run("up")  # exits 1: the app does not stay up
    daemon_log = Path(omnitron.home) / "logs" / "daemon.log"

    def events() -> list[str]:
        return [line for line in daemon_log.read_text().splitlines() if "app='flaky'" in line]

    found = wait_for(
        lambda: (
            (lines := events()) and any("event='app_crashed'" in line for line in lines) and lines
        ),
        "the app given up on, in daemon.log",
    )
    kinds = [line.split("event='", 1)[1].split("'", 1)[0] for line in found]
    assert kinds[:4] == ["app_online", "app_exited", "app_restarting", "app_online"]
    assert "app_crashed" in kinds
    exited = next(line for line in found if "event='app_exited'" in line)
    assert "level='warning'" in exited
    assert "code 3" in exited
    assert "instance=0" in exited
    assert "pid=" in exited
    restarting = next(line for line in found if "event='app_restarting'" in line)
    assert "delay=" in restarting
    shown = omnitron.ok("logs", "--daemon", "--grep", "app_crashed").stdout
    assert "event='app_crashed'" in shown
