"""Bootstrap apps at load time: the ``python`` key, describing, and its errors.

A bootstrap is described by the app's own interpreter (a real subprocess, the
real ``python -m omnitron.worker describe``); ``check`` reports its problems as
config errors with the bootstrap file and the app's field path, lists the
processes in topology order, and warns (without failing) about an interpreter
whose omnitron speaks another protocol.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omnitron.config import ConfigError, define_ecosystem, load_config
from omnitron.config._bootstrap import BootstrapInvalid, describe_sync, read_description

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop"


def check(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omnitron", "check", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")},
    )


def project_with(tmp_path: Path, bootstrap: str, app: str = "") -> Path:
    (tmp_path / "bootstrap.py").write_text(textwrap.dedent(bootstrap))
    (tmp_path / "omnitron.toml").write_text(
        f'project = "t"\n[[apps]]\nname = "api"\ncommand = ["true"]\n'
        f'[[apps]]\nname = "shop"\nbootstrap = "bootstrap.py"\n{app}'
    )
    return tmp_path


def old_omnitron(tmp_path: Path, *, protocol: int, version: str) -> Path:
    """An interpreter whose omnitron is a copy of this one speaking ``protocol``."""
    site = tmp_path / "old-site"
    shutil.copytree(ROOT / "omnitron", site / "omnitron")
    system = site / "omnitron" / "_system.py"
    text = system.read_text()
    assert "PROTOCOL_VERSION: Final = 1\n" in text
    system.write_text(
        text.replace("PROTOCOL_VERSION: Final = 1\n", f"PROTOCOL_VERSION: Final = {protocol}\n")
    )
    init = site / "omnitron" / "__init__.py"
    lines = [
        f'__version__ = "{version}"' if line.startswith("__version__ =") else line
        for line in init.read_text().splitlines()
    ]
    init.write_text("\n".join(lines) + "\n")
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python


# --------------------------------------------------------------------------- the python key


def test_python_is_resolved_against_the_config_directory_without_following_links(
    tmp_path: Path,
) -> None:
    (tmp_path / "boot.py").write_text("")
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)  # as a virtualenv's is
    ecosystem = define_ecosystem(
        apps=[
            {"name": "a", "bootstrap": "boot.py", "python": ".venv/bin/python"},
            {"name": "b", "bootstrap": "boot.py", "python": "python3"},
            {"name": "c", "bootstrap": "boot.py"},
        ],
        base_dir=tmp_path,
        environ={},
    )
    assert [app.python for app in ecosystem.apps] == [str(venv / "python"), "python3", None]


def test_python_must_be_an_executable_and_only_for_bootstrap_apps(tmp_path: Path) -> None:
    (tmp_path / "boot.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ConfigError) as info:
        define_ecosystem(
            apps=[
                {"name": "a", "bootstrap": "boot.py", "python": "missing/bin/python"},
                {"name": "b", "bootstrap": "boot.py", "python": "./notes.txt"},
                {"name": "c", "command": ["x"], "python": "python3"},
            ],
            base_dir=tmp_path,
            environ={},
        )
    assert [f"{i.path}: {i.message}" for i in info.value.issues] == [
        f"apps[0].python: not an executable file: {tmp_path}/missing/bin/python",
        f"apps[1].python: not an executable file: {tmp_path}/notes.txt",
        "apps[2].python: applies to module-worker apps (bootstrap) only; a classic app "
        "names its interpreter in its command",
    ]


def test_a_bootstrap_key_has_effect_now(tmp_path: Path) -> None:
    (tmp_path / "boot.py").write_text("")
    config = tmp_path / "omnitron.toml"
    config.write_text('[[apps]]\nname = "w"\nbootstrap = "boot.py"\n')
    assert load_config(config, environ={}).inert == ()


# --------------------------------------------------------------------------- check


def test_check_lists_the_example_shops_processes_providers_first() -> None:
    result = check(SHOP)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    start = lines.index("start order")
    assert [line.strip() for line in lines[start + 1 :]] == [
        "1. shop",
        "- users  (shop.users; x2)",
        "- billing  (shop.billing; after users)",
    ]
    [app] = json.loads(check(SHOP, "--json").stdout)["apps"]
    assert [(p["name"], p["instances"], p["access"]) for p in app["processes"]] == [
        ("users", 2, []),
        ("billing", 1, ["users"]),
    ]


def test_check_reports_bootstrap_errors_as_config_errors(tmp_path: Path) -> None:
    project = project_with(
        tmp_path,
        """\
        from omnitron import Process, define_system
        system = define_system(name="shop", version="1", processes=[
            Process(name="a", module="m.a", topology={"expose": True, "access": ["b"]}),
            Process(name="b", topology={"expose": True, "access": ["a"]}),
        ])
        """,
    )
    result = check(project)
    assert result.returncode == 2
    boot = project / "bootstrap.py"
    assert result.stderr.splitlines() == [
        f"omnitron: 2 configuration problems in {boot}:",
        f"  {boot}: apps[1].bootstrap: processes[1].module: is required",
        f"  {boot}: apps[1].bootstrap: processes[0].topology.access: topology cycle: a -> b -> a",
    ]
    report = json.loads(check(project, "--json").stdout)
    assert report["ok"] is False
    assert [(i["file"], i["path"], i["message"]) for i in report["issues"]] == [
        (str(boot), "apps[1].bootstrap", "processes[1].module: is required"),
        (
            str(boot),
            "apps[1].bootstrap",
            "processes[0].topology.access: topology cycle: a -> b -> a",
        ),
    ]


def test_check_names_the_line_of_a_bootstrap_that_fails_to_import(tmp_path: Path) -> None:
    project = project_with(tmp_path, "import nonexistent_module_xyz\n")
    result = check(project)
    assert result.returncode == 2
    boot = project / "bootstrap.py"
    assert result.stderr.strip() == (
        f"omnitron: {boot}: apps[1].bootstrap: bootstrap: ModuleNotFoundError: "
        f"No module named 'nonexistent_module_xyz' ({boot}:1)"
    )


def test_an_interpreter_that_cannot_run_is_named(tmp_path: Path) -> None:
    project = project_with(tmp_path, "", app='python = "no-such-python-3.99"\n')
    result = check(project)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"omnitron: {project / 'bootstrap.py'}: apps[1].python: cannot run "
        "no-such-python-3.99: No such file or directory"
    )


def test_a_worker_of_another_protocol_is_a_warning_naming_both_versions(tmp_path: Path) -> None:
    python = old_omnitron(tmp_path, protocol=2, version="0.0.9")
    (tmp_path / "p").mkdir()
    project = project_with(
        tmp_path / "p",
        """\
        from omnitron import Process, define_system
        system = define_system(name="shop", version="1", processes=[Process(name="a", module="m")])
        """,
        app=f'python = "{python}"\n',
    )
    result = check(project)
    assert result.returncode == 0, result.stderr
    [warning] = result.stderr.splitlines()
    assert warning.startswith(f"warning: {project / 'bootstrap.py'}: apps[1].python: ")
    assert "is 0.0.9 and speaks worker protocol 2" in warning
    assert "this daemon's omnitron is 0.1.0 and speaks worker protocol 1" in warning
    assert sys.executable in warning  # the worker's interpreter


# --------------------------------------------------------------------------- reading


def test_output_that_is_no_description_names_the_interpreter_and_its_last_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "boot.py").write_text("")
    [app] = define_ecosystem(
        apps=[{"name": "w", "bootstrap": "boot.py"}], base_dir=tmp_path, environ={}
    ).apps
    with pytest.raises(BootstrapInvalid) as info:
        read_description(app, 0, 1, b"", b"Traceback...\nImportError: no omnitron.worker\n")
    assert [str(i) for i in info.value.issues] == [
        f"{tmp_path}/boot.py: apps[0].bootstrap: cannot be described with {sys.executable}: "
        "ImportError: no omnitron.worker"
    ]
    assert info.value.identity is False


def test_describe_sync_gives_the_systems_in_start_order() -> None:
    ecosystem = load_config(SHOP / "omnitron.toml", environ={})
    systems, mismatches = describe_sync(ecosystem)
    assert mismatches == []
    shop = systems["shop"]
    assert [(p.name, p.module, p.instances) for p in shop.processes] == [
        ("users", "shop.users", 2),
        ("billing", "shop.billing", 1),
    ]
    assert [(s.process, s.index) for s in shop.slots] == [
        ("users", 0),
        ("users", 1),
        ("billing", 0),
    ]
