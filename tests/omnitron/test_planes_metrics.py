"""``GET /metrics`` on the WebSocket/HTTP plane: Prometheus scrapes with a bearer token.

Served by the real plane on a free loopback port, its dispatcher answering
``daemon.metrics`` with the daemon's own renderer (``prometheus_text``). Requests
are made with h11 (the HTTP/1.1 implementation under httpx and wsproto) over
Trio sockets, and with curl sending what a Prometheus scrape sends; the bodies
are parsed with ``prometheus_client``'s text parser.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import h11
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from omnitron._log import capture_logs
from omnitron.daemon._metrics import prometheus_text
from omnitron.rpc import Dispatcher, InvalidParams, Role
from omnitron.rpc._auth import FailureBackoff, TokenAuthority, register_auth_methods
from omnitron.rpc._dispatch import Call
from omnitron.rpc._server import RpcServer
from omnitron.rpc._tls import client_context, ensure_self_signed, server_context
from omnitron.rpc._ws import open_ws_client, serve_websocket_plane

pytestmark = pytest.mark.slow

SAMPLE = {
    "daemon": {"rss": 52_000_000, "cpu_seconds": 1.5, "rpc_calls": 7, "generation": 3},
    "apps": [
        {
            "name": "web",
            "processes": [
                {
                    "instance": 0,
                    "pid": 4242,
                    "status": "online",
                    "cpu_seconds": 0.25,
                    "rss": 20_000_000,
                    "tree_rss": 21_000_000,
                    "restarts": 2,
                    "uptime": 12.5,
                }
            ],
        }
    ],
}
EXPECTED = prometheus_text(SAMPLE)


class Plane:
    def __init__(self, port: int, authority: TokenAuthority) -> None:
        self.port = port
        self.authority = authority
        self.offset = 0.0  # seconds added to the daemon's clock

        self._ids: dict[str, str] = {}

    def token(self, role: str = "viewer", ttl: int = 600) -> str:
        token, record = self.authority.issue(role=role, ttl=ttl, subject="prometheus")
        self._ids[token] = record.token_id
        return token

    def revoke(self, token: str) -> None:
        self.authority.revoke(self._ids[token])


@contextlib.asynccontextmanager
async def http_plane(
    home: Path, *, metrics: bool = True, context: ssl.SSLContext | None = None
) -> AsyncIterator[Plane]:
    plane: Plane | None = None
    authority = TokenAuthority(home, clock=lambda: time.time() + (plane.offset if plane else 0))
    dispatcher = Dispatcher()

    async def daemon_metrics(call: Call, *, format: str = "json") -> object:
        await trio.lowlevel.checkpoint()
        if format != "prometheus":
            raise InvalidParams("json is not served here")
        return prometheus_text(SAMPLE)

    if metrics:
        dispatcher.register("daemon.metrics", daemon_metrics, role=Role.VIEWER)
    # Generous backoff: these tests fail logins on purpose from one address.
    register_auth_methods(dispatcher, lambda: authority, FailureBackoff(free=1000))
    async with trio.open_nursery() as nursery:
        server: RpcServer = await nursery.start(
            functools.partial(serve_websocket_plane, "127.0.0.1", 0, dispatcher, context=context)
        )
        port = int(server.address.rsplit(":", 1)[1].split("/")[0])
        plane = Plane(port, authority)
        try:
            yield plane
        finally:
            nursery.cancel_scope.cancel()


class Reply:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = {k.decode().lower(): v.decode() for k, v in headers}
        self.body = body


async def http_request(
    port: int,
    target: str = "/metrics",
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    host: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Reply:
    """One HTTP/1.1 request with h11 over a Trio socket (TLS with ``tls``); the whole reply."""
    connection = h11.Connection(h11.CLIENT)
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    if tls is not None:
        stream = trio.SSLStream(stream, tls, server_hostname=None)
    async with stream:
        request = h11.Request(
            method=method,
            target=target,
            headers=[("Host", host or f"127.0.0.1:{port}"), *headers],
        )
        await stream.send_all(
            (connection.send(request) or b"") + (connection.send(h11.EndOfMessage()) or b"")
        )
        response: h11.Response | None = None
        body = b""
        with trio.fail_after(10):
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
        assert response is not None
        return Reply(response.status_code, list(response.headers), body)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


async def test_a_viewer_token_scrapes_the_same_exposition_the_cli_prints(tmp_path: Path) -> None:
    async with http_plane(tmp_path) as plane:
        for role in ("viewer", "operator", "admin"):
            reply = await http_request(plane.port, headers=bearer(plane.token(role)))
            assert reply.status == 200, reply.body
            assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert reply.headers["content-length"] == str(len(reply.body))
            assert reply.body.decode() == EXPECTED
        families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
        [rss] = families["omnitron_process_resident_memory_bytes"].samples
        assert rss.labels == {"app": "web", "instance": "0"}
        assert rss.value == 20_000_000
        [restarts] = families["omnitron_process_restarts"].samples
        assert restarts.value == 2
        assert families["omnitron_daemon_rpc_calls"].samples[0].value == 7


async def test_every_refused_token_gets_the_same_401_and_leaks_nothing(tmp_path: Path) -> None:
    async with http_plane(tmp_path) as plane:
        revoked = plane.token()
        plane.revoke(revoked)
        expiring = plane.token(ttl=5)
        viewer = plane.token()
        (tmp_path / "other").mkdir()
        other = TokenAuthority(tmp_path / "other").issue(role="admin", ttl=600, subject="x")[0]
        cases = {
            "missing": [],
            "basic": [("Authorization", "Basic dXNlcjpwYXNz")],
            "empty bearer": [("Authorization", "Bearer")],
            "garbage": bearer("not.a.token"),
            "other daemon": bearer(other),
            "revoked": bearer(revoked),
            "oversized": bearer("a" * 9000),
            "two headers": [*bearer(viewer), *bearer(viewer)],
        }
        with capture_logs() as logs:
            replies = {name: await http_request(plane.port, headers=h) for name, h in cases.items()}
            plane.offset = 60.0  # past expiry and the 30 s leeway
            replies["expired"] = await http_request(plane.port, headers=bearer(expiring))
        for name, reply in replies.items():
            assert reply.status == 401, name
            assert reply.body == b"unauthorized\n", name
            assert reply.headers["www-authenticate"].startswith('Bearer realm="omnitron"'), name
        assert "error" not in replies["missing"].headers["www-authenticate"]
        assert replies["revoked"].headers["www-authenticate"].endswith('error="invalid_token"')
        reasons = {e.get("reason") for e in logs if e["event"] == "auth_failed"}
        assert {"revoked", "expired", "bad signature", "malformed"} <= reasons
        assert all(revoked not in repr(e) and other not in repr(e) for e in logs)
        # Still served afterwards, and a token revoked now is refused on the next scrape.
        plane.offset = 0.0
        assert (await http_request(plane.port, headers=bearer(viewer))).status == 200
        plane.revoke(viewer)
        assert (await http_request(plane.port, headers=bearer(viewer))).status == 401


@pytest.mark.parametrize(
    ("target", "method", "host", "origin", "status"),
    [
        ("/metrics", "GET", "evil.example:{port}", None, 403),
        ("/metrics", "GET", "127.0.0.1:{port}.evil.example", None, 403),
        ("/metrics", "GET", None, "https://evil.example", 403),
        ("/metrics", "GET", None, "http://127.0.0.1:{port}.evil.example", 403),
        ("/metrics", "GET", "localhost:{port}", "http://localhost:{port}", 200),
        ("/metrics", "POST", None, None, 405),
        ("/metrics/", "GET", None, None, 404),
        ("/", "GET", None, None, 404),
        ("/rpc", "GET", None, None, 404),
    ],
)
async def test_host_origin_method_and_path_are_checked(
    tmp_path: Path, target: str, method: str, host: str | None, origin: str | None, status: int
) -> None:
    async with http_plane(tmp_path) as plane:
        headers = bearer(plane.token())
        if origin is not None:
            headers.append(("Origin", origin.format(port=plane.port)))
        reply = await http_request(
            plane.port,
            target,
            method=method,
            headers=headers,
            host=None if host is None else host.format(port=plane.port),
        )
        assert reply.status == status, reply.body
        if status != 200:
            assert b"# HELP" not in reply.body


async def test_an_oversized_or_malformed_request_is_refused_and_the_plane_stays_up(
    tmp_path: Path,
) -> None:
    async with http_plane(tmp_path) as plane:
        big = await http_request(plane.port, headers=[("X-Filler", "a" * 20_000)])
        assert big.status == 431
        stream = await trio.open_tcp_stream("127.0.0.1", plane.port)
        async with stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            with trio.fail_after(10):
                head = await stream.receive_some(4096)
            assert head.startswith(b"HTTP/1.1 400 ")
        token = plane.token()
        assert (await http_request(plane.port, headers=bearer(token))).status == 200
        # The WebSocket endpoint on the same port still works (the head is replayed).
        async with open_ws_client("127.0.0.1", plane.port, token=token) as client:
            assert await client.call("daemon.ping") == {"pong": True}


async def test_metrics_over_https_with_the_daemons_certificate(tmp_path: Path) -> None:
    """A plane on a non-loopback address is TLS only; /metrics is served over it alike."""
    context = server_context(ensure_self_signed(tmp_path))
    async with http_plane(tmp_path, context=context) as plane:
        tls = client_context()
        reply = await http_request(plane.port, headers=bearer(plane.token()), tls=tls)
        assert reply.status == 200
        assert reply.body.decode() == EXPECTED
        assert (await http_request(plane.port, tls=tls)).status == 401


async def test_a_daemon_without_metrics_answers_404_after_authenticating(tmp_path: Path) -> None:
    async with http_plane(tmp_path, metrics=False) as plane:
        assert (await http_request(plane.port)).status == 401
        assert (await http_request(plane.port, headers=bearer(plane.token()))).status == 404


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_a_prometheus_style_scrape_with_curl(tmp_path: Path) -> None:
    """What Prometheus sends for ``authorization: {credentials_file: F}``: the file's
    contents (trimmed) as a bearer token, its Accept list, and its timeout header."""
    async with http_plane(tmp_path) as plane:
        credentials = tmp_path / "prometheus.token"
        token = plane.token()
        credentials.write_text(token + "\n")

        async def scrape(token: str) -> tuple[str, str]:
            result = await trio.run_process(
                [
                    "curl",
                    "--silent",
                    "--show-error",
                    "--max-time",
                    "10",
                    "--header",
                    f"Authorization: Bearer {token}",
                    "--header",
                    "Accept: application/openmetrics-text;version=1.0.0;q=0.5,"
                    "text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
                    "--header",
                    "Accept-Encoding: gzip",
                    "--header",
                    "User-Agent: Prometheus/2.53.0",
                    "--header",
                    "X-Prometheus-Scrape-Timeout-Seconds: 10",
                    "--write-out",
                    "\n%{http_code} %{content_type}",
                    f"http://127.0.0.1:{plane.port}/metrics",
                ],
                capture_stdout=True,
                capture_stderr=True,
            )
            body, _, status = result.stdout.decode().rpartition("\n")
            return body, status

        body, status = await scrape(credentials.read_text().strip())
        assert status == "200 text/plain; version=0.0.4; charset=utf-8"
        assert body == EXPECTED
        assert "omnitron_process_up" in {f.name for f in text_string_to_metric_families(body)}
        plane.revoke(token)
        body, status = await scrape(credentials.read_text().strip())
        assert status.startswith("401 ")
        assert body.strip() == "unauthorized"
