"""Crash consistency with real processes on a real disk (promise 2, PC-01, PC-10).

A writer process is made to ``os._exit(137)`` at every step of an atomic
write, exactly as if it had been SIGKILLed there; the next daemon must then
load the last acknowledged generation or the one being written, never
anything else, and sweep the leftovers.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from omnitron.state import (
    AppState,
    DaemonState,
    Home,
    LoadResult,
    StateSource,
    StateStore,
    Step,
    acquire_pid_lock,
    load_state,
    open_state_writer,
    read_lock_info,
)
from omnitron.state._codec import decode_state

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures_state"
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def run_writer(home: Home, restarts: int, *fault: str) -> int:
    proc = subprocess.run(
        [sys.executable, str(FIXTURES / "crash_writer.py"), str(home.path), str(restarts), *fault],
        env=ENV,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if proc.returncode not in (0, 137):
        raise AssertionError(proc.stderr.decode())
    return proc.returncode


def api(restarts: int) -> DaemonState:
    return DaemonState(apps=[AppState(name="api", restarts=restarts)])


@pytest.fixture(scope="module")
def two_generations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home where generation 1 and then 2 were written: state.json = 2, .bak = 1."""
    home = Home(tmp_path_factory.mktemp("template") / "home")
    home.ensure()
    assert run_writer(home, 1) == 0
    assert run_writer(home, 2) == 0
    return home.path


@pytest.fixture
def home(two_generations: Path, tmp_path: Path) -> Home:
    target = tmp_path / "home"
    shutil.copytree(two_generations, target)
    return Home(target)


@pytest.mark.parametrize(
    ("step", "when", "expected", "expected_backup"),
    [
        (Step.BACKUP_LINK, "before", 2, 1),
        (Step.BACKUP_LINK, "after", 2, 1),  # in the middle of the .bak refresh
        (Step.BACKUP_REPLACE, "after", 2, 2),
        (Step.CREATE, "after", 2, 2),
        (Step.WRITE, "after", 2, 2),  # after the tmp write
        (Step.FSYNC, "after", 2, 2),  # after the tmp fsync
        (Step.CLOSE, "after", 2, 2),
        (Step.REPLACE, "before", 2, 2),
        (Step.REPLACE, "after", 3, 2),  # after the rename
        (Step.FSYNC_DIR, "before", 3, 2),  # before the directory fsync
        (Step.FSYNC_DIR, "after", 3, 2),
    ],
)
def test_crash_at_every_step_loads_n_or_n_plus_1(
    home: Home, step: Step, when: str, expected: int, expected_backup: int
) -> None:
    assert decode_state(home.state_file.read_bytes()).generation == 2
    assert run_writer(home, 3, step.value, when) == 137

    # The dead writer's pid file is stale: the next daemon takes over at once.
    info = read_lock_info(home)
    assert info is not None
    assert not info.alive
    lock = acquire_pid_lock(home)
    try:
        result = load_state(home)
        assert result.source is StateSource.PRIMARY
        assert (result.generation, result.state) == (expected, api(expected))
        assert result.warnings == ()
        assert [p for p in os.listdir(home.path) if p.endswith(".tmp")] == []
        # The backup is always a complete older generation.
        backup = decode_state(home.backup_file.read_bytes())
        assert (backup.generation, backup.state) == (expected_backup, api(expected_backup))

        # And the next write works.
        trio.run(write_once, home, result, api(4))
        after = load_state(home)
        assert (after.generation, after.state) == (expected + 1, api(4))
        assert decode_state(home.backup_file.read_bytes()).generation == expected
        # Even where the crash left state.json and .bak as one file (two hard links).
        assert [p for p in os.listdir(home.path) if p.endswith(".tmp")] == []
    finally:
        lock.release()


async def write_once(home: Home, loaded: LoadResult, state: DaemonState) -> None:
    store = StateStore(home, loaded)
    async with open_state_writer(store) as send:
        await send.send(state)
    assert store.generation == loaded.generation + 1


def test_temp_files_of_a_crash_are_swept_on_boot(home: Home) -> None:
    assert run_writer(home, 3, Step.FSYNC.value, "after") == 137
    temps = sorted(p for p in os.listdir(home.path) if p.endswith(".tmp"))
    assert len(temps) == 1
    assert temps[0].startswith("state.json.")
    # The orphan holds generation 3, complete: it is still not loaded, only removed.
    assert decode_state((home.path / temps[0]).read_bytes()).generation == 3
    result = load_state(home)
    assert result.generation == 2
    assert [p.name for p in result.removed_temp] == temps


class Lines:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "child did not answer in time"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 4096)
                assert chunk, f"child closed stdout; got {self.buffer!r}"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def test_sigterm_flushes_the_final_state_and_releases_the_lock(tmp_path: Path) -> None:
    # PC-10
    home = Home(tmp_path / "home")
    proc = subprocess.Popen(
        [sys.executable, str(FIXTURES / "daemon_like.py"), str(home.path), "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        assert Lines(proc).next().startswith("ready")
        assert home.pid_file.exists()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not home.pid_file.exists()  # removed, because this instance owned it
    result = load_state(home)
    assert result.state == api(50)
    assert [p for p in os.listdir(home.path) if p.endswith(".tmp")] == []
