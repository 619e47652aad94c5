"""Finding and reading configuration files: discovery, file errors, TOML and Python forms.

Covers CF-01 (syntax errors with file:line:col), CF-08 (missing, unreadable,
directory, empty), CF-10 (size cap before parsing) and CF-12 (argv, no shell).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omnitron.config import (
    MAX_CONFIG_SIZE,
    ConfigError,
    ConfigNotFound,
    define_ecosystem,
    find_config,
    load_config,
)
from omnitron.errors import OmnitronError

MINIMAL = 'project = "shop"\n[[apps]]\nname = "api"\ncommand = ["python", "-m", "api"]\n'
PYPROJECT = (
    '[project]\nname = "shop"\n\n'
    '[tool.omnitron]\n[[tool.omnitron.apps]]\nname = "api"\ncommand = "x"\n'
)
PYCONFIG = textwrap.dedent(
    """\
    from omnitron.config import define_ecosystem

    ecosystem = define_ecosystem(project="shop", apps=[{"name": "api", "command": ["x"]}])
    """
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def only_issue(err: ConfigError) -> str:
    assert len(err.issues) == 1
    return str(err.issues[0])


# --------------------------------------------------------------------------- discovery


def test_finds_the_file_in_the_start_directory(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.toml", MINIMAL)
    assert find_config(tmp_path) == config


def test_searches_upward(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.toml", MINIMAL)
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_config(deep) == config


def test_defaults_to_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "omnitron.toml", MINIMAL)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert find_config() == config


def test_a_file_as_start_means_its_directory(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.toml", MINIMAL)
    assert find_config(write(tmp_path / "README", "x")) == config


def test_precedence_within_a_directory(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", PYPROJECT)
    assert find_config(tmp_path).name == "pyproject.toml"
    write(tmp_path / "omnitron.toml", MINIMAL)
    assert find_config(tmp_path).name == "omnitron.toml"
    write(tmp_path / "omnitron.config.py", PYCONFIG)
    assert find_config(tmp_path).name == "omnitron.config.py"


def test_the_nearest_directory_wins_over_precedence(tmp_path: Path) -> None:
    write(tmp_path / "omnitron.config.py", PYCONFIG)
    nearer = write(tmp_path / "sub" / "omnitron.toml", MINIMAL)
    assert find_config(tmp_path / "sub") == nearer


def test_pyproject_without_a_tool_omnitron_table_is_skipped(tmp_path: Path) -> None:
    outer = write(tmp_path / "pyproject.toml", PYPROJECT)
    write(
        tmp_path / "pkg" / "pyproject.toml",
        '[project]\nname = "pkg"\n[tool.ruff]\nline-length = 1\n',
    )
    assert find_config(tmp_path / "pkg") == outer


def test_a_broken_pyproject_meant_for_us_is_found_and_reported(tmp_path: Path) -> None:
    broken = write(tmp_path / "pyproject.toml", "[tool.omnitron]\nproject = \n")
    assert find_config(tmp_path) == broken
    with pytest.raises(ConfigError) as info:
        load_config(broken)
    assert only_issue(info.value) == f"{broken}:2:11: syntax error: invalid value"


def test_not_found_says_where_it_searched(tmp_path: Path) -> None:
    start = tmp_path / "x" / "y"
    start.mkdir(parents=True)
    with pytest.raises(ConfigNotFound) as info:
        find_config(start)
    message = str(info.value)
    assert message.startswith(
        "no configuration found: looked for omnitron.config.py, omnitron.toml"
    )
    assert f"in {start} and its parent directories up to /" in message
    assert "--config" in message
    assert info.value.searched[:3] == (start, start.parent, tmp_path)
    assert info.value.searched[-1] == Path("/")


# --------------------------------------------------------------------------- file errors (CF-08)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigNotFound) as info:
        load_config(tmp_path / "omnitron.toml")
    assert str(info.value) == f"{tmp_path / 'omnitron.toml'}: not found"


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "omnitron.toml").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "omnitron.toml")
    assert str(info.value) == f"{tmp_path / 'omnitron.toml'}: is a directory"
    assert not isinstance(info.value, ConfigNotFound)


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "omnitron.toml", MINIMAL)
    config.chmod(0)
    if os.access(config, os.R_OK):  # running as root: simulate what the kernel would say
        real_open = os.open

        def deny(path: object, *args: object, **kwargs: object) -> int:
            if Path(str(path)) == config:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", deny)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == f"{config}: permission denied"


def test_not_a_regular_file_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "omnitron.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo)


@pytest.mark.parametrize("text", ["", "\n\n# nothing yet\n", 'project = "shop"\napps = []\n'])
def test_empty_config_is_a_warning(tmp_path: Path, text: str) -> None:
    config = write(tmp_path / "shop" / "omnitron.toml", text)
    ecosystem = load_config(config)
    assert ecosystem.apps == ()
    assert ecosystem.project == "shop"  # defaults to the directory name
    assert [str(w) for w in ecosystem.warnings] == [
        f"{config}{':2' if 'apps' in text else ''}: apps: empty: no apps defined"
    ]


def test_unsupported_file_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported file type"):
        load_config(write(tmp_path / "omnitron.yaml", "apps: []\n"))


# --------------------------------------------------------------------------- size cap (CF-10)


def test_size_cap_is_checked_before_parsing(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.toml"
    with config.open("wb") as file:  # 20 MB, sparse: nothing to parse in time if we tried
        file.truncate(20 * 1024 * 1024)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == f"{config}: too large: more than 1024 KiB"


def test_size_cap_boundary(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.toml"
    body = MINIMAL + "#" * (MAX_CONFIG_SIZE - len(MINIMAL))
    config.write_text(body)
    assert load_config(config).apps[0].name == "api"
    config.write_text(body + "#")
    with pytest.raises(ConfigError, match="too large"):
        load_config(config)


def test_deep_nesting_is_a_clear_error(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.toml", "x = " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(config)


# --------------------------------------------------------------------------- syntax (CF-01)


def test_toml_syntax_error_has_file_line_and_column(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.toml", 'project = "shop"\n\n[[apps]]\nname = "api\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    issue = info.value.issues[0]
    assert (issue.file, issue.line, issue.column) == (config, 4, 12)
    assert str(info.value) == f"{config}:4:12: syntax error: illegal character '\\n'"


def test_syntax_error_at_end_of_document(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.toml", 'project = "shop"\nx = [1,\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.issues[0].line is not None


def test_invalid_utf8_has_a_line(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.toml"
    config.write_bytes(b'project = "shop"\nx = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == f"{config}:2: not valid UTF-8 (byte 0xff)"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.toml"
    config.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(config).project == "shop"


def test_pyproject_errors_use_pyproject_lines(tmp_path: Path) -> None:
    config = write(
        tmp_path / "pyproject.toml",
        """\
        [project]
        name = "shop"

        [tool.omnitron]
        [[tool.omnitron.apps]]
        name = "api"
        command = "x"
        instances = 0
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert only_issue(info.value) == f"{config}:8: apps[0].instances: must be >= 1, got 0"


def test_pyproject_project_name_is_the_default(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "pyproject.toml", PYPROJECT)).project == "shop"


def test_pyproject_without_table_given_explicitly(tmp_path: Path) -> None:
    config = write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"has no \[tool.omnitron\] table"):
        load_config(config)


# --------------------------------------------------------------------------- Python configs


def test_python_config(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.config.py", PYCONFIG)
    ecosystem = load_config(config)
    assert ecosystem.project == "shop"
    assert ecosystem.apps[0].command == ("x",)
    assert ecosystem.source == config


def test_python_config_must_define_ecosystem(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.config.py", "x = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == (
        f"{config}: does not define `ecosystem`; end it with: ecosystem = define_ecosystem(...)"
    )


def test_python_config_ecosystem_of_the_wrong_type(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.config.py", "ecosystem = {'apps': []}\n")
    with pytest.raises(
        ConfigError, match=r"`ecosystem` is a dict, not the result of define_ecosystem"
    ):
        load_config(config)


def test_python_config_exception_reports_file_and_line(tmp_path: Path) -> None:
    config = write(
        tmp_path / "omnitron.config.py",
        """\
        def port():
            return int("eighty")

        PORT = port()
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == (
        f"{config}:2: ValueError: invalid literal for int() with base 10: 'eighty'"
    )
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("optimize", [[], ["-OO"]])
def test_python_config_runs_its_asserts_and_keeps_its_docstrings_under_oo(
    tmp_path: Path, optimize: list[str]
) -> None:
    # The daemon runs with -OO; the config behaves there as in `omnitron check`.
    config = write(
        tmp_path / "omnitron.config.py",
        """\
        def port():
            "The port."
            return 8000

        assert port.__doc__ == "The port.", "no docstring"
        assert port() == 8001, "port must be 8001"
        """,
    )
    result = subprocess.run(
        [sys.executable, *optimize, "-c", LOAD_AND_PRINT, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{config}:6: AssertionError: port must be 8001"


LOAD_AND_PRINT = """\
import sys
from omnitron.config import ConfigError, load_config
try:
    load_config(sys.argv[1])
except ConfigError as exc:
    print(exc)
"""


def test_python_config_syntax_error(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.config.py", "x = 1\ny = (\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == f"{config}:2:5: syntax error: '(' was never closed"


def test_python_config_cannot_exit_the_daemon(tmp_path: Path) -> None:
    config = write(tmp_path / "omnitron.config.py", "import sys\nsys.exit(3)\n")
    with pytest.raises(ConfigError, match=r":2: SystemExit: 3$"):
        load_config(config)


def test_python_config_validation_errors_point_at_the_call(tmp_path: Path) -> None:
    config = write(
        tmp_path / "omnitron.config.py",
        """\
        from omnitron.config import define_ecosystem

        APPS = [{"name": "api", "command": ["x"], "instances": 0}]
        ecosystem = define_ecosystem(
            project="shop",
            apps=APPS,
        )
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert only_issue(info.value) == f"{config}:4: apps[0].instances: must be >= 1, got 0"


def test_python_config_uses_the_given_environment(tmp_path: Path) -> None:
    config = write(
        tmp_path / "omnitron.config.py",
        """\
        from omnitron.config import define_ecosystem

        ecosystem = define_ecosystem(
            apps=[{"name": "api", "command": ["x"], "env": {"DB": "${DB_URL}"}}],
        )
        """,
    )
    ecosystem = load_config(config, environ={"DB_URL": "postgres://db"})
    assert ecosystem.apps[0].env == {"DB": "postgres://db"}


def test_python_config_does_not_leak_into_sys_modules_or_path(tmp_path: Path) -> None:
    import sys

    before_path = list(sys.path)
    load_config(write(tmp_path / "omnitron.config.py", PYCONFIG))
    assert sys.path == before_path
    assert "__omnitron_config__" not in sys.modules


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("name", ["omnitron.toml", "omnitron.config.py"])
def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    project = tmp_path / "project"
    (project / "srv").mkdir(parents=True)
    write(project / "shop" / "bootstrap.py", "")
    if name.endswith(".toml"):
        text = """\
            [logging]
            directory = "logs"
            [[apps]]
            name = "api"
            command = "x"
            cwd = "srv"
            watch = "shop"
            [[apps]]
            name = "workers"
            bootstrap = "shop/bootstrap.py"
            """
    else:
        text = """\
            from omnitron.config import define_ecosystem
            ecosystem = define_ecosystem(
                logging={"directory": "logs"},
                apps=[
                    {"name": "api", "command": "x", "cwd": "srv", "watch": "shop"},
                    {"name": "workers", "bootstrap": "shop/bootstrap.py"},
                ],
            )
            """
    config = write(project / name, text)
    monkeypatch.chdir(tmp_path)  # somewhere else entirely
    ecosystem = load_config(os.path.relpath(config))
    api, workers = ecosystem.apps
    assert ecosystem.base_dir == project
    assert api.cwd == project / "srv"
    assert api.watch is not None
    assert api.watch.directory == project / "shop"
    assert workers.cwd == project
    assert workers.bootstrap == project / "shop" / "bootstrap.py"
    assert workers.mode == "bootstrap"
    assert api.mode == "classic"
    assert ecosystem.logging.directory == project / "logs"


# --------------------------------------------------------------------------- no shell (CF-12)


def test_command_string_is_argv_not_a_shell_line(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    config = write(
        tmp_path / "omnitron.toml",
        f"""\
        [[apps]]
        name = "api"
        command = "echo ; touch {pwned} $(touch {pwned})"
        [[apps]]
        name = "args"
        command = ["echo", "; touch {pwned}"]
        """,
    )
    ecosystem = load_config(config)
    api, args = ecosystem.apps
    assert api.command == ("echo", ";", "touch", str(pwned), "$(touch", f"{pwned})")
    assert args.command == ("echo", f"; touch {pwned}")
    for app in ecosystem.apps:
        assert app.command is not None
        subprocess.run(app.command, check=True, capture_output=True)
    assert not pwned.exists()
    [warning] = ecosystem.warnings  # only the string form gets the hint
    assert warning.path == "apps[0].command"
    assert "runs without a shell: ';' is passed to the program as a literal argument" in str(
        warning
    )


def test_errors_are_omnitron_and_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        define_ecosystem(apps=[{"name": "x"}], base_dir=tmp_path)
    assert isinstance(info.value, OmnitronError)
    assert isinstance(info.value, ValueError)
