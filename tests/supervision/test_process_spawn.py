"""Spawning process children: errors, environment, descriptors and exit statuses."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from supervision._errors import SpawnError, StartFailure
from supervision._procfs import MARKER_ENV
from supervision._spawn import _spawn_error
from supervision._spec import Listen, Output, ProcessChild, Ready

CHILDREN = Path(__file__).resolve().parent.parent / "fixtures" / "children"
TIMEOUT = 10.0

# --------------------------------------------------------------------------- errors (PL-01..04)


async def test_missing_absolute_executable(slots) -> None:
    slot = slots.new(ProcessChild(["/nonexistent/bin/app"]))
    with pytest.raises(SpawnError) as info:
        await slot.start()
    assert info.value.reason == "executable not found: /nonexistent/bin/app"
    assert info.value.errno == errno.ENOENT
    assert isinstance(info.value, StartFailure)
    assert slot.spawned == []


async def test_missing_relative_executable_shows_path(slots) -> None:
    spec = ProcessChild(["no-such-program-xyz"], env={"PATH": "/usr/local/bin:/usr/bin"})
    slot = slots.new(spec)
    with pytest.raises(SpawnError) as info:
        await slot.start()
    assert info.value.reason == (
        "executable not found: no-such-program-xyz (PATH=/usr/local/bin:/usr/bin)"
    )
    assert info.value.errno == errno.ENOENT


async def test_permission_denied(slots) -> None:
    path = str(CHILDREN / "not_executable")
    slot = slots.new(ProcessChild([path]))
    with pytest.raises(SpawnError) as info:
        await slot.start()
    assert info.value.reason == f"permission denied executing {path}"
    assert info.value.errno == errno.EACCES


async def test_exec_format_error(slots) -> None:
    path = str(CHILDREN / "no_shebang")
    slot = slots.new(ProcessChild([path]))
    with pytest.raises(SpawnError) as info:
        await slot.start()
    assert info.value.errno == errno.ENOEXEC
    assert info.value.reason.startswith(f"exec format error: {path} (add a shebang line")


async def test_missing_cwd_names_the_cwd(slots, child) -> None:
    slot = slots.new(ProcessChild(child("exit_with", 0), cwd="/nonexistent/dir"))
    with pytest.raises(SpawnError) as info:
        await slot.start()
    assert info.value.reason == "working directory not found: /nonexistent/dir"
    assert info.value.filename == "/nonexistent/dir"


async def test_missing_interpreter_is_not_a_missing_script(slots) -> None:
    path = str(CHILDREN / "bad_interpreter")
    slot = slots.new(ProcessChild([path]))
    with pytest.raises(SpawnError) as info:
        await slot.start()
    assert info.value.reason == f"interpreter not found for {path} (check its #! line)"


@pytest.mark.parametrize(
    ("argv", "cwd", "expected"),
    [
        (["/nonexistent/bin/app"], None, "executable not found: /nonexistent/bin/app"),
        (["./not_executable"], str(CHILDREN), "permission denied executing ./not_executable"),
        (["/bin/true"], "/nonexistent/dir", "working directory not found: /nonexistent/dir"),
    ],
)
async def test_spawn_errors_with_fd_placement(slots, argv, cwd, expected) -> None:
    # The posix_spawn path (fds at fixed numbers) checks in the parent what the
    # exec would refuse, and reports it the same way.
    slot = slots.new(ProcessChild(argv, cwd=cwd, ready=Ready.fd(3)))
    with pytest.raises(SpawnError) as info:
        await slot.start()
    assert info.value.reason == expected


async def test_exec_format_error_through_the_listen_shim(slots) -> None:
    path = str(CHILDREN / "no_shebang")
    slot = slots.new(ProcessChild([path], listen=[Listen.tcp(0)]))
    with pytest.raises(SpawnError) as info:
        await slot.start()
    assert info.value.errno == errno.ENOEXEC


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.EAGAIN, "fork failed: resource temporarily unavailable"),
        (errno.EMFILE, "too many open files"),
        (errno.ENFILE, "too many open files in the system"),
        (errno.ENOMEM, "fork failed: out of memory"),
    ],
)
def test_resource_errors_are_named(code: int, reason: str) -> None:
    error = _spawn_error(("t", "c"), OSError(code, os.strerror(code)), "app", {}, None)
    assert error.reason == reason
    assert error.errno == code
    assert str(error) == f"t/c: {reason}"


async def test_fd_exhaustion_is_a_spawn_error(slots, child) -> None:
    slot = slots.new(ProcessChild(child("exit_with", 0), stdout=Output.lines(print)))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Lower the limit and fill every free descriptor below it: no pipe can be made.
    top = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 16, hard))
    hogs: list[int] = []
    try:
        while True:
            try:
                hogs.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                break
        with pytest.raises(SpawnError) as info:
            await slot.start()
    finally:
        for fd in hogs:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert info.value.reason == "too many open files"


# --------------------------------------------------------------------------- exit statuses


@pytest.mark.parametrize("code", [0, 3, 255])
async def test_exit_code_is_reported(slots, child, code: int) -> None:
    slot = slots.new(ProcessChild(child("exit_with", code)))
    pid = await slot.start()
    status = await slot.exited()
    assert slot.spawned == [pid]
    assert status.code == code
    assert status.signal is None
    assert status.normal is (code == 0)
    assert status.reason == f"exited with code {code}"
    assert slot.runner.pid is None


async def test_success_exit_codes(slots, child) -> None:
    slot = slots.new(ProcessChild(child("exit_with", 3), success_exit_codes={0, 3}))
    await slot.start()
    assert (await slot.exited()).normal


async def test_sigkill_is_recorded_as_signal_9(slots, child) -> None:
    # PL-31: an OOM kill looks like this; it must never read as "exit 0".
    slot = slots.new(ProcessChild(child("sleeper")))
    pid = await slot.start()
    os.kill(pid, signal.SIGKILL)
    status = await slot.exited()
    assert status.signal == signal.SIGKILL
    assert status.code is None
    assert not status.normal
    assert status.reason == "killed by SIGKILL"


async def test_kill_own_group_does_not_reach_the_supervisor(slots, child) -> None:
    # SG-08: kill(0, SIGTERM) in the child hits only its own group.
    slot = slots.new(ProcessChild(child("kill_own_group")))
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        await slot.start()
        status = await slot.exited()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == []
    assert status.signal == signal.SIGTERM
    # Death by its own stop signal is a normal exit, whoever sent it (OTP's shutdown).
    assert status.normal
    assert os.getpgid(0) != slot.spawned[0]


async def test_each_child_leads_its_own_session(slots, child) -> None:
    slot = slots.new(ProcessChild(child("sleeper")))
    pid = await slot.start()
    assert os.getpgid(pid) == pid
    assert os.getsid(pid) == pid
    await slot.stop()


# --------------------------------------------------------------------------- environment


async def test_environment(slots, child, lines, monkeypatch) -> None:
    monkeypatch.setenv("FROM_SUPERVISOR", "kept")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # ours, not the child's
    monkeypatch.setenv("LISTEN_FDS", "2")
    out = lines()
    names = ["FROM_SUPERVISOR", "FROM_SPEC", "PYTHONUNBUFFERED", MARKER_ENV]
    names += ["NOTIFY_SOCKET", "LISTEN_FDS"]
    spec = ProcessChild(
        child("print_env", *names), env={"FROM_SPEC": "yes"}, stdout=Output.lines(out)
    )
    slot = slots.new(spec)
    await slot.start()
    await slot.exited()
    env = json.loads(out.lines[0])
    assert env["FROM_SUPERVISOR"] == "kept"
    assert env["FROM_SPEC"] == "yes"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env[MARKER_ENV] == slot.runner.child_id
    assert slot.runner.child_id.startswith(slots.host.token + ".")
    assert env["NOTIFY_SOCKET"] is None
    assert env["LISTEN_FDS"] is None


async def test_environment_is_the_same_in_every_generation(
    slots, child, lines, monkeypatch
) -> None:
    # The slot's environment is encoded once; each generation adds its protocol
    # variables, which win over the spec's (LISTEN_FDS here), as the spec's win
    # over the supervisor's.
    monkeypatch.setenv("FROM_SUPERVISOR", "kept")
    monkeypatch.setenv("OVERRIDDEN", "supervisor")
    out = lines()
    names = ["FROM_SUPERVISOR", "OVERRIDDEN", "LISTEN_FDS", MARKER_ENV]
    spec = ProcessChild(
        child("print_env", *names),
        env={"OVERRIDDEN": "spec", "LISTEN_FDS": "9"},
        listen=[Listen.tcp(0)],
        stdout=Output.lines(out),
    )
    slot = slots.new(spec)
    for generation in (1, 2):
        await slot.start()
        await slot.exited()
        await out.wait_for(lambda got, n=generation: len(got) >= n)
    first, second = (json.loads(line) for line in out.lines)
    assert first == second
    assert first == {
        "FROM_SUPERVISOR": "kept",
        "OVERRIDDEN": "spec",
        "LISTEN_FDS": "1",
        MARKER_ENV: slot.runner.child_id,
    }


class _CountingEnviron(MutableMapping[str, str]):
    """A stand-in for ``os.environ`` counting the values read from it."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items
        self.reads = 0

    def __getitem__(self, key: str) -> str:
        self.reads += 1
        return self._items[key]

    def __setitem__(self, key: str, value: str) -> None:
        self._items[key] = value

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


async def test_a_slot_reads_the_supervisors_environment_once(
    slots, child, lines, monkeypatch
) -> None:
    # Every read of os.environ encodes a name and decodes a value: the first
    # start of a slot reads each variable once (the value it compares the
    # slot's environment with is that read's), whatever the spec sets.
    environ = _CountingEnviron({**os.environ, "FROM_SUPERVISOR": "kept"})
    monkeypatch.setattr(os, "environ", environ)
    out = lines()
    spec = ProcessChild(
        child("print_env", "FROM_SUPERVISOR", "FROM_SPEC"),
        env={"FROM_SPEC": "yes"},
        stdout=Output.lines(out),
    )
    slot = slots.new(spec)
    await slot.start()
    reads = environ.reads
    await slot.exited()
    assert json.loads(out.lines[0]) == {"FROM_SUPERVISOR": "kept", "FROM_SPEC": "yes"}
    assert 0 < reads <= len(environ)


def test_inherited_variables_are_encoded_once_per_process() -> None:
    from supervision._spawn import encode_env_shared

    first = encode_env_shared([("SHARED_NAME", "value ü")])
    second = encode_env_shared([("SHARED_NAME", "value ü")])
    assert first == ["SHARED_NAME=value ü".encode()]
    assert first[0] is second[0]
    with pytest.raises(ValueError, match="illegal environment variable name"):
        encode_env_shared([("A=B", "x")])


async def test_spec_env_can_turn_unbuffered_off(slots, child, lines) -> None:
    out = lines()
    spec = ProcessChild(
        child("print_env", "PYTHONUNBUFFERED"),
        env={"PYTHONUNBUFFERED": ""},
        stdout=Output.lines(out),
    )
    slot = slots.new(spec)
    await slot.start()
    await slot.exited()
    assert json.loads(out.lines[0]) == {"PYTHONUNBUFFERED": ""}


async def test_marker_is_stable_across_generations_and_unique_per_slot(slots, child) -> None:
    a = slots.new(ProcessChild(child("exit_with", 0)), name="a")
    b = slots.new(ProcessChild(child("exit_with", 0)), name="b")
    first = a.runner.child_id
    for _ in range(2):
        await a.start()
        await a.exited()
    assert a.runner.child_id == first
    assert a.runner.generations == 2
    assert b.runner.child_id != first


# --------------------------------------------------------------------------- descriptors (RX-03)


@pytest.mark.parametrize("placement", [False, True], ids=["popen", "posix_spawn"])
async def test_child_inherits_no_other_fds(slots, child, lines, placement: bool) -> None:
    leaked = os.open(os.devnull, os.O_RDONLY)  # inheritable, as if from our own parent
    os.set_inheritable(leaked, True)
    try:
        out = lines()
        spec = ProcessChild(
            child("open_fds"),
            stdout=Output.lines(out),
            ready=Ready.fd(7) if placement else Ready.on_spawn(),
            env={"READY_FD": "7"} if placement else None,
        )
        slot = slots.new(spec)
        await slot.start()
        await slot.exited()
    finally:
        os.close(leaked)
    expected = [0, 1, 2, 7] if placement else [0, 1, 2]
    assert json.loads(out.lines[0]) == expected


async def test_runner_cannot_run_two_generations_at_once(slots, child) -> None:
    slot = slots.new(ProcessChild(child("sleeper")))
    await slot.start()
    with pytest.raises(RuntimeError, match="already running"):
        await slot.runner.run(lambda pid: None)
    await slot.stop()


async def test_closed_runner_refuses_to_run(slots, child) -> None:
    slot = slots.new(ProcessChild(child("exit_with", 0)))
    await slot.runner.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await slot.runner.run(lambda pid: None)


# --------------------------------------------------------------------------- signal dispositions

# A parent launched by nohup or as a background job: SIGHUP and SIGINT ignored
# (and SIGUSR1 blocked, given "block"). It spawns `sleep` three ways (Popen, Popen with a cwd, and
# posix_spawn with an fd placed at 3), prints their pids, waits for its stdin to
# close, then kills and reaps them.
_IGNORING_PARENT = """
import json, os, signal, sys
from supervision._spawn import spawn_child

signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
if sys.argv[1] == "block":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
null = os.open(os.devnull, os.O_RDWR)
ways = {"plain": ({}, None), "cwd": ({}, "/"), "fds": ({3: null}, None)}
pids = {
    way: spawn_child(
        ["sleep", "30"], env=dict(os.environ), cwd=cwd, stdin=null, stdout=null,
        stderr=null, extra_fds=fds, listen_pid=False,
    )
    for way, (fds, cwd) in ways.items()
}
print(json.dumps(pids), flush=True)
sys.stdin.read()
for pid in pids.values():
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


def _signal_masks(pid: int | str) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigIgn", "SigBlk"):
            fields[key] = int(value.strip(), 16)
    return fields


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


# Every signal a process can set a disposition for (glibc keeps 32 and 33 to itself).
_SETTABLE = sum(_bit(s) for s in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


@pytest.mark.parametrize("mask", ["block", "no-block"])
def test_children_start_with_default_signals_whatever_the_parent_ignores(mask: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _IGNORING_PARENT, mask],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        assert parent.stdin is not None
        assert parent.stdout is not None
        try:
            pids: dict[str, int] = json.loads(parent.stdout.readline())
            assert set(pids) == {"plain", "cwd", "fds"}
            parent_masks = _signal_masks(parent.pid)
            # The parent really is in the state a nohup'ed supervisor is in, still.
            assert parent_masks["SigIgn"] & _bit(signal.SIGHUP)
            assert parent_masks["SigIgn"] & _bit(signal.SIGINT)
            assert bool(parent_masks["SigBlk"] & _bit(signal.SIGUSR1)) == (mask == "block")
            deadline = time.monotonic() + TIMEOUT
            for way, pid in pids.items():
                # The placement path may pass through a shell first: wait for the exec.
                while Path(f"/proc/{pid}/comm").read_text().strip() != "sleep":
                    assert time.monotonic() < deadline, f"{way}: sleep never ran"
                    time.sleep(0.01)
                masks = _signal_masks(pid)
                assert masks["SigIgn"] & _SETTABLE == 0, (way, hex(masks["SigIgn"]))
                assert masks["SigBlk"] == 0, (way, hex(masks["SigBlk"]))
        finally:
            parent.stdin.close()
            parent.wait(timeout=TIMEOUT)


# --------------------------------------------------------------------------- without Popen

# Where CPython's fork_exec takes the arguments Popen passes (3.11 to 3.13), a
# child is spawned with it directly, the environment encoded once per slot; it
# must start the child and report failures exactly as Popen does.


def _spawn_both_ways(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[str], dict[str, Any]]
) -> list[object]:
    """Spawn with fork_exec, then with Popen (``make(way)`` gives the arguments):
    each way's exit code, or its error as (type, errno, filename, strerror)."""
    import supervision._spawn as spawn

    outcomes: list[object] = []
    for way, fork_exec in (("fork_exec", spawn._FORK_EXEC), ("popen", None)):
        monkeypatch.setattr(spawn, "_FORK_EXEC", fork_exec)
        try:
            pid = spawn.spawn_child(stdin=0, extra_fds={}, listen_pid=False, **make(way))
        except OSError as exc:
            outcomes.append((type(exc), exc.errno, exc.filename, exc.strerror))
        else:
            _, status = os.waitpid(pid, 0)
            outcomes.append(os.waitstatus_to_exitcode(status))
    return outcomes


def test_fork_exec_is_used_on_this_interpreter() -> None:
    import supervision._spawn as spawn

    if (3, 11) <= sys.version_info[:2] <= (3, 13) and sys.implementation.name == "cpython":
        assert spawn._FORK_EXEC is not None


def test_fork_exec_gives_the_child_what_popen_gives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {"PATH": os.environ["PATH"], "ONE": "1", "TWO": "zwei ü"}

    def make(way: str) -> dict[str, Any]:
        script = f"exec > {tmp_path / way}; pwd; env | sort; ls /proc/self/fd | wc -l"
        return {"argv": ["sh", "-c", script], "env": env, "cwd": str(tmp_path),
                "stdout": None, "stderr": None}  # fmt: skip

    assert _spawn_both_ways(monkeypatch, make) == [0, 0]
    reports = [
        [
            line
            for line in (tmp_path / way).read_text().splitlines()
            if not line.startswith(("PWD=", "SHLVL=", "_="))
        ]
        for way in ("fork_exec", "popen")
    ]
    assert reports[0] == reports[1]
    assert reports[0][0] == str(tmp_path)
    assert "TWO=zwei ü" in reports[0]


@pytest.mark.parametrize("case", ["missing", "not_executable", "bad_cwd", "no_format"])
def test_fork_exec_reports_failures_as_popen_does(
    case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"\0\0data")
    argv, cwd = {
        "missing": (["no-such-program-here"], None),
        "not_executable": ([str(plain)], None),
        "bad_cwd": (["true"], str(tmp_path / "gone")),
        "no_format": ([str(plain)], None),
    }[case]
    if case == "no_format":
        plain.chmod(0o755)
    first, second = _spawn_both_ways(
        monkeypatch,
        lambda way: {
            "argv": argv,
            "env": {"PATH": os.environ["PATH"]},
            "cwd": cwd,
            "stdout": None,
            "stderr": None,
        },
    )
    assert isinstance(first, tuple)
    assert first == second
