"""define_system: the validation table, topology order, hooks, and the identity check."""

from __future__ import annotations

from typing import Any

import pytest

from omnitron import Process, define_system
from omnitron._system import (
    PROTOCOL_VERSION,
    Hooks,
    System,
    Topology,
    check_identity,
    start_order,
)
from omnitron.errors import OmnitronError, SystemDefinitionError


def _ok(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "shop",
        "version": "1.0",
        "processes": [Process(name="http", module="shop.http")],
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    ("overrides", "path", "message"),
    [
        ({"name": ""}, "name", "is required"),
        ({"name": None}, "name", "is required"),
        ({"name": "bad name!"}, "name", "is not a valid name"),
        ({"version": None}, "version", "is required"),
        ({"version": 1}, "version", "must be a string"),
        ({"processes": []}, "processes", "at least one process is required"),
        ({"processes": None}, "processes", "at least one process is required"),
        ({"processes": "http"}, "processes", "must be a list of Process"),
        ({"processes": [{"name": "x"}]}, "processes[0]", "must be a Process(...)"),
        ({"processes": [Process(name="http")]}, "processes[0].module", "is required"),
        ({"processes": [Process(module="m")]}, "processes[0].name", "is required"),
        (
            {"processes": [Process(name="a", module="shop..http")]},
            "processes[0].module",
            "is not a dotted module name",
        ),
        (
            {"processes": [Process(name="a", module="m"), Process(name="a", module="n")]},
            "processes[1].name",
            "duplicate process name 'a' (also processes[0])",
        ),
        (
            {"processes": [Process(name="a", module="m", instances=0)]},
            "processes[0].instances",
            "must be between 1 and 1024, got 0",
        ),
        (
            {"processes": [Process(name="a", module="m", instances=True)]},
            "processes[0].instances",
            "must be an integer",
        ),
        (
            {"processes": [Process(name="a", module="m", instances="2")]},
            "processes[0].instances",
            "must be an integer",
        ),
        (
            {"processes": [Process(name="a", module="m", topology={"access": ["Ghost"]})]},
            "processes[0].topology.access[0]",
            "no process named 'Ghost' in this system (known: a), and it is not a service "
            "name either",
        ),
        (
            {
                "processes": [
                    Process(name="a", module="m"),
                    Process(name="b", module="m", topology={"access": ["a"]}),
                ]
            },
            "processes[1].topology.access[0]",
            "process 'a' does not expose its services",
        ),
        (
            {
                "processes": [
                    Process(name="a", module="m", topology={"expose": True, "access": ["a"]})
                ]
            },
            "processes[0].topology.access[0]",
            "cannot access itself",
        ),
        (
            {"processes": [Process(name="a", module="m", topology={"exposed": True})]},
            "processes[0].topology.exposed",
            "is not a topology key",
        ),
        (
            {"processes": [Process(name="a", module="m", topology={"expose": "yes"})]},
            "processes[0].topology.expose",
            "must be true or false",
        ),
        (
            {"processes": [Process(name="a", module="m", env={"A": 1})]},
            "processes[0].env.A",
            "must be a string",
        ),
        ({"env": {"1X": "v"}}, "env.1X", "is not a valid environment variable name"),
        ({"hooks": {"on_boot": print}}, "hooks.on_boot", "is not a hook"),
        ({"hooks": {"before_start": 5}}, "hooks.before_start", "must be a callable"),
        (
            {"hooks": {"before_start": "no colon"}},
            "hooks.before_start",
            "must look like 'package.module:function'",
        ),
        (
            {"processes": [Process(name="a", module="m", hooks={"after_stop": "x"})]},
            "processes[0].hooks.after_stop",
            "must look like",
        ),
        (
            {"processes": [Process(name="a", module="m", python="")]},
            "processes[0].python",
            "must be an interpreter path",
        ),
    ],
)
def test_invalid_definitions_name_the_path(
    overrides: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(SystemDefinitionError) as info:
        define_system(**_ok(**overrides))
    assert isinstance(info.value, OmnitronError)
    matches = [(p, m) for p, m in info.value.issues if p == path and message in m]
    assert matches, info.value.issues
    assert path in str(info.value)


def test_topology_cycle_is_rejected_with_the_cycle_named() -> None:
    with pytest.raises(SystemDefinitionError) as info:
        define_system(
            "shop",
            "1",
            [
                Process(name="a", module="m", topology={"expose": True, "access": ["c"]}),
                Process(name="b", module="m", topology={"expose": True, "access": ["a"]}),
                Process(name="c", module="m", topology={"expose": True, "access": ["b"]}),
            ],
        )
    (issue,) = info.value.issues
    assert issue[0] == "processes[0].topology.access"
    assert issue[1] == "topology cycle: a -> c -> b -> a"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SystemDefinitionError) as info:
        define_system("", "", [Process(name="a"), Process(name="a", module="m", instances=-1)])
    paths = [p for p, _ in info.value.issues]
    assert paths == [
        "name",
        "version",
        "processes[0].module",
        "processes[1].instances",
        "processes[1].name",
    ]
    assert str(info.value).startswith(
        "invalid system definition (5 problems):\n  name: is required"
    )


def _hook() -> None:
    return None


def test_a_valid_system_is_normalised() -> None:
    system = define_system(
        name="shop",
        version="1.0",
        processes=[
            Process(name="billing", module="shop.billing", topology={"access": ["http"]}),
            Process(
                name="http",
                module="shop.http",
                instances=2,
                topology={"expose": True},
                env={"PORT": "8000"},
                hooks={"after_start": "shop.hooks:warm"},
            ),
        ],
        hooks={"before_start": _hook},
        env={"MODE": "dev"},
    )
    assert isinstance(system, System)
    billing, http = system.processes
    assert billing.topology == Topology(expose=False, access=("http",))
    assert http.topology == Topology(expose=True, access=())
    assert http.hooks == Hooks(after_start="shop.hooks:warm")
    assert system.hooks.before_start is _hook
    assert system.start_order() == ["http", "billing"]
    assert system.process("http") is http
    with pytest.raises(KeyError, match="has no process 'web' \\(it has: billing, http\\)"):
        system.process("web")
    data = system.to_json()
    assert data["hooks"] == {"before_start": f"{__name__}:_hook"}
    assert data["env"] == {"MODE": "dev"}
    assert data["start_order"] == ["http", "billing"]
    assert data["processes"][1] == {
        "name": "http",
        "module": "shop.http",
        "instances": 2,
        "topology": {"expose": True, "access": []},
        "env": {"PORT": "8000"},
        "hooks": {"after_start": "shop.hooks:warm"},
        "python": None,
    }


def test_start_order_keeps_definition_order_among_free_processes() -> None:
    processes = [
        Process(name="c", module="m", topology=Topology(access=("a", "b"))),
        Process(name="a", module="m", topology=Topology(expose=True)),
        Process(name="d", module="m"),
        Process(name="b", module="m", topology=Topology(expose=True, access=("a",))),
    ]
    assert start_order(processes) == ["a", "d", "b", "c"]


def test_identity_check() -> None:
    assert check_identity({"protocol": PROTOCOL_VERSION, "omnitron": "x", "python": "/p"}) is None
    message = check_identity(
        {"protocol": 99, "omnitron": "9.9.9", "python": "/app/.venv/bin/python"}
    )
    assert message is not None
    assert "9.9.9" in message
    assert "worker protocol 99" in message
    assert "/app/.venv/bin/python" in message
    assert f"speaks worker protocol {PROTOCOL_VERSION}" in message
    missing = check_identity({"python": "/usr/bin/python3"})
    assert missing is not None
    assert "no worker protocol version" in missing
    # True == 1 in Python, but it is not a protocol version.
    assert check_identity({"protocol": True, "omnitron": "x", "python": "/p"}) is not None


def test_lazy_exports_do_not_load_the_worker_definitions_early() -> None:
    import subprocess
    import sys

    code = (
        "import sys, omnitron; assert 'omnitron._system' not in sys.modules; "
        "from omnitron import define_system, Process; "
        "assert 'omnitron._system' in sys.modules; assert 'trio' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ access by service name


def spec_system() -> System:
    """SPEC's example: ``billing`` accesses the ``users`` service, served by ``http``."""
    return define_system(
        "shop",
        "1.0",
        [
            Process(name="billing", module="shop.billing", topology={"access": ["users"]}),
            Process(name="http", module="shop.http", instances=2, topology={"expose": True}),
        ],
    )


def test_access_may_name_a_service_resolved_to_the_process_serving_it() -> None:
    system = spec_system()
    assert system.service_access() == [(0, 0, "users")]
    resolved = system.resolve_access({"billing": ["billing"], "http": ["users", "orders"]})
    assert resolved.process("billing").topology == Topology(access=("http",))
    assert resolved.start_order() == ["http", "billing"]
    assert resolved.service_access() == []
    # A name that is a process's stays that process's, whatever serves a service so named.
    both = define_system(
        "shop",
        "1",
        [
            Process(name="users", module="m", topology={"expose": True}),
            Process(name="b", module="n", topology={"access": ["users"]}),
        ],
    )
    assert both.service_access() == []
    assert both.resolve_access({"b": ["users"]}) == both


@pytest.mark.parametrize(
    ("services", "expose", "message"),
    [
        (
            {"http": ["orders"]},
            True,
            "no process or service named 'users' in this system "
            "(processes: billing, http; services: orders)",
        ),
        (
            {"http": ["users"], "billing": ["users"]},
            True,
            "service 'users' is served by processes billing, http; name the process",
        ),
        (
            {"billing": ["users"]},
            True,
            "service 'users' is served by process 'billing' itself",
        ),
        (
            {"http": ["users"]},
            False,
            "process 'http' (it serves a service named here) does not expose its services",
        ),
    ],
)
def test_a_service_name_that_cannot_be_resolved_is_an_error(
    services: dict[str, list[str]], expose: bool, message: str
) -> None:
    system = define_system(
        "shop",
        "1.0",
        [
            Process(name="billing", module="shop.billing", topology={"access": ["users"]}),
            Process(name="http", module="shop.http", topology={"expose": expose}),
        ],
    )
    with pytest.raises(SystemDefinitionError) as info:
        system.resolve_access(services)
    [(path, text)] = info.value.issues
    assert path == "processes[0].topology.access[0]"
    assert text.startswith(message), text


def test_a_cycle_through_a_service_name_is_rejected() -> None:
    system = define_system(
        "shop",
        "1",
        [
            Process(name="a", module="m", topology={"expose": True, "access": ["beta"]}),
            Process(name="b", module="n", topology={"expose": True, "access": ["a"]}),
        ],
    )
    with pytest.raises(SystemDefinitionError) as info:
        system.resolve_access({"b": ["beta"]})
    assert list(info.value.issues) == [
        ("processes[0].topology.access", "topology cycle: a -> b -> a")
    ]
