"""Remote daemons by alias and fleet fan-out, end to end.

Real daemons (each its own home and project, the TCP plane on a free port),
started with the real CLI; a separate client home holds ``remotes.toml`` and
``known_hosts``, as a laptop driving several hosts would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli_e2e import CLI_TIMEOUT, Omnitron, app_toml, kill_home, wait_for
from test_planes_e2e import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

WEB = app_toml("web")
OTHER = app_toml("other")
CRASHING = app_toml(
    "flaky",
    "raise SystemExit(3)",
    restart_policy='{ max_restarts = 0, window = "60s" }',
)


class Daemon:
    """One daemon with a TCP plane; ``token`` is a file holding an admin token."""

    def __init__(self, runner: Omnitron, port: int, fingerprint: str, token: Path) -> None:
        self.runner = runner
        self.port = port
        self.url = f"tls://127.0.0.1:{port}"
        self.fingerprint = fingerprint
        self.token = token


class Fleet:
    """Daemons started on demand, and the client that drives them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemons: dict[str, Daemon] = {}
        client_home = tempfile.mkdtemp(dir="/tmp", prefix="omt-client-")
        project = root / "client"
        project.mkdir()
        self.client = Omnitron(client_home, project)

    def start(self, name: str, config: str = WEB, role: str = "admin") -> Daemon:
        home = tempfile.mkdtemp(dir="/tmp", prefix=f"omt-{name}-")
        project = self.root / name
        project.mkdir()
        (project / "omnitron.toml").write_text(config)
        runner = Omnitron(home, project)
        port = free_port()
        started = runner.run("up", "--tcp", f"127.0.0.1:{port}")  # 1 if an app errored
        runner.ok("ping")
        found = re.search(r"certificate fingerprint: (SHA256:\S+)", started.stderr)
        assert found, started.stderr
        token = self.root / f"{name}.token"
        token.write_text(runner.ok("auth", "token", "--role", role).stdout)
        daemon = Daemon(runner, port, found.group(1), token)
        self.daemons[name] = daemon
        return daemon

    def add(self, name: str, daemon: Daemon, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.client.ok(
            "remote",
            "add",
            name,
            daemon.url,
            "--token-file",
            str(daemon.token),
            "--fingerprint",
            daemon.fingerprint,
            *extra,
        )

    def close(self) -> None:
        for daemon in self.daemons.values():
            kill_home(daemon.runner.home)
            shutil.rmtree(daemon.runner.home, ignore_errors=True)
        shutil.rmtree(self.client.home, ignore_errors=True)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()


def stable(value: Any) -> Any:
    """``value`` without what changes from one call to the next (uptime, cpu, memory)."""
    if isinstance(value, dict):
        return {
            k: stable(v) for k, v in value.items() if k not in {"uptime", "cpu", "memory", "rss"}
        }
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def masked(table: str) -> list[str]:
    """A table's lines with figures that drift (durations, sizes, CPU) masked, spaces collapsed."""
    figures = re.compile(r"\b\d+(?:\.\d+)?(?:ms|s|m|h|d|%|B|KB|MB|GB)(?!\w)")
    return [" ".join(figures.sub("N", line).split()) for line in table.splitlines()]


def pid_of(daemon: Daemon, app: str) -> int:
    apps = daemon.runner.apps()
    pid = apps[app]["processes"][0]["pid"]
    assert isinstance(pid, int)
    return pid


# --------------------------------------------------------------------------- aliases


def test_remote_add_ls_rm_keep_tokens_private(fleet: Fleet) -> None:
    a = fleet.start("a")
    client = fleet.client
    remotes = Path(client.home) / "remotes.toml"
    token = a.token.read_text().strip()

    # Unknown certificate and no terminal: refused, the fingerprint shown, nothing saved.
    unknown = client.run("remote", "add", "a", a.url, "--token-file", str(a.token))
    assert unknown.returncode == 1, unknown.stderr
    assert "not known" in unknown.stderr
    assert a.fingerprint in unknown.stderr
    assert not remotes.exists()

    for args, reason in (
        (["bad,name", a.url], "bad remote name"),
        (["_x", a.url], "bad remote name"),
        (["x" * 64, a.url], "bad remote name"),
        (["a", "http://127.0.0.1:1"], "must start with tls://"),
        (["a", "ws://127.0.0.1:1"], "remotes are tls://HOST:PORT"),
        (["a", "tls://127.0.0.1:99999"], "port must be a number"),
        (["a", a.url, "--fingerprint", "SHA256:short"], "bad fingerprint"),
        (["a", a.url, "--token-env", "NOT A VAR"], "not an environment variable name"),
    ):
        refused = client.run("remote", "add", *args, "--no-verify")
        assert refused.returncode == 2, (args, refused.stderr)
        assert reason in refused.stderr, (args, refused.stderr)
    assert not remotes.exists()

    added = fleet.add("a", a)
    assert a.fingerprint in added.stdout
    assert stat.S_IMODE(remotes.stat().st_mode) == 0o600
    assert token in remotes.read_text()  # stored, so the token file may go

    os.environ.pop("OMT_TEST_TOKEN", None)
    client.ok(
        "remote",
        "add",
        "later",
        "tls://192.0.2.1:9700",
        "--token-env",
        "OMT_TEST_TOKEN",
        "--no-verify",
    )
    again = client.run("remote", "add", "a", a.url, "--no-verify")
    assert again.returncode == 2
    assert "remote 'a' exists" in again.stderr

    listed = client.ok("remote", "ls")
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["a"][1:] == [a.url, a.fingerprint, "yes"]
    assert rows["later"][1:] == ["tls://192.0.2.1:9700", "-", "no", "($OMT_TEST_TOKEN)"]
    as_json = client.json("remote", "ls")
    assert as_json == [
        {"name": "a", "url": a.url, "fingerprint": a.fingerprint, "token": True, "token_env": None},
        {
            "name": "later",
            "url": "tls://192.0.2.1:9700",
            "fingerprint": None,
            "token": False,
            "token_env": "OMT_TEST_TOKEN",
        },
    ]
    for output in (added, listed):
        assert token not in output.stdout + output.stderr
    assert token not in json.dumps(as_json)
    unset = client.run("-r", "later", "status")
    assert unset.returncode == 1
    assert "reads its token from $OMT_TEST_TOKEN, which is not set" in unset.stderr

    # A remotes file others may read is refused, as ssh refuses a readable key.
    remotes.chmod(0o644)
    for args in (["-r", "a", "status"], ["remote", "ls"]):
        exposed = client.run(*args)
        assert exposed.returncode == 1, exposed.stderr
        assert "is readable by others (mode 0644)" in exposed.stderr
        assert "chmod 600" in exposed.stderr
    remotes.chmod(0o600)

    client.ok("remote", "rm", "later")
    assert "later" not in client.ok("remote", "ls").stdout
    missing = client.run("remote", "rm", "later")
    assert missing.returncode == 1
    assert "no remote named 'later'" in missing.stderr
    typo = client.run("-r", "nosuch", "status")
    assert typo.returncode == 1
    assert "no remote named 'nosuch'" in typo.stderr
    assert "known: a" in typo.stderr


def test_a_different_certificate_is_refused(fleet: Fleet) -> None:
    a, b = fleet.start("a"), fleet.start("b")
    client = fleet.client
    # Verifying an alias against the wrong fingerprint: refused, nothing saved.
    wrong = client.run(
        "remote", "add", "a", a.url, "--token-file", str(a.token), "--fingerprint", b.fingerprint
    )
    assert wrong.returncode == 1
    assert "has changed" in wrong.stderr
    assert "not added" in wrong.stderr
    assert not (Path(client.home) / "remotes.toml").exists()
    # An alias pinned to a's certificate, but b answers at its address.
    client.ok(
        "remote", "add", "moved", b.url, "--token-file", str(b.token), "--fingerprint",
        a.fingerprint, "--no-verify",
    )  # fmt: skip
    for args in (["-r", "moved", "status"], ["-r", "moved", "logs", "-f"]):
        changed = client.run(*args)
        assert changed.returncode == 1, changed.stderr
        assert f"presents {b.fingerprint}" in changed.stderr
        assert f"but {a.fingerprint} is pinned" in changed.stderr
        assert f"pin it with `omnitron remote add moved {b.url} --token-file FILE" in changed.stderr
        assert "Traceback" not in changed.stderr
    fanned = client.run("-r", "moved,moved2", "status")
    assert fanned.returncode == 1  # moved2 is unknown: nothing runs
    client.ok(
        "remote", "add", "b", b.url, "--token-file", str(b.token), "--fingerprint", b.fingerprint
    )
    both = client.run("--json", "-r", "moved,b", "status")
    assert both.returncode == 1
    report = json.loads(both.stdout)
    assert "has changed" in report["moved"]["error"]
    assert [app["name"] for app in report["b"]["apps"]] == ["web"]


# --------------------------------------------------------------------------- one remote


def test_one_remote_behaves_like_the_local_daemon(fleet: Fleet) -> None:
    a = fleet.start("a", WEB + CRASHING)
    local = a.runner
    client = fleet.client
    fleet.add("a", a)
    local.wait_apps(lambda apps: apps["flaky"]["status"] == "crashed", "flaky crashed")

    # status: the same JSON, the same table shape, the same exit code (1: flaky crashed).
    mine, theirs = local.run("--json", "status"), client.run("-r", "a", "--json", "status")
    assert (mine.returncode, theirs.returncode) == (1, 1)
    assert stable(json.loads(theirs.stdout)) == stable(json.loads(mine.stdout))
    assert theirs.stderr == mine.stderr
    table_local, table_remote = local.run("status").stdout, client.run("status", "-r", "a").stdout
    assert masked(table_remote) == masked(table_local)

    # The lifecycle, through the alias; checked on the daemon's own socket.
    first = pid_of(a, "web")
    stopped = client.ok("-r", "a", "stop", "web")
    assert stopped.stdout.strip() == "stopped: web"
    assert local.apps()["web"]["status"] == "stopped"
    assert client.ok("-r", "a", "start", "web").stdout.strip() == "started: web"
    local.wait_online("web")
    client.ok("-r", "a", "restart", "web")
    assert pid_of(a, "web") != first

    # Errors: the same message and exit code as locally.
    for args in (["stop", "nosuch"], ["inspect", "nosuch"], ["scale", "web", "0"]):
        here, there = local.run(*args), client.run("-r", "a", *args)
        assert there.returncode == here.returncode != 0, (args, there.stderr)
        assert there.stderr == here.stderr
    for args in (["list"], ["graph"], ["env", "web"], ["auth", "ls"], ["secret", "ls"]):
        here, there = local.run("--json", *args), client.run("--json", "-r", "a", *args)
        assert there.returncode == here.returncode == 0, (args, there.stderr)
        assert stable(json.loads(there.stdout)) == stable(json.loads(here.stdout))
    metrics = json.loads(client.ok("-r", "a", "--json", "metrics").stdout)
    assert [app["name"] for app in metrics["apps"]] == ["web", "flaky"]

    # Local-only commands refuse the option; so do commands that need one daemon.
    for args, reason in (
        (["up"], "`omnitron up` acts on this machine only"),
        (["kill"], "`omnitron kill` acts on this machine only"),
        (["check"], "`omnitron check` acts on this machine only"),
        (["startup", "systemd", "--print"], "`omnitron startup systemd` acts on this machine"),
        (["remote", "ls"], "`omnitron remote ls` acts on this machine only"),
    ):
        refused = client.run("-r", "a", *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert reason in refused.stderr
    assert client.run("restart", "web", "--rolling").returncode == 2


def test_logs_follow_over_a_remote_ends_when_the_daemon_stops(fleet: Fleet) -> None:
    a = fleet.start("a")
    fleet.add("a", a)
    client = fleet.client
    first = pid_of(a, "web")
    output = fleet.root / "follow.out"
    errors = fleet.root / "follow.err"
    with output.open("w") as out, errors.open("w") as err:
        follower = subprocess.Popen(
            client.argv("-r", "a", "logs", "--follow", "-n", "5"),
            cwd=client.project,
            env=client.env(),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for(lambda: f"online (pid {first})" in output.read_text(), "the first line")
        a.runner.ok("restart", "web")
        second = pid_of(a, "web")
        wait_for(lambda: f"online (pid {second})" in output.read_text(), "the restart, live")
        a.runner.ok("down")
        code = follower.wait(timeout=CLI_TIMEOUT)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert code == 0, errors.read_text()
    assert "the daemon closed the connection (stopped)" in errors.read_text()
    assert "Traceback" not in errors.read_text()


def test_down_over_a_remote_stops_that_daemon(fleet: Fleet) -> None:
    a = fleet.start("a")
    fleet.add("a", a)
    forced = fleet.client.run("-r", "a", "down", "--force")
    assert forced.returncode == 2
    assert "kills processes on this machine" in forced.stderr
    stopped = fleet.client.ok("-r", "a", "down")
    assert stopped.stdout.startswith("daemon stopped (pid ")
    gone = a.runner.run("ping")
    assert gone.returncode == 1
    assert "not running" in gone.stderr


# --------------------------------------------------------------------------- fleets


def test_fan_out_shows_a_dead_host_without_failing_the_others(fleet: Fleet) -> None:
    a, b = fleet.start("a"), fleet.start("b", WEB + OTHER)
    client = fleet.client
    fleet.add("a", a)
    fleet.add("b", b)
    dead = f"tls://127.0.0.1:{free_port()}"
    client.ok("remote", "add", "dead", dead, "--no-verify")

    result = client.run("-r", "a,dead,b", "status")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "HOST",
        "NAME",
        "STATUS",
        "PID",
        "UPTIME",
        "RESTARTS",
        "CPU",
        "MEMORY",
    ]
    rows = [line.split()[:3] for line in lines[1:4]]
    assert rows == [["a", "web", "online"], ["dead", "-", "unreachable"], ["b", "web", "online"]]
    assert lines[4].split()[:3] == ["b", "other", "online"]
    assert f"dead: cannot reach the daemon at {dead}: nothing is listening" in result.stdout
    assert "failed on 1 of 3 hosts: dead" in result.stderr

    report = json.loads(client.run("--json", "status", "-r", "a,dead,b").stdout)
    assert list(report) == ["a", "dead", "b"]
    assert report["dead"] == {
        "error": f"cannot reach the daemon at {dead}: nothing is listening on the socket"
    }
    assert stable(report["b"]) == stable(b.runner.status())
    assert [app["name"] for app in report["a"]["apps"]] == ["web"]

    # A host whose token variable is unset fails alone, too.
    client.ok(
        "remote", "add", "envless", a.url, "--token-env", "OMT_UNSET_TOKEN",
        "--fingerprint", a.fingerprint, "--no-verify",
    )  # fmt: skip
    unset = client.run("--json", "-r", "envless,b", "status")
    assert unset.returncode == 1
    report = json.loads(unset.stdout)
    assert report["envless"] == {
        "error": "remote 'envless' reads its token from $OMT_UNSET_TOKEN, which is not set"
    }
    assert [app["name"] for app in report["b"]["apps"]] == ["web", "other"]
    client.ok("remote", "rm", "envless")

    # All healthy: exit 0; --all-remotes covers every alias.
    client.ok("remote", "rm", "dead")
    everyone = client.json("--all-remotes", "list")
    assert sorted(everyone) == ["a", "b"]
    assert [app["name"] for app in everyone["b"]] == ["web", "other"]
    pinged = client.ok("ping", "--all-remotes").stdout.splitlines()
    assert [line.split()[:2] for line in pinged[1:]] == [["a", "pong"], ["b", "pong"]]
    stopped = client.ok("-r", "a,b", "stop", "web")
    assert [line.split() for line in stopped.stdout.splitlines()] == [
        ["HOST", "RESULT"],
        ["a", "stopped:", "web"],
        ["b", "stopped:", "web"],
    ]
    assert a.runner.apps()["web"]["status"] == b.runner.apps()["web"]["status"] == "stopped"
    started = client.json("-r", "a,b", "start", "all")
    assert started == {"a": {"started": ["web"]}, "b": {"started": ["web"]}}
    # An app one host lacks fails that host only.
    partial = client.run("--json", "-r", "a,b", "restart", "other")
    assert partial.returncode == 1
    assert json.loads(partial.stdout) == {
        "a": {"error": "no app named 'other' (apps: web)"},
        "b": {"restarted": ["other"]},
    }
    metrics = client.json("-r", "a,b", "metrics")
    assert sorted(metrics) == ["a", "b"]
    # Commands that need one daemon refuse several.
    for args in (["logs"], ["inspect", "web"], ["secret", "ls"], ["down"]):
        refused = client.run("-r", "a,b", *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert "runs against one daemon at a time" in refused.stderr


def test_rolling_restart_stops_at_the_first_failure(fleet: Fleet) -> None:
    a, b, c = fleet.start("a"), fleet.start("b", OTHER), fleet.start("c")
    for name, daemon in (("a", a), ("b", b), ("c", c)):
        fleet.add(name, daemon)
    before = {"a": pid_of(a, "web"), "c": pid_of(c, "web")}

    result = fleet.client.run("restart", "web", "-r", "a,b,c", "--rolling")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "a: restarted: web",
        "b: failed: no app named 'web' (apps: other)",
        "c: not touched",
    ]
    assert "rolling restart stopped at b: no app named 'web' (apps: other)" in result.stderr
    assert "done: a" in result.stderr
    assert "not touched: c" in result.stderr
    assert pid_of(a, "web") != before["a"]
    assert pid_of(c, "web") == before["c"]

    as_json = fleet.client.run("--json", "restart", "web", "-r", "c,b,a", "--rolling")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report == {
        "c": {"restarted": ["web"]},
        "b": {"error": "no app named 'web' (apps: other)"},
        "a": {"skipped": "not touched: an earlier host failed"},
    }
    assert pid_of(c, "web") != before["c"]

    ok = fleet.client.run("restart", "web", "-r", "a,c", "--rolling")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == ["a: restarted: web", "c: restarted: web"]


# --------------------------------------------------------------------------- python client


def test_python_clients_open_an_alias(fleet: Fleet) -> None:
    import trio

    from omnitron.remotes import RemotesError
    from omnitron.rpc import connect_remote, connect_url
    from omnitron.rpc.sync_client import (
        UnknownCertificate,
        connect_remote_sync,
        connect_url_sync,
    )

    a = fleet.start("a")
    fleet.add("a", a)
    home = fleet.client.home
    with connect_remote_sync("a", home=home, timeout=10) as client:
        assert [app["name"] for app in client.call("daemon.status")["apps"]] == ["web"]
    token = a.token.read_text().strip()
    with connect_url_sync(
        a.url, token=token, fingerprint=a.fingerprint, known_hosts=f"{home}/known_hosts"
    ) as client:
        assert client.call("daemon.list")[0]["name"] == "web"
    with connect_url_sync(f"unix://{a.runner.home}/daemon.sock") as client:
        assert client.call("daemon.ping") == {"pong": True}

    async def both() -> tuple[Any, Any]:
        async with connect_remote("a", home=home) as client:
            first = await client.call("daemon.status")
        async with connect_url(a.url, token=token, known_hosts=f"{home}/known_hosts") as client:
            second = await client.call("daemon.list")
        return first, second

    status, listed = trio.run(both)
    assert status["apps"][0]["name"] == listed[0]["name"] == "web"
    with pytest.raises(RemotesError, match="no remote named 'b'"):
        connect_remote_sync("b", home=home)
    os.unlink(f"{home}/known_hosts")
    with pytest.raises(UnknownCertificate, match="is not known"):
        connect_url_sync(a.url, token=token, known_hosts=f"{home}/known_hosts")


def answer_prompt(fleet: Fleet, answer: str, *args: str) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, answer its question, return (code, what it showed)."""
    import pty
    import select

    client = fleet.client
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        client.argv(*args),
        cwd=client.project,
        env=client.env(),
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    shown = b""
    answered = False
    deadline = time.monotonic() + CLI_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # the other end closed: the command ended
                    break
                if not chunk:
                    break
                shown += chunk
            if not answered and b"Trust it from now on?" in shown:
                os.write(primary, answer.encode() + b"\n")
                answered = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=CLI_TIMEOUT)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert answered, shown
    return code, shown.decode(errors="replace")


def test_remote_add_asks_on_a_terminal_trust_on_first_use(fleet: Fleet) -> None:
    a = fleet.start("a")
    add = ("remote", "add", "a", a.url, "--token-file", str(a.token))
    code, shown = answer_prompt(fleet, "n", *add)
    assert code == 1
    assert a.fingerprint in shown
    assert not (Path(fleet.client.home) / "remotes.toml").exists()
    code, shown = answer_prompt(fleet, "y", *add)
    assert code == 0, shown
    assert f"fingerprint {a.fingerprint}" in shown
    assert fleet.client.json("remote", "ls")[0]["fingerprint"] == a.fingerprint
    assert a.token.read_text().strip() not in shown
    # Pinned from now on: no question, even without a terminal.
    fleet.client.ok("-r", "a", "ping")
