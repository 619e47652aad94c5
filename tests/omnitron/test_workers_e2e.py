"""``examples/shop`` end to end, for what a module-worker app's operator sees: the
keys its config ignores, one instance numbering in every command, ``scale``
refused with the reason, and ``reload`` applying a changed process list.

The real CLI in a subprocess, a real daemon, real worker processes (the harness of
``test_exec_e2e.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from test_cli_e2e import CLI_TIMEOUT, Omnitron, home, omnitron, wait_for
from test_exec_e2e import shop, worker_pids

from omnitron.rpc import RemoteError, connect_unix

__all__ = ["home", "omnitron"]  # fixtures used here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def entries(app: dict[str, Any]) -> list[tuple[str, int]]:
    return [(p["name"], p["instance"]) for p in app["processes"]]


def test_check_warns_about_instances_on_a_bootstrap_app(omnitron: Omnitron) -> None:
    shop(omnitron, app="instances = 4\n")
    check = omnitron.ok("check")
    assert (
        "apps[0].instances: has no effect on a module-worker app: each process's number "
        "of workers is its Process(..., instances=N) in the bootstrap"
    ) in check.stderr
    report = json.loads(omnitron.ok("--json", "check").stdout)
    assert [issue["path"] for issue in report["inert"]] == ["apps[0].instances"]


def test_status_logs_and_inspect_number_the_workers_alike(omnitron: Omnitron) -> None:
    shop(omnitron).up()
    [app] = omnitron.wait_online("shop").values()
    # One number per worker across the app, in start order, in every command.
    assert entries(app) == [("users", 0), ("users", 1), ("billing", 2)]
    by_pid = {p["pid"]: p["instance"] for p in app["processes"]}
    events = omnitron.json("inspect", "shop")["recent_events"]
    online = {e["pid"]: e["instance"] for e in events if e["kind"] == "online"}
    assert online == by_pid
    metrics = omnitron.json("metrics", "shop")["apps"][0]["processes"]
    assert {p["pid"]: p["instance"] for p in metrics} == by_pid
    # A line a worker prints is labelled with the number status shows for it.
    omnitron.ok("exec", "shop", "users", "sleep", "0")

    def printed() -> list[dict[str, Any]] | None:
        out = omnitron.ok("--json", "logs", "shop", "--lines", "200").stdout
        lines = [json.loads(text) for text in out.splitlines()]
        hits = [line for line in lines if line["line"].startswith("sleeping 0s in pid")]
        return hits or None

    [line] = wait_for(printed, "the worker's line in the log")
    pid = int(line["line"].rsplit(" ", 1)[1])
    assert line["instance"] == by_pid[pid]


def test_scale_of_a_worker_app_is_refused_naming_why(omnitron: Omnitron) -> None:
    shop(omnitron).up()
    omnitron.wait_online("shop")
    scale = omnitron.run("scale", "shop", "4")
    assert scale.returncode == 2  # refused: the request cannot apply to this app
    assert "each of its processes has its own (Process(..., instances=N)" in scale.stderr
    assert "`omnitron reload shop` applies it" in scale.stderr
    assert len(omnitron.apps()["shop"]["processes"]) == 3


def set_bootstrap(omnitron: Omnitron, users: int, billing: bool = True) -> None:
    text = (
        "from omnitron import Process, define_system\n"
        "processes = [Process(name='users', module='shop.users', "
        f"instances={users}, topology={{'expose': True}})]\n"
    )
    if billing:
        text += (
            "processes.append(Process(name='billing', module='shop.billing', "
            "topology={'access': ['users']}))\n"
        )
    text += "system = define_system(name='shop', version='1.1', processes=processes)\n"
    (omnitron.project / "bootstrap.py").write_text(text)


def test_reload_applies_a_changed_process_list_without_downtime(omnitron: Omnitron) -> None:
    shop(omnitron).up()
    [app] = omnitron.wait_online("shop").values()
    old = {p["pid"] for p in app["processes"]}
    # Grow: three users workers.
    set_bootstrap(omnitron, users=3)
    omnitron.ok("reload", "shop")
    [app] = omnitron.wait_online("shop").values()
    assert entries(app) == [("users", 0), ("users", 1), ("users", 2), ("billing", 3)]
    assert app["instances"] == 4
    assert not old & {p["pid"] for p in app["processes"]}  # every worker replaced
    assert len(set(worker_pids(omnitron, "users"))) == 3
    charged = json.loads(omnitron.ok("exec", "shop", "billing", "charge", "u_1", "5").stdout)
    assert charged["cents"] == 5
    # Shrink: billing removed, one users worker.
    set_bootstrap(omnitron, users=1, billing=False)
    omnitron.ok("reload", "shop")
    [app] = omnitron.wait_online("shop").values()
    assert entries(app) == [("users", 0)]
    assert app["instances"] == 1
    missing = omnitron.run("exec", "shop", "billing", "total")
    assert missing.returncode == 1
    assert "no service 'billing'" in missing.stderr
    assert omnitron.json("exec", "shop", "users", "count")["result"] >= 1
    events = [e["kind"] for e in omnitron.json("inspect", "shop")["recent_events"]]
    assert events.count("reloaded") == 2


def test_a_reload_with_a_broken_bootstrap_keeps_the_running_workers(
    omnitron: Omnitron,
) -> None:
    shop(omnitron).up()
    [app] = omnitron.wait_online("shop").values()
    before = {p["pid"] for p in app["processes"]}
    (omnitron.project / "bootstrap.py").write_text("raise RuntimeError('half saved')\n")
    reload = omnitron.run("reload", "shop")
    assert reload.returncode == 1
    assert "not reloaded, the running workers were kept" in reload.stderr
    assert "RuntimeError: half saved" in reload.stderr
    [app] = omnitron.wait_online("shop").values()
    assert {p["pid"] for p in app["processes"]} == before


def test_access_by_service_name_as_in_spec(omnitron: Omnitron) -> None:
    # The users service is served by a process named otherwise; billing names the
    # service in its access, as SPEC's example does.
    shop(omnitron)
    boot = omnitron.project / "bootstrap.py"
    boot.write_text(boot.read_text().replace('name="users"', 'name="accounts"'))
    assert 'access": ["users"]' in boot.read_text()
    check = omnitron.ok("check")
    assert "billing  (shop.billing; after accounts)" in check.stdout
    omnitron.up()
    [app] = omnitron.wait_online("shop").values()
    assert entries(app) == [("accounts", 0), ("accounts", 1), ("billing", 2)]
    # billing's call to the users service is allowed: its access names it.
    charged = json.loads(omnitron.ok("exec", "shop", "billing", "charge", "u_1", "7").stdout)
    assert (charged["name"], charged["cents"]) == ("Ada", 7)


def test_no_call_fails_while_a_reload_changes_the_process_list(omnitron: Omnitron) -> None:
    """users 2 -> 3 moves billing from instance 2 to 3: the new billing worker is
    ready before the old one is replaced, and users never drops below two."""
    shop(omnitron).up()
    omnitron.wait_online("shop")
    set_bootstrap(omnitron, users=3)
    socket_path = Path(omnitron.home) / "daemon.sock"
    answered: dict[str, int] = {"users": 0, "billing": 0}
    failures: list[str] = []

    errors = omnitron.project.parent / "reload.err"

    async def main() -> int:
        done = trio.Event()

        async def load(service: str, method: str, args: list[str]) -> None:
            async with connect_unix(socket_path) as client:
                while not done.is_set():
                    try:
                        await client.call(
                            "daemon.exec",
                            app="shop",
                            service=service,
                            method=method,
                            args=args,
                            timeout=10.0,
                        )
                    except RemoteError as exc:
                        failures.append(f"{service}: {exc.code}: {exc.message}")
                    else:
                        answered[service] += 1

        calls = (("users", "whoami", []), ("users", "count", []), ("billing", "total", ["u_1"]))
        async with trio.open_nursery() as nursery:
            for service, method, args in calls:
                nursery.start_soon(load, service, method, args)
            # The reload runs while the clients call; its stderr goes to a file.
            with errors.open("wb") as sink, trio.fail_after(CLI_TIMEOUT):
                process = await trio.lowlevel.open_process(
                    omnitron.argv("reload", "shop"),
                    cwd=omnitron.project,
                    env=omnitron.env(),
                    stdout=subprocess.DEVNULL,
                    stderr=sink,
                )
                code = await process.wait()
            done.set()
        return code

    assert trio.run(main) == 0, errors.read_text()
    assert failures == []
    assert answered["users"] > 20
    assert answered["billing"] > 10
    [app] = omnitron.wait_online("shop").values()
    assert entries(app) == [("users", 0), ("users", 1), ("users", 2), ("billing", 3)]
