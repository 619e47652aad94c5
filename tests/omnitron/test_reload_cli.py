"""``omnitron reload`` and ``scale`` end to end: the real CLI in a subprocess
against a real daemon, while a real HTTP client loads the socket-activated app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio
from test_cli_e2e import Omnitron, home, omnitron, pids_of, toml_string
from test_reload_http import SERVER, Load, free_port

__all__ = ["home", "omnitron"]  # fixtures used here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def config(port: int, flag: Path) -> str:
    # A wrapper that fails while the flag file exists: a broken release.
    script = (
        f'if [ -e {flag} ]; then echo "bad config: $(cat {flag})" >&2; exit 2; fi; '
        f'exec "{sys.executable}" "{SERVER}"'
    )
    return (
        'project = "reload"\n\n'
        "[[apps]]\n"
        'name = "web"\n'
        f'command = ["sh", "-c", {toml_string(script)}]\n'
        f'sockets = [{{ name = "http", port = {port} }}]\n'
        'ready = "notify"\n'
        "instances = 2\n\n"
        "[[apps]]\n"
        'name = "other"\n'
        'command = ["sleep", "3600"]\n'
    )


async def cli(omnitron: Omnitron, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI in a subprocess, without blocking the load loop."""
    with trio.fail_after(120):
        return await trio.run_process(
            omnitron.argv(*args),
            cwd=omnitron.project,
            env=omnitron.env(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=b"",
        )


async def test_reload_and_scale_from_the_cli_under_load(omnitron: Omnitron) -> None:
    port = free_port()
    flag = omnitron.project / "broken"
    omnitron.write_config(config(port, flag))
    omnitron.up()
    before = pids_of(omnitron.wait_online("web", "other")["web"])
    load = Load(port)
    async with trio.open_nursery() as nursery:
        await load.run(nursery)

        result = await cli(omnitron, "reload", "web")
        assert (result.returncode, result.stdout, result.stderr) == (0, b"reloaded: web\n", b"")
        after = pids_of(omnitron.apps()["web"])
        assert len(after) == 2
        assert after.isdisjoint(before)

        result = await cli(omnitron, "--json", "reload", "web", "other")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b'{"reloaded": ["web", "other"]}\n'

        flag.write_text("no database url")
        kept = pids_of(omnitron.apps()["web"])
        result = await cli(omnitron, "reload", "web")
        stderr = result.stderr.decode()
        assert result.returncode == 1, stderr
        assert stderr.startswith("omnitron: web: the new instance 0 did not become ready ("), stderr
        assert "  last stderr lines of web:\n    bad config: no database url\n" in stderr
        assert pids_of(omnitron.apps()["web"]) == kept
        flag.unlink()

        result = await cli(omnitron, "scale", "web", "4")
        assert (result.returncode, result.stdout) == (0, b"web: 2 -> 4 instances\n"), result
        result = await cli(omnitron, "scale", "web", "2")
        assert (result.returncode, result.stdout) == (0, b"web: 4 -> 2 instances\n"), result

        result = await cli(omnitron, "reload", "nope")
        assert result.returncode == 1
        assert result.stderr.startswith(b"omnitron: no app named 'nope'")
        ok = load.ok
        await load.until(lambda: load.ok >= ok + 20)
        load.stop()
    assert load.failures == []
    web = omnitron.apps()["web"]
    assert (web["status"], web["restarts"], len(web["processes"])) == ("online", 0, 2)
