"""Promise 1 after a daemon's death: ``on_daemon_death = "stop" | "keep"``.

A daemon killed with SIGKILL cannot stop its apps. With ``stop`` (the default)
its sentinel stops them, whole trees included, within a second; with ``keep``
they run on until the next ``up`` terminates and relaunches them.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from fault_harness import Daemon, app_toml, gone, marked, pids_of, sentinels, wait_for

# An app whose process forks a grandchild that sleeps: a whole tree to stop.
TREE = [
    sys.executable,
    "-c",
    "import os, time\nif os.fork() == 0:\n    time.sleep(3600)\nelse:\n    time.sleep(3600)\n",
]


def config(death: str | None) -> str:
    supervision = "" if death is None else f'[supervision]\non_daemon_death = "{death}"\n\n'
    return (
        'project = "death"\n\n'
        + supervision
        + app_toml("tree", TREE)
        + app_toml("pair", ["sleep", "3600"], instances="2")
    )


def test_by_default_a_dead_daemons_apps_stop_within_a_second(daemon: Daemon) -> None:
    daemon.start(config(None))
    apps = daemon.wait_online("tree", "pair")
    wait_for(lambda: len(marked(daemon.home, apps_only=True)) == 4, "the tree's grandchild")
    tree = [p.pid for p in marked(daemon.home, apps_only=True)]
    assert pids_of(apps["tree"]) < set(tree)
    [sentinel] = sentinels(daemon.home)

    killed_at = time.monotonic()
    os.kill(daemon.pid, signal.SIGKILL)
    wait_for(lambda: all(gone(pid) for pid in tree), "the apps stopped by the sentinel")
    took = time.monotonic() - killed_at
    # Promised within a second; the bound here leaves room for a loaded machine.
    assert took < 5, f"the apps took {took:.2f}s to stop"
    wait_for(lambda: gone(sentinel.pid), "the sentinel gone once its work is done")
    assert marked(daemon.home) == []


def test_with_keep_the_apps_outlive_the_daemon_until_the_next_up(daemon: Daemon) -> None:
    daemon.start(config("keep"))
    apps = daemon.wait_online("tree", "pair")
    assert sentinels(daemon.home) == []  # nothing would stop them
    old = pids_of(apps["tree"]) | pids_of(apps["pair"])
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait_exit()
    assert not any(gone(pid) for pid in old)

    daemon.start()
    apps = daemon.wait_online("tree", "pair")
    assert all(gone(pid) for pid in old)
    assert (pids_of(apps["tree"]) | pids_of(apps["pair"])).isdisjoint(old)


def test_a_clean_stop_dismisses_the_sentinel(daemon: Daemon) -> None:
    daemon.start(config("stop"))
    daemon.wait_online("tree", "pair")
    [sentinel] = sentinels(daemon.home)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    wait_for(lambda: gone(sentinel.pid), "the sentinel gone with its daemon")
    assert marked(daemon.home) == []
