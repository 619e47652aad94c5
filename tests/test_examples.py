"""The examples run the way the README tells users to run them: as real programs.

Each run gets a marker in its environment, which the worker processes inherit, so
the tests can look for leftovers of exactly that run among all processes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "examples" / "embedded.py"
MARKER = "SUPERVISION_EXAMPLE_RUN"
WORKERS = ["embedded/pool/worker-1", "embedded/pool/worker-2", "embedded/pool/worker-3"]

DOCS = ROOT / "docs" / "supervision.md"


def example_env() -> tuple[dict[str, str], str]:
    marker = uuid.uuid4().hex
    return {**os.environ, MARKER: marker}, marker


def run_embedded(*args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    env, marker = example_env()
    result = subprocess.run(
        [sys.executable, str(EMBEDDED), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result, marker


def events(output: str, kind: str) -> list[tuple[str, int | None, str]]:
    """``(path, pid, detail)`` of every printed event of ``kind``, in order."""
    pattern = re.compile(rf"^event  {kind}\s+(\S+)(?: pid=(\d+))?(.*)$", re.MULTILINE)
    return [(m[1], int(m[2]) if m[2] else None, m[3].strip()) for m in pattern.finditer(output)]


def leftovers(marker: str, pids: list[int]) -> list[str]:
    """Processes of that run that still exist: marked ones, or ones with a reported pid."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == marker:
                found.append(f"{proc.pid} {proc.cmdline()}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if "worker.py" in " ".join(proc.cmdline()) or proc.status() == psutil.STATUS_ZOMBIE:
                found.append(f"{pid} {proc.status()}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def check_clean_run(stdout: str, stderr: str, marker: str) -> None:
    ready = events(stdout, "ChildReady")
    ready_paths = [path for path, _, _ in ready]
    for path in [*WORKERS, "embedded/pool", "embedded/ticker"]:
        assert path in ready_paths, stdout
    assert all(pid is not None for path, pid, _ in ready if path in WORKERS)
    for i in (1, 2, 3):
        # Output delivered line by line, under the child's name.
        assert f"[pool/worker-{i}] worker-{i} up (pid " in stdout
        assert f"[pool/worker-{i} stderr] warming up" in stdout

    # Stopped in reverse start order: the ticker, then the pool's workers, then the pool.
    stopped = [path for path, _, _ in events(stdout, "ChildStopped")]
    assert stopped == ["embedded/ticker", *reversed(WORKERS), "embedded/pool"], stdout
    # ...one at a time: each worker has said goodbye before the next one is signalled.
    goodbyes = re.findall(r"^\[pool/(worker-\d)\] got SIGTERM, exiting$", stdout, re.MULTILINE)
    assert goodbyes == ["worker-3", "worker-2", "worker-1"], stdout
    assert stdout.rstrip().endswith("stopped")
    assert "Traceback" not in stderr, stderr

    pids = [pid for path, pid, _ in ready if pid is not None]
    assert leftovers(marker, pids) == []


@pytest.mark.slow
def test_embedded_runs_for_a_duration_and_stops_cleanly() -> None:
    result, marker = run_embedded("--duration", "3")
    assert result.returncode == 0, result.stderr
    check_clean_run(result.stdout, result.stderr, marker)
    assert "[ticker] pool" in result.stdout  # the task printed which_children()


@pytest.mark.slow
def test_embedded_crash_demo_restarts_the_killed_worker() -> None:
    result, marker = run_embedded("--duration", "6", "--crash-demo")
    assert result.returncode == 0, result.stderr
    check_clean_run(result.stdout, result.stderr, marker)

    killed = re.search(r"crash demo: SIGKILL worker-2 \(pid (\d+)\)", result.stdout)
    assert killed is not None, result.stdout
    victim = int(killed[1])
    assert ("embedded/pool/worker-2", victim, "killed by SIGKILL") in events(
        result.stdout, "ChildExited"
    )
    assert ("embedded/pool/worker-2", None, "attempt 1 in 0.5s") in events(
        result.stdout, "ChildRestarting"
    )
    pids = [pid for path, pid, _ in events(result.stdout, "ChildReady") if path == WORKERS[1]]
    assert len(pids) == 2
    assert pids[0] == victim != pids[1]


@pytest.mark.slow
async def test_embedded_ctrl_c_stops_the_tree() -> None:
    env, marker = example_env()
    process = await trio.lowlevel.open_process(
        [sys.executable, str(EMBEDDED)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, like a job in a terminal
    )
    assert process.stdout is not None
    assert process.stderr is not None
    stdout = b""
    try:
        with trio.fail_after(60):
            while b"running; press Ctrl-C to stop" not in stdout:
                chunk = await process.stdout.receive_some()
                assert chunk, stdout.decode()
                stdout += chunk
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            async for chunk in process.stdout:
                stdout += chunk
            stderr = b"".join([chunk async for chunk in process.stderr])
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    assert code == 0, stderr.decode()
    assert "got SIGINT" in stdout.decode()
    check_clean_run(stdout.decode(), stderr.decode(), marker)


@pytest.mark.parametrize("name", ["embedded.py", "worker.py"])
def test_docs_show_the_example_verbatim(name: str) -> None:
    text = (ROOT / "examples" / name).read_text()
    assert f"```python\n{text}```" in DOCS.read_text(), f"update the copy of {name} in {DOCS}"


# --------------------------------------------------------------------------- quickstart

QUICKSTART = ROOT / "examples" / "quickstart" / "omnitron.toml"
POLL_INTERVAL = 0.05  # the daemon is another process: poll its socket under a deadline


def _home_processes(home: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("OMNITRON_HOME") == home:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quickstart_on_free_ports(tmp_path: Path) -> tuple[Path, int]:
    """A copy of examples/quickstart whose store and API listen on free ports.

    The example's fixed ports may be taken on a test machine; everything else in
    the copy is the example as shipped. Returns the copied config and the API port.
    """
    copy = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART.parent, copy)
    store, api = free_port(), free_port()
    config = copy / "omnitron.toml"
    text = config.read_text()
    assert text.count("7801") == 3, "the example's store port moved: update this test"
    assert text.count("7802") == 1, "the example's API port moved: update this test"
    config.write_text(text.replace("7801", str(store)).replace("7802", str(api)))
    return config, api


@pytest.mark.slow
async def test_quickstart_runs_with_the_readme_command(tmp_path: Path) -> None:
    """README line 1: the daemon in the foreground on examples/quickstart."""
    import tempfile

    from omnitron.rpc._errors import RpcError
    from omnitron.rpc.sync_client import connect_unix_sync

    home = tempfile.mkdtemp(prefix="omq-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNITRON_", "NOTIFY_"))}
    env["OMNITRON_HOME"] = home
    config, api_port = quickstart_on_free_ports(tmp_path)
    command = [sys.executable, "-m", "omnitron", "up", "--foreground", "--config", str(config)]
    errors = tmp_path / "stderr"
    with errors.open("wb") as sink:
        proc = await trio.lowlevel.open_process(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        status: dict[str, Any] = {}
        with trio.fail_after(60):
            while not (status and all(a["status"] == "online" for a in status["apps"])):
                assert proc.returncode is None, errors.read_text()
                await trio.sleep(POLL_INTERVAL)
                try:
                    with connect_unix_sync(os.path.join(home, "daemon.sock"), timeout=5) as client:
                        status = client.call("daemon.status")
                except RpcError:  # not answering yet
                    status = {}
        assert [app["name"] for app in status["apps"]] == ["store", "api", "worker", "clock"]
        body = await trio.to_thread.run_sync(_get, f"http://127.0.0.1:{api_port}/")
        assert body.startswith("hello from omnitron (hit ")
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            await proc.wait()
        assert proc.returncode == 0, errors.read_text()
        assert "Traceback" not in errors.read_text()
        assert _home_processes(home) == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for leftover in _home_processes(home):
            leftover.kill()


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
