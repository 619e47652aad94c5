"""Leftovers of a dead daemon: found by their markers, terminated as whole trees.

Real processes throughout (this is the OS contract): every test spawns Python
children in their own sessions, waits for them to say ``ready`` on a pipe, and
the ``spawn`` fixture kills and reaps whatever is left, even when a test fails.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import pytest
import trio

from omnitron.daemon._leftovers import (
    TerminateReport,
    find_leftovers,
    marker_environ,
    may_have_leftovers,
    terminate_leftovers,
)
from omnitron.daemon._tree import ENV_APP, ENV_HOME, ENV_INSTANCE
from omnitron.state import (
    AppState,
    DaemonState,
    Home,
    LoadResult,
    ProcessIdentity,
    ProcessState,
    StateSource,
)
from supervision import _procfs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# --------------------------------------------------------------------------- child programs

SLEEPER = """\
import signal
print("ready", flush=True)
while True:
    signal.pause()
"""

TERM_IGNORER = """\
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    signal.pause()
"""

# Descendants without markers: a child in the parent's group, a child that left
# the group, and an orphan (its parent exited) still in the group.
TREE = """\
import os, signal, subprocess, sys
env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")}
code = "import signal\\nwhile True:\\n    signal.pause()"
fork = (
    "import subprocess, sys; "
    "print(subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=subprocess.DEVNULL).pid)"
)
kids = [
    subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL),
    subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, start_new_session=True
    ),
]
middle = subprocess.run(
    [sys.executable, "-c", fork, code], env=env, stdout=subprocess.PIPE, check=True
)
print("ready", *[kid.pid for kid in kids], int(middle.stdout), flush=True)
while True:
    signal.pause()
"""

# Reports every catchable signal it gets, and answers "pong" to each line on stdin.
WITNESS = """\
import os, signal, sys
def report(sig, frame):
    os.write(1, f"signal {sig}\\n".encode())
for sig in (signal.SIGTERM, signal.SIGCONT, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1):
    signal.signal(sig, report)
print("ready", flush=True)
for line in sys.stdin:
    print("pong", flush=True)
"""

# Runs a marked grandchild that looks for leftovers from inside the tree.
FINDER_PARENT = """\
import signal, subprocess, sys
subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], check=True)
while True:
    signal.pause()
"""

FINDER = """\
import json, os, sys
from omnitron.daemon._leftovers import find_leftovers
found = [leftover.pid for leftover in find_leftovers(sys.argv[1])]
print(json.dumps({"found": found, "me": os.getpid(), "parent": os.getppid()}), flush=True)
"""


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")}


def _marked(home: Path, app: str, instance: int) -> dict[str, str]:
    return {**_clean_environ(), **marker_environ(home, app, instance)}


# --------------------------------------------------------------------------- fixture


class Child(NamedTuple):
    proc: subprocess.Popen[bytes]
    words: list[str]  # what followed "ready" on its first line

    @property
    def pid(self) -> int:
        return self.proc.pid


async def _read_line(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    data = b""
    async with trio.lowlevel.FdStream(os.dup(proc.stdout.fileno())) as stream:
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some()
            if not chunk:
                raise AssertionError(f"pid {proc.pid} closed its output after {data!r}")
            data += chunk
    return data.decode()


async def _write(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    async with trio.lowlevel.FdStream(os.dup(proc.stdin.fileno())) as stream:
        await stream.send_all(data)


class Spawner:
    """Starts children and remembers every process to clean up."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.strays: list[ProcessIdentity] = []

    async def __call__(
        self,
        code: str,
        env: Mapping[str, str],
        *args: str,
        stdin: bool = False,
        ready: bool = True,
    ) -> Child:
        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-c", code, *args],
                env=dict(env),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )

        proc = await trio.to_thread.run_sync(popen)
        self.procs.append(proc)
        words: list[str] = []
        if ready:
            with trio.fail_after(10):
                line = await _read_line(proc)
            assert line.startswith("ready"), line
            words = line.split()[1:]
        return Child(proc, words)

    def track(self, pid: int) -> ProcessIdentity:
        """Remember a grandchild, to kill it at the end if it is still that process."""
        identity = ProcessIdentity.of(pid)
        assert identity is not None, f"grandchild {pid} is not running"
        self.strays.append(identity)
        return identity

    def cleanup(self) -> None:
        for stray in self.strays:
            if stray.is_running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stray.pid, signal.SIGKILL)
        for proc in self.procs:
            if proc.poll() is None:
                # Our own unreaped child: its pid, hence its group id, is still its own.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            proc.wait(timeout=10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    spawner = Spawner()
    try:
        yield spawner
    finally:
        spawner.cleanup()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _gone(identity: ProcessIdentity) -> bool:
    return not identity.is_running()  # a zombie is not running


def _running(child: Child) -> bool:
    return child.proc.poll() is None


# --------------------------------------------------------------------------- the fleet


@attrs.frozen
class Fleet:
    web: Child  # marked, with two unmarked children
    grandchildren: tuple[ProcessIdentity, ProcessIdentity]
    orphan: ProcessIdentity  # in web's group, but no longer its descendant
    web1: Child  # marked, plain
    worker: Child  # marked, ignores SIGTERM
    unrelated: Child  # no markers, but "omnitron" and the home in its command line
    shell: Child  # only OMNITRON_HOME, like a shell that exports it
    malformed: Child  # markers of this home, but the instance is not a number
    foreign: Child  # marked, for another home whose path starts with this one's

    @property
    def ours(self) -> list[Child]:
        return [self.web, self.web1, self.worker]

    @property
    def strangers(self) -> list[Child]:
        return [self.unrelated, self.shell, self.malformed, self.foreign]


async def _start_fleet(spawn: Spawner, home: Path) -> Fleet:
    other_home = home.with_name(home.name + "2")
    web = await spawn(TREE, _marked(home, "web", 0))
    grandchildren = (spawn.track(int(web.words[0])), spawn.track(int(web.words[1])))
    return Fleet(
        web=web,
        grandchildren=grandchildren,
        orphan=spawn.track(int(web.words[2])),
        web1=await spawn(SLEEPER, _marked(home, "web", 1)),
        worker=await spawn(TERM_IGNORER, _marked(home, "worker", 0)),
        unrelated=await spawn(SLEEPER, _clean_environ(), "omnitron", str(home)),
        shell=await spawn(SLEEPER, {**_clean_environ(), ENV_HOME: str(home)}),
        malformed=await spawn(
            SLEEPER, {**_marked(home, "web", 0), ENV_INSTANCE: "one"}, "--instance", "0"
        ),
        foreign=await spawn(SLEEPER, _marked(other_home, "web", 0)),
    )


# --------------------------------------------------------------------------- finding


def test_marker_environ_matches_the_daemon_home(tmp_path: Path) -> None:
    home = Home(tmp_path / "a" / ".." / "home")
    assert marker_environ(home.path, "api", 3) == {
        ENV_HOME: str(home.path),
        ENV_APP: "api",
        ENV_INSTANCE: "3",
    }
    assert marker_environ(str(tmp_path / "home") + "/", "api", 0)[ENV_HOME] == str(home.path)


async def test_find_leftovers_finds_exactly_the_marked_processes_of_this_home(
    spawn: Spawner, home: Path
) -> None:
    fleet = await _start_fleet(spawn, home)

    found = await trio.to_thread.run_sync(find_leftovers, home)

    assert [(lo.app, lo.instance, lo.pid) for lo in found] == [
        ("web", 0, fleet.web.pid),
        ("web", 1, fleet.web1.pid),
        ("worker", 0, fleet.worker.pid),
    ]
    for leftover in found:
        live = ProcessIdentity.of(leftover.pid)
        assert live is not None
        assert leftover.create_time == live.start_time
        assert leftover.boot_id == live.boot_id
        assert leftover.identity.is_running()
        assert leftover.cmdline[:2] == (sys.executable, "-c")


async def test_find_leftovers_honours_exclude_pids(spawn: Spawner, home: Path) -> None:
    first = await spawn(SLEEPER, _marked(home, "api", 0))
    second = await spawn(SLEEPER, _marked(home, "api", 1))

    found = await trio.to_thread.run_sync(
        functools.partial(find_leftovers, home, exclude_pids={first.pid})
    )

    assert [lo.pid for lo in found] == [second.pid]


async def test_find_leftovers_never_matches_the_caller_or_its_ancestors(
    spawn: Spawner, home: Path
) -> None:
    sibling = await spawn(SLEEPER, _marked(home, "api", 0))
    parent = await spawn(FINDER_PARENT, _marked(home, "api", 1), FINDER, str(home), ready=False)

    with trio.fail_after(20):
        report = json.loads(await _read_line(parent.proc))

    assert report["parent"] == parent.pid
    assert report["found"] == [sibling.pid]


async def test_find_leftovers_with_nothing_marked(home: Path) -> None:
    assert await trio.to_thread.run_sync(find_leftovers, home) == []


# --------------------------------------------------------------------------- terminating


@pytest.fixture(params=["pidfd", "no-pidfd"])
def pidfd_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    mode: str = request.param
    if mode == "pidfd" and not _procfs._HAVE_PIDFD:
        pytest.skip("no pidfd on this platform")
    if mode == "no-pidfd":
        monkeypatch.setattr(_procfs, "_HAVE_PIDFD", False)
    return mode


@pytest.mark.slow
async def test_terminate_leftovers_kills_whole_trees_and_spares_the_rest(
    spawn: Spawner, home: Path, pidfd_mode: str
) -> None:
    fleet = await _start_fleet(spawn, home)
    # A stopped leftover still gets the SIGTERM (SIGCONT follows it).
    os.kill(fleet.web1.pid, signal.SIGSTOP)
    await trio.to_thread.run_sync(os.waitid, os.P_PID, fleet.web1.pid, os.WSTOPPED | os.WNOWAIT)
    identities = {child.pid: ProcessIdentity.of(child.pid) for child in fleet.ours}
    leftovers = await trio.to_thread.run_sync(find_leftovers, home)

    with trio.fail_after(15):
        report = await terminate_leftovers(leftovers, timeout=1.0)

    grandchildren = [identity.pid for identity in fleet.grandchildren]
    assert report == TerminateReport(
        terminated=tuple(sorted([fleet.web.pid, fleet.web1.pid, *grandchildren])),
        killed=(fleet.worker.pid,),
    )
    assert report.complete
    # The orphan is reached only by the group signal: it is not in the report.
    for identity in [*identities.values(), *fleet.grandchildren, fleet.orphan]:
        assert identity is not None
        assert _gone(identity), identity
    if pidfd_mode == "pidfd":  # without pidfds, psutil reaped our children while waiting
        assert fleet.web.proc.wait(timeout=5) == -signal.SIGTERM
        assert fleet.web1.proc.wait(timeout=5) == -signal.SIGTERM
        assert fleet.worker.proc.wait(timeout=5) == -signal.SIGKILL
    assert all(_running(child) for child in fleet.strangers)
    assert await trio.to_thread.run_sync(find_leftovers, home) == []


async def test_a_stale_identity_is_never_signalled(
    spawn: Spawner, home: Path, pidfd_mode: str
) -> None:
    witness = await spawn(WITNESS, _marked(home, "api", 0), stdin=True)
    [leftover] = await trio.to_thread.run_sync(find_leftovers, home)
    # The same pid, but another start time: the pid now names another process.
    stale = attrs.evolve(leftover, create_time=leftover.create_time - 1.0)

    with trio.fail_after(10):
        report = await terminate_leftovers([stale], timeout=0.5)

    assert report == TerminateReport(skipped=(witness.pid,))
    with trio.fail_after(10):
        await _write(witness.proc, b"ping\n")
        # Any signal would have been reported before the answer.
        assert await _read_line(witness.proc) == "pong\n"
    assert _running(witness)


async def test_a_leftover_that_already_exited_is_skipped(spawn: Spawner, home: Path) -> None:
    child = await spawn(SLEEPER, _marked(home, "api", 0))
    [leftover] = await trio.to_thread.run_sync(find_leftovers, home)
    child.proc.kill()
    await trio.to_thread.run_sync(child.proc.wait)

    report = await terminate_leftovers([leftover], timeout=0.5)

    assert report == TerminateReport(skipped=(child.pid,))


async def test_terminate_nothing() -> None:
    report = await terminate_leftovers([])
    assert report == TerminateReport()
    assert report.complete


async def test_negative_timeouts_are_refused() -> None:
    with pytest.raises(ValueError, match="timeouts must be >= 0"):
        await terminate_leftovers([], timeout=-1)
    with pytest.raises(ValueError, match="timeouts must be >= 0"):
        await terminate_leftovers([], kill_timeout=-0.5)


async def test_cancellation_kills_what_is_left(spawn: Spawner, home: Path) -> None:
    worker = await spawn(TERM_IGNORER, _marked(home, "worker", 0))
    leftovers = await trio.to_thread.run_sync(find_leftovers, home)

    with trio.fail_after(10):
        with trio.move_on_after(0.2) as scope:
            await terminate_leftovers(leftovers, timeout=60)
        assert scope.cancelled_caught
        assert await trio.to_thread.run_sync(worker.proc.wait) == -signal.SIGKILL


async def test_a_process_that_cannot_be_killed_is_reported_escaped(
    spawn: Spawner, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await spawn(TERM_IGNORER, _marked(home, "worker", 0))
    leftovers = await trio.to_thread.run_sync(find_leftovers, home)
    # Stand-in for a process in uninterruptible sleep: SIGKILL never lands.
    original = _procfs.PinnedProcess.send
    original_group = _procfs.PinnedProcess.send_group

    def send_but_kill(target: Any, sig: int) -> bool:
        return sig == signal.SIGKILL or original(target, sig)

    def send_group_but_kill(target: Any, sig: int) -> None:
        if sig != signal.SIGKILL:
            original_group(target, sig)

    monkeypatch.setattr(_procfs.PinnedProcess, "send", send_but_kill)
    monkeypatch.setattr(_procfs.PinnedProcess, "send_group", send_group_but_kill)

    with trio.fail_after(10):
        report = await terminate_leftovers(leftovers, timeout=0.2, kill_timeout=0.2)

    assert report == TerminateReport(escaped=(worker.pid,))
    assert not report.complete
    assert _running(worker)


# --------------------------------------------------------------------------- when to scan


def _loaded(*pids: int | None, **fields: object) -> LoadResult:
    processes = [
        ProcessState(name="web", instance=i, pid=pid, start_time=1.0 if pid else None)
        for i, pid in enumerate(pids)
    ]
    state = DaemonState(apps=[AppState(name="web", processes=processes)])
    options: dict[str, Any] = {"source": StateSource.PRIMARY, **fields}
    return LoadResult(state=state, generation=3, **options)


def test_after_a_clean_stop_there_is_nothing_to_scan_for() -> None:
    assert not may_have_leftovers(lock_reclaimed=False, loaded=_loaded(None, None), reset=False)
    assert not may_have_leftovers(lock_reclaimed=False, loaded=LoadResult(), reset=False)


@pytest.mark.parametrize(
    ("reclaimed", "loaded", "reset"),
    [
        (True, _loaded(None), False),  # the pid file was not released: the daemon died
        (False, _loaded(None, 4242), False),  # the state records a running process
        (False, _loaded(None), True),  # --reset-state: the record was set aside
        (False, _loaded(None, source=StateSource.BACKUP), False),
        (False, _loaded(None, warnings=("state.json is corrupt",)), False),
        (False, _loaded(None, moved_aside=(Path("state.json.corrupt"),)), False),
    ],
    ids=["pid file reclaimed", "pid in state", "reset", "backup", "warnings", "moved aside"],
)
def test_anything_but_a_clean_stop_scans(reclaimed: bool, loaded: LoadResult, reset: bool) -> None:
    assert may_have_leftovers(lock_reclaimed=reclaimed, loaded=loaded, reset=reset)
