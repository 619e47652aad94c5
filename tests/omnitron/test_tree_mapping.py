"""The config's process settings reach the library's process leaf unchanged.

A floor or a rounding in this mapping (a stop_timeout of 0.4 s becoming 4 s)
would pass every test that only bounds time from below; this pins each value.
"""

from __future__ import annotations

import signal
from pathlib import Path

from omnitron.config import load_config
from omnitron.daemon._tree import TreeBuilder
from supervision import ProcessChild


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
