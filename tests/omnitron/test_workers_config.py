"""The config of a module-worker app: keys that do nothing there are warned about."""

from __future__ import annotations

from pathlib import Path

from omnitron.config import define_ecosystem


def test_keys_a_bootstrap_app_does_not_use_are_warned_about(tmp_path: Path) -> None:
    (tmp_path / "boot.py").write_text("")
    ecosystem = define_ecosystem(
        base_dir=tmp_path,
        environ={},
        apps=[
            {
                "name": "shop",
                "bootstrap": "boot.py",
                "instances": 3,
                "ready": "notify",
                "sockets": [{"name": "http", "port": 8000}],
            },
            {"name": "web", "command": ["x"], "instances": 3},
        ],
    )
    assert [(issue.path, issue.message) for issue in ecosystem.inert] == [
        (
            "apps[0].instances",
            "has no effect on a module-worker app: each process's number of workers is "
            "its Process(..., instances=N) in the bootstrap",
        ),
        (
            "apps[0].ready",
            "has no effect on a module-worker app: its workers report ready themselves "
            "once they serve (sd_notify)",
        ),
        (
            "apps[0].sockets",
            "has no effect on a module-worker app: its workers serve the daemon on their "
            "own sockets and are not handed listening sockets",
        ),
    ]


def test_a_bootstrap_app_without_those_keys_has_no_warning(tmp_path: Path) -> None:
    (tmp_path / "boot.py").write_text("")
    ecosystem = define_ecosystem(
        base_dir=tmp_path, environ={}, apps=[{"name": "shop", "bootstrap": "boot.py"}]
    )
    assert ecosystem.inert == ()
