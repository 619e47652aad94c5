"""The session's safety net (``tests/conftest.py``) against real daemons and a killed run.

Each test runs pytest sessions of its own, in subprocesses, on a directory holding a
copy of ``tests/conftest.py`` and a test that starts a real foreground daemon on a
temporary home and then leaks it: it never stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
DEADLINE = 60.0

LEAKY_TEST = """
import os, subprocess, sys, time
from pathlib import Path

def test_leaks_a_daemon():
    home = os.environ["GUARD_HOME"]
    config = Path(home, "omnitron.toml")
    config.write_text('[[apps]]\\nname = "nap"\\ncommand = ["sleep", "3600"]\\n')
    daemon = subprocess.Popen(
        [sys.executable, "-m", "omnitron", "--home", home, "up", "--foreground",
         "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    Path(home, "daemon.started").write_text(str(daemon.pid))
    if os.environ.get("GUARD_HANG"):
        time.sleep(3600)  # the run is killed here
"""


@pytest.fixture
def guard(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory with the conftest copy and the leaky test, and a short daemon home."""
    project = tmp_path / "inner"
    project.mkdir()
    shutil.copy(CONFTEST, project / "conftest.py")
    (project / "test_leaky.py").write_text(LEAKY_TEST)
    (project / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    home = tempfile.mkdtemp(dir="/tmp", prefix="omg-")
    try:
        yield project, home
    finally:
        for proc in _daemons(home):  # only if the test failed
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def _pytest(project: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "--rootdir",
        str(project),
        *args,
    ]


def _env(home: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")}
    return {**env, "GUARD_HOME": home, **extra}


def _run(project: Path, home: str, test_file: str) -> subprocess.CompletedProcess[str]:
    """An inner session on ``test_file``, to its end."""
    return subprocess.run(
        _pytest(project, test_file),
        cwd=project,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        stdin=subprocess.DEVNULL,
    )


def _start_hanging(project: Path, home: str) -> subprocess.Popen[bytes]:
    """An inner session whose test starts a daemon, then hangs (until it is killed)."""
    inner = subprocess.Popen(
        _pytest(project, "test_leaky.py"),
        cwd=project,
        env=_env(home, GUARD_HANG="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: _app_running(home), "the inner run's daemon to start its app")
    except BaseException:
        inner.kill()
        inner.wait()
        raise
    return inner


def _daemons(home: str) -> list[psutil.Process]:
    """The live processes of ``home``: its daemon (by argv) and its apps (by marker)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if home in proc.cmdline() or proc.environ().get("OMNITRON_HOME") == home:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _wait(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _app_running(home: str) -> bool:
    return any("OMNITRON_APP" in _environ(p) for p in _daemons(home))


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except psutil.Error:
        return {}


def _killed_and_named(result: subprocess.CompletedProcess[str], home: str, title: str) -> None:
    """The inner session passed, named ``home``'s processes under ``title``, and they are gone."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert title in result.stdout
    assert f"(home {home})" in result.stdout
    _wait(lambda: not _daemons(home), f"the processes of {home} to be gone")


def test_a_daemon_left_running_is_killed_at_session_end(guard: tuple[Path, str]) -> None:
    project, home = guard
    result = _run(project, home, "test_leaky.py")
    assert (Path(home) / "daemon.started").exists()
    _killed_and_named(result, home, "processes left running by tests (killed)")


def test_a_killed_runs_daemon_and_apps_are_killed_by_the_next_session(
    guard: tuple[Path, str],
) -> None:
    project, home = guard
    inner = _start_hanging(project, home)
    inner.kill()  # no session end: nothing of the inner run cleans up
    inner.wait()
    leaked = _daemons(home)
    assert leaked, "the killed run left nothing running"
    result = _run(project, home, "test_nothing.py")
    _killed_and_named(result, home, "left by an earlier, killed test run (killed)")


def test_a_live_sessions_daemon_is_left_alone_until_a_sigterm_ends_that_session(
    guard: tuple[Path, str],
) -> None:
    project, home = guard
    inner = _start_hanging(project, home)
    try:
        before = {p.pid for p in _daemons(home)}
        # Another session starts meanwhile: the inner one still runs, so its daemon stays.
        result = _run(project, home, "test_nothing.py")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "killed" not in result.stdout
        assert {p.pid for p in _daemons(home)} == before
        # SIGTERM (a CI timeout): the inner session kills its daemon on the way out.
        inner.send_signal(signal.SIGTERM)
        assert inner.wait(timeout=DEADLINE) == -signal.SIGTERM
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()
    _wait(lambda: not _daemons(home), "the terminated run's daemon to be gone")
