"""The config's process settings reach the library's process leaf unchanged.

A floor or a rounding in this mapping (a stop_timeout of 0.4 s becoming 4 s)
would pass every test that only bounds time from below; this pins each value.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from omnitron.config import load_config
from omnitron.daemon._tree import TreeBuilder
from supervision import ProcessChild, open_supervisor


def test_stop_and_start_settings_map_one_to_one(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.toml"
    config.write_text(
        'project = "mapping"\n\n'
        "[[apps]]\n"
        'name = "web"\n'
        'command = ["sleep", "60"]\n'
        'stop_timeout = "0.4s"\n'
        'stop_signal = "SIGINT"\n'
        'startup_timeout = "7s"\n'
        "instances = 2\n"
    )
    ecosystem = load_config(config)
    [app] = ecosystem.apps
    builder = TreeBuilder(ecosystem, home=tmp_path / "home", sink=lambda *_: lambda line: None)
    for index in range(2):
        child = builder.instance(app, index).child
        assert isinstance(child, ProcessChild)
        assert child.stop_timeout == 0.4
        assert child.stop_signal is signal.SIGINT
        assert child.startup_timeout == 7.0
        assert child.argv == ("sleep", "60")


def test_process_specs_share_the_apps_argv_and_the_home_marker(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.toml"
    config.write_text(
        '[[apps]]\nname = "web"\ncommand = ["sleep", "60"]\ninstances = 3\n'
        '[[apps]]\nname = "db"\ncommand = ["sleep", "61"]\n'
    )
    ecosystem = load_config(config)
    builder = TreeBuilder(ecosystem, home=tmp_path / "home", sink=lambda *_: lambda line: None)
    children = [
        builder.instance(app, index).child
        for app in ecosystem.apps
        for index in range(app.instances)
    ]
    assert all(isinstance(child, ProcessChild) for child in children)
    web = [child for child in children if child.argv[1] == "60"]
    assert len(web) == 3
    assert all(child.argv is web[0].argv for child in web)
    homes = {id(child.env["OMNITRON_HOME"]) for child in children}  # one string
    assert len(homes) == 1
    assert children[0].env["OMNITRON_HOME"] == str((tmp_path / "home").absolute())


_SHOW_ENV = "import json, os; print(json.dumps(dict(os.environ)), flush=True); input()"


async def test_each_child_gets_the_daemons_environment_its_apps_overrides_and_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment a real child sees: the daemon's own (without the service
    # manager's protocol variables), the app's `env` over it, the markers, and what
    # the library adds; nothing else, nothing of another app.
    monkeypatch.setenv("OMNITRON_TEST_SHARED", "from the daemon")
    monkeypatch.setenv("OMNITRON_TEST_OVERRIDDEN", "from the daemon")
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    config = tmp_path / "omnitron.toml"
    command = json.dumps([sys.executable, "-c", _SHOW_ENV])
    config.write_text(
        f'[[apps]]\nname = "web"\ncommand = {command}\ninstances = 2\n'
        'env = { OMNITRON_TEST_OVERRIDDEN = "by web", WEB_ONLY = "1" }\n'
        f'[[apps]]\nname = "db"\ncommand = {command}\n'
    )
    ecosystem = load_config(config)
    home = tmp_path / "home"
    seen: dict[tuple[str, int], dict[str, str]] = {}
    all_seen = trio.Event()

    def sink(app: str, index: int, stream: str) -> Callable[[bytes], None]:
        def deliver(data: bytes) -> None:
            if stream == "out":
                seen[(app, index)] = json.loads(data.splitlines()[0])
                if len(seen) == 3:
                    all_seen.set()

        return deliver

    builder = TreeBuilder(ecosystem, home=home, sink=sink)
    spec = builder.root([builder.app(app, app.instances) for app in ecosystem.apps])
    daemon_env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with trio.fail_after(30):
        async with open_supervisor(spec):
            await all_seen.wait()
    for (app, index), env in seen.items():
        overrides = {"OMNITRON_TEST_OVERRIDDEN": "by web", "WEB_ONLY": "1"} if app == "web" else {}
        expected = {
            **daemon_env,
            **overrides,
            "OMNITRON_HOME": str(home.absolute()),
            "OMNITRON_APP": app,
            "OMNITRON_INSTANCE": str(index),
        }
        expected.setdefault("PYTHONUNBUFFERED", "1")
        added = env.pop("SUPERVISION_CHILD_ID")  # the library's marker of the slot
        assert added
        assert env == expected
    assert seen[("db", 0)]["OMNITRON_TEST_OVERRIDDEN"] == "from the daemon"
