"""describe_bootstrap: the daemon runs describe with an app's interpreter."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio
from worker_process import BOOTSTRAP

from omnitron import __version__
from omnitron._system import PROTOCOL_VERSION, check_identity
from omnitron.daemon._workers import DescribeError, describe_bootstrap

pytestmark = pytest.mark.slow


async def test_describe_returns_the_system() -> None:
    with trio.fail_after(60):
        answer = await describe_bootstrap(sys.executable, BOOTSTRAP, 60)
    assert check_identity(answer) is None
    assert answer["protocol"] == PROTOCOL_VERSION
    assert answer["python"] == sys.executable
    assert [p["name"] for p in answer["system"]["processes"]] == ["calc", "broken", "missing"]
    assert answer["system"]["start_order"] == ["calc", "broken", "missing"]


async def test_describe_returns_definition_errors(tmp_path: Path) -> None:
    bootstrap = tmp_path / "bootstrap.py"
    bootstrap.write_text(
        "from omnitron import define_system, Process\n"
        "system = define_system(name='x', version='1', processes=[Process(name='a')])\n"
    )
    answer = await describe_bootstrap(sys.executable, bootstrap, 60)
    assert answer["errors"] == [{"path": "processes[0].module", "message": "is required"}]


async def test_a_missing_interpreter_is_named(tmp_path: Path) -> None:
    missing = tmp_path / ".venv" / "bin" / "python"
    with pytest.raises(DescribeError, match=f"interpreter not found: {missing}"):
        await describe_bootstrap(missing, BOOTSTRAP, 60)


async def test_an_interpreter_that_is_not_executable(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    with pytest.raises(DescribeError, match=f"interpreter is not executable: {python}"):
        await describe_bootstrap(python, BOOTSTRAP, 60)


def _script(tmp_path: Path, body: str) -> Path:
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n" + body)
    python.chmod(0o755)
    return python


async def test_an_interpreter_without_omnitron() -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("tests run outside a virtual environment: the base interpreter has omnitron")
    base = sys._base_executable  # type: ignore[attr-defined]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with pytest.raises(DescribeError, match=f"omnitron is not installed for {base}"):
        await describe_bootstrap(base, BOOTSTRAP, 60, env=env)


async def test_a_crashing_interpreter_quotes_its_stderr(tmp_path: Path) -> None:
    python = _script(tmp_path, "echo 'fatal: broken install' >&2\nexit 7\n")
    with pytest.raises(DescribeError) as info:
        await describe_bootstrap(python, BOOTSTRAP, 60)
    assert "failed (exit code 7): fatal: broken install" in str(info.value)


async def test_a_describe_that_hangs_is_cut_at_the_timeout(tmp_path: Path) -> None:
    python = _script(tmp_path, "exec sleep 600\n")
    with trio.fail_after(30), pytest.raises(DescribeError, match=r"took more than 0\.5s"):
        await describe_bootstrap(python, BOOTSTRAP, 0.5)


async def test_describe_output_is_bounded(tmp_path: Path) -> None:
    python = _script(tmp_path, "exec head -c 3000000 /dev/zero\n")
    with trio.fail_after(30), pytest.raises(DescribeError, match="printed more than 1048576"):
        await describe_bootstrap(python, BOOTSTRAP, 30)


async def test_a_worker_speaking_another_protocol_is_named(tmp_path: Path) -> None:
    answer = {"protocol": 99, "omnitron": "9.0.0", "python": "/opt/app/.venv/bin/python"}
    python = _script(tmp_path, f"echo '{json.dumps(answer)}'\n")
    described = await describe_bootstrap(python, BOOTSTRAP, 30)
    message = check_identity(described)
    assert message is not None
    assert "9.0.0" in message
    assert "worker protocol 99" in message
    assert "/opt/app/.venv/bin/python" in message
    assert f"this daemon's omnitron is {__version__}" in message
