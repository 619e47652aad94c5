"""Process identities are read when first needed, and only of the process spawned.

A process's identity (pid, start time, boot) goes to the state file and guards
every signal; reading it costs a read of ``/proc/PID/stat``, so it is read when
a snapshot (or a signal) needs it, not at each spawn: a crash storm reads none.
The read is of the process spawned, never of a stranger that got its pid after
the tree reaped it (the tree publishes an exit some checkpoints after the reap).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from orchestrator_harness import open_orchestrator

import supervision._process
from omnitron.daemon import _orchestrator
from omnitron.daemon._orchestrator import _boot_clock, _child_identity
from omnitron.state import AppStatus
from supervision import ProcessIdentity

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

WAIT = 20.0
"""Generous bound for real processes to come and go."""

STORM = {
    "max_restarts": 1_000_000,
    "window": "1s",
    "backoff": {"initial": "0s", "max": "0s", "factor": 1},
}


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the orchestrator's identity reader; the pids it read, in order."""
    reads: list[int] = []
    real = _orchestrator._identity

    def counting(pid: int | None) -> ProcessIdentity | None:
        if pid is not None:
            reads.append(pid)
        return real(pid)

    monkeypatch.setattr(_orchestrator, "_identity", counting)
    return reads


CHANGED = [trio.Event()]
"""Set at every change of the orchestrator's records (then replaced)."""


def _changed() -> None:
    CHANGED[0].set()
    CHANGED[0] = trio.Event()


async def _until(check: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not check():
            await CHANGED[0].wait()


async def test_a_crash_storm_reads_no_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _count_reads(monkeypatch)
    apps = [
        {"name": "crash", "command": ["sh", "-c", "exit 3"], "restart_policy": STORM},
        {"name": "web", "command": ["sleep", "3600"]},
    ]
    async with open_orchestrator(tmp_path, apps, on_change=_changed) as (orchestrator, _):
        await _until(lambda: orchestrator.apps["crash"].restarts >= 30)
        await _until(lambda: orchestrator.apps["web"].status is AppStatus.ONLINE)
        assert reads == []  # 30 short lives and a long one: no read of /proc yet

        # The state file's snapshot reads the live process's identity, once.
        web = orchestrator.apps["web"].processes[0]
        assert web.pid is not None
        state = {app.name: app for app in orchestrator.snapshot().apps}
        [process] = state["web"].processes
        identity = ProcessIdentity.of(web.pid)
        assert identity is not None
        assert (process.pid, process.start_time, process.boot_id) == (
            web.pid,
            identity.start_time,
            identity.boot_id,
        )
        assert orchestrator.apps["web"].processes[0].identity == identity
        assert reads.count(web.pid) == 1
        orchestrator.snapshot()
        assert reads.count(web.pid) == 1  # known now: not read again
        # A crashing process's entry in the file has no pid unless it was read.
        for crashed in state["crash"].processes:
            assert crashed.pid is None or crashed.start_time is not None


async def test_a_reaped_child_is_never_read_before_its_exit_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after the tree reaps a child, its record still has its pid (the exit
    event comes some checkpoints later), and the pid may already name a stranger:
    a snapshot taken then must not read it."""
    reads = _count_reads(monkeypatch)
    reaped: list[int] = []
    recorded: list[ProcessIdentity | None] = []
    holder: list[_orchestrator.Orchestrator] = []
    real_reap = supervision._process._Child.reap

    def reap(child: supervision._process._Child) -> int | None:
        status = real_reap(child)
        if holder:
            orchestrator = holder[0]
            process = orchestrator.apps["crash"].processes.get(0)
            if process is not None and process.pid == child.pid:
                reaped.append(child.pid)
                orchestrator.snapshot()  # in the window: the record still names the pid
                recorded.append(orchestrator.apps["crash"].processes[0].identity)
        return status

    monkeypatch.setattr(supervision._process._Child, "reap", reap)
    apps = [{"name": "crash", "command": ["sleep", "0.05"], "restart_policy": STORM}]
    async with open_orchestrator(tmp_path, apps, on_change=_changed) as (orchestrator, _):
        holder.append(orchestrator)
        await _until(lambda: len(reaped) >= 5)
    assert not set(reaped) & set(reads)
    assert recorded
    assert set(recorded) == {None}


def test_only_an_unreaped_child_started_by_then_is_identified() -> None:
    before = _boot_clock() - 1.0
    child = subprocess.Popen(["sleep", "30"])
    try:
        seen = _boot_clock()
        identity = _child_identity(child.pid, seen)
        assert identity is not None
        assert identity == ProcessIdentity.of(child.pid)
        # Started after the moment it was learnt of: a later process with the number.
        assert _child_identity(child.pid, before) is None
        # Not a child of this process (its parent): never read.
        assert _child_identity(os.getppid(), seen) is None
        child.kill()
        child.wait()  # reaped: its number may be anyone's
        assert _child_identity(child.pid, seen) is None
    finally:
        child.kill()
        child.wait()


def test_an_exited_unreaped_child_has_no_identity() -> None:
    child = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # a zombie now
        assert _child_identity(child.pid, _boot_clock()) is None
    finally:
        child.wait()
