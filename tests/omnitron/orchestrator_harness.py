"""An orchestrator and its service running in the test's own Trio run (no socket, no CLI)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio

from omnitron.config import AppConfig, define_ecosystem
from omnitron.daemon._logs import LogCollector
from omnitron.daemon._orchestrator import Orchestrator
from omnitron.daemon._service import DaemonService

STOP_WITHIN = 20.0
"""Generous bound for stopping real processes when the block ends."""


@contextlib.asynccontextmanager
async def open_orchestrator(
    tmp_path: Path,
    apps: list[dict[str, Any]],
    *,
    leaf: Callable[[AppConfig, int], Any] | None = None,
    on_change: Callable[[], None] = lambda: None,
    **sections: Any,
) -> AsyncIterator[tuple[Orchestrator, DaemonService]]:
    """Run ``apps`` (config dicts) until the block ends, then stop them all.

    ``leaf`` replaces each process (see ``TreeBuilder``); ``on_change`` is called at
    every change of the records; ``sections`` are more of the config
    (``supervision={...}``).
    """
    ecosystem = define_ecosystem(project="test", apps=apps, base_dir=tmp_path, **sections)
    orchestrator = Orchestrator(
        ecosystem,
        home=tmp_path,
        logs=LogCollector(tmp_path / "logs"),
        subreaper=False,
        on_change=on_change,
        leaf=leaf,
    )
    service = DaemonService(
        orchestrator,
        home=tmp_path,
        config_path=tmp_path / "omnitron.toml",
        stack=None,
        request_shutdown=lambda: None,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(orchestrator.run)
        try:
            yield orchestrator, service
        finally:
            with trio.CancelScope(shield=True), trio.fail_after(STOP_WITHIN):
                await orchestrator.stop_everything()
            nursery.cancel_scope.cancel()
