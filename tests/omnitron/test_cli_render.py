"""The CLI's rendering: pure functions of the daemon's replies, tested on literal data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from omnitron.cli._render import (
    escape,
    format_cpu,
    format_duration,
    format_size,
    render_actions,
    render_apps,
    render_check,
    render_env,
    render_event,
    render_graph,
    render_inspect,
    render_json,
    render_kill,
    render_reload,
    render_scale,
    render_status,
    render_table,
    status_rows,
)


def process(
    pid: int | None = 101,
    *,
    instance: int = 0,
    status: str = "online",
    uptime: float = 12.5,
    cpu: float = 0.4,
    memory: int = 31_457_280,
    restarts: int = 0,
    name: str = "api",
) -> dict[str, Any]:
    return {
        "name": name,
        "instance": instance,
        "pid": pid,
        "status": status,
        "restarts": restarts,
        "uptime": uptime,
        "cpu": cpu,
        "memory": memory,
    }


def app(
    name: str = "api",
    status: str = "online",
    processes: list[dict[str, Any]] | None = None,
    *,
    restarts: int = 0,
    last_error: str | None = None,
) -> dict[str, Any]:
    processes = [process(name=name)] if processes is None else processes
    return {
        "name": name,
        "status": status,
        "mode": "classic",
        "instances": len(processes),
        "restarts": restarts,
        "critical": False,
        "enabled": True,
        "last_error": last_error,
        "processes": processes,
    }


STATUS = {
    "daemon": {
        "pid": 4242,
        "version": "0.1.0",
        "uptime": 190.0,
        "home": "/home/me/.omnitron",
        "config": "/srv/shop/omnitron.toml",
        "persistence": "ok",
    },
    "apps": [
        app("cache", processes=[process(4301, name="cache")]),
        app(
            "api",
            processes=[
                process(4302, uptime=7200.0, cpu=0.5, memory=1_000_000),
                process(4303, instance=1, uptime=65.0, cpu=0.25, memory=500_000),
            ],
            restarts=2,
        ),
        app("worker", "stopped", [process(None, status="stopped", cpu=0.0, memory=0)]),
    ],
}


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.9, "0s"),
        (12.5, "12s"),
        (59.99, "59s"),
        (60, "1m"),
        (199, "3m"),
        (3599, "59m"),
        (3600, "1h"),
        (7300, "2h"),
        (86399, "23h"),
        (86400, "1d"),
        (10 * 86400 + 5, "10d"),
        (None, "-"),
        (-1, "-"),
        (float("nan"), "-"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (999, "999B"),
        (1000, "1.0KB"),
        (1536, "1.5KB"),
        (31_457_280, "31.5MB"),
        (999_949, "999.9KB"),
        (999_999, "1.0MB"),  # rounds up into the next unit, never "1000.0KB"
        (1_200_000_000, "1.2GB"),
        (5 * 10**15, "5.0PB"),
        (None, "-"),
        (-5, "-"),
    ],
)
def test_format_size(size: int | None, text: str) -> None:
    assert format_size(size) == text


def test_format_cpu() -> None:
    assert format_cpu(0.4) == "0.4%"
    assert format_cpu(123.456) == "123.5%"
    assert format_cpu(None) == "-"


# --------------------------------------------------------------------------- escapes (RP-23)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("api", "api"),
        ("with space", "with space"),
        ("café ✓", "café ✓"),
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("bell\x07", "bell\\x07"),
        ("del\x7f", "del\\x7f"),
        ("csi\x9b31m", "csi\\x9b31m"),  # C1 control: a CSI on some terminals
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),  # bidi override
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("line\u2028sep", "line\\u2028sep"),
        ("\U000e0001tag", "\\U000e0001tag"),
    ],
)
def test_escape(raw: str, shown: str) -> None:
    assert escape(raw) == shown


def test_escape_accepts_any_value() -> None:
    assert escape(42) == "42"
    assert escape(None) == "None"


def test_status_table_escapes_names_and_errors() -> None:
    evil = "\x1b]0;pwned\x07api"
    data = [app(evil, "crashed", [], last_error="boom\x1b[2J\nnext line")]
    text = render_apps(data)
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\\x1b]0;pwned\\x07api" in text
    assert "boom\\x1b[2J\\nnext line" in text
    assert all(line.isprintable() for line in text.splitlines())


def test_every_renderer_escapes() -> None:
    bad = "x\x1by"
    outputs = [
        render_env({bad: bad}),
        render_graph({"strategy": bad, "order": [bad], "apps": {bad: []}}),
        render_actions("start", bad, [bad]),
        render_actions("stop", bad, []),
        render_scale({"name": bad, "previous": 1, "instances": 2}),
        render_reload({"applied": True, "added": [bad], "removed": [bad], "changed": {bad: [bad]}}),
        render_kill({"daemon": 1, "processes": [{"app": bad, "instance": 0, "pid": 2}]}),
        render_check({"config": bad, "strategy": bad, "apps": [{"name": bad}]}),
        render_inspect({**app(bad, last_error=bad), "recent_events": [bad]}),
        render_inspect(
            {**app("a"), "recent_events": [{"time": 0, "kind": "crashed", "reason": bad}]}
        ),
        render_status({"daemon": {"home": bad, "config": bad}, "apps": []}),
    ]
    for text in outputs:
        assert "\x1b" not in text, text
        assert "x\\x1by" in text, text


# --------------------------------------------------------------------------- tables


def test_render_table_aligns_and_has_no_trailing_spaces() -> None:
    text = render_table(("A", "LONGER", "C"), [("xx", "y", ""), ("x", "yyyyyyy", "z")])
    assert text.splitlines() == [
        "A   LONGER   C",
        "xx  y",
        "x   yyyyyyy  z",
    ]


def test_status_rows_sum_processes_and_show_youngest_uptime() -> None:
    rows = status_rows(STATUS["apps"])
    assert rows == [
        ("cache", "online", "4301", "12s", "0", "0.4%", "31.5MB"),
        ("api", "online", "4302,4303", "1m", "2", "0.8%", "1.5MB"),
        ("worker", "stopped", "-", "-", "0", "-", "-"),
    ]


def test_status_rows_partly_online_pool() -> None:
    pool = app(
        "api",
        processes=[process(1), process(None, instance=1, status="errored"), process(3)],
    )
    assert status_rows([pool])[0][:3] == ("api", "online 2/3", "1,3")


def test_status_rows_app_without_processes() -> None:
    assert status_rows([app("new", "starting", [])]) == [
        ("new", "starting", "-", "-", "0", "-", "-")
    ]


def test_render_status() -> None:
    assert render_status(STATUS) == "\n".join(
        [
            "daemon pid 4242 · v0.1.0 · up 3m · /home/me/.omnitron",
            "config /srv/shop/omnitron.toml",
            "",
            "NAME    STATUS   PID        UPTIME  RESTARTS  CPU   MEMORY",
            "cache   online   4301       12s     0         0.4%  31.5MB",
            "api     online   4302,4303  1m      2         0.8%  1.5MB",
            "worker  stopped  -          -       0         -     -",
        ]
    )


def test_render_status_shows_degraded_persistence() -> None:
    data = {"daemon": {**STATUS["daemon"], "persistence": "degraded (ENOSPC)"}}
    first = render_status({**data, "apps": []}).splitlines()[0]
    assert first.endswith(" · persistence: degraded (ENOSPC)")


def test_render_apps_lists_errors_of_failing_apps() -> None:
    data = [
        app("ok", last_error="an old error, now recovered"),
        app("bad", "crashed", [], last_error="restart limit exceeded"),
        app("flaky", "errored", [process(None, status="errored")], last_error="exit 1"),
    ]
    lines = render_apps(data).splitlines()
    assert lines[-3:] == [
        "",
        "bad (crashed): restart limit exceeded",
        "flaky (errored): exit 1",
    ]


def test_render_apps_empty() -> None:
    assert render_apps([]) == "no apps"


# --------------------------------------------------------------------------- JSON


def test_render_json_is_the_data_unchanged() -> None:
    text = render_json(STATUS)
    assert "\n" not in text
    assert json.loads(text) == STATUS
    assert list(json.loads(text)) == ["daemon", "apps"]  # the daemon's key order is kept


def test_render_json_is_ascii_and_escapes_controls() -> None:
    data = {"name": "\x1b[2J\x9bé\u202e"}
    text = render_json(data)
    assert text.isascii()
    assert text.isprintable()
    assert json.loads(text) == data


def test_render_json_handles_non_json_types() -> None:
    assert json.loads(render_json({"b": b"\xffab", "t": (1, 2)})) == {"b": "\\xffab", "t": [1, 2]}


# --------------------------------------------------------------------------- actions


@pytest.mark.parametrize(
    ("verb", "target", "names", "text"),
    [
        ("start", "api", ["cache", "api"], "started: cache, api"),
        ("start", "api", [], "api: already running"),
        ("stop", "api", [], "api: already stopped"),
        ("restart", "all", ["a", "b"], "restarted: a, b"),
        ("restart", "all", [], "nothing to restart"),
    ],
)
def test_render_actions(verb: str, target: str, names: list[str], text: str) -> None:
    assert render_actions(verb, target, names) == text


def test_render_scale() -> None:
    assert render_scale({"name": "api", "previous": 1, "instances": 3}) == "api: 1 -> 3 instances"
    assert render_scale({"name": "api", "previous": 3, "instances": 1}) == "api: 3 -> 1 instance"
    assert render_scale({"name": "api", "previous": 2, "instances": 2}) == (
        "api: already 2 instances"
    )


# --------------------------------------------------------------------------- inspect, env


def test_render_inspect() -> None:
    data = {
        **app("api", processes=[process(4302, uptime=65.0)]),
        "log_file": "/home/me/.omnitron/logs/api.log",
        "spec": {
            "command": ["python", "-c", "print('hi there')"],
            "cwd": "/srv/shop",
            "depends_on": [],
            "restart_policy": {"max_restarts": 3, "window": 60.0},
        },
        "last_exits": {"0": "killed by SIGKILL"},
        "recent_events": [{"time": NOON, "kind": "online", "instance": 0, "pid": 4302}],
    }
    assert render_inspect(data) == "\n".join(
        [
            "api (online)",
            "  mode        classic",
            "  instances   1",
            "  restarts    0",
            "  critical    no",
            "  enabled     yes",
            "  last error  -",
            "  log file    /home/me/.omnitron/logs/api.log",
            "",
            "spec",
            "  command         python -c 'print('\\''hi there'\\'')'",
            "  cwd             /srv/shop",
            "  depends on      -",
            "  restart policy  max_restarts=3, window=60.0",
            "",
            "processes",
            "  INSTANCE  PID   STATUS  UPTIME  RESTARTS  CPU   MEMORY",
            "  0         4302  online  1m      0         0.4%  31.5MB",
            "",
            "last exits",
            "  instance 0  killed by SIGKILL",
            "",
            "recent events",
            f"  {clock(NOON)} instance 0 online (pid 4302)",
        ]
    )


NOON = 1_764_676_801.25


def clock(stamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp))


@pytest.mark.parametrize(
    ("event", "text"),
    [
        ({"kind": "online", "instance": 0, "pid": 4302}, "instance 0 online (pid 4302)"),
        (
            {"kind": "exited", "instance": 1, "pid": 9, "reason": "exited with code 3"},
            "instance 1 exited with code 3",
        ),
        ({"kind": "restarting", "instance": 0, "delay": 0.5}, "instance 0 restarting in 0.5s"),
        ({"kind": "stopped", "instance": 2}, "instance 2 stopped"),
        (
            {"kind": "stopped", "instance": 0, "killed": True, "escaped": [77]},
            "instance 0 stopped (killed after stop timeout); escaped: [77]",
        ),
        ({"kind": "stopped"}, "stopped"),
        ({"kind": "started"}, "started"),
        ({"kind": "restarted"}, "restarted"),
        (
            {"kind": "restart_failed", "instance": 1, "reason": "readiness timeout after 2s"},
            "restart failed: instance 1: readiness timeout after 2s",
        ),
        ({"kind": "scaled", "previous": 2, "instances": 3}, "scaled 2 -> 3"),
        ({"kind": "failed", "reason": "killed by SIGKILL"}, "app failed: killed by SIGKILL"),
        ({"kind": "crashed", "reason": "restart limit"}, "app crashed: restart limit"),
        ({"kind": "hatched", "instance": 4, "egg": "blue"}, "hatched instance=4 egg=blue"),
    ],
)
def test_render_event(event: dict[str, Any], text: str) -> None:
    """Each kind of typed event reads as one line, at its local time of day."""
    assert render_event({"time": NOON, **event}) == f"{clock(NOON)} {text}"


def test_render_event_without_a_time_or_as_text() -> None:
    assert render_event({"kind": "started"}) == "- started"
    assert render_event({"time": True, "kind": "started"}) == "- started"
    # An older daemon sent preformatted lines: shown as they are, escaped.
    assert render_event("12:00:01 boom\x1b") == "12:00:01 boom\\x1b"


def test_render_inspect_stopped_process_has_no_figures() -> None:
    data = app("api", "stopped", [process(None, status="stopped")])
    assert "  0         -    stopped  -       0         -    -" in render_inspect(data)


def test_render_env() -> None:
    assert render_env({"API_TOKEN": "<redacted>", "PORT": "8000"}) == (
        "API_TOKEN=<redacted>\nPORT=8000"
    )
    assert render_env({}) == "(no environment variables configured)"


# --------------------------------------------------------------------------- graph


def test_render_graph_tree_and_order() -> None:
    graph = {
        "strategy": "rest_for_one",
        "order": ["db", "cache", "api", "worker", "cron"],
        "apps": {
            "db": [],
            "cache": [],
            "api": ["db", "cache"],
            "worker": ["api"],
            "cron": [],
        },
    }
    assert render_graph(graph) == "\n".join(
        [
            "strategy: rest_for_one",
            "start order: db -> cache -> api -> worker -> cron",
            "",
            "db",
            "└── api",
            "    └── worker",
            "cache",
            "└── api ...",
            "cron",
        ]
    )


def test_render_graph_siblings() -> None:
    graph = {"strategy": "one_for_one", "order": ["a", "b", "c"], "apps": {"b": ["a"], "c": ["a"]}}
    assert render_graph(graph).splitlines()[3:] == ["a", "├── b", "└── c"]


def test_render_graph_empty() -> None:
    assert render_graph({"strategy": "one_for_one", "order": [], "apps": {}}) == (
        "strategy: one_for_one\nstart order: -"
    )


# --------------------------------------------------------------------------- config, reload, kill


def test_render_check() -> None:
    report = {
        "config": "/srv/shop/omnitron.toml",
        "strategy": "one_for_one",
        "stack": None,
        "apps": [
            {"name": "cache", "instances": 1, "depends_on": [], "critical": False},
            {"name": "api", "instances": 2, "depends_on": ["cache"], "critical": True},
            {"name": "off", "instances": 1, "depends_on": [], "enabled": False},
        ],
    }
    assert render_check(report) == "\n".join(
        [
            "/srv/shop/omnitron.toml: ok, 3 apps",
            "strategy: one_for_one",
            "",
            "start order",
            "  1. cache",
            "  2. api  (x2; after cache; critical)",
            "  3. off  (disabled)",
        ]
    )


def test_render_reload() -> None:
    diff = {
        "applied": False,
        "added": ["new"],
        "removed": ["old"],
        "changed": {"api": ["instances: 1 -> 2"]},
        "settings": ["logging.level: info -> debug"],
    }
    assert render_reload(diff) == "\n".join(
        [
            "would apply (dry run):",
            "  + new (added)",
            "  - old (removed)",
            "  ~ api (changed)",
            "      instances: 1 -> 2",
            "  settings:",
            "      logging.level: info -> debug",
        ]
    )
    assert render_reload({**diff, "applied": True}).startswith("applied:\n")
    empty = {"applied": True, "added": [], "removed": [], "changed": {}, "settings": []}
    assert render_reload(empty) == "no changes: the running config matches the file"


def test_render_kill() -> None:
    report = {
        "daemon": 4242,
        "processes": [
            {"app": "api", "instance": 0, "pid": 4302},
            {"app": "api", "instance": 1, "pid": 4303},
        ],
        "escaped": [],
        "removed": ["/h/daemon.sock"],
    }
    assert render_kill(report) == "\n".join(
        [
            "killed daemon (pid 4242)",
            "killed 2 app processes: api[0] pid 4302, api[1] pid 4303",
            "removed /h/daemon.sock",
        ]
    )
    nothing = {"daemon": None, "processes": [], "escaped": [], "removed": []}
    assert render_kill(nothing) == "nothing to kill: no daemon and no app process for this home"


# --------------------------------------------------------------------------- import cost


def test_the_status_path_imports_nothing_heavy() -> None:
    """`omnitron status` must stay within its start-up budget (NOTES.md: no trio, attrs...)."""
    code = (
        "import sys\n"
        "from omnitron.cli import _main\n"
        "from omnitron.rpc import sync_client\n"
        "heavy = {'trio', 'attrs', 'omnitron._log', 'psutil', 'cattrs', 'jwt', 'cryptography',\n"
        "         'omnitron.daemon', 'omnitron.state', 'omnitron.config', 'supervision', 'json'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"
