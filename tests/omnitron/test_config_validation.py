"""Validation: every problem at once, each with its field path and line.

Covers CF-02 (unknown keys and enum values with did-you-mean), CF-03 (wrong
types, negative and zero values), CF-04 (app names, realpath containment),
CF-05 (duplicates), CF-06 (missing command, bad strategy, cycles), CF-09
(``${VAR}``), CF-13 (hostile input is rejected quickly) and CF-14 (env values).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from omnitron.config import (
    DEFAULT_WATCH_IGNORE,
    ConfigError,
    Ecosystem,
    HealthConfig,
    ReadyConfig,
    Restart,
    Strategy,
    WatchConfig,
    define_ecosystem,
    load_config,
)


def load_toml(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Ecosystem:
    config = tmp_path / "omnitron.toml"
    config.write_text(textwrap.dedent(text))
    return load_config(config, environ=environ or {})


def toml_errors(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    """Every issue as ``line: path: message`` (the file name left out)."""
    with pytest.raises(ConfigError) as info:
        load_toml(tmp_path, text, environ)
    return [f"{issue.line}: {issue.path}: {issue.message}" for issue in info.value.issues]


def define(tmp_path: Path, **sections: Any) -> Ecosystem:
    return define_ecosystem(base_dir=tmp_path, environ={}, **sections)


def app_errors(tmp_path: Path, **app: Any) -> list[str]:
    """Issues (``path: message``) of one app ``{"name": "api", "command": ["x"], **app}``."""
    with pytest.raises(ConfigError) as info:
        define(tmp_path, apps=[{"name": "api", "command": ["x"], **app}])
    return [f"{issue.path}: {issue.message}" for issue in info.value.issues]


def one_app(tmp_path: Path, **app: Any) -> Any:
    return define(tmp_path, apps=[{"name": "api", "command": ["x"], **app}]).apps[0]


# --------------------------------------------------------------------------- all at once


def test_every_problem_is_reported_at_once_with_lines(tmp_path: Path) -> None:
    errors = toml_errors(
        tmp_path,
        """\
        project = "shop"
        [supervision]
        strategy = "one_for_al"
        max_restarts = -1
        window = 0
        [[apps]]
        name = "web"
        exec_mdoe = "fork"
        command = "python -m web"
        instances = "max"
        stop_timeout = "abc"
        depends_on = ["db"]
        [[apps]]
        name = "web"
        command = ["x"]
        """,
    )
    assert errors == [
        "3: supervision.strategy: unknown value 'one_for_al'; did you mean 'one_for_all'?",
        "4: supervision.max_restarts: must be >= 0, got -1",
        "5: supervision.window: must be > 0",
        "8: apps[0].exec_mdoe: unknown key (allowed: name, command, bootstrap, python, cwd, env, "
        "depends_on, instances, ready, startup_timeout, stop_timeout, stop_signal, critical, "
        "restart, restart_policy, health, watch, enabled, max_memory)",
        "10: apps[0].instances: expected an integer, got a string ('max')",
        "11: apps[0].stop_timeout: invalid duration 'abc': write numbers with units "
        "(ms, s, m, h, d), e.g. '30s', '1h30m'",
        "12: apps[0].depends_on: unknown app 'db'",
        "14: apps[1].name: duplicate app name 'web' (omnitron.toml:7, omnitron.toml:14)",
    ]


def test_config_error_renders_one_line_per_issue(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.toml"
    config.write_text('[[apps]]\nname = "a"\ncommand = "x"\ninstances = 0\nstop_timeout = -1\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value).splitlines() == [
        f"2 configuration problems in {config}:",
        f"  {config}:4: apps[0].instances: must be >= 1, got 0",
        f"  {config}:5: apps[0].stop_timeout: must not be negative, got -1",
    ]


def test_the_number_of_reported_issues_is_capped(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        define(tmp_path, apps=[{"name": "a", "command": "x", **{f"k{i}": 1 for i in range(300)}}])
    assert len(info.value.issues) == 201
    assert info.value.issues[-1].message == "... and 100 more problems"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert toml_errors(tmp_path, '[supervison]\nstrategy = "one_for_all"\n') == [
        "1: supervison: unknown key; did you mean 'supervision'?"
    ]


def test_inline_array_of_apps_falls_back_to_the_apps_line(tmp_path: Path) -> None:
    errors = toml_errors(tmp_path, 'project = "p"\napps = [{ name = "a", comand = "x" }]\n')
    assert errors == [
        "2: apps[0].comand: unknown key; did you mean 'command'?",
        "2: apps[0]: missing command (any program) or bootstrap (a module-worker file)",
    ]


def test_nested_table_lines(tmp_path: Path) -> None:
    errors = toml_errors(
        tmp_path,
        """\
        [[apps]]
        name = "a"
        command = "x"

        [apps.restart_policy]
        max_restarts = 3
        window = "forever"
        """,
    )
    assert errors == [
        "7: apps[0].restart_policy.window: invalid duration 'forever': "
        "write numbers with units (ms, s, m, h, d), e.g. '30s', '1h30m'"
    ]


# --------------------------------------------------------------------------- CF-02 / CF-03


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"supervision": {"strategy": "none_for_one"}},
            "supervision.strategy: unknown value 'none_for_one'; did you mean 'one_for_one'?",
        ),
        (
            {"supervision": {"strategy": 1}},
            "supervision.strategy: expected one of one_for_one, one_for_all, rest_for_one; "
            "got an integer (1)",
        ),
        (
            {"supervision": {"backoff": {"factor": 0.5}}},
            "supervision.backoff.factor: must be a number within 1..100, got 0.5",
        ),
        (
            {"supervision": {"backoff": {"initial": "10s", "max": "1s"}}},
            "supervision.backoff.max: max (1s) must be >= initial (10s)",
        ),
        (
            {"supervision": {"max_restarts": True}},
            "supervision.max_restarts: expected an integer, got a boolean (true)",
        ),
        (
            {"monitoring": {"health_check": {"interval": 0}}},
            "monitoring.health_check.interval: must be > 0",
        ),
        (
            {"monitoring": {"metrics": {"retention": "400d"}}},
            "monitoring.metrics.retention: must be at most 365d",
        ),
        ({"monitoring": {"metric": {}}}, "monitoring.metric: unknown key; did you mean 'metrics'?"),
        (
            {"logging": {"level": "warn"}},
            "logging.level: unknown value 'warn'; did you mean 'warning'?",
        ),
        (
            {"logging": {"max_size": "10"}},
            "logging.max_size: missing unit in '10'; write e.g. '10B' or use an integer",
        ),
        ({"logging": {"max_size": 100}}, "logging.max_size: must be at least 1KiB, got 100 bytes"),
        ({"logging": {"max_files": -1}}, "logging.max_files: must be >= 0, got -1"),
        (
            {"logging": {"compress": "yes"}},
            "logging.compress: expected true or false, got a string ('yes')",
        ),
        ({"logging": "info"}, "logging: expected a table, got a string ('info')"),
        (
            {"project": "my project"},
            "project: invalid project name 'my project': use 1-64 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit",
        ),
        ({"apps": {"name": "a"}}, "apps: expected an array of tables ([[apps]]), got a table"),
        ({"apps": ["a"]}, "apps[0]: expected a table, got a string ('a')"),
    ],
)
def test_section_problems(tmp_path: Path, section: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        define(tmp_path, **section)
    assert [f"{i.path}: {i.message}" for i in info.value.issues] == [expected]


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ({"instances": 0}, "apps[0].instances: must be >= 1, got 0"),
        ({"instances": 5000}, "apps[0].instances: must be <= 1024, got 5000"),
        ({"instances": 2.0}, "apps[0].instances: expected an integer, got a float (2.0)"),
        ({"startup_timeout": 0}, "apps[0].startup_timeout: must be > 0"),
        ({"stop_timeout": "-5s"}, "apps[0].stop_timeout: must not be negative, got '-5s'"),
        (
            {"stop_signal": "SIGTREM"},
            "apps[0].stop_signal: unknown signal 'SIGTREM'; did you mean 'SIGTERM'?",
        ),
        ({"stop_signal": 99}, "apps[0].stop_signal: unknown signal number 99"),
        (
            {"restart": "always"},
            "apps[0].restart: unknown value 'always' "
            "(expected one of permanent, transient, temporary)",
        ),
        ({"critical": 1}, "apps[0].critical: expected true or false, got an integer (1)"),
        ({"enabled": "false"}, "apps[0].enabled: expected true or false, got a string ('false')"),
        (
            {"depends_on": "cache"},
            "apps[0].depends_on: expected an array of strings, got a string ('cache')",
        ),
        ({"depends_on": [1]}, "apps[0].depends_on: item 0: expected a string, got an integer (1)"),
        (
            {"restart_policy": {"max_restarts": -1}},
            "apps[0].restart_policy.max_restarts: must be >= 0, got -1",
        ),
        (
            {"restart_policy": {"windw": "1m"}},
            "apps[0].restart_policy.windw: unknown key; did you mean 'window'?",
        ),
        ({"cwd": "missing"}, "apps[0].cwd: not an existing directory: {tmp}/missing"),
        ({"env": "A=1"}, "apps[0].env: expected a table of NAME = value, got a string ('A=1')"),
    ],
)
def test_app_problems(tmp_path: Path, app: dict[str, Any], expected: str) -> None:
    assert app_errors(tmp_path, **app) == [expected.replace("{tmp}", str(tmp_path))]


def test_signals(tmp_path: Path) -> None:
    import signal

    assert one_app(tmp_path, stop_signal="INT").stop_signal is signal.SIGINT
    assert one_app(tmp_path, stop_signal="sigquit").stop_signal is signal.SIGQUIT
    assert one_app(tmp_path, stop_signal=9).stop_signal is signal.SIGKILL
    assert one_app(tmp_path).stop_signal is signal.SIGTERM


def test_defaults(tmp_path: Path) -> None:
    app = one_app(tmp_path)
    assert app.instances == 1
    assert app.ready == ReadyConfig.on_spawn()
    assert (app.startup_timeout, app.stop_timeout) == (30.0, 10.0)
    assert app.restart is Restart.PERMANENT
    assert (app.critical, app.enabled, app.health, app.watch) == (False, True, None, None)
    assert app.cwd == tmp_path


def test_restart_policy_defaults_come_from_supervision(tmp_path: Path) -> None:
    ecosystem = define(
        tmp_path,
        supervision={
            "strategy": "rest_for_one",
            "max_restarts": 7,
            "window": "2m",
            "backoff": {"initial": "500ms"},
        },
        apps=[
            {"name": "a", "command": "x"},
            {
                "name": "b",
                "command": "x",
                "restart_policy": {"max_restarts": 1, "backoff": {"factor": 3}},
            },
        ],
    )
    assert ecosystem.supervision.strategy is Strategy.REST_FOR_ONE
    a, b = ecosystem.apps
    assert (a.restart_policy.max_restarts, a.restart_policy.window) == (7, 120.0)
    assert a.restart_policy.backoff.initial == 0.5
    assert (b.restart_policy.max_restarts, b.restart_policy.window) == (1, 120.0)
    assert (b.restart_policy.backoff.initial, b.restart_policy.backoff.factor) == (0.5, 3.0)


# ------------------------------------------------------------------ command / bootstrap (CF-06)


def test_command_forms(tmp_path: Path) -> None:
    assert one_app(tmp_path, command="python -m 'my app' --x=\"a b\"").command == (
        "python",
        "-m",
        "my app",
        "--x=a b",
    )
    assert one_app(tmp_path, command=["a", ""]).command == ("a", "")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("", "apps[0].command: must not be empty"),
        ([], "apps[0].command: must not be empty"),
        ("python 'unclosed", "apps[0].command: cannot split into arguments: no closing quotation"),
        ("a\0b", "apps[0].command: must not contain a NUL byte"),
        (["a", 1], "apps[0].command[1]: expected a string, got an integer (1)"),
        (["", "x"], "apps[0].command[0]: must not be empty"),
        (["a", "b\0"], "apps[0].command[1]: must not contain a NUL byte"),
        ({"run": "x"}, "apps[0].command: expected an array of arguments or a string, got a table"),
    ],
)
def test_bad_commands(tmp_path: Path, command: object, expected: str) -> None:
    assert app_errors(tmp_path, command=command) == [expected]


def test_exactly_one_of_command_and_bootstrap(tmp_path: Path) -> None:
    (tmp_path / "boot.py").write_text("")
    with pytest.raises(ConfigError) as info:
        define(
            tmp_path,
            apps=[
                {"name": "both", "command": "x", "bootstrap": "boot.py"},
                {"name": "neither"},
                {"command": "x"},
            ],
        )
    assert [f"{i.path}: {i.message}" for i in info.value.issues] == [
        "apps[0]: set either command (any program) or bootstrap (a module-worker file), not both",
        "apps[1]: missing command (any program) or bootstrap (a module-worker file)",
        "apps[2]: missing required key 'name'",
    ]


def test_bootstrap_checks(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "outside.py").write_text("")
    (project / "link.py").symlink_to(tmp_path / "outside.py")
    (project / "notes.txt").write_text("")
    with pytest.raises(ConfigError) as info:
        define_ecosystem(
            base_dir=project,
            apps=[
                {"name": "a", "bootstrap": "../outside.py"},
                {"name": "b", "bootstrap": "link.py"},
                {"name": "c", "bootstrap": "notes.txt"},
                {"name": "d", "bootstrap": "missing.py"},
            ],
        )
    outside = f"must be inside the project directory {project} (after resolving symlinks)"
    assert [f"{i.path}: {i.message}" for i in info.value.issues] == [
        f"apps[0].bootstrap: {outside}",
        f"apps[1].bootstrap: {outside}",
        "apps[2].bootstrap: must be a Python file (.py), got 'notes.txt'",
        f"apps[3].bootstrap: file not found: {project}/missing.py",
    ]


# --------------------------------------------------------------------------- names (CF-04, CF-05)


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "x\0", "-rf", "a:b", "a" * 65, ".", "..", "a..b", "", " a", "é", "a\n"]
)
def test_bad_app_names(tmp_path: Path, name: str) -> None:
    [error] = app_errors(tmp_path, name=name)
    assert error.startswith("apps[0].name: invalid app name ")
    assert error.endswith(
        "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
    )


@pytest.mark.parametrize("name", ["a", "web-1", "a.b_c", "9lives", "a" * 64, "API"])
def test_good_app_names(tmp_path: Path, name: str) -> None:
    assert one_app(tmp_path, name=name).name == name


def test_all_is_reserved(tmp_path: Path) -> None:
    assert app_errors(tmp_path, name="all") == [
        "apps[0].name: 'all' is reserved (the CLI uses it for every app)"
    ]


def test_duplicate_names_in_python_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        define(tmp_path, apps=[{"name": "web", "command": "x"}] * 3)
    assert [f"{i.path}: {i.message}" for i in info.value.issues] == [
        "apps[1].name: duplicate app name 'web' (apps[0], apps[1])",
        "apps[2].name: duplicate app name 'web' (apps[0], apps[2])",
    ]


def test_log_directory_containment(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "escape").symlink_to(tmp_path)
    for directory in ("../logs", "escape/logs"):
        with pytest.raises(ConfigError) as info:
            define_ecosystem(base_dir=project, logging={"directory": directory})
        assert str(info.value.issues[0].message).startswith(
            f"a relative log directory must stay inside the project ({project})"
        )
    assert (
        define_ecosystem(base_dir=project, logging={"directory": "logs"}).logging.directory
        == project / "logs"
    )
    absolute = tmp_path / "var-log"
    assert (
        define_ecosystem(base_dir=project, logging={"directory": str(absolute)}).logging.directory
        == absolute
    )


# --------------------------------------------------------------------------- dependencies (CF-06)


def test_unknown_dependency_with_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        define(
            tmp_path,
            apps=[
                {"name": "cache", "command": "x"},
                {"name": "api", "command": "x", "depends_on": ["cahce"]},
            ],
        )
    assert str(info.value.issues[0]).endswith(
        "apps[1].depends_on: unknown app 'cahce'; did you mean 'cache'?"
    )


def test_cycle_message(tmp_path: Path) -> None:
    errors = toml_errors(
        tmp_path,
        """\
        [[apps]]
        name = "a"
        command = "x"
        depends_on = ["b"]
        [[apps]]
        name = "b"
        command = "x"
        depends_on = ["a"]
        """,
    )
    assert errors == ["4: apps[0].depends_on: dependency cycle: a -> b -> a"]


def test_every_cycle_is_reported_shortest_first_node_in_file_order(tmp_path: Path) -> None:
    apps = [
        {"name": "free", "command": "x"},
        {"name": "self", "command": "x", "depends_on": ["self"]},
        {"name": "c", "command": "x", "depends_on": ["e"]},
        {"name": "d", "command": "x", "depends_on": ["c"]},
        {"name": "e", "command": "x", "depends_on": ["d", "free"]},
        {"name": "x", "command": "x", "depends_on": ["y"]},
        {"name": "y", "command": "x", "depends_on": ["x", "c"]},
    ]
    with pytest.raises(ConfigError) as info:
        define(tmp_path, apps=apps)
    assert [f"{i.path}: {i.message}" for i in info.value.issues] == [
        "apps[1].depends_on: dependency cycle: self -> self",
        "apps[2].depends_on: dependency cycle: c -> e -> d -> c",
        "apps[5].depends_on: dependency cycle: x -> y -> x",
    ]


def test_a_long_chain_does_not_exhaust_the_stack(tmp_path: Path) -> None:
    apps = [{"name": f"a{i}", "command": "x", "depends_on": [f"a{i + 1}"]} for i in range(1000)]
    apps.append({"name": "a1000", "command": "x", "depends_on": ["a0"]})
    with pytest.raises(ConfigError) as info:
        define(tmp_path, apps=apps)
    [issue] = info.value.issues
    assert issue.message.startswith("dependency cycle: a0 -> a1 -> a2")
    assert issue.message.endswith("a999 -> a1000 -> a0")


def test_disabled_dependency_and_repeated_dependency_warn(tmp_path: Path) -> None:
    ecosystem = define(
        tmp_path,
        apps=[
            {"name": "db", "command": "x", "enabled": False},
            {"name": "api", "command": "x", "depends_on": ["db", "db"]},
        ],
    )
    assert [f"{w.path}: {w.message}" for w in ecosystem.warnings] == [
        "apps[1].depends_on: 'db' is listed twice",
        "apps[1].depends_on: 'db' is disabled (enabled = false)",
    ]


# ------------------------------------------------------------------ readiness, health, watch


@pytest.mark.parametrize(
    ("ready", "expected"),
    [
        ("notify", ReadyConfig.notify()),
        ("on_spawn", ReadyConfig.on_spawn()),
        ({"tcp": 6380}, ReadyConfig.tcp(6380)),
        ({"tcp": 6380, "host": "::1"}, ReadyConfig.tcp(6380, "::1")),
        (
            {"http": "http://127.0.0.1:8000/healthz"},
            ReadyConfig.http("http://127.0.0.1:8000/healthz"),
        ),
        ({"after": "2s"}, ReadyConfig.after(2.0)),
        ({"fd": 3}, ReadyConfig.on_fd(3)),
        ({"notify": True}, ReadyConfig.notify()),
        ({"notify": {"watchdog": "10s"}}, ReadyConfig.notify(10.0)),
    ],
)
def test_ready_forms(tmp_path: Path, ready: object, expected: ReadyConfig) -> None:
    assert one_app(tmp_path, ready=ready).ready == expected


@pytest.mark.parametrize(
    ("ready", "expected"),
    [
        (
            "notfy",
            "apps[0].ready: unknown readiness 'notfy'; did you mean 'notify'?; "
            "use 'notify', 'on_spawn' or one of",
        ),
        ({"tcp": 70000}, "apps[0].ready.tcp: must be <= 65535, got 70000"),
        ({"tcp": 0}, "apps[0].ready.tcp: must be >= 1, got 0"),
        (
            {"tcp": 1, "http": "http://x"},
            "apps[0].ready: set exactly one of tcp, http, after, fd, notify",
        ),
        ({}, "apps[0].ready: set exactly one of tcp, http, after, fd, notify"),
        ({"http": "http://x", "host": "y"}, "apps[0].ready.host: only allowed with tcp"),
        (
            {"http": "ftp://x/"},
            "apps[0].ready.http: must be an http:// or https:// URL with a host, got 'ftp://x/'",
        ),
        ({"http": "http://x:99999/"}, "apps[0].ready.http: invalid URL: Port out of range 0-65535"),
        (
            {"http": "http://x y/"},
            "apps[0].ready.http: must not contain spaces or control characters",
        ),
        ({"fd": 2}, "apps[0].ready.fd: must be >= 3, got 2"),
        ({"notify": {"watchdog": 0}}, "apps[0].ready.notify.watchdog: must be > 0"),
        (
            {"notify": "yes"},
            "apps[0].ready.notify: expected true or a table { watchdog = DURATION }, "
            "got a string ('yes')",
        ),
        ({"tpc": 1}, "apps[0].ready.tpc: unknown key; did you mean 'tcp'?"),
        (5, "apps[0].ready: expected 'notify', 'on_spawn' or a table, got an integer (5)"),
    ],
)
def test_bad_ready(tmp_path: Path, ready: object, expected: str) -> None:
    errors = app_errors(tmp_path, ready=ready)
    assert any(error.startswith(expected) for error in errors), errors


def test_health_defaults_come_from_monitoring(tmp_path: Path) -> None:
    ecosystem = define(
        tmp_path,
        monitoring={"health_check": {"interval": "20s", "timeout": "2s"}},
        apps=[{"name": "a", "command": "x", "health": {"tcp": 8000, "retries": 5}}],
    )
    assert ecosystem.apps[0].health == HealthConfig(
        tcp=8000, host="127.0.0.1", interval=20.0, timeout=2.0, retries=5
    )


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        (
            {"http": "http://x/", "tcp": 1},
            "apps[0].health: set exactly one of http (a URL) or tcp (a port)",
        ),
        ({"interval": "1s"}, "apps[0].health: set exactly one of http (a URL) or tcp (a port)"),
        ({"tcp": 1, "retries": 0}, "apps[0].health.retries: must be >= 1, got 0"),
        ({"http": "http://x/", "host": "y"}, "apps[0].health.host: only allowed with tcp"),
    ],
)
def test_bad_health(tmp_path: Path, health: object, expected: str) -> None:
    assert app_errors(tmp_path, health=health) == [expected]


def test_watch_forms(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    assert one_app(tmp_path, watch=True).watch == WatchConfig(directory=tmp_path)
    assert one_app(tmp_path, watch=False).watch is None
    assert one_app(tmp_path, watch="src").watch == WatchConfig(directory=tmp_path / "src")
    watch = one_app(
        tmp_path, watch={"directory": "src", "ignore": ["*.tmp", "*.log"], "debounce": "1s"}
    ).watch
    assert watch == WatchConfig(
        directory=tmp_path / "src", ignore=(*DEFAULT_WATCH_IGNORE, "*.tmp"), debounce=1.0
    )
    assert app_errors(tmp_path, watch="nope") == [
        f"apps[0].watch: not an existing directory: {tmp_path}/nope"
    ]
    assert app_errors(tmp_path, watch=1) == [
        "apps[0].watch: expected true, false, a directory or a table, got an integer (1)"
    ]


# --------------------------------------------------------------------------- env (CF-09, CF-14)


def test_env_values_follow_an_explicit_rule(tmp_path: Path) -> None:
    env = one_app(
        tmp_path,
        env={"PORT": 8080, "RATIO": 0.5, "BIG": 1e20, "DEBUG": True, "OFF": False, "S": "x"},
    ).env
    assert env == {
        "PORT": "8080",
        "RATIO": "0.5",
        "BIG": "1e+20",
        "DEBUG": "true",
        "OFF": "false",
        "S": "x",
    }


def test_env_rejects_tables_arrays_and_nul_with_a_path(tmp_path: Path) -> None:
    errors = toml_errors(
        tmp_path,
        """\
        [[apps]]
        name = "web"
        command = "x"
        [apps.env]
        PORT = 8080
        OBJ = { a = 1 }
        LIST = [1]
        NUL = "s3cr3t\\u0000tail"
        WHEN = 1979-05-27
        NAN = nan
        """,
    )
    allowed = "values must be strings, numbers or booleans"
    assert errors == [
        f"6: apps[0].env.OBJ: nested tables are not allowed; {allowed}",
        f"7: apps[0].env.LIST: arrays are not allowed; {allowed}",
        "8: apps[0].env.NUL: contains a NUL byte (at offset 6)",
        "9: apps[0].env.WHEN: expected a string, number or boolean, got a date/time",
        "10: apps[0].env.NAN: must be a finite number",
    ]
    assert not any("s3cr3t" in error for error in errors)


def test_env_names(tmp_path: Path) -> None:
    assert app_errors(tmp_path, env={"A=B": "x"}) == [
        "apps[0].env: invalid variable name 'A=B': must be a non-empty string without '=' or NUL"
    ]


def test_env_expansion(tmp_path: Path) -> None:
    ecosystem = load_toml(
        tmp_path,
        """\
        [[apps]]
        name = "web"
        command = "x"
        [apps.env]
        DB = "postgres://${DB_HOST}/x"
        LIT = "100% $$HOME $$$$"
        BARE = "$HOME a$b $"
        DEF = "${NOPE:-fallback}"
        EMPTY = "${EMPTY:-d}"
        """,
        environ={"DB_HOST": "db.internal", "HOME": "/root", "EMPTY": ""},
    )
    assert ecosystem.apps[0].env == {
        "DB": "postgres://db.internal/x",
        "LIT": "100% $HOME $$",
        "BARE": "$HOME a$b $",
        "DEF": "fallback",
        "EMPTY": "d",
    }


def test_undefined_variable_is_an_error_with_its_path(tmp_path: Path) -> None:
    errors = toml_errors(
        tmp_path,
        """\
        [[apps]]
        name = "web"
        command = "x"
        [apps.env]
        DB_URL = "${UNDEFINED}"
        A = "${unterminated"
        B = "${1BAD}"
        """,
    )
    assert errors == [
        "5: apps[0].env.DB_URL: undefined variable UNDEFINED",
        "6: apps[0].env.A: unterminated '${' (write '$$' for a literal '$')",
        "7: apps[0].env.B: invalid variable name '1BAD' in '${...}'",
    ]


def test_expansion_uses_the_daemon_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNITRON_TEST_VALUE", "from-daemon")
    config = tmp_path / "omnitron.toml"
    config.write_text(
        '[[apps]]\nname = "a"\ncommand = "x"\nenv = { V = "${OMNITRON_TEST_VALUE}" }\n'
    )
    assert load_config(config).apps[0].env == {"V": "from-daemon"}


def test_env_values_are_not_in_repr(tmp_path: Path) -> None:
    app = one_app(tmp_path, env={"TOKEN": "s3cr3t"})
    assert "s3cr3t" not in repr(app)
    assert "'TOKEN'" in repr(app)


# --------------------------------------------------------------------------- hostile input (CF-13)


@pytest.mark.parametrize(
    "app",
    [
        {"command": "'" * 100_000},
        {"command": "a " * 50_000},
        {"name": "a" * 100_000},
        {"x" * 100_000: 1},
        {"env": {"V": "${" * 50_000}},
        {"env": {"V": "$$" * 50_000 + "${" + "A" * 100_000 + "}"}},
        {"ready": "n" * 100_000},
        {"stop_signal": "S" * 100_000},
        {"startup_timeout": "1" * 100_000},
        {"depends_on": ["x" * 100_000]},
    ],
)
def test_hostile_values_are_rejected_with_short_messages(
    tmp_path: Path, app: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError) as info:
        define(tmp_path, apps=[{"name": "a", "command": "x", **app}])
    assert all(len(str(issue)) < 1000 for issue in info.value.issues)


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ({"instances": 10**5000}, "apps[0].instances: must be <= 1024, got a very large number"),
        ({"instances": -(10**5000)}, "apps[0].instances: must be >= 1, got a very large number"),
        ({"startup_timeout": 10**400}, "apps[0].startup_timeout: too large"),
        (
            {"stop_signal": 10**5000},
            "apps[0].stop_signal: unknown signal number a very large number",
        ),
        ({"env": {"N": 10**5000}}, "apps[0].env.N: integer too large; write it as a string"),
        (
            {"restart_policy": {"backoff": {"factor": 10**400}}},
            "apps[0].restart_policy.backoff.factor: must be a number within 1..100, "
            "got a very large number",
        ),
        (
            {"restart_policy": {"backoff": {"factor": float("nan")}}},
            "apps[0].restart_policy.backoff.factor: must be a number within 1..100, got nan",
        ),
    ],
)
def test_python_values_toml_cannot_express(
    tmp_path: Path, app: dict[str, Any], expected: str
) -> None:
    assert app_errors(tmp_path, **app) == [expected]


def test_largest_accepted_command_string_splits(tmp_path: Path) -> None:
    app = one_app(tmp_path, command='"a b" ' * (64 * 1024 // 6))
    assert app.command is not None
    assert len(app.command) == 64 * 1024 // 6


# --------------------------------------------------------------------------- stacks


def test_stack_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        define(
            tmp_path,
            apps=[
                {"name": "cache", "command": "x"},
                {"name": "api", "command": "x", "depends_on": ["cache"]},
            ],
            stacks={
                "dev": {
                    "apps": ["api", "workers"],
                    "watch": "yes",
                    "overrides": {"apii": {"instances": 2}},
                },
                "prod": {"log_level": "loud", "overrides": {"api": {"instances": 0, "ports": 1}}},
                "bad name": {},
            },
        )
    assert [f"{i.path}: {i.message}" for i in info.value.issues] == [
        "stacks.dev.apps: 'api' depends on 'cache', which is not in this stack",
        "stacks.dev.apps: unknown app 'workers'",
        "stacks.dev.overrides.apii: unknown app; did you mean 'api'?",
        "stacks.dev.watch: expected true or false, got a string ('yes')",
        "stacks.prod.overrides.api.ports: unknown key (allowed: instances, enabled, watch, env)",
        "stacks.prod.overrides.api.instances: must be >= 1, got 0",
        "stacks.prod.log_level: unknown value 'loud' "
        "(expected one of debug, info, warning, error, critical)",
        "stacks['bad name']: invalid stack name 'bad name': use 1-64 letters, digits, '_', '.' "
        "or '-', starting with a letter or digit",
    ]
