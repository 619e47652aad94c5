"""Hot reload end to end: the real CLI, a real daemon, a real app whose script is
edited on disk.

The app writes ``ready PID VERSION`` to an events file (outside the watched
directory) just before it reports ready, and ``term PID`` when it is stopped, so
the file shows whether the new process was ready before the old one was
stopped (no downtime). The harness is the one of ``test_cli_e2e.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_cli_e2e import Omnitron, home, omnitron, toml_string, wait_for

__all__ = ["home", "omnitron"]  # fixtures used here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

APP = """\
import os, signal, socket, sys, time

VERSION = {version}
events = open(os.environ["EVENTS"], "a", buffering=1)

def stop(*_):
    events.write(f"term {{os.getpid()}}\\n")
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
events.write(f"ready {{os.getpid()}} {{VERSION}}\\n")
address = os.environ["NOTIFY_SOCKET"]
address = "\\0" + address[1:] if address.startswith("@") else address
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", address)
while True:
    time.sleep(3600)
"""


def _project(omnitron: Omnitron, *, watch: str | None) -> tuple[Path, Path]:
    src = omnitron.project / "src"
    src.mkdir()
    script = src / "app.py"
    script.write_text(APP.format(version=1))
    # Outside the project: `up --watch` watches the whole project, and an app that
    # writes into a directory it is watched in reloads itself on every start.
    events = omnitron.project.parent / "events.txt"
    events.write_text("")
    fields = {
        "name": toml_string("web"),
        "command": f"[{toml_string(sys.executable)}, {toml_string(str(script))}]",
        "ready": '"notify"',
        "startup_timeout": '"10s"',
        "stop_timeout": '"5s"',
        "env": f"{{ EVENTS = {toml_string(str(events))} }}",
    }
    if watch is not None:
        fields["watch"] = watch
    omnitron.write_config(
        'project = "hot"\n\n[[apps]]\n' + "".join(f"{k} = {v}\n" for k, v in fields.items())
    )
    return script, events


def _pid(omnitron: Omnitron) -> int:
    [process] = omnitron.apps()["web"]["processes"]
    assert process["status"] == "online"
    return int(process["pid"])


def _status(omnitron: Omnitron) -> dict[str, object]:
    [record] = omnitron.json("watch", "status", "web")["apps"]
    return dict(record)


def test_an_edit_reloads_without_downtime_and_a_broken_one_keeps_the_old_process(
    omnitron: Omnitron,
) -> None:
    script, events = _project(omnitron, watch='{ directory = "src", debounce = "100ms" }')
    omnitron.up()
    first = _pid(omnitron)
    wait_for(lambda: _status(omnitron)["watching"], "the watcher running")

    # An edit: a new process replaces the old one, and was ready before the old stopped.
    script.write_text(APP.format(version=2))
    second = wait_for(
        lambda: (pid := _pid(omnitron)) != first and pid, "the process replaced", timeout=40
    )
    wait_for(lambda: f"term {first}" in events.read_text(), "the old process stopped")
    lines = events.read_text().splitlines()
    assert lines.index(f"ready {second} 2") < lines.index(f"term {first}"), lines
    record = _status(omnitron)
    assert (record["reloads"], record["failures"], record["last_result"]) == (1, 0, "reloaded")
    assert record["last_paths"] == [str(script)]

    # A broken save: the new process fails to become ready; the old one keeps serving.
    script.write_text("this is not python\n")
    failed = wait_for(
        lambda: (r := _status(omnitron))["failures"] == 1 and r, "the reload failing", timeout=40
    )
    assert failed["last_result"] == "failed"
    assert "did not become ready" in str(failed["last_error"])
    assert "START_FAILED" not in str(failed["last_error"])
    assert _pid(omnitron) == second
    assert f"term {second}" not in events.read_text()
    logs = omnitron.ok("logs", "web", "--lines", "200").stdout
    assert "watch: app.py changed; reloading" in logs
    assert "watch: reload failed, the running processes were kept" in logs
    table = omnitron.ok("watch", "status").stdout
    assert "web: error: " in table

    # Fixed: the next save reloads again.
    script.write_text(APP.format(version=3))
    wait_for(lambda: _pid(omnitron) not in (first, second), "the fixed version", timeout=40)
    assert _status(omnitron)["last_result"] == "reloaded"


def test_up_watch_and_the_watch_commands(omnitron: Omnitron) -> None:
    script, _events = _project(omnitron, watch=None)  # no watch config
    omnitron.up("--watch")
    # --watch watches an app without settings in its cwd (the project).
    record = wait_for(lambda: (r := _status(omnitron))["watching"] and r, "watching")
    assert record["directory"] == str(omnitron.project)
    first = _pid(omnitron)

    off = omnitron.json("watch", "off")
    assert off["changed"] == ["web"]
    assert off["apps"][0]["watching"] is False
    assert omnitron.ok("watch", "off", "web").stdout.startswith("nothing changed: not watched")
    table = omnitron.ok("watch", "status").stdout.splitlines()
    assert table[0].split() == [
        "APP",
        "WATCHING",
        "DIRECTORY",
        "DEBOUNCE",
        "CHANGES",
        "RELOADS",
        "FAILED",
        "LAST",
    ]
    assert table[1].split()[:2] == ["web", "no"]

    on = omnitron.ok("watch", "on", "web")
    assert on.stdout.splitlines()[0] == "watching: web"
    script.write_text(APP.format(version=2))
    wait_for(lambda: _pid(omnitron) != first, "the reload after watch on", timeout=40)

    missing = omnitron.run("watch", "on", "nope")
    assert missing.returncode == 1
    assert "nope" in missing.stderr
    assert "Traceback" not in missing.stderr

    # A daemon started again watches what its config and flags say: not the switches.
    omnitron.ok("down")
    omnitron.up("--no-watch")
    assert _status(omnitron)["watching"] is False
    assert json.loads(omnitron.ok("--json", "watch", "status").stdout)["apps"][0]["app"] == "web"
