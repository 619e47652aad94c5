"""The public surface of the library, pinned.

Adding or removing a public name is a deliberate act: update the list here and
docs/supervision.md in the same change.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import supervision
import supervision.events
import supervision.testing

SUPERVISION = [
    # specs
    "SupervisorSpec",
    "ChildSpec",
    "ProcessChild",
    "TaskChild",
    "Strategy",
    "Restart",
    "AutoShutdown",
    "Intensity",
    "Backoff",
    "Ready",
    "Output",
    "Listen",
    # running a tree
    "open_supervisor",
    "run_supervisor",
    "Supervisor",
    "Subscription",
    "ChildInfo",
    "ChildCounts",
    "ChildState",
    "ExitStatus",
    # processes (procfs)
    "ProcessIdentity",
    "PinnedProcess",
    "descendants",
    "process_children",
    "MarkedProcess",
    "find_marked",
    "terminate_processes",
    "kill_processes",
    "TerminateReport",
    # errors
    "SupervisionError",
    "InvalidSpec",
    "InvalidSpecType",
    "StartFailure",
    "SpawnError",
    "SupervisorGaveUp",
    "SupervisorNotRunning",
    "ChildNotFound",
    "ChildAlreadyExists",
    "ChildRunning",
]

EVENTS = [
    "Event",
    "ChildStarted",
    "ChildReady",
    "ChildExited",
    "ChildRestarting",
    "ChildStopped",
    "SupervisorGaveUp",
    "EventsDropped",
]

TESTING = ["Exit", "FailStart", "FakeChild", "Hang", "Killed", "Raise", "RunForever", "Step"]

FORBIDDEN = ["omnitron", "click", "msgpack", "jwt", "cryptography"]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "supervision.md"


@pytest.mark.parametrize(
    ("module", "names"),
    [(supervision, SUPERVISION), (supervision.events, EVENTS), (supervision.testing, TESTING)],
    ids=["supervision", "supervision.events", "supervision.testing"],
)
def test_exported_names(module: object, names: list[str]) -> None:
    exported = module.__all__  # type: ignore[attr-defined]
    assert sorted(exported) == sorted(names)
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert getattr(module, name) is not None, name


@pytest.mark.parametrize(
    ("module", "names"),
    [(supervision, SUPERVISION), (supervision.events, EVENTS)],
    ids=["supervision", "supervision.events"],
)
def test_no_public_name_outside_all(module: object, names: list[str]) -> None:
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, type(sys))  # submodules such as supervision.events
        and getattr(value, "__module__", "").startswith("supervision")
    }
    assert public <= set(names)


@pytest.mark.parametrize("name", sorted({*SUPERVISION, *EVENTS, *TESTING}))
def test_every_public_name_is_documented(name: str) -> None:
    # Each name appears in code style in the reference, alone or with its signature.
    assert re.search(rf"`{name}[`(]", DOCS.read_text()), f"{name} is missing from {DOCS.name}"


def test_version() -> None:
    assert isinstance(supervision.__version__, str)


def test_errors_share_a_base_class() -> None:
    for name in SUPERVISION:
        value = getattr(supervision, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, supervision.SupervisionError), name


def test_gave_up_event_and_error_are_different_types() -> None:
    # Same name, two meanings: the event a subscriber sees, the exception a caller gets.
    assert supervision.events.SupervisorGaveUp is not supervision.SupervisorGaveUp
    assert issubclass(supervision.events.SupervisorGaveUp, supervision.events.Event)
    assert issubclass(supervision.SupervisorGaveUp, supervision.SupervisionError)


def test_events_subclass_event() -> None:
    for name in EVENTS:
        assert issubclass(getattr(supervision.events, name), supervision.events.Event), name


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("supervision").joinpath("py.typed").is_file()


# Runs a tiny tree, so lazily imported modules (the process leaf) are loaded too.
LAYERING_PROBE = textwrap.dedent(
    """
    import json, sys
    import trio
    import supervision, supervision.events, supervision.testing
    from supervision import ChildSpec, ProcessChild, SupervisorSpec, TaskChild, open_supervisor

    async def idle():
        await trio.sleep_forever()

    async def main():
        pause = [sys.executable, "-c", "import signal; signal.pause()"]
        spec = SupervisorSpec(
            name="probe",
            children=[
                ChildSpec("task", TaskChild(idle)),
                ChildSpec("proc", ProcessChild(pause)),
            ],
        )
        async with open_supervisor(spec) as sup:
            assert len(sup.which_children()) == 2

    trio.run(main)
    print(json.dumps(sorted(sys.modules)))
    """
)


def test_supervision_does_not_import_the_daemon_or_its_dependencies() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LAYERING_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout.splitlines()[-1])
    leaked = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)
    assert leaked == []


# The README's and SPEC's spellings, as a type checker sees them.
TYPED_USAGE = textwrap.dedent(
    """
    from supervision import (
        Backoff, ChildSpec, Intensity, ProcessChild, Ready, Restart, SupervisorSpec, TaskChild,
    )

    async def work(n: int) -> None: ...

    child = ProcessChild(["prog", "--flag"], stop_timeout=5.0, ready=Ready.notify())
    spec = SupervisorSpec(
        name="root",
        intensity=Intensity(5, 60.0),
        backoff=Backoff(1.0, 30.0, 2.0),
        children=[
            ChildSpec("a", child),
            ChildSpec("t", TaskChild(work, 1), restart=Restart.TRANSIENT),
        ],
    )
    """
)


@pytest.mark.slow
def test_positional_arguments_pass_the_type_checker(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            "-c",
            TYPED_USAGE,
        ],
        cwd=DOCS.parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
