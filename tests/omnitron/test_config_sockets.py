"""The ``sockets`` app key: daemon-owned listening sockets, validated like every key."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from omnitron.config import (
    ConfigError,
    SocketConfig,
    define_ecosystem,
    diff_ecosystems,
    load_config,
)


def define(tmp_path: Path, *apps: dict[str, Any]) -> Any:
    return define_ecosystem(base_dir=tmp_path, environ={}, apps=list(apps))


def errors(tmp_path: Path, *apps: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        define(tmp_path, *apps)
    return [f"{issue.path}: {issue.message}" for issue in info.value.issues]


def app(sockets: object, name: str = "web", **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": ["x"], "sockets": sockets, **extra}


def test_tcp_and_unix_sockets(tmp_path: Path) -> None:
    ecosystem = define(
        tmp_path,
        app(
            [
                {"name": "http", "port": 8000},
                {"name": "admin", "port": 8001, "host": "::1", "backlog": 64},
                {"name": "local", "path": "run/web.sock"},
            ]
        ),
    )
    http, admin, local = ecosystem.apps[0].sockets
    assert http == SocketConfig(name="http", port=8000, host="127.0.0.1")
    assert admin == SocketConfig(name="admin", port=8001, host="::1", backlog=64)
    assert local == SocketConfig(name="local", path=tmp_path / "run" / "web.sock")
    assert [s.describe() for s in (http, admin, local)] == [
        "tcp 127.0.0.1:8000",
        "tcp [::1]:8001",
        f"unix {tmp_path / 'run' / 'web.sock'}",
    ]
    assert define(tmp_path, {"name": "web", "command": ["x"]}).apps[0].sockets == ()


def test_a_round_trip_through_plain_data(tmp_path: Path) -> None:
    ecosystem = define(tmp_path, app([{"name": "http", "port": 8000}, {"name": "u", "path": "a"}]))
    again = define_ecosystem(**{**ecosystem.to_dict(), "base_dir": tmp_path, "environ": {}})
    assert again.apps[0].sockets == ecosystem.apps[0].sockets


@pytest.mark.parametrize(
    ("sockets", "expected"),
    [
        ("http", "apps[0].sockets: expected an array of tables, got a string ('http')"),
        (["http"], "apps[0].sockets[0]: expected a table, got a string ('http')"),
        ([{"port": 8000}], "apps[0].sockets[0]: missing required key 'name'"),
        (
            [{"name": "a:b", "port": 8000}],
            "apps[0].sockets[0].name: invalid socket name 'a:b': letters, digits, '_', '.', "
            "'-' (1 to 255), as LISTEN_FDNAMES allows",
        ),
        ([{"name": "http", "port": 0}], "apps[0].sockets[0].port: must be >= 1, got 0"),
        ([{"name": "http", "port": 65536}], "apps[0].sockets[0].port: must be <= 65535, got 65536"),
        (
            [{"name": "http", "port": "80"}],
            "apps[0].sockets[0].port: expected an integer, got a string ('80')",
        ),
        (
            [{"name": "http", "port": 80, "host": "bad host"}],
            "apps[0].sockets[0].host: not an IP address or a host name: 'bad host'",
        ),
        (
            [{"name": "http", "port": 80, "host": "-x.example"}],
            "apps[0].sockets[0].host: not an IP address or a host name: '-x.example'",
        ),
        (
            [{"name": "http"}],
            "apps[0].sockets[0]: set exactly one of port (a TCP socket) or path (a Unix socket)",
        ),
        (
            [{"name": "http", "port": 80, "path": "/tmp/a.sock"}],
            "apps[0].sockets[0]: set exactly one of port (a TCP socket) or path (a Unix socket)",
        ),
        (
            [{"name": "u", "path": "/tmp/a.sock", "host": "127.0.0.1"}],
            "apps[0].sockets[0].host: only allowed with port",
        ),
        (
            [{"name": "u", "path": "/" + "a" * 120}],
            f"apps[0].sockets[0].path: {'/' + 'a' * 120} is longer than the 107 bytes a Unix "
            "socket path allows",
        ),
        (
            [{"name": "http", "port": 80, "prot": 1}],
            "apps[0].sockets[0].prot: unknown key; did you mean 'port'?",
        ),
        (
            [{"name": "http", "port": 80, "backlog": 0}],
            "apps[0].sockets[0].backlog: must be >= 1, got 0",
        ),
    ],
)
def test_bad_sockets(tmp_path: Path, sockets: object, expected: str) -> None:
    assert errors(tmp_path, app(sockets)) == [expected]


def test_unique_names_and_addresses(tmp_path: Path) -> None:
    assert errors(
        tmp_path,
        app([{"name": "http", "port": 8000}, {"name": "http", "port": 8001}]),
        app([{"name": "http", "port": 8000}], name="api"),
        app([{"name": "a", "port": 9000}, {"name": "b", "port": 9000}], name="jobs"),
    ) == [
        "apps[0].sockets[1].name: duplicate socket name 'http' (also [0])",
        "apps[1].sockets[0]: tcp 127.0.0.1:8000 is already a socket of app 'web' "
        "(apps[0].sockets[0])",
        "apps[2].sockets[1]: tcp 127.0.0.1:9000 is already a socket of this app "
        "(apps[2].sockets[0])",
    ]


def test_errors_name_the_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.toml"
    config.write_text(
        textwrap.dedent(
            """\
            project = "shop"

            [[apps]]
            name = "web"
            command = ["x"]
            sockets = [{ name = "http", port = 80000 }]
            """
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config(config, environ={})
    assert str(info.value).splitlines()[-1].strip() == (
        f"{config}:6: apps[0].sockets[0].port: must be <= 65535, got 80000"
    )


def test_a_ready_probe_of_an_owned_port_is_warned_about(tmp_path: Path) -> None:
    ecosystem = define(tmp_path, app([{"name": "http", "port": 8000}], ready={"tcp": 8000}))
    assert [f"{w.path}: {w.message}" for w in ecosystem.warnings] == [
        "apps[0].ready: probes port 8000, on which the daemon itself listens (socket 'http'): "
        'it answers at once; use ready = "notify" instead'
    ]


def test_a_changed_socket_is_a_change_of_the_app(tmp_path: Path) -> None:
    before = define(tmp_path, app([{"name": "http", "port": 8000}]))
    after = define(tmp_path, app([{"name": "http", "port": 8001}]))
    [change] = diff_ecosystems(before, after).changed
    assert change.name == "web"
    assert [c.path for c in change.changes] == ["sockets"]
