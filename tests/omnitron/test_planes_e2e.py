"""The network planes end to end: ``omnitron up --tcp --http``, tokens, ``--url``.

A real daemon (its own home, free ports), the real CLI in subprocesses, and a
real trio-websocket client.
"""

from __future__ import annotations

import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from test_cli_e2e import Omnitron, kill_home

from omnitron.rpc._ws import open_ws_client

pytestmark = [pytest.mark.slow]

CONFIG = """
[[apps]]
name = "web"
command = ["{python}", "-c", "import time; time.sleep(3600)"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Omnitron]:
    home = tempfile.mkdtemp(dir="/tmp", prefix="omt-planes-")
    project = tmp_path / "project"
    project.mkdir()
    (project / "omnitron.toml").write_text(CONFIG.format(python=sys.executable))
    runner = Omnitron(home, project)
    try:
        yield runner
    finally:
        kill_home(home)
        shutil.rmtree(home, ignore_errors=True)


def test_tls_and_websocket_planes_end_to_end(cli: Omnitron, tmp_path: Path) -> None:
    tcp, http = free_port(), free_port()
    started = cli.ok("up", "--tcp", f"127.0.0.1:{tcp}", "--http", f"127.0.0.1:{http}")
    match = re.search(r"certificate fingerprint: (SHA256:\S+)", started.stderr)
    assert match, started.stderr
    fingerprint = match.group(1)
    assert f"tcp plane: tls://127.0.0.1:{tcp}" in started.stderr

    operator_file, viewer_file = tmp_path / "operator.token", tmp_path / "viewer.token"
    issued = cli.ok("auth", "token", "--role", "operator", "--ttl", "1h", "--subject", "ci")
    operator_token = issued.stdout.strip()
    operator_file.write_text(operator_token + "\n")
    token_id = re.search(r"token ([0-9a-f]{32})", issued.stderr)
    assert token_id, issued.stderr
    viewer_file.write_text(cli.ok("auth", "token", "--role", "viewer").stdout)

    url = f"tls://127.0.0.1:{tcp}"
    # Unknown certificate, no terminal to ask on: refused, with the fingerprint shown.
    refused = cli.run("--url", url, "--token-file", str(viewer_file), "status")
    assert refused.returncode == 1
    assert "not known" in refused.stderr
    assert fingerprint in refused.stderr
    # Pinned with --fingerprint; from then on known_hosts (0600) holds it.
    remote = cli.ok(
        "--url",
        url,
        "--token-file",
        str(viewer_file),
        "--fingerprint",
        fingerprint,
        "--json",
        "status",
    )
    local = cli.ok("--json", "status")
    assert '"web"' in remote.stdout
    assert '"web"' in local.stdout
    known = Path(cli.home) / "known_hosts"
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    cli.ok("--url", url, "--token-file", str(viewer_file), "list")

    # Roles: a viewer may not stop, an operator may; both land in the audit log.
    forbidden = cli.run("--url", url, "--token-file", str(viewer_file), "stop", "web")
    assert forbidden.returncode == 1
    assert "requires role operator" in forbidden.stderr
    cli.ok("--url", url, "--token-file", str(operator_file), "stop", "web")
    log = (Path(cli.home) / "logs" / "daemon.log").read_text()
    audits = [line for line in log.splitlines() if "event='audit'" in line]
    assert any(
        "daemon.stop_app" in a and "result='ok'" in a and "subject='ci'" in a for a in audits
    )
    assert any("result='FORBIDDEN'" in a for a in audits)
    assert operator_token not in log

    # The WebSocket plane, with a real trio-websocket client.
    async def over_websocket() -> Any:
        async with open_ws_client("127.0.0.1", http, token=operator_token) as client:
            return await client.call("daemon.status")

    status = trio.run(over_websocket)
    assert [app["name"] for app in status["apps"]] == ["web"]

    # auth ls lists ids and subjects, never tokens; a revocation bites at once.
    listed = cli.ok("auth", "ls")
    assert token_id.group(1) in listed.stdout
    assert "ci" in listed.stdout
    assert operator_token not in listed.stdout
    cli.ok("auth", "revoke", token_id.group(1))
    revoked = cli.run("--url", url, "--token-file", str(operator_file), "start", "web")
    assert revoked.returncode == 1
    assert "invalid token: revoked" in revoked.stderr

    # A changed certificate is refused loudly.
    other = "SHA256:" + "A" * 43
    known.write_text(f"127.0.0.1:{tcp} {other}\n")
    changed = cli.run("--url", url, "--token-file", str(viewer_file), "status")
    assert changed.returncode == 1
    assert "has changed" in changed.stderr


def test_bad_plane_options_are_refused_before_starting(cli: Omnitron) -> None:
    for args, reason in (
        (["--tcp", "127.0.0.1:notaport"], "port must be a number"),
        (["--tcp", "127.0.0.1:1", "--tls-cert", "x.pem"], "must be given together"),
        (["--tls-cert", "a", "--tls-key", "b"], "need --tcp or --http"),
        (["--max-connections", "5"], "--max-connections needs --tcp or --http"),
        (["--tcp", "127.0.0.1:1", "--max-connections", "0"], "0 is not in the range"),
    ):
        result = cli.run("up", *args)
        assert result.returncode == 2, result.stderr
        assert reason in result.stderr
    assert not (Path(cli.home) / "daemon.pid").exists()
    bad = cli.run("--url", "http://127.0.0.1:1", "--token-file", "x", "status")
    assert bad.returncode == 2
    assert "must start with tls://" in bad.stderr
    token = cli.project / "some.token"
    token.write_text("x\n")
    nobody = f"tls://127.0.0.1:{free_port()}"
    unreachable = cli.run("--url", nobody, "--token-file", str(token), "status")
    assert unreachable.returncode == 1
    assert f"cannot reach the daemon at {nobody}: nothing is listening" in unreachable.stderr


def test_prometheus_scrapes_metrics_over_the_http_plane(cli: Omnitron, tmp_path: Path) -> None:
    """``/metrics`` serves what ``metrics --prometheus`` prints, to a viewer token only."""
    http = free_port()
    cli.ok("up", "--http", f"127.0.0.1:{http}")
    token = cli.ok("auth", "token", "--role", "viewer", "--subject", "prometheus").stdout.strip()
    url = f"http://127.0.0.1:{http}/metrics"

    def curl(*headers: str) -> tuple[str, str]:
        argv = ["curl", "--silent", "--max-time", "20", "--write-out", "\n%{http_code}"]
        for header in headers:
            argv += ["--header", header]
        out = subprocess.run(
            [*argv, url], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        body, _, status = out.rpartition("\n")
        return body, status

    def shape(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        """Every sample's name and labels (values move between two scrapes)."""
        return {
            (sample.name, tuple(sorted(sample.labels.items())))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    body, status = curl(f"Authorization: Bearer {token}")
    assert status == "200", body
    printed = cli.ok("metrics", "--prometheus").stdout
    assert shape(body) == shape(printed)
    assert ("omnitron_process_restarts_total", (("app", "web"), ("instance", "0"))) in shape(body)
    body, status = curl()
    assert (body.strip(), status) == ("unauthorized", "401")
    body, status = curl("Authorization: Bearer " + token[:-4] + "AAAA")
    assert (body.strip(), status) == ("unauthorized", "401")
