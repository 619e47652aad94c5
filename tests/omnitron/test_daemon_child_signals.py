"""Apps start with default signal dispositions, whatever ``omnitron up``'s shell ignored.

A script that runs ``omnitron up &`` or ``nohup omnitron up`` hands the daemon
SIGINT and SIGQUIT (or SIGHUP) ignored; an ignored signal survives ``exec``, so
without a reset an app could never be stopped by it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from test_cli_e2e import CLI_TIMEOUT, Omnitron, home, omnitron, pids_of

__all__ = ["home", "omnitron"]  # fixtures used here

_STOP_TIMEOUT = 60  # far longer than a stop by the signal takes

CONFIG = f"""\
[[apps]]
name = "s"
command = ["sleep", "600"]
stop_signal = "SIGQUIT"
stop_timeout = "{_STOP_TIMEOUT}s"
"""


def _ignored(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn line for pid {pid}")


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


def test_an_app_of_a_daemon_started_from_a_background_job_obeys_its_stop_signal(
    omnitron: Omnitron,
) -> None:
    omnitron.write_config(CONFIG)
    # What a shell does to a background job (and nohup to SIGHUP): the daemon
    # launched through it starts with these signals ignored.
    argv = ["/bin/sh", "-c", 'trap "" HUP INT QUIT; exec "$@"', "sh", *omnitron.argv("up")]
    result = subprocess.run(
        argv,
        cwd=omnitron.project,
        env=omnitron.env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    status = omnitron.status()
    assert _ignored(status["daemon"]["pid"]) & _bit(signal.SIGQUIT)  # the daemon's inheritance
    [pid] = pids_of(omnitron.wait_online("s")["s"])
    ignored = _ignored(pid)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        assert not ignored & _bit(sig), (sig.name, hex(ignored))
    began = time.monotonic()
    omnitron.ok("stop", "s")
    assert time.monotonic() - began < _STOP_TIMEOUT / 2  # stopped by SIGQUIT, not killed late
