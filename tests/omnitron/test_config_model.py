"""The loaded records: TOML/Python equivalence, start order, stacks, diffs, plain data,
and the public surface of ``omnitron.config``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest

import omnitron.config
from omnitron.config import (
    AppConfig,
    ConfigError,
    Ecosystem,
    LogLevel,
    ReadyConfig,
    WatchConfig,
    define_ecosystem,
    diff_ecosystems,
    load_config,
)

SPEC_TOML = """\
project = "shop"

[supervision]                 # across apps: one_for_one | one_for_all | rest_for_one
strategy = "one_for_one"
max_restarts = 5
window = "60s"
backoff = { initial = "1s", max = "30s", factor = 2 }

[monitoring]
health_check = { interval = "15s", timeout = "5s" }
metrics = { interval = "5s", retention = "1h" }

[logging]
level = "info"
max_size = "50MB"
max_files = 10
compress = true

[[apps]]
name = "cache"
command = ["redis-server", "--port", "6380"]    # classic mode: any program
ready = { tcp = 6380 }

[[apps]]
name = "api"
command = "python -m shop.api"
depends_on = ["cache"]          # started after cache is ready; cycles are config errors
instances = 2                   # a pool of identical processes
env = { PORT = "8000", DB = "${DB_URL}" }
ready = "notify"
startup_timeout = "30s"
critical = true                 # past its restart limit the daemon shuts down
restart_policy = { max_restarts = 3, window = "60s" }
health = { http = "http://127.0.0.1:8000/healthz", interval = "10s", retries = 3 }
watch = { directory = "shop", ignore = ["*.log"], debounce = "300ms" }
enabled = true

[[apps]]
name = "workers"
bootstrap = "shop/bootstrap.py"   # module-worker mode (section 5)

[stacks.dev]                      # optional per-environment overrides
watch = true
env = { LOG_LEVEL = "debug" }
"""

SPEC_PY = """\
from omnitron.config import define_ecosystem

ecosystem = define_ecosystem(
    project="shop",
    supervision={
        "strategy": "one_for_one",
        "max_restarts": 5,
        "window": 60,
        "backoff": {"initial": 1, "max": "30s", "factor": 2.0},
    },
    monitoring={
        "health_check": {"interval": "15s", "timeout": 5},
        "metrics": {"interval": "5s", "retention": "60m"},
    },
    logging={"level": "info", "max_size": 50_000_000, "max_files": 10, "compress": True},
    apps=[
        {"name": "cache", "command": ["redis-server", "--port", "6380"], "ready": {"tcp": 6380}},
        {
            "name": "api",
            "command": ["python", "-m", "shop.api"],
            "depends_on": ["cache"],
            "instances": 2,
            "env": {"PORT": 8000, "DB": "${DB_URL}"},
            "ready": "notify",
            "startup_timeout": 30,
            "critical": True,
            "restart_policy": {"max_restarts": 3, "window": "1m"},
            "health": {"http": "http://127.0.0.1:8000/healthz", "interval": "10s", "retries": 3},
            "watch": {"directory": "shop", "ignore": ["*.log"], "debounce": 0.3},
        },
        {"name": "workers", "bootstrap": "shop/bootstrap.py"},
    ],
    stacks={"dev": {"watch": True, "env": {"LOG_LEVEL": "debug"}}},
)
"""

ENVIRON = {"DB_URL": "postgres://db/shop"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "bootstrap.py").write_text("")
    (tmp_path / "omnitron.toml").write_text(SPEC_TOML)
    (tmp_path / "omnitron.config.py").write_text(SPEC_PY)
    return tmp_path


@pytest.fixture
def spec_ecosystem(project: Path) -> Ecosystem:
    return load_config(project / "omnitron.toml", environ=ENVIRON)


def test_the_spec_example_loads(spec_ecosystem: Ecosystem, project: Path) -> None:
    eco = spec_ecosystem
    assert eco.project == "shop"
    assert eco.warnings == ()
    assert eco.monitoring.metrics.retention == 3600.0
    assert eco.logging.max_size == 50_000_000
    cache, api, workers = eco.apps
    assert cache.ready == ReadyConfig.tcp(6380)
    assert api.command == ("python", "-m", "shop.api")
    assert api.env == {"PORT": "8000", "DB": "postgres://db/shop"}
    assert api.ready == ReadyConfig.notify()
    assert api.restart_policy.max_restarts == 3
    assert api.restart_policy.backoff == eco.supervision.backoff
    assert api.health is not None
    assert (api.health.interval, api.health.timeout) == (10.0, 5.0)
    assert api.watch is not None
    assert (api.watch.directory, api.watch.debounce) == (project / "shop", 0.3)
    assert workers.bootstrap == project / "shop" / "bootstrap.py"


def test_python_and_toml_forms_give_the_same_ecosystem(
    project: Path, spec_ecosystem: Ecosystem
) -> None:
    from_python = load_config(project / "omnitron.config.py", environ=ENVIRON)
    assert from_python == spec_ecosystem
    assert from_python.source == project / "omnitron.config.py"


def test_records_are_frozen(spec_ecosystem: Ecosystem) -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec_ecosystem.apps[0].instances = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec_ecosystem.apps[1].env["X"] = "1"  # type: ignore[index]


def test_to_dict_round_trips(spec_ecosystem: Ecosystem, project: Path) -> None:
    data = spec_ecosystem.to_dict()
    json.dumps(data)  # plain data only
    assert data["apps"][1]["ready"] == "notify"
    assert data["apps"][1]["stop_signal"] == "SIGTERM"
    assert data["apps"][1]["watch"]["ignore"] == []  # "*.log" is one of the defaults
    assert "base_dir" not in data
    assert "bootstrap" not in data["apps"][0]
    rebuilt = define_ecosystem(**data, base_dir=project, environ={})
    assert rebuilt == spec_ecosystem


def test_define_ecosystem_accepts_records(spec_ecosystem: Ecosystem, project: Path) -> None:
    rebuilt = define_ecosystem(
        project="shop",
        supervision=spec_ecosystem.supervision,
        monitoring=spec_ecosystem.monitoring,
        logging=spec_ecosystem.logging,
        apps=list(spec_ecosystem.apps),
        stacks=dict(spec_ecosystem.stacks),
        base_dir=project,
        environ={},
    )
    assert rebuilt == spec_ecosystem


def test_define_ecosystem_defaults_to_the_callers_directory() -> None:
    ecosystem = define_ecosystem(apps=[{"name": "a", "command": "x"}])
    assert ecosystem.base_dir == Path(__file__).parent
    assert ecosystem.project == "omnitron"  # the directory's name


def test_define_ecosystem_errors_name_the_calling_line() -> None:
    with pytest.raises(ConfigError) as info:
        define_ecosystem(apps=[{"name": "a", "command": "x", "instances": -1}])
    [issue] = info.value.issues
    assert issue.file == Path(__file__)
    assert issue.line == sys._getframe().f_lineno - 3


# --------------------------------------------------------------------------- start order


def order(apps: list[tuple[str, list[str]]], tmp_path: Path) -> list[str]:
    ecosystem = define_ecosystem(
        base_dir=tmp_path,
        apps=[{"name": name, "command": "x", "depends_on": deps} for name, deps in apps],
    )
    return [app.name for app in ecosystem.start_order()]


def test_start_order_without_dependencies_is_file_order(tmp_path: Path) -> None:
    assert order([("c", []), ("a", []), ("b", [])], tmp_path) == ["c", "a", "b"]


def test_start_order_puts_dependencies_first_and_is_stable(tmp_path: Path) -> None:
    assert order([("api", ["db"]), ("web", []), ("db", [])], tmp_path) == ["web", "db", "api"]
    assert order(
        [("app", ["cache", "db"]), ("cache", ["db"]), ("db", []), ("cron", ["db"])], tmp_path
    ) == ["db", "cache", "app", "cron"]


def test_start_order_of_the_spec_example(spec_ecosystem: Ecosystem) -> None:
    assert [app.name for app in spec_ecosystem.start_order()] == ["cache", "api", "workers"]


# --------------------------------------------------------------------------- stacks


def test_with_stack(tmp_path: Path) -> None:
    ecosystem = define_ecosystem(
        base_dir=tmp_path,
        logging={"level": "info"},
        apps=[
            {"name": "db", "command": "x", "env": {"A": "1", "LOG": "info"}},
            {"name": "api", "command": "x", "depends_on": ["db"], "watch": {"debounce": "1s"}},
            {"name": "docs", "command": "x"},
        ],
        stacks={
            "dev": {
                "apps": ["db", "api"],
                "watch": True,
                "env": {"LOG": "debug"},
                "log_level": "debug",
                "overrides": {
                    "api": {"instances": 3, "env": {"LOG": "trace"}},
                    "db": {"watch": False},
                },
            },
        },
    )
    dev = ecosystem.with_stack("dev")
    db, api, docs = dev.apps
    assert dev.stack == "dev"
    assert dev.logging.level is LogLevel.DEBUG
    assert db.env == {"A": "1", "LOG": "debug"}
    assert api.env == {"LOG": "trace"}
    assert (db.watch, docs.watch) == (None, WatchConfig(directory=tmp_path))
    assert api.watch == WatchConfig(directory=tmp_path, debounce=1.0)  # its own settings kept
    assert (db.enabled, api.enabled, docs.enabled) == (True, True, False)
    assert (api.instances, db.instances) == (3, 1)
    assert ecosystem.apps[1].instances == 1  # the original is untouched


def test_with_unknown_stack(tmp_path: Path) -> None:
    ecosystem = define_ecosystem(base_dir=tmp_path, stacks={"prod": {}, "dev": {}})
    with pytest.raises(
        ConfigError,
        match=r"stacks: unknown stack 'prd'; did you mean 'prod'\? \(stacks: prod, dev\)$",
    ):
        ecosystem.with_stack("prd")
    with pytest.raises(ConfigError, match="already applied"):
        ecosystem.with_stack("dev").with_stack("prod")


# --------------------------------------------------------------------------- diff


def test_diff(tmp_path: Path) -> None:
    def eco(max_restarts: int = 5, **changes: Any) -> Ecosystem:
        apps = {
            "db": {"name": "db", "command": "x"},
            "api": {"name": "api", "command": "x", "env": {"TOKEN": "old-secret", "KEEP": "1"}},
            "old": {"name": "old", "command": "x"},
        }
        apps.update(changes)
        return define_ecosystem(
            base_dir=tmp_path,
            supervision={"max_restarts": max_restarts},
            apps=[app for app in apps.values() if app is not None],
        )

    before = eco()
    after = eco(
        api={
            "name": "api",
            "command": ["y"],
            "env": {"TOKEN": "new-secret", "NEW": "1"},
            "restart_policy": {"max_restarts": 9},
        },
        old=None,
        new={"name": "new", "command": "x"},
        max_restarts=6,
    )
    diff = diff_ecosystems(before, after)
    assert [app.name for app in diff.added] == ["new"]
    assert [app.name for app in diff.removed] == ["old"]
    # db inherits its restart policy from [supervision], so it changes too.
    db, change = diff.changed
    assert (db.name, [str(c) for c in db.changes]) == (
        "db",
        ["restart_policy.max_restarts: 5 -> 6"],
    )
    assert change.name == "api"
    assert [(c.path, c.old, c.new) for c in change.changes] == [
        ("command", ("x",), ("y",)),
        ("env.TOKEN", "old-secret", "new-secret"),
        ("env.KEEP", "1", None),
        ("env.NEW", None, "1"),
        ("restart_policy.max_restarts", 5, 9),
    ]
    assert [(c.path, c.old, c.new) for c in diff.settings] == [("supervision.max_restarts", 5, 6)]
    text = str(diff)
    assert "secret" not in text
    assert text.splitlines() == [
        "+ new",
        "- old",
        "~ db",
        "    restart_policy.max_restarts: 5 -> 6",
        "~ api",
        "    command: ['x'] -> ['y']",
        "    env.TOKEN: changed",
        "    env.KEEP: removed",
        "    env.NEW: added",
        "    restart_policy.max_restarts: 5 -> 9",
        "~ supervision.max_restarts: 5 -> 6",
    ]


def test_no_diff(spec_ecosystem: Ecosystem, project: Path) -> None:
    same = load_config(project / "omnitron.config.py", environ=ENVIRON)
    diff = diff_ecosystems(spec_ecosystem, same)
    assert not diff
    assert str(diff) == "no changes"


def test_diff_of_a_stack(spec_ecosystem: Ecosystem) -> None:
    diff = diff_ecosystems(spec_ecosystem, spec_ecosystem.with_stack("dev"))
    assert [c.name for c in diff.changed] == ["cache", "api", "workers"]
    assert [c.path for c in diff.changed[0].changes] == ["env.LOG_LEVEL", "watch"]
    assert [str(c) for c in diff.settings] == ["stack: (unset) -> 'dev'"]


# --------------------------------------------------------------------------- public surface


PUBLIC = [
    "CONFIG_FILENAMES",
    "MAX_CONFIG_SIZE",
    "find_config",
    "load_config",
    "define_ecosystem",
    "ConfigError",
    "ConfigNotFound",
    "ConfigIssue",
    "Ecosystem",
    "AppConfig",
    "SupervisionConfig",
    "BackoffConfig",
    "MonitoringConfig",
    "HealthCheckConfig",
    "MetricsConfig",
    "LoggingConfig",
    "RestartPolicy",
    "ReadyConfig",
    "HealthConfig",
    "SocketConfig",
    "WatchConfig",
    "StackConfig",
    "StackAppOverride",
    "DEFAULT_WATCH_IGNORE",
    "Strategy",
    "Restart",
    "LogLevel",
    "ReadyKind",
    "DaemonDeath",
    "diff_ecosystems",
    "EcosystemDiff",
    "AppChange",
    "FieldChange",
    "parse_duration",
    "parse_size",
    "format_duration",
    "format_size",
    "SECRET_PREFIX",
    "secret_reference",
]


def test_public_names_are_pinned() -> None:
    assert omnitron.config.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(omnitron.config, name) is not None


def test_import_stays_light() -> None:
    code = textwrap.dedent(
        """
        import json, sys
        import omnitron.config
        lazy = ("cattrs", "tomllib", "difflib", "trio", "shlex", "runpy")
        print(json.dumps([m for m in lazy if m in sys.modules]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


def test_app_mode(spec_ecosystem: Ecosystem) -> None:
    assert [app.mode for app in spec_ecosystem.apps] == ["classic", "classic", "bootstrap"]
    assert isinstance(spec_ecosystem.app("api"), AppConfig)
    with pytest.raises(KeyError):
        spec_ecosystem.app("nope")


def test_apps_left_at_the_defaults_share_their_default_records(tmp_path: Path) -> None:
    # One frozen instance for every app without ready, restart_policy or env: not a
    # copy each (memory per app in a daemon with many apps).
    path = tmp_path / "apps.toml"
    path.write_text(
        '[[apps]]\nname = "a"\ncommand = ["sleep", "1"]\n'
        '[[apps]]\nname = "b"\ncommand = ["sleep", "1"]\n'
        '[[apps]]\nname = "c"\ncommand = ["sleep", "1"]\nenv = { X = "1" }\n'
        'ready = "notify"\nrestart_policy = { max_restarts = 1 }\n'
    )
    a, b, c = load_config(path).apps
    defaults = attrs.fields(AppConfig)
    assert a.ready is b.ready is defaults.ready.default
    assert a.restart_policy is b.restart_policy is defaults.restart_policy.default
    assert a.env is b.env
    assert a.env == {}
    assert c.ready == ReadyConfig.notify()
    assert c.restart_policy.max_restarts == 1
    assert c.env == {"X": "1"}
