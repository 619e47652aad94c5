"""The CLI an operator reaches for, end to end: the real CLI against a real daemon.

Global options after the command, relative ``scale``, several app names,
``status`` as a filter and its exit code, and the warnings for config keys that
have no effect yet (``check``, ``up``, ``reload-config``). The harness (homes,
cleanup, polling) is the one of ``test_cli_e2e.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_cli_e2e import (
    BASIC,
    BASIC_APPS,
    CLI_TIMEOUT,
    CRASH_SOON,
    Omnitron,
    app_pids,
    app_toml,
    home,
    omnitron,
    pids_of,
    running,
    wait_for,
)

__all__ = ["home", "omnitron", "running"]  # fixtures used here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


# --------------------------------------------------------------------------- global options


def test_global_options_are_accepted_after_the_command(running: Omnitron) -> None:
    after = json.loads(running.ok("status", "--json").stdout)
    assert [app["name"] for app in after["apps"]] == list(BASIC_APPS)
    assert json.loads(running.ok("ping", "--json").stdout) == {"pong": True}
    assert json.loads(running.ok("list", "--json").stdout)[0]["name"] == "sleeper"
    # --home after the command wins over $OMNITRON_HOME, as it does before it
    elsewhere = running.env() | {"OMNITRON_HOME": "/nonexistent"}
    import subprocess

    result = subprocess.run(
        running.argv("ping", "--json", "--home", running.home),
        env=elsewhere,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"pong": True}
    # --timeout after the command is used
    slow = running.run("status", "--timeout", "0.000001")
    assert slow.returncode == 1
    assert "no reply from the daemon within 1e-06s" in slow.stderr
    # and a bad value is the same usage error as before the command
    assert running.run("status", "--timeout", "0").returncode == 2


# --------------------------------------------------------------------------- scale


def test_scale_plus_and_minus_are_relative(running: Omnitron) -> None:
    up = json.loads(running.ok("scale", "sleeper", "+2", "--json").stdout)
    assert up == {"name": "sleeper", "previous": 1, "instances": 3}
    wait_for(lambda: len(app_pids(running.home).get("sleeper", ())) == 3, "3 sleepers")
    down = running.ok("scale", "sleeper", "-1")
    assert down.stdout.strip() == "sleeper: 3 -> 2 instances"
    wait_for(lambda: len(app_pids(running.home).get("sleeper", ())) == 2, "2 sleepers")
    assert running.apps()["sleeper"]["instances"] == 2
    # An absolute count is still absolute.
    assert running.ok("scale", "sleeper", "1").stdout.strip() == "sleeper: 2 -> 1 instance"

    below = running.run("scale", "sleeper", "-1")
    assert below.returncode == 2, below
    assert below.stderr.strip() == (
        "omnitron: sleeper runs 1 instance; -1 would make 0, outside 1..1024"
    )
    assert running.apps()["sleeper"]["instances"] == 1
    assert running.run("scale", "sleeper", "+0").returncode == 2
    unknown = running.run("scale", "nosuch", "+1")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("omnitron: no app named 'nosuch'")


# --------------------------------------------------------------------------- several names


def test_start_stop_restart_take_several_names(running: Omnitron) -> None:
    before = running.apps()
    stopped = running.ok("stop", "sleeper", "notifier")
    assert stopped.stdout.splitlines() == ["stopped: sleeper", "stopped: notifier"]
    apps = running.apps()
    assert apps["sleeper"]["status"] == apps["notifier"]["status"] == "stopped"
    assert apps["dependent"]["status"] == "online"

    again = running.ok("stop", "sleeper", "notifier", "sleeper")  # each name once
    assert again.stdout.splitlines() == ["sleeper: already stopped", "notifier: already stopped"]

    started = json.loads(running.ok("--json", "start", "notifier", "sleeper").stdout)
    assert started == {"started": ["notifier", "sleeper"]}
    running.wait_online("sleeper", "notifier")

    old = {name: pids_of(running.apps()[name]) for name in ("dependent", "notifier")}
    restarted = running.ok("restart", "dependent", "notifier")
    assert restarted.stdout.splitlines() == ["restarted: dependent", "restarted: notifier"]
    after = running.wait_online("dependent", "notifier")
    for name, pids in old.items():
        assert not pids & pids_of(after[name]), name
    assert pids_of(after["sleeper"]) != pids_of(before["sleeper"])  # it was stopped and started


def test_an_unknown_name_among_several_changes_nothing(running: Omnitron) -> None:
    result = running.run("stop", "sleeper", "sleepr")
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.strip() == "omnitron: no app named 'sleepr'; did you mean 'sleeper'?"
    assert running.apps()["sleeper"]["status"] == "online"
    mixed = running.run("stop", "all", "sleeper")
    assert mixed.returncode == 2
    assert "'all' cannot be combined with app names" in mixed.stderr
    assert running.apps()["sleeper"]["status"] == "online"


def test_status_filters_by_name(running: Omnitron) -> None:
    report = json.loads(running.ok("status", "notifier", "sleeper", "--json").stdout)
    assert [app["name"] for app in report["apps"]] == ["sleeper", "notifier"]  # start order
    table = running.ok("status", "dependent").stdout
    header = next(i for i, line in enumerate(table.splitlines()) if line.startswith("NAME "))
    rows = [line.split()[0] for line in table.splitlines()[header + 1 :] if line.strip()]
    assert rows == ["dependent"]
    unknown = running.run("status", "nosuch")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("omnitron: no app named 'nosuch'")


# --------------------------------------------------------------------------- status exit code


def test_status_exits_1_when_an_app_is_crashed(running: Omnitron) -> None:
    running.write_config(
        BASIC
        + app_toml("broken", CRASH_SOON, restart_policy='{ max_restarts = 0, window = "60s" }')
    )
    running.ok("reload-config")

    def crashed() -> bool:
        result = running.run("--json", "status")
        apps = {app["name"]: app for app in json.loads(result.stdout)["apps"]}
        return apps["broken"]["status"] == "crashed"

    wait_for(crashed, "broken crashed")
    result = running.run("status")
    assert result.returncode == 1, result
    assert "broken" in result.stdout  # the table is still printed, on stdout
    assert result.stderr.strip() == "omnitron: not healthy: broken (crashed)"
    as_json = running.run("status", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["apps"][-1]["status"] == "crashed"
    # Only the apps shown count: a filter without the crashed app exits 0.
    assert running.run("status", "sleeper", "notifier").returncode == 0
    running.ok("stop", "broken")
    assert running.run("status").returncode == 0


# --------------------------------------------------------------------------- no effect yet


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_check_up_and_reload_warn_about_keys_without_effect(omnitron: Omnitron) -> None:
    # Under one_for_all the root's limits apply to every app: an app's own
    # restart_policy is accepted but has no effect.
    config = omnitron.write_config(
        BASIC.replace(
            'project = "e2e"\n',
            'project = "e2e"\n[supervision]\nstrategy = "one_for_all"\n[logging]\nmax_files = 3\n',
        )
    )
    policy = (
        f"warning: {config}:{_line_of(config, 'restart_policy =')}: apps[0].restart_policy: "
        "has no effect with strategy 'one_for_all': the root's [supervision] limits and "
        "backoff apply to every app"
    )

    check = omnitron.ok("check")
    assert check.stderr.splitlines() == [policy]  # max_files is acted on: no warning
    assert "has no effect" not in check.stdout
    report = json.loads(omnitron.ok("check", "--json").stdout)
    assert report["warnings"] == []
    assert [(issue["path"], issue["line"]) for issue in report["inert"]] == [
        ("apps[0].restart_policy", _line_of(config, "restart_policy =")),
    ]
    assert report["inert"][0]["text"] == policy.removeprefix("warning: ")

    up = omnitron.up()
    assert policy in up.stderr.splitlines()
    omnitron.wait_online("sleeper")

    # health and watch are acted on: no warning of their own.
    omnitron.write_config(
        config.read_text()
        + app_toml("probed", health='{ command = ["true"] }')
        + app_toml("watched", watch="true")
    )
    dry = omnitron.run("reload-config", "--dry-run", "--json")
    assert dry.returncode == 0, dry
    assert dry.stderr.splitlines() == [policy]
    assert json.loads(dry.stdout)["warnings"] == [policy.removeprefix("warning: ")]
    applied = omnitron.run("reload-config")
    assert applied.returncode == 0, applied
    assert applied.stderr.splitlines() == [policy]
    omnitron.wait_online("watched")


def test_a_config_without_such_keys_warns_about_nothing(omnitron: Omnitron) -> None:
    omnitron.write_config(BASIC)
    assert omnitron.ok("check").stderr == ""
    assert json.loads(omnitron.ok("check", "--json").stdout)["inert"] == []


# --------------------------------------------------------------------------- the status schema

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
}


def documented_status_schema() -> dict[str, str]:
    """``field -> type`` from the schema table of docs/cli.md's ``status`` section."""
    text = DOCS.read_text()
    section = text[text.index("## `status`") : text.index("## `list`")]
    schema = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[1] not in ("type", "---"):
            for field in cells[0].split(", "):
                schema[field.strip("`")] = cells[1]
    return schema


def check_value(field: str, value: object, kind: str) -> None:
    allowed = TYPES[kind.removesuffix(" or null")]
    if kind.endswith(" or null") and value is None:
        return
    assert isinstance(value, allowed), (field, value, kind)
    if bool not in allowed:
        assert not isinstance(value, bool), (field, value, kind)


def test_status_json_matches_its_documented_schema(running: Omnitron) -> None:
    schema = documented_status_schema()
    assert "processes[].memory" in schema
    running.ok("stop", "notifier")  # a process that is not running, too
    report = json.loads(running.run("--json", "status").stdout)
    seen = set()

    def walk(record: dict[str, object], prefix: str) -> None:
        for name, value in record.items():
            field = f"{prefix}{name}"
            assert field in schema, f"{field} is not documented in docs/cli.md"
            check_value(field, value, schema[field])
            seen.add(field)

    walk(report["daemon"], "daemon.")
    assert isinstance(report["apps"], list)
    seen.add("apps")
    for app in report["apps"]:
        walk({k: v for k, v in app.items()}, "apps[].")
        for process in app["processes"]:
            walk(process, "processes[].")
    assert set(schema) == seen | {"apps"}
    assert set(report) == {"daemon", "apps"}
    # Numbers are numbers, and a value does not repeat its key.
    assert report["daemon"]["log_write_errors"] == 0
    assert report["daemon"]["persistence"] == "ok"
