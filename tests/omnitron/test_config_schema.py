"""The schema is written once, in the model: keys, readers, defaults and inert markers.

A key is one attrs field with :func:`key` metadata; the builder takes the allowed
keys, the values and their defaults from there. Keys the daemon accepts but does
not act on yet carry an ``inert`` marker and are reported, with file and line, in
``Ecosystem.inert`` (never as errors, never in ``warnings``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import attrs
import pytest

from omnitron.config import (
    AppConfig,
    BackoffConfig,
    ConfigError,
    Ecosystem,
    HealthConfig,
    LoggingConfig,
    RestartPolicy,
    StackAppOverride,
    StackConfig,
    SupervisionConfig,
    WatchConfig,
    define_ecosystem,
    load_config,
)
from omnitron.config._fields import (
    KEY,
    BuildContext,
    key,
    keys_of,
    open_table,
    p_int,
    read_keys,
)


def test_the_allowed_keys_are_the_models_fields() -> None:
    assert keys_of(AppConfig) == tuple(field.name for field in attrs.fields(AppConfig))
    assert keys_of(Ecosystem) == (
        "project",
        "supervision",
        "monitoring",
        "logging",
        "apps",
        "stacks",
    )
    assert keys_of(StackConfig) == ("apps", "env", "watch", "log_level", "overrides")
    for cls in (BackoffConfig, SupervisionConfig, LoggingConfig, HealthConfig, WatchConfig):
        assert keys_of(cls) == tuple(field.name for field in attrs.fields(cls))


def test_every_default_comes_from_the_model(tmp_path: Path) -> None:
    """An app with only its required keys equals the model's defaults, key by key."""
    app = define_ecosystem(
        apps=[{"name": "api", "command": ["x"]}], base_dir=tmp_path, environ={}
    ).apps[0]
    assert app == AppConfig(name="api", command=("x",), cwd=tmp_path)


@attrs.frozen(kw_only=True)
class _Record:
    """A record as the model writes one: each key is one line."""

    size: int = attrs.field(default=3, metadata=key(p_int(1, 9)))
    later: bool = attrs.field(default=False, metadata=key(inert="not built yet"))
    internal: str = "not a key"


def test_a_new_key_is_one_line_in_the_model(tmp_path: Path) -> None:
    ctx = BuildContext(file=None, base_dir=tmp_path, environ={})
    path = ("section",)
    assert keys_of(_Record) == ("size", "later")
    table = open_table(ctx, _Record, path, {"size": 5})
    assert read_keys(ctx, _Record, path, table) == {"size": 5}
    assert read_keys(ctx, _Record, path, {}) == {"size": 3}  # the model's default
    assert read_keys(ctx, _Record, path, {}, {"size": 7}) == {"size": 7}
    assert ctx.errors == []
    assert ctx.inert == []

    open_table(ctx, _Record, path, {"sise": 5, "later": True, "internal": "x"})
    read_keys(ctx, _Record, path, {"size": 10})
    assert [f"{i.path}: {i.message}" for i in ctx.errors] == [
        "section.sise: unknown key; did you mean 'size'?",
        "section.internal: unknown key (allowed: size, later)",
        "section.size: must be <= 9, got 10",
    ]
    assert [f"{i.path}: {i.message}" for i in ctx.inert] == [
        "section.later: has no effect yet: not built yet"
    ]
    assert KEY not in attrs.fields(_Record).internal.metadata


INERT_TOML = """\
    project = "shop"

    [monitoring]
    metrics = { interval = "10s" }
    health_check = { timeout = "2s" }

    [logging]
    level = "debug"
    max_size = "10MiB"
    max_files = 3
    compress = false

    [[apps]]
    name = "api"
    command = ["x"]
    health = { http = "http://127.0.0.1:8000/health" }
    watch = true

    [[apps]]
    name = "worker"
    bootstrap = "worker.py"

    [stacks.dev]
    watch = true
    overrides.api = { watch = false, instances = 2 }
"""


def test_keys_once_inert_are_all_acted_on_now(tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_text("")
    config = tmp_path / "omnitron.toml"
    config.write_text(textwrap.dedent(INERT_TOML))
    ecosystem = load_config(config, environ={})
    assert ecosystem.warnings == ()  # a key not acted on is not a problem of the config
    # Every key of this version is acted on (health, watch, bootstrap): none is named.
    assert [str(issue) for issue in ecosystem.inert] == []
    # Applying a stack keeps them; they never take part in equality.
    assert ecosystem.with_stack("dev").inert == ecosystem.inert
    assert attrs.evolve(ecosystem, inert=()) == ecosystem


def test_keys_in_effect_give_no_such_warning(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.toml"
    config.write_text(
        textwrap.dedent(
            """\
            [logging]
            level = "debug"
            [[apps]]
            name = "api"
            command = ["x"]
            restart_policy = { max_restarts = 2 }
            watch = { directory = ".", ignore = ["*.tmp"], debounce = "100ms" }
            [stacks.dev]
            log_level = "info"
            watch = true
            overrides.api = { watch = false }
            """
        )
    )
    assert load_config(config, environ={}).inert == ()


def test_a_python_config_reports_them_at_its_define_ecosystem_line(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.config.py"
    config.write_text(
        "from omnitron.config import define_ecosystem\n"
        "\n"
        "ecosystem = define_ecosystem(\n"
        '    supervision={"strategy": "one_for_all"},\n'
        '    apps=[{"name": "api", "command": ["x"], "restart_policy": {"max_restarts": 9}}],\n'
        ")\n"
    )
    [issue] = load_config(config, environ={}).inert
    assert (issue.line, issue.path) == (3, "apps[0].restart_policy")


def test_an_invalid_config_is_still_only_its_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        define_ecosystem(
            apps=[{"name": "api", "command": ["x"], "watch": True, "instances": 0}],
            base_dir=tmp_path,
            environ={},
        )
    assert [issue.path for issue in info.value.issues] == ["apps[0].instances"]


def test_restart_policy_and_overrides_take_their_defaults_from_elsewhere(tmp_path: Path) -> None:
    """Defaults that are not the model's (``[supervision]``'s) still win where they apply."""
    ecosystem = define_ecosystem(
        supervision={"max_restarts": 9, "window": "5s"},
        apps=[{"name": "api", "command": ["x"], "restart_policy": {"window": "7s"}}],
        stacks={"dev": {"overrides": {"api": {"enabled": False}}}},
        base_dir=tmp_path,
        environ={},
    )
    assert ecosystem.apps[0].restart_policy == RestartPolicy(
        max_restarts=9, window=7.0, backoff=BackoffConfig()
    )
    assert ecosystem.stacks["dev"].overrides["api"] == StackAppOverride(enabled=False)


def test_define_ecosystem_takes_every_top_level_key() -> None:
    import inspect

    parameters = list(inspect.signature(define_ecosystem).parameters)
    assert [name for name in parameters if name not in ("base_dir", "environ")] == list(
        keys_of(Ecosystem)
    )


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_an_apps_restart_policy_has_no_effect_when_the_root_restarts_apps(
    tmp_path: Path, strategy: str
) -> None:
    """Under one_for_all / rest_for_one the daemon ignores restart_policy (docs/config.md)."""
    config = tmp_path / "omnitron.toml"
    config.write_text(
        f'[supervision]\nstrategy = "{strategy}"\n'
        '[[apps]]\nname = "api"\ncommand = ["x"]\nrestart_policy = { max_restarts = 9 }\n'
    )
    [issue] = load_config(config, environ={}).inert
    assert str(issue) == (
        f"{config}:6: apps[0].restart_policy: has no effect with strategy {strategy!r}: "
        "the root's [supervision] limits and backoff apply to every app"
    )
    config.write_text(config.read_text().replace(strategy, "one_for_one"))
    assert load_config(config, environ={}).inert == ()
