"""``omnitron up`` launches the daemon before it imports click (omnitron.cli._launch).

Each check runs the real CLI or the real launcher in a fresh interpreter, with
a real daemon process (withdrawn or run to the end).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omnitron.cli._launch import _parse_up, optimized_bytecode_usable


def _run(code: str, timeout: float = 120) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "apps.toml"
    config.write_text('[[apps]]\nname = "a"\ncommand = ["sleep", "3600"]\n')
    return config


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["up"], {}),
        (["--home", "/h", "up", "-c", "x.toml"], {"home": "/h", "config": "x.toml"}),
        (["--home=/h", "up", "--config=x.toml"], {"home": "/h", "config": "x.toml"}),
        (
            ["up", "--stack", "prod", "--reset-state", "--wait-timeout", "9", "--no-watch"],
            {"stack": "prod", "reset_state": True, "wait_timeout": "9", "no_watch": True},
        ),
    ],
)
def test_the_plain_forms_of_up_are_recognised(args: list[str], expected: dict[str, object]) -> None:
    assert _parse_up(args) == expected


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["status"],
        ["up", "--foreground"],
        ["up", "--tcp", "0.0.0.0:9700"],
        ["up", "--help"],
        ["--json", "up"],
        ["-r", "prod", "up"],
        ["up", "--home", "/h"],  # a global option after the command: click decides
        ["up", "--config"],
        ["up", "--config", "a.toml", "--config", "b.toml"],
        ["up", "--watch", "--no-watch"],
        ["up", "up"],
    ],
)
def test_anything_else_launches_nothing_early(args: list[str]) -> None:
    assert _parse_up(args) is None


def test_a_plain_up_launches_the_daemon_before_click_and_withdraws_it_at_exit(
    tmp_path: Path,
) -> None:
    home = tmp_path / "h"
    found = _run(
        f"""
        import json, sys
        from omnitron.cli import _launch
        _launch.launch_early({["--home", str(home), "up", "--config", str(_config(tmp_path))]!r})
        early = _launch._early
        print(json.dumps({{
            "argv": early.argv[1:] if early else None,
            "optimized": _launch.optimized_bytecode_usable(),
            "pid": early.proc.pid if early else None,
            "click": "click" in sys.modules,
        }}))
        """
    )
    assert found["argv"] == [
        *("-P", *(["-OO"] if found["optimized"] else []), "-m", "omnitron.daemon"),
        *("--home", str(home)),
        *("--config", str(tmp_path / "apps.toml")),
    ]
    assert found["click"] is False
    # The interpreter exited without `up` taking it: withdrawn, gone, nothing created.
    assert not Path(f"/proc/{found['pid']}").exists()
    assert not home.exists()


def test_the_early_launch_loads_neither_json_nor_the_config_package(tmp_path: Path) -> None:
    # What `up` imports before the daemon's interpreter is launched delays it.
    home = tmp_path / "h"
    found = _run(
        f"""
        import sys
        from omnitron.cli import _launch
        _launch.launch_early({["--home", str(home), "up", "--config", str(_config(tmp_path))]!r})
        loaded = {{name: name in sys.modules for name in ("json", "omnitron.config", "click")}}
        import json
        print(json.dumps({{**loaded, "launched": _launch._early is not None}}))
        """
    )
    assert found == {"json": False, "omnitron.config": False, "click": False, "launched": True}


def test_an_early_launch_of_another_command_line_is_withdrawn(tmp_path: Path) -> None:
    home = tmp_path / "h"
    found = _run(
        f"""
        import json
        from omnitron.cli import _launch
        _launch.launch_early({["--home", str(home), "up", "--config", str(_config(tmp_path))]!r})
        early = _launch._early
        taken = _launch.take_early([*early.argv, "--reset-state"])
        print(json.dumps({{"taken": taken is not None, "code": early.proc.returncode}}))
        """
    )
    assert found == {"taken": False, "code": 4}  # EXIT_WITHDRAWN: it touched nothing
    assert not home.exists()


def test_up_runs_the_daemon_it_launched_before_importing_click(tmp_path: Path) -> None:
    # The real console entry, with every launch counted: one daemon, launched
    # while click was not imported yet, and it is the one that runs the apps.
    home = tmp_path / "h"
    config = _config(tmp_path)
    found = _run(
        f"""
        import json, sys
        from omnitron.cli import _launch, main

        launches = []
        start = _launch.Launch.start

        def counted(argv, out_path):
            launch = start(argv, out_path)
            launches.append({{"pid": launch.proc.pid, "click": "click" in sys.modules}})
            return launch

        _launch.Launch.start = counted
        try:
            main(["--home", {str(home)!r}, "up", "--config", {str(config)!r}])
        except SystemExit as exit:
            code = exit.code
        print(json.dumps({{"code": code, "launches": launches}}))
        """
    )
    try:
        assert found["code"] == 0
        launches = found["launches"]
        assert isinstance(launches, list)
        assert len(launches) == 1
        assert launches[0]["click"] is False
        pid = (home / "daemon.pid").read_text().split()[0]
        assert int(pid) == launches[0]["pid"]
    finally:
        subprocess.run(
            [sys.executable, "-m", "omnitron", "--home", str(home), "kill"],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )


def test_the_console_entry_costs_other_commands_nothing() -> None:
    found = _run(
        """
        import json, sys
        from omnitron.cli import _launch
        _launch.launch_early(["status"])
        print(json.dumps({
            name: name in sys.modules
            for name in ("click", "subprocess", "socket", "omnitron.config")
        } | {"launched": _launch._early is not None}))
        """
    )
    assert found == {
        "click": False,
        "subprocess": False,
        "socket": False,
        "omnitron.config": False,
        "launched": False,
    }


def _module(tmp_path: Path, name: str) -> str:
    package = tmp_path / name
    package.mkdir()
    source = package / "mod.py"
    source.write_text('"""A docstring."""\n')
    return str(source)


def test_the_daemon_runs_optimized_where_its_bytecode_can_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    sources = [_module(tmp_path, "a"), _module(tmp_path, "b")]
    assert optimized_bytecode_usable(sources)  # __pycache__ may be created: writable


def test_the_daemon_runs_unoptimized_where_each_start_would_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "pycache_prefix", None)
    sources = [_module(tmp_path, "a"), _module(tmp_path, "b")]
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # PYTHONDONTWRITEBYTECODE
    assert not optimized_bytecode_usable(sources)
    # Once every module's -OO bytecode is cached (a writable start wrote it) it is read.
    for source in sources:
        subprocess.run([sys.executable, "-OO", "-m", "py_compile", source], check=True, timeout=60)
    assert optimized_bytecode_usable(sources)
    # Only the first module cached is not enough.
    Path(sources[1]).with_name("__pycache__").joinpath(
        Path(sources[1]).stem + f".{sys.implementation.cache_tag}.opt-2.pyc"
    ).unlink()
    assert not optimized_bytecode_usable(sources)
