"""Process identity's edges that mutation testing (``nox -s mutate``) found unpinned.

Each test here fails with a mutant of ``omnitron/state/_identity.py`` that
survived the other tests: a zombie is not a running process, and a process
whose name holds ``) `` keeps its identity (``/proc/<pid>/stat`` is split after
the *last* parenthesis).
"""

from __future__ import annotations

import os
import subprocess
import sys

from omnitron.state import ProcessIdentity

RENAMER = """
import sys
print("ready", flush=True)
sys.stdin.readline()
with open("/proc/self/comm", "w") as f:
    f.write("a) b c d e f")
print("renamed", flush=True)
sys.stdin.readline()
"""


def test_a_zombie_has_no_identity_and_is_not_running() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE
    )
    try:
        before = ProcessIdentity.of(proc.pid)
        assert before is not None
        assert before.is_running()
        assert proc.stdin is not None
        proc.stdin.close()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert ProcessIdentity.of(proc.pid) is None
        assert not before.is_running()
    finally:
        proc.wait()


def test_a_process_named_with_a_parenthesis_keeps_its_identity() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", RENAMER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready\n"
        before = ProcessIdentity.of(proc.pid)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"renamed\n"
        with open(f"/proc/{proc.pid}/comm", "rb") as f:
            assert f.read() == b"a) b c d e f\n"
        after = ProcessIdentity.of(proc.pid)
        assert after is not None
        assert after == before
        assert after.is_running()
    finally:
        proc.stdin.close()
        proc.wait()
        proc.stdout.close()
