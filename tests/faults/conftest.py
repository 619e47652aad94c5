"""Fixtures of the fault suite: a temporary home and a real daemon, always cleaned up."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_harness import Daemon, kill_marked


@pytest.fixture
def home() -> Iterator[str]:
    path = tempfile.mkdtemp(dir="/tmp", prefix="omf-")
    try:
        yield path
    finally:
        kill_marked(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(home: str, tmp_path: Path) -> Iterator[Daemon]:
    project = tmp_path / "project"
    project.mkdir()
    result = Daemon(home, project)
    try:
        yield result
    finally:
        result.close()
