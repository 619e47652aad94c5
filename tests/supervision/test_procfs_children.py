"""``process_children``: the parent → children map of every live process, from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from supervision import process_children

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_a_child_and_its_grandchild_are_under_their_parents() -> None:
    # sh starts a sleep in the background and waits for it: sleep's parent is sh.
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE)
    assert shell.stdout is not None
    with shell.stdout:
        sleeper = int(shell.stdout.readline())
    try:
        children = process_children()
        assert shell.pid in children[os.getpid()]
        assert children[shell.pid] == [sleeper]
        assert sleeper not in children  # it has no children of its own
    finally:
        shell.kill()
        os.kill(sleeper, 9)
        shell.wait()


def test_a_reaped_child_is_gone_and_a_zombie_is_still_listed() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 30
    # Not reaped yet: once it has exited it is a zombie, still our child.
    while time.monotonic() < deadline:
        with open(f"/proc/{child.pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                break
        time.sleep(0.01)
    assert child.pid in process_children()[os.getpid()]
    child.wait()
    assert child.pid not in process_children().get(os.getpid(), [])
