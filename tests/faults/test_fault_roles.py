"""The daemon's own method registry, method by role (AU-12, AU-13).

The generic dispatcher is tested with made-up registries elsewhere; this pins the
matrix of the registry the daemon really serves (``build_dispatcher``), against
the table in ``docs/daemon.md``, and proves a refused call runs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from omnitron.daemon._errors import AppNotFound
from omnitron.daemon._service import DaemonService, build_dispatcher
from omnitron.rpc import ErrorCode, Peer, Role
from omnitron.rpc._protocol import Request

# docs/daemon.md, "Methods".
DECLARED = {
    "daemon.ping": Role.ANONYMOUS,
    "daemon.status": Role.VIEWER,
    "daemon.list": Role.VIEWER,
    "daemon.get_app": Role.VIEWER,
    "daemon.inspect": Role.VIEWER,
    "daemon.env": Role.VIEWER,
    "daemon.graph": Role.VIEWER,
    "daemon.health": Role.VIEWER,
    "daemon.events": Role.VIEWER,
    "events.subscribe": Role.VIEWER,
    "daemon.metrics": Role.VIEWER,
    "daemon.logs": Role.VIEWER,
    "daemon.watch_status": Role.VIEWER,
    "daemon.start_app": Role.OPERATOR,
    "daemon.stop_app": Role.OPERATOR,
    "daemon.restart_app": Role.OPERATOR,
    "daemon.start_all": Role.OPERATOR,
    "daemon.stop_all": Role.OPERATOR,
    "daemon.restart_all": Role.OPERATOR,
    "daemon.reload": Role.OPERATOR,
    "daemon.scale": Role.OPERATOR,
    "daemon.reset": Role.OPERATOR,
    "daemon.signal": Role.OPERATOR,
    "daemon.flush_logs": Role.OPERATOR,
    "daemon.watch_on": Role.OPERATOR,
    "daemon.watch_off": Role.OPERATOR,
    "daemon.exec": Role.OPERATOR,
    "daemon.reload_config": Role.ADMIN,
    "daemon.shutdown": Role.ADMIN,
    "daemon.set_metrics_enabled": Role.ADMIN,
    "secret.set": Role.ADMIN,
    "secret.get": Role.ADMIN,
    "secret.list": Role.ADMIN,
    "secret.remove": Role.ADMIN,
}
PARAMS: dict[str, dict[str, Any]] = {
    "daemon.get_app": {"name": "web"},
    "daemon.inspect": {"name": "web"},
    "daemon.env": {"name": "web", "reveal": True},
    "daemon.start_app": {"name": "web"},
    "daemon.stop_app": {"name": "web"},
    "daemon.restart_app": {"name": "web"},
    "daemon.reload": {"name": "web"},
    "daemon.scale": {"name": "web", "instances": 2},
    "events.subscribe": {"name": "web"},
    "daemon.set_metrics_enabled": {"enabled": False},
    "secret.set": {"name": "db", "value": "v"},
    "secret.get": {"name": "db"},
    "secret.remove": {"name": "db"},
    "daemon.reset": {"name": "web"},
    "daemon.signal": {"name": "web", "signal": "HUP"},
    "daemon.watch_on": {"app": "web"},
    "daemon.watch_off": {"app": "web"},
    "daemon.watch_status": {"app": "web"},
    "daemon.exec": {"app": "web", "service": "users", "method": "ping", "args": [1]},
}


class Untouchable:
    """An orchestrator that records every use and refuses it (so no call can hang)."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.touched.append(name)
        raise AppNotFound("web")


@pytest.fixture
def service(tmp_path: Path) -> tuple[DaemonService, Untouchable, list[str]]:
    orchestrator = Untouchable()
    shutdowns: list[str] = []
    service = DaemonService(
        orchestrator,  # type: ignore[arg-type]
        home=tmp_path,
        config_path=tmp_path / "missing.toml",
        stack=None,
        request_shutdown=lambda: shutdowns.append("shutdown"),
    )
    return service, orchestrator, shutdowns


def test_the_daemon_registry_is_exactly_the_documented_one(
    service: tuple[DaemonService, Untouchable, list[str]],
) -> None:
    """AU-13: every method has a declared role; AU-12: they match the documentation."""
    dispatcher = build_dispatcher(service[0])
    assert {m.name: m.role for m in dispatcher.methods()} == DECLARED
    assert all(isinstance(m.role, Role) for m in dispatcher.methods())


@pytest.mark.parametrize("method", sorted(DECLARED))
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.label)
async def test_every_method_by_every_role(
    service: tuple[DaemonService, Untouchable, list[str]], method: str, role: Role
) -> None:
    """AU-12: below the declared role a call is refused before anything runs."""
    daemon, orchestrator, shutdowns = service
    dispatcher = build_dispatcher(daemon)
    request = Request(msgid=1, method=method, params=PARAMS.get(method, {}))
    response = await dispatcher.dispatch(request, peer=Peer(transport="test", role=role))
    required = DECLARED[method]
    if role >= required:
        # Allowed: the handler ran (and met the refusing orchestrator, or a missing
        # config file), so whatever error came back is the handler's, not the gate's.
        assert response.error is None or response.error.code not in {
            ErrorCode.UNAUTHENTICATED,
            ErrorCode.FORBIDDEN,
            ErrorCode.INTERNAL_ERROR,
        }, response.error
        return
    assert response.error is not None
    if role is Role.ANONYMOUS:
        assert response.error.code == ErrorCode.UNAUTHENTICATED
    else:
        assert response.error.code == ErrorCode.FORBIDDEN
        assert response.error.data == {"required_role": required.label}
    assert orchestrator.touched == []
    assert shutdowns == []
