"""When ``omnitron up`` considers the apps settled: a pure function of a status reply."""

from __future__ import annotations

from typing import Any

import pytest

from omnitron.cli._daemon import FIRST_UPTIME, SETTLE_POLL, STABLE_UPTIME, unsettled_apps


def app(name: str, status: str, *uptimes: float, restarts: int = 0) -> dict[str, Any]:
    processes = [
        {"instance": i, "pid": 1000 + i, "status": status, "uptime": up}
        for i, up in enumerate(uptimes)
    ]
    return {"name": name, "status": status, "restarts": restarts, "processes": processes}


def test_online_for_long_enough_is_settled() -> None:
    status = {"apps": [app("a", "online", 3.0, FIRST_UPTIME), app("b", "online", 9.0)]}
    assert unsettled_apps(status) == ([], 0.0)


@pytest.mark.parametrize("state", ["crashed", "stopped"])
def test_given_up_or_stopped_is_settled(state: str) -> None:
    stopped = {"name": "a", "status": state, "restarts": 3, "processes": []}
    assert unsettled_apps({"apps": [stopped]}) == ([], 0.0)


def test_a_young_process_waits_until_it_is_old_enough() -> None:
    pending, wait = unsettled_apps({"apps": [app("a", "online", 2.0, 0.1)]})
    assert pending == ["a (online)"]
    assert wait == pytest.approx(FIRST_UPTIME - 0.1)


def test_a_restarted_app_must_stay_up_longer() -> None:
    # Up for longer than a fresh app needs, but it has crashed before.
    looping = app("a", "online", FIRST_UPTIME + 0.1, restarts=2)
    pending, wait = unsettled_apps({"apps": [looping]})
    assert pending == ["a (online)"]
    assert wait == pytest.approx(STABLE_UPTIME - FIRST_UPTIME - 0.1)
    steady = app("a", "online", STABLE_UPTIME, restarts=2)
    assert unsettled_apps({"apps": [steady]}) == ([], 0.0)


@pytest.mark.parametrize("state", ["errored", "starting", "stopping"])
def test_transient_states_are_not_an_answer(state: str) -> None:
    pending, wait = unsettled_apps({"apps": [app("ok", "online", 5.0), app("a", state, 0.0)]})
    assert pending == [f"a ({state})"]
    assert wait == SETTLE_POLL


def test_no_apps_is_settled() -> None:
    assert unsettled_apps({"apps": []}) == ([], 0.0)


def test_errored_with_no_process_left_is_settled() -> None:
    # Given up on at once: it cannot be started as configured.
    never_ran = {"name": "a", "status": "errored", "restarts": 0, "processes": []}
    assert unsettled_apps({"apps": [never_ran]}) == ([], 0.0)
    down = app("a", "stopped", 0.0)
    given_up = {**down, "status": "errored"}
    assert unsettled_apps({"apps": [given_up]}) == ([], 0.0)
