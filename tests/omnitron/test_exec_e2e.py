"""``examples/shop`` end to end: the real CLI, a real daemon, real worker processes.

The example is copied into each test's project directory and run as a user
would: ``omnitron up``, ``omnitron exec``, ``omnitron reload``. The harness
(homes, cleanup, polling under a deadline) is the one of ``test_cli_e2e.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from test_cli_e2e import CLI_TIMEOUT, Omnitron, home, marked, omnitron, wait_for
from test_exec_describe import old_omnitron

from omnitron.rpc import RemoteError, connect_unix

__all__ = ["home", "omnitron"]  # fixtures used here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


def shop(omnitron: Omnitron, *, users: int = 2, app: str = "") -> Omnitron:
    """``examples/shop`` in the project directory (``users`` workers of ``users``)."""
    shutil.copytree(SHOP, omnitron.project, dirs_exist_ok=True)
    boot = omnitron.project / "bootstrap.py"
    boot.write_text(boot.read_text().replace("instances=2", f"instances={users}"))
    if app:
        config = omnitron.project / "omnitron.toml"
        config.write_text(config.read_text() + app)
    return omnitron


def exec_json(omnitron: Omnitron, *args: str) -> Any:
    result = omnitron.run("--json", "exec", "shop", *args)
    assert "Traceback (most recent call last)" not in result.stderr
    return result.returncode, json.loads(result.stdout) if result.stdout else None, result.stderr


def log_text(omnitron: Omnitron) -> str:
    path = Path(omnitron.home) / "logs" / "shop.log"
    return path.read_text() if path.exists() else ""


async def raw_exec(path: str, args: list[Any]) -> tuple[str, Any]:
    """``daemon.exec`` sent as raw msgpack-rpc bytes: ``("answered", response)`` or
    ``("closed", None)`` when the daemon closed the connection instead."""
    request = [
        0,
        1,
        "daemon.exec",
        [{"app": "shop", "service": "users", "method": "count", "args": args}],
    ]
    stream = await trio.open_unix_socket(path)
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):  # refused while still sending
            await stream.send_all(msgpack.packb(request))
        unpacker = msgpack.Unpacker(raw=False)
        with trio.fail_after(30):
            while True:
                try:
                    data = await stream.receive_some()
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    return "closed", None
                unpacker.feed(data)
                for message in unpacker:
                    return "answered", message


def worker_pids(omnitron: Omnitron, process: str) -> list[int]:
    [app] = omnitron.status()["apps"]
    return [p["pid"] for p in app["processes"] if p["name"] == process and p["pid"]]


# --------------------------------------------------------------------------- round trips


def test_exec_round_trips_with_args_and_structured_errors(omnitron: Omnitron) -> None:
    shop(omnitron).up()
    [app] = omnitron.wait_online("shop").values()
    assert app["mode"] == "bootstrap"
    assert [(p["name"], p["instance"]) for p in app["processes"]] == [
        ("users", 0),
        ("users", 1),
        ("billing", 2),  # instances are numbered across the app
    ]
    # Topology order: both users workers were online before billing started.
    events = omnitron.json("inspect", "shop")["recent_events"]
    online = [e["instance"] for e in events if e["kind"] == "online"]
    assert online == [0, 1, 2]

    found = omnitron.ok("exec", "shop", "users", "find_by_id", "u_1")
    assert json.loads(found.stdout) == {"id": "u_1", "name": "Ada", "plan": "pro"}
    # Round-robin over the two users workers.
    answered = [exec_json(omnitron, "users", "whoami")[1] for _ in range(4)]
    pids = [a["pid"] for a in answered]
    assert set(pids) == set(worker_pids(omnitron, "users"))
    assert pids[0] != pids[1]
    assert pids[0::2] == [pids[0]] * 2
    assert {a["process"] for a in answered} == {"users"}
    # JSON args when they parse (1250 is a number), strings otherwise; --kw too.
    # billing calls users through the daemon (its topology access).
    code, charged, _ = exec_json(
        omnitron, "billing", "charge", "u_1", "1250", "--kw", "currency=USD"
    )
    assert code == 0
    assert charged["result"] == {"uid": "u_1", "name": "Ada", "cents": 1250, "currency": "USD"}
    assert omnitron.ok("exec", "shop", "billing", "total", '"u_1"').stdout.strip() == "1250"

    # An exception in the worker: its type and message; the traceback on demand.
    failed = omnitron.run("exec", "shop", "users", "find_by_id", "u_9")
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == [
        "omnitron: UnknownUser: no user 'u_9'",
        "  (the worker's traceback: run again with --verbose)",
    ]
    verbose = omnitron.run("exec", "shop", "users", "find_by_id", "u_9", "--verbose")
    assert verbose.returncode == 1
    assert 'raise UnknownUser(f"no user {uid!r}")' in verbose.stderr
    code, report, _ = exec_json(omnitron, "users", "find_by_id", "u_9")
    assert code == 1
    error = report["error"]
    assert (error["code"], error["type"], error["message"]) == (
        "APP_ERROR",
        "UnknownUser",
        "no user 'u_9'",
    )
    assert error["traceback"].startswith("Traceback (most recent call last)")
    # An error in the callee reaches the consumer, which reports its own.
    code, report, _ = exec_json(omnitron, "billing", "charge", "u_9", "5")
    assert (code, report["error"]["type"]) == (1, "NotCharged")
    assert report["error"]["message"] == "cannot charge 'u_9': no user 'u_9'"
    # Arguments are checked against the signature before the call.
    code, report, _ = exec_json(omnitron, "users", "find_by_id", "1", "2")
    assert (code, report["error"]["code"]) == (1, "INVALID_ARGS")

    # A bootstrap broken since is a config error at reload-config; nothing changes.
    pids = {p["pid"] for p in omnitron.apps()["shop"]["processes"]}
    boot = omnitron.project / "bootstrap.py"
    boot.write_text(boot.read_text().replace('module="shop.billing", ', ""))
    refused = omnitron.run("reload-config")
    assert refused.returncode == 2
    assert f"{boot}: apps[0].bootstrap: processes[0].module: is required" in refused.stderr
    assert {p["pid"] for p in omnitron.apps()["shop"]["processes"]} == pids


def test_only_public_methods_are_reachable_and_a_hanging_one_times_out(
    omnitron: Omnitron,
) -> None:
    """AU-23: the child's allowlist, no traversal, bounded args, a per-call timeout."""
    shop(omnitron, users=1).up()
    omnitron.wait_online("shop")
    for service, method in [
        ("users", "_internal"),
        ("users", "__class__"),
        ("users", "os.system"),
        ("users", "__init__"),
        ("users", "nope"),
        ("os", "system"),
        ("worker", "hello"),
        ("__builtins__", "eval"),
    ]:
        code, report, _ = exec_json(omnitron, service, method, "id")
        assert code == 1, (service, method)
        assert report["error"]["code"] == "METHOD_NOT_FOUND", (service, method, report)

    # Bounded arguments: too many, or a frame over the limit, never reach a worker.
    socket_path = str(Path(omnitron.home) / "daemon.sock")
    code, reply = trio.run(raw_exec, socket_path, ["u_1"] * 300)
    assert (code, reply[2]["code"]) == ("answered", "INVALID_PARAMS")
    assert "args" in reply[2]["message"]
    code, reply = trio.run(raw_exec, socket_path, ["x" * 2_000_000])
    assert code == "closed" or reply[2]["code"] == "FRAME_TOO_LARGE", reply
    omnitron.ok("ping")
    assert exec_json(omnitron, "users", "count")[1]["result"] == 2

    # A hanging method: TIMEOUT after the call's timeout, and the worker (the only
    # one) answers the next call at once: the slot was freed.
    started = time.monotonic()
    code, report, _ = exec_json(omnitron, "users", "sleep", "600", "--call-timeout", "1")
    assert time.monotonic() - started < 10
    assert (code, report["error"]["code"]) == (1, "TIMEOUT")
    for _ in range(3):
        code, _, _ = exec_json(omnitron, "users", "sleep", "600", "--call-timeout", "0.2")
        assert code == 1
    assert exec_json(omnitron, "users", "count")[1]["result"] == 2


def test_a_worker_killed_mid_call_fails_that_call_and_the_next_goes_to_a_live_one(
    omnitron: Omnitron,
) -> None:
    shop(omnitron).up()
    omnitron.wait_online("shop")
    first = exec_json(omnitron, "users", "whoami")[1]["pid"]
    # Round-robin: the next call goes to the other users worker.
    [victim] = [pid for pid in worker_pids(omnitron, "users") if pid != first]
    call = subprocess.Popen(
        omnitron.argv("--json", "exec", "shop", "users", "sleep", "60", "--call-timeout", "60"),
        cwd=omnitron.project,
        env=omnitron.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: f"sleeping 60s in pid {victim}" in log_text(omnitron), "the call")
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        out, _ = call.communicate(timeout=CLI_TIMEOUT)
    finally:
        if call.poll() is None:
            call.kill()
            call.wait()
    assert time.monotonic() - killed_at < 10  # promptly, not after the 60 s timeout
    assert call.returncode == 1
    assert json.loads(out)["error"]["code"] == "WORKER_EXITED"
    code, report, _ = exec_json(omnitron, "users", "whoami")
    assert code == 0
    assert report["pid"] != victim


# --------------------------------------------------------------------------- load time


def test_a_topology_cycle_is_a_config_error_at_up(omnitron: Omnitron) -> None:
    shop(omnitron)
    boot = omnitron.project / "bootstrap.py"
    boot.write_text(
        boot.read_text()
        .replace('topology={"expose": True}', 'topology={"expose": True, "access": ["billing"]}')
        .replace('topology={"access": ["users"]}', 'topology={"expose": True, "access": ["users"]}')
    )
    up = omnitron.run("up")
    assert up.returncode == 2
    assert re.search(
        r"bootstrap\.py: apps\[0\]\.bootstrap: processes\[\d\]\.topology\.access: topology "
        r"cycle: (billing -> users -> billing|users -> billing -> users)",
        up.stderr,
    ), up.stderr
    assert omnitron.run("ping").returncode == 1  # no daemon was started


def test_a_worker_of_another_protocol_is_errored_without_a_restart_loop(
    omnitron: Omnitron, tmp_path: Path
) -> None:
    python = old_omnitron(tmp_path, protocol=2, version="0.0.9")
    shop(omnitron, app=f'python = "{python}"\n')
    up = omnitron.run("up")
    assert up.returncode == 1  # the app is not online
    warning = [line for line in up.stderr.splitlines() if "speaks worker protocol 2" in line]
    assert warning, up.stderr
    [app] = omnitron.status()["apps"]
    assert app["status"] == "errored"  # it cannot start as configured
    for text in ("is 0.0.9 and speaks worker protocol 2", "is 0.1.0 and speaks worker protocol 1"):
        assert text in app["last_error"]
    assert sys.executable in app["last_error"]  # the worker's interpreter
    # Given up on at once: no process ever ran, nothing restarts.
    assert app["restarts"] == 0
    assert app["processes"] == []
    assert [p for p in marked(omnitron.home, apps_only=True)] == []
    assert omnitron.status()["apps"][0]["status"] == "errored"
    inspected = json.loads(omnitron.run("--json", "inspect", "shop").stdout)
    assert inspected["recent_events"][-1]["kind"] == "errored"


# --------------------------------------------------------------------------- reload


def test_exec_loses_no_call_during_a_reload_of_a_three_worker_pool(omnitron: Omnitron) -> None:
    shop(omnitron, users=3).up()
    omnitron.wait_online("shop")
    before = set(worker_pids(omnitron, "users"))
    assert len(before) == 3
    socket_path = Path(omnitron.home) / "daemon.sock"
    answered: list[int] = []
    failures: list[str] = []

    async def main() -> subprocess.CompletedProcess[bytes]:
        done = trio.Event()

        async def load(client_id: int) -> None:
            async with connect_unix(socket_path) as client:
                while not done.is_set():
                    try:
                        reply = await client.call(  # a bare msgpack-rpc call
                            "daemon.exec",
                            app="shop",
                            service="users",
                            method="whoami",
                            timeout=10.0,
                        )
                    except RemoteError as exc:
                        failures.append(f"{exc.code}: {exc.message}")
                    else:
                        answered.append(reply["pid"])

        async with trio.open_nursery() as nursery:
            for client_id in range(4):
                nursery.start_soon(load, client_id)
            with trio.fail_after(CLI_TIMEOUT):
                reload = await trio.run_process(
                    omnitron.argv("reload", "shop"),
                    cwd=omnitron.project,
                    env=omnitron.env(),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            done.set()
        return reload

    reload = trio.run(main)
    assert reload.returncode == 0, reload.stderr
    after = set(worker_pids(omnitron, "users"))
    assert len(after) == 3
    assert not after & before  # every users worker was replaced
    assert failures == []
    assert set(answered) & before  # the old workers served during the reload
    assert set(answered) & after  # and the new ones after it
    assert len(answered) > 50


# --------------------------------------------------------------------------- roles, audit


def test_exec_is_an_operator_call_and_is_audited(omnitron: Omnitron, tmp_path: Path) -> None:
    """AU-23 / AU-25 over the TLS plane: a viewer is refused, an operator's call and
    the refusal each leave one audit record naming the app, never the arguments."""
    from test_planes_e2e import free_port

    tcp = free_port()
    started = shop(omnitron, users=1).ok("up", "--tcp", f"127.0.0.1:{tcp}")
    fingerprint = re.search(r"certificate fingerprint: (SHA256:\S+)", started.stderr)
    assert fingerprint, started.stderr
    tokens = {}
    for role in ("viewer", "operator"):
        path = tmp_path / f"{role}.token"
        path.write_text(omnitron.ok("auth", "token", "--role", role, "--subject", role).stdout)
        tokens[role] = path
    remote = ["--url", f"tls://127.0.0.1:{tcp}", "--fingerprint", fingerprint.group(1)]

    refused = omnitron.run(
        *remote, "--token-file", str(tokens["viewer"]), "exec", "shop", "users", "find_by_id", "u_1"
    )
    assert refused.returncode == 1
    assert "method daemon.exec requires role operator" in refused.stderr
    allowed = omnitron.run(
        *remote,
        "--token-file",
        str(tokens["operator"]),
        "exec",
        "shop",
        "users",
        "find_by_id",
        "u_2",
    )
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["name"] == "Grace"

    log = (Path(omnitron.home) / "logs" / "daemon.log").read_text()
    audits = [
        line for line in log.splitlines() if "event='audit'" in line and "daemon.exec" in line
    ]
    assert len(audits) == 2, audits
    assert "subject='viewer'" in audits[0]
    assert "result='FORBIDDEN'" in audits[0]
    assert "subject='operator'" in audits[1]
    assert "result='ok'" in audits[1]
    assert all("target='shop'" in a for a in audits)
    assert not any("u_1" in a or "u_2" in a for a in audits)  # never the arguments
