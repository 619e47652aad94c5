"""A config reload that changes only ``watch`` moves the watcher, not the app: real
processes and real files, in the test's own Trio run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from orchestrator_harness import open_orchestrator

from omnitron.daemon._orchestrator import Orchestrator

pytestmark = pytest.mark.slow

SLEEP = [sys.executable, "-c", "import time; time.sleep(3600)"]


def _toml(watch: str) -> str:
    command = ", ".join(f'"{part}"' for part in SLEEP)
    return f'project = "test"\n\n[[apps]]\nname = "api"\ncommand = [{command}]\nwatch = {watch}\n'


async def _online_pid(orchestrator: Orchestrator) -> int:
    with trio.fail_after(20):
        while True:
            record = orchestrator.apps["api"]
            process = record.processes.get(0)
            if process is not None and process.pid and process.status.value == "online":
                return int(process.pid)
            await trio.sleep(0.05)


async def test_a_watch_only_change_keeps_the_process_and_moves_the_watcher(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = tmp_path / "omnitron.toml"
    config.write_text(_toml('"a"'))
    app = {"name": "api", "command": SLEEP, "watch": "a"}
    async with (
        open_orchestrator(tmp_path, [app]) as (orchestrator, service),
        trio.open_nursery() as nursery,
    ):
        await nursery.start(service.watching.run)
        pid = await _online_pid(orchestrator)
        assert service.watching.status("api")[0]["directory"] == str(tmp_path / "a")

        config.write_text(_toml('{ directory = "b", debounce = "1s" }'))
        result = await service.reload_config(dry_run=False)
        assert result["changed"] == {
            "api": [
                f"watch.directory: {tmp_path / 'a'} -> {tmp_path / 'b'}",
                "watch.debounce: 0.3 -> 1.0",
            ]
        }
        [status] = service.watching.status("api")
        assert (status["watching"], status["directory"]) == (True, str(tmp_path / "b"))
        assert status["debounce"] == 1.0
        assert await _online_pid(orchestrator) == pid  # not restarted

        # Any other change still restarts the app.
        config.write_text(
            _toml('"b"').replace('name = "api"', 'name = "api"\ninstances = 1\nenv = { X = "1" }')
        )
        await service.reload_config(dry_run=False)
        assert await _online_pid(orchestrator) != pid
        nursery.cancel_scope.cancel()
