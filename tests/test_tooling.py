"""The project's tooling stays consistent: README, CI entry point, nox, benchmarks."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _quick_start() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```\w*\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the Quick start section has no code block"
    return block.group(1).splitlines()


def test_readme_quick_start_is_two_commands() -> None:
    lines = _quick_start()
    assert len(lines) == 2
    assert lines[0].endswith("omnitron up --foreground --config examples/quickstart/omnitron.toml")
    assert lines[1].endswith("-m pytest")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    lines = [
        line
        for line in script.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "set -euo pipefail"
    assert lines[-1] == _quick_start()[1]


def test_nox_sessions() -> None:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    sessions = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d).startswith("nox.session") for d in node.decorator_list)
    }
    # Slow sessions (mutate) exist beside the defaults but are never run by plain `nox` or CI.
    assert {"tests", "lint", "typecheck", "bench", "mutate"} <= sessions
    source = ast.unparse(tree)
    assert "nox.options.sessions = ['tests', 'lint', 'typecheck']" in source
    assert "nox.options.default_venv_backend = 'venv'" in source


# --------------------------------------------------------------------------- benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = ROOT / "benchmarks" / "restart_latency.py"
    spec = importlib.util.spec_from_file_location("restart_latency", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_percentile_is_nearest_rank(bench: ModuleType) -> None:
    samples = list(range(1, 101))
    assert bench.percentile(samples, 50) == 50
    assert bench.percentile(samples, 99) == 99
    assert bench.percentile(samples, 100) == 100
    assert bench.percentile([7], 99) == 7
    with pytest.raises(ValueError, match="no samples"):
        bench.percentile([], 50)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
async def test_benchmark_adapters_restart_a_notify_child(bench: ModuleType, tmp_path: Path) -> None:
    [minimal, _python] = bench.build_children(tmp_path)
    adapters = [bench.FloorAdapter(tmp_path), bench.SupervisionAdapter(tmp_path)]
    result = await bench.restart_latency(adapters, minimal, samples=5, warmup=1)
    assert result["floor"]["n"] == 5
    assert result["supervision"]["n"] == 5
    assert result["supervision"]["p50"] > 0
    assert set(result["supervision"]["overhead"]) == {"p50", "p90", "p99"}


# --------------------------------------------------------------------------- daemon benchmark


@pytest.fixture(scope="module")
def daemon_bench() -> ModuleType:
    path = ROOT / "benchmarks" / "daemon.py"
    spec = importlib.util.spec_from_file_location("daemon_bench", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_daemon_benchmark_configs_are_valid(daemon_bench: ModuleType, tmp_path: Path) -> None:
    from omnitron.config import load_config

    configs = {
        f"h{i}": f'project = "h{i}"\n' + apps
        for i, (_, apps) in enumerate(daemon_bench.hundred_layouts().values())
    }
    configs["storm"] = daemon_bench.storm_config("storm", ["/bin/true"], 50)
    configs["idle"] = daemon_bench.storm_config("idle", ["/bin/true"], None)
    counts = {}
    for name, text in configs.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        ecosystem = load_config(path)
        counts[name] = sum(app.instances for app in ecosystem.apps)
    assert counts == {"h0": 0, "h1": 100, "h2": 100, "storm": 20, "idle": 20}


@pytest.mark.slow
def test_daemon_benchmark_rpc_clients_against_the_echo_server(
    daemon_bench: ModuleType, tmp_path: Path
) -> None:
    with daemon_bench.echo_server(tmp_path) as path:
        sequential = daemon_bench.rate_sequential(path, 0.2)
        pipelined = daemon_bench.rate_raw_window(path, 0.2, window=4)
        skipped = daemon_bench.rate_raw_window(path, 0.2, window=4, decode=False)
    assert sequential["calls"] > 0
    assert pipelined["calls"] > 0
    assert pipelined["per_s"] > 0
    assert skipped["calls"] > 0


def test_the_benchmark_counts_replies_without_decoding_them(daemon_bench: ModuleType) -> None:
    import msgpack

    replies = [msgpack.packb([1, i, None, {"apps": [{"name": "a"}] * 50}]) for i in (1, 300, 70000)]
    data = b"".join(replies)
    assert daemon_bench._ok_replies(data) == (3, len(data))
    assert daemon_bench._ok_replies(data[:-1]) == (2, len(data) - len(replies[-1]))
    error = msgpack.packb([1, 5, {"code": "BUSY", "message": "full"}, None])
    with pytest.raises(daemon_bench.BenchmarkError, match="BUSY"):
        daemon_bench._ok_replies(replies[0] + error)
