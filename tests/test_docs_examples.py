"""The examples of docs/supervision.md run as written, on any machine with Python.

The "first tree" is run as a real program (on a free port instead of 7001) until
every child is ready; the virtual-time testing example is run by a real pytest,
with and without the ``trio_mode = true`` the page says it needs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "supervision.md"
MARKER = "SUPERVISION_DOCS_RUN"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Runs a program as a terminal does, with Ctrl-C raising KeyboardInterrupt. A
# test run started in the background of a script (``cmd &``, no job control)
# inherits SIGINT ignored, and Python keeps an inherited ignored SIGINT: the
# program would never see the Ctrl-C the test sends.
AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def python_block_after(heading: str) -> str:
    """The first ```python block after ``heading`` in docs/supervision.md."""
    text = DOCS.read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match is not None, heading
    return match[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.slow
def test_the_first_tree_starts_with_only_python(tmp_path: Path) -> None:
    code = python_block_after("## A first tree")
    assert "redis-server" not in code
    assert code.count("7001") == 2
    program = tmp_path / "first_tree.py"
    program.write_text(code.replace("7001", str(free_port())))
    marker = uuid.uuid4().hex
    output = tmp_path / "out.txt"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-c", AS_FROM_A_TERMINAL, str(program)],
            cwd=tmp_path,
            env={**os.environ, MARKER: marker},
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while "still here" not in output.read_text() or "ChildInfo(" not in output.read_text():
            assert proc.poll() is None, output.read_text()
            assert time.monotonic() < deadline, f"not ready in 30s:\n{output.read_text()}"
            time.sleep(0.1)
        text = output.read_text()
        for name in ("web", "worker", "heartbeat"):
            assert f"name='{name}'" in text, text
        proc.send_signal(signal.SIGINT)  # Ctrl-C: leaving the block stops the tree
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Say which stage it hung in: what it printed, and which children are left.
            pytest.fail(
                f"still running 60 s after Ctrl-C; children left: {marked(marker)}\n"
                f"{output.read_text()}"
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked(marker) == []


@pytest.mark.parametrize("trio_mode", [True, False])
def test_the_testing_example_needs_trio_mode(tmp_path: Path, trio_mode: bool) -> None:
    code = python_block_after("### Testing in virtual time")
    (tmp_path / "test_backoff.py").write_text(code)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\n" + ("trio_mode = true\n" if trio_mode else "") + "filterwarnings =\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_backoff.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if trio_mode:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 passed" in result.stdout
    else:
        assert "1 passed" not in result.stdout, result.stdout
