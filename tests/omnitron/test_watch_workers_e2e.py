"""Hot reload of a module-worker app (``examples/shop``), end to end: a change to a
module reloads only the workers that import it; a change to the bootstrap reloads
the app; a broken module keeps the old workers serving.

``users`` (two workers) and ``billing`` (one) import different modules. The
harness is the one of ``test_cli_e2e.py``; the example is copied as
``test_exec_e2e.py`` does.
"""

from __future__ import annotations

import sys

import pytest
from test_cli_e2e import Omnitron, home, omnitron, wait_for
from test_exec_e2e import shop

__all__ = ["home", "omnitron"]  # fixtures used here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

WATCH = 'watch = { directory = ".", debounce = "100ms" }\n'


def _pids(omnitron: Omnitron) -> dict[str, set[int]] | None:
    """``{process entry: pids}`` once every worker is online, else ``None``."""
    [app] = omnitron.apps().values()
    if any(p["status"] != "online" or not p["pid"] for p in app["processes"]):
        return None
    pids: dict[str, set[int]] = {}
    for process in app["processes"]:
        pids.setdefault(process["name"], set()).add(process["pid"])
    return pids


def _status(omnitron: Omnitron) -> dict[str, object]:
    [record] = omnitron.json("watch", "status", "shop")["apps"]
    return dict(record)


def test_a_module_reloads_its_importers_and_the_bootstrap_the_app(omnitron: Omnitron) -> None:
    shop(omnitron, app=WATCH)
    omnitron.up()
    first = wait_for(lambda: _pids(omnitron), "the workers online")
    assert {name: len(pids) for name, pids in first.items()} == {"users": 2, "billing": 1}

    # billing.py: only billing's worker is replaced.
    billing = omnitron.project / "shop" / "billing.py"
    billing.write_text(billing.read_text() + "\n# edited\n")
    second = wait_for(
        lambda: (p := _pids(omnitron)) and p["billing"] != first["billing"] and p,
        "billing replaced",
        timeout=60,
    )
    assert second["users"] == first["users"]
    wait_for(lambda: _status(omnitron)["reloads"] == 1, "the reload recorded")
    logs = omnitron.ok("logs", "shop", "--lines", "500").stdout
    assert "watch: reloading only billing (instance 2)" in logs

    # A broken users.py: the new users worker fails; the old ones keep serving.
    users = omnitron.project / "shop" / "users.py"
    good = users.read_text()
    users.write_text(good + "\nthis is not python\n")
    failed = wait_for(
        lambda: (r := _status(omnitron))["failures"] == 1 and r, "the reload failing", timeout=60
    )
    assert "did not become ready" in str(failed["last_error"])
    assert _pids(omnitron) == second
    code = omnitron.run("exec", "shop", "users", "find_by_id", "u_1")
    assert code.returncode == 0, code.stderr

    # The bootstrap: every worker is replaced (users.py fixed first).
    users.write_text(good)
    wait_for(lambda: _status(omnitron)["reloads"] == 2, "users reloaded", timeout=60)
    third = wait_for(lambda: _pids(omnitron), "the workers online")
    assert third["users"].isdisjoint(second["users"])
    assert third["billing"] == second["billing"]
    bootstrap = omnitron.project / "bootstrap.py"
    bootstrap.write_text(bootstrap.read_text() + "\n# edited\n")
    fourth = wait_for(
        lambda: (
            (p := _pids(omnitron))
            and p["billing"].isdisjoint(third["billing"])
            and p["users"].isdisjoint(third["users"])
            and p
        ),
        "every worker replaced",
        timeout=60,
    )
    assert {name: len(pids) for name, pids in fourth.items()} == {"users": 2, "billing": 1}
