"""A module-worker app in the daemon's tree: one process per worker, in topology order.

The builder turns the described system into a pool of ``python -m omnitron.worker
serve`` children (instances numbered across the process entries, providers
first), each with its socket under the home; the places map carries which worker
each path runs, and the status shows each process by its entry's name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from omnitron.config import load_config
from omnitron.config._bootstrap import WorkerProcess, WorkerSlot, WorkerSystem
from omnitron.daemon._errors import UnsupportedApp
from omnitron.daemon._tree import MAX_SOCKET_PATH, Place, TreeBuilder
from supervision import ProcessChild, Ready, SupervisorSpec

SYSTEM = WorkerSystem(
    name="shop",
    version="1.0",
    processes=(
        WorkerProcess(name="users", module="shop.users", instances=2, expose=True),
        WorkerProcess(
            name="billing", module="shop.billing", access=("users",), env={"CURRENCY": "EUR"}
        ),
    ),
)


def builder(tmp_path: Path, home: Path | None = None) -> tuple[TreeBuilder, object]:
    (tmp_path / "bootstrap.py").write_text("")
    config = tmp_path / "omnitron.toml"
    config.write_text(
        'project = "p"\n[[apps]]\nname = "shop"\nbootstrap = "bootstrap.py"\n'
        'env = { LOG = "1" }\nstop_timeout = "3s"\n'
    )
    ecosystem = load_config(config, environ={})
    tree = TreeBuilder(
        ecosystem,
        home=home or tmp_path / "home",
        sink=lambda *_: lambda line: None,
        systems={"shop": SYSTEM},
    )
    return tree, ecosystem.apps[0]


def test_one_child_per_worker_providers_first(tmp_path: Path) -> None:
    tree, app = builder(tmp_path)
    pool = tree.app(app, SYSTEM.size).child
    assert isinstance(pool, SupervisorSpec)
    assert [c.name for c in pool.children] == ["0", "1", "2"]
    home = tmp_path / "home"
    run = home / "run" / "shop"
    assert tree.places[("p", "shop", "0")] == Place(
        "shop", 0, WorkerSlot("users", 0, str(run / "users.0.sock"))
    )
    assert tree.places[("p", "shop", "1")] == Place(
        "shop", 1, WorkerSlot("users", 1, str(run / "users.1.sock"))
    )
    assert tree.places[("p", "shop", "2")] == Place(
        "shop", 2, WorkerSlot("billing", 0, str(run / "billing.0.sock"))
    )
    for index, child in enumerate(c.child for c in pool.children):
        assert isinstance(child, ProcessChild)
        slot = SYSTEM.slots[index]
        assert child.argv == (
            sys.executable,
            "-m",
            "omnitron.worker",
            "serve",
            str(tmp_path / "bootstrap.py"),
            slot.process,
        )
        assert child.ready == Ready.notify()
        assert child.stop_timeout == 3.0
        assert child.cwd == str(tmp_path)
        assert child.env is not None
        socket = home / "run" / "shop" / f"{slot.process}.{slot.index}.sock"
        assert child.env["OMNITRON_WORKER_SOCKET"] == str(socket)
        assert child.env["OMNITRON_ROUTER_SOCKET"] == str(home / "run" / "router.sock")
        assert child.env["OMNITRON_INSTANCE"] == str(index)  # the marker: the app's number
        assert child.env["OMNITRON_APP"] == "shop"
        assert child.env["LOG"] == "1"
        assert child.env.get("CURRENCY") == ("EUR" if slot.process == "billing" else None)
        assert child.env["OMNITRON_STOP_TIMEOUT"] == "3"
    assert (home / "run" / "shop").stat().st_mode & 0o777 == 0o700


def test_the_successor_of_a_worker_in_a_reload_listens_beside_it(tmp_path: Path) -> None:
    tree, app = builder(tmp_path)
    first = tree.instance(app, 1)
    successor = tree.instance(app, 1, child=TreeBuilder.successor_name(1, 7))
    sockets = [tree.places[("p", "shop", spec.name)].worker for spec in (first, successor)]
    run = tmp_path / "home" / "run" / "shop"
    assert [w.socket if w else None for w in sockets] == [
        str(run / "users.1.sock"),
        str(run / "users.1~7.sock"),
    ]


def test_a_process_with_its_own_interpreter_runs_it(tmp_path: Path) -> None:
    tree, app = builder(tmp_path)
    tree.systems["shop"] = WorkerSystem(
        name="shop",
        version="1",
        processes=(WorkerProcess(name="ml", module="m", python="/opt/py/bin/python"),),
    )
    child = tree.instance(app, 0).child
    assert isinstance(child, ProcessChild)
    assert child.argv[0] == "/opt/py/bin/python"


def test_an_undescribed_bootstrap_or_an_instance_beyond_it_is_refused(tmp_path: Path) -> None:
    tree, app = builder(tmp_path)
    with pytest.raises(UnsupportedApp, match="no instance 3"):
        tree.instance(app, 3)
    del tree.systems["shop"]
    with pytest.raises(UnsupportedApp, match="its bootstrap has not been described"):
        tree.app(app, 1)


def test_a_socket_path_too_long_for_unix_sockets_is_shortened(tmp_path: Path) -> None:
    deep = Path("/tmp") / ("h" * 40)
    tree, _ = builder(tmp_path, home=deep)
    slot = WorkerSlot("a-rather-long-process-name-" + "x" * 30, 12)
    path = tree.socket_path("shop", slot)
    assert path.parent == deep / "run"
    assert path.name.startswith("w")
    assert path.suffix == ".sock"
    assert len(os.fsencode(path)) <= MAX_SOCKET_PATH
    assert tree.socket_path("shop", slot) == path  # stable
    assert tree.socket_path("shop", WorkerSlot(slot.process, 13)) != path
    # A home so deep that even the short form does not fit: said, with the way out.
    tree, _ = builder(tmp_path, home=Path("/tmp") / ("h" * 100))
    with pytest.raises(UnsupportedApp, match="use a shorter OMNITRON_HOME"):
        tree.socket_path("shop", slot)
