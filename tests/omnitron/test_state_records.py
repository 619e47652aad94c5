"""State records, the on-disk envelope, and process identity (PC-04, PC-05)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from omnitron.state import (
    SCHEMA_VERSION,
    AppMode,
    AppState,
    AppStatus,
    CorruptStateFile,
    DaemonState,
    DesiredStatus,
    NewerStateSchema,
    ProcessIdentity,
    ProcessState,
)
from omnitron.state._codec import decode_state, encode_state


def sample_state() -> DaemonState:
    return DaemonState(
        apps=[
            AppState(
                name="api",
                desired=DesiredStatus.RUNNING,
                status=AppStatus.ONLINE,
                instances=2,
                restarts=3,
                last_error="exit code 3",
                processes=[
                    ProcessState(
                        name="api",
                        instance=0,
                        status=AppStatus.ONLINE,
                        pid=4301,
                        start_time=1234.56,
                        boot_id="b0",
                        restarts=1,
                    ),
                    ProcessState(name="api", instance=1, status=AppStatus.CRASHED, restarts=2),
                ],
            ),
            AppState(
                name="workers",
                mode=AppMode.BOOTSTRAP,
                desired=DesiredStatus.STOPPED,
                last_error="caf\u00e9 \u2603",
            ),
        ]
    )


def reseal(doc: dict[str, Any]) -> bytes:
    """Recompute the checksum the way the format documents it."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    doc["checksum"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps(doc).encode()


# --------------------------------------------------------------------------- records


def test_records_are_frozen_and_validated() -> None:
    app = AppState(name="api")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        app.name = "x"  # type: ignore[misc]
    assert app.desired is DesiredStatus.RUNNING
    assert app.status is AppStatus.STOPPED
    assert app.processes == ()


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: AppState(name="../x"), ValueError, "not a valid name"),
        (lambda: AppState(name=".."), ValueError, "not a valid name"),
        (lambda: AppState(name="a" * 65), ValueError, "not a valid name"),
        (lambda: AppState(name=""), ValueError, "not a valid name"),
        (lambda: AppState(name=5), TypeError, "name: expected a string"),  # type: ignore[arg-type]
        (lambda: AppState(name="a", restarts=-1), ValueError, "restarts: must be >= 0"),
        (lambda: AppState(name="a", restarts=True), TypeError, "restarts: expected an integer"),
        (lambda: AppState(name="a", status="online"), TypeError, "status"),  # type: ignore[arg-type]
        (lambda: AppState(name="a", last_error="x" * 5000), ValueError, "longer than 4096"),
        (lambda: ProcessState(name="p", pid=0), ValueError, "pid: must be > 0"),
        (lambda: ProcessState(name="p", start_time=float("nan")), ValueError, "finite"),
        (
            lambda: AppState(name="a", processes=[ProcessState(name="p")] * 2),
            ValueError,
            "duplicate",
        ),
        (lambda: DaemonState(apps=[AppState(name="a")] * 2), ValueError, "duplicate app name"),
        (lambda: DaemonState(apps=["a"]), TypeError, r"apps\[0\]: expected AppState"),
    ],
)
def test_bad_records_are_rejected(
    build: Callable[[], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build()


def test_daemon_state_helpers() -> None:
    state = DaemonState(apps=[AppState(name="a"), AppState(name="b")])
    assert state.get("b") == AppState(name="b")
    assert state.get("c") is None
    changed = state.with_app(AppState(name="a", restarts=1))
    assert [a.restarts for a in changed.apps] == [1, 0]
    assert [a.name for a in changed.with_app(AppState(name="c")).apps] == ["a", "b", "c"]
    assert [a.name for a in changed.without_app("a").apps] == ["b"]
    assert state.apps[0].restarts == 0  # snapshots are never mutated


def test_process_state_carries_an_identity() -> None:
    me = ProcessIdentity.current()
    proc = ProcessState.from_identity("api", me, instance=1)
    assert (proc.pid, proc.status, proc.instance) == (os.getpid(), AppStatus.ONLINE, 1)
    assert proc.identity == me
    assert proc.identity.is_running()
    assert ProcessState(name="api").identity is None


# --------------------------------------------------------------------------- identity


def test_identity_of_self_and_of_a_recycled_pid() -> None:
    me = ProcessIdentity.of(os.getpid())
    assert me == ProcessIdentity.current()
    assert me is not None
    assert me.start_time is not None
    assert me.is_running()
    assert not attrs.evolve(me, start_time=me.start_time + 0.01).is_running()
    assert not attrs.evolve(me, boot_id="another-boot").is_running()


def test_identity_of_dead_and_zombie_processes() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped yet: a zombie is not a live process.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        assert ProcessIdentity.of(proc.pid) is None
    finally:
        proc.wait()
    assert ProcessIdentity.of(proc.pid) is None


def test_identity_survives_odd_process_names() -> None:
    # /proc/<pid>/stat puts the name in parentheses; a name with ") (" must not confuse us.
    code = (
        "import sys\n"
        "open('/proc/self/comm', 'w').write('x) (y z')\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready\n"
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            assert b"(x) (y z)" in f.read()
        ident = ProcessIdentity.of(proc.pid)
        assert ident is not None
        assert ident.is_running()
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.wait()


# --------------------------------------------------------------------------- envelope


def test_round_trip() -> None:
    state = sample_state()
    data = encode_state(state, 7)
    decoded = decode_state(data)
    assert decoded.state == state
    assert decoded.generation == 7
    assert decoded.written_by.startswith("omnitron ")
    doc = json.loads(data)
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert doc["format"] == "omnitron-state"
    assert doc["checksum"].startswith("sha256:")
    assert len(doc["checksum"]) == 7 + 64
    assert doc["checksum"] == json.loads(reseal(dict(doc)))["checksum"]
    assert data.endswith(b"}\n")
    assert b"\n  " in data  # readable by humans


def test_file_format_is_stable() -> None:
    doc = json.loads(encode_state(DaemonState(apps=[AppState(name="api")]), 1, written_at=0))
    assert doc["written_at"] == "1970-01-01T00:00:00.000000Z"
    assert doc["state"] == {
        "apps": [
            {
                "name": "api",
                "mode": "classic",
                "desired": "running",
                "status": "stopped",
                "instances": 1,
                "config_instances": None,
                "restarts": 0,
                "last_error": None,
                "processes": [],
            }
        ],
        "stop_reason": None,
    }


# A state file as the first releases wrote it (indented by the pure-Python encoder).
_EARLIER_FILE = """{
  "checksum": "sha256:4b3106f5f7355d0472f6665d1e71a254caa170f200f9fa1b729c081addf356d9",
  "format": "omnitron-state",
  "generation": 3,
  "schema_version": 1,
  "state": {
    "apps": [
      {
        "config_instances": null,
        "desired": "running",
        "instances": 2,
        "last_error": "exit code 3",
        "mode": "classic",
        "name": "api",
        "processes": [
          {
            "boot_id": "b0",
            "instance": 0,
            "name": "api",
            "pid": 4301,
            "restarts": 1,
            "start_time": 1234.56,
            "status": "online"
          },
          {
            "boot_id": null,
            "instance": 1,
            "name": "api",
            "pid": null,
            "restarts": 2,
            "start_time": null,
            "status": "crashed"
          }
        ],
        "restarts": 3,
        "status": "online"
      },
      {
        "config_instances": null,
        "desired": "stopped",
        "instances": 1,
        "last_error": "café ☃",
        "mode": "bootstrap",
        "name": "workers",
        "processes": [],
        "restarts": 0,
        "status": "stopped"
      }
    ],
    "stop_reason": null
  },
  "written_at": "1970-01-01T00:00:00.000000Z",
  "written_by": "omnitron 0.1.0"
}
"""


def test_reads_the_indented_files_of_earlier_versions() -> None:
    decoded = decode_state(_EARLIER_FILE.encode("utf-8"))
    assert decoded.state == sample_state()
    assert decoded.generation == 3
    # The checksum covers the content, not the layout: the same state written
    # today carries the very checksum of the earlier file.
    data = encode_state(sample_state(), 3, written_at=0)
    assert data != _EARLIER_FILE.encode("utf-8")
    assert json.loads(data)["checksum"] == json.loads(_EARLIER_FILE)["checksum"]


def test_each_app_is_one_line_of_the_file() -> None:
    lines = encode_state(sample_state(), 3, written_at=0).decode("utf-8").splitlines()
    app_lines = [line for line in lines if line.startswith('      {"config_instances"')]
    assert [json.loads(line.rstrip(","))["name"] for line in app_lines] == ["api", "workers"]
    assert "caf\u00e9 \u2603" in app_lines[1]  # written as UTF-8, not escaped
    assert lines[0] == "{"
    assert lines[-1] == "}"


def _mutate(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_mutate(["state", "apps", 0], 5), "expected an object, got int @ $.state.apps[0]"),
        (_mutate(["state"], [1]), "expected an object, got list @ $.state"),
    ],
)
def test_records_that_are_not_objects_are_corrupt(
    mutate: Callable[[dict[str, Any]], None], reason: str
) -> None:
    doc = json.loads(encode_state(sample_state(), 7))
    mutate(doc)
    with pytest.raises(CorruptStateFile) as info:
        decode_state(reseal(doc))
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            _mutate(["state", "apps", 0, "restarts"], "3"),
            "expected an integer, got str @ $.state.apps[0].restarts",
        ),
        (
            _mutate(["state", "apps", 0, "restarts"], True),
            "expected an integer, got bool @ $.state.apps[0].restarts",
        ),
        (_mutate(["state", "apps", 0, "instances"], 2.0), "expected an integer, got float"),
        (
            _mutate(["state", "apps", 0, "name"], 5),
            "expected a string, got int @ $.state.apps[0].name",
        ),
        (_mutate(["state", "apps"], {}), "expected a list, got dict @ $.state.apps"),
        (_mutate(["state", "apps"], "api"), "expected a list, got str @ $.state.apps"),
        (_mutate(["state", "apps", 0, "status"], "dancing"), "'dancing' is not a valid AppStatus"),
        (
            _mutate(["state", "apps", 0, "surprise"], 1),
            "extra fields found (surprise) @ $.state.apps[0]",
        ),
        (_mutate(["state", "apps", 1, "name"], "api"), "duplicate app name 'api'"),
        (_mutate(["state", "apps", 0, "processes", 0, "pid"], -1), "pid: must be > 0"),
        (_mutate(["generation"], "7"), "bad generation '7'"),
        (_mutate(["generation"], -1), "bad generation -1"),
        (_mutate(["written_at"], 5), "bad written_at 5"),
        (_mutate(["extra"], 1), "unknown field 'extra'"),
        (lambda doc: doc.pop("generation"), "missing field 'generation'"),
        (
            lambda doc: doc["state"]["apps"][0].pop("name"),
            "required field missing @ $.state.apps[0].name",
        ),
        (_mutate(["format"], "pm2-dump"), "not an omnitron state file"),
        (_mutate(["schema_version"], 0), "bad schema_version 0"),
        (_mutate(["schema_version"], "1"), "bad schema_version '1'"),
    ],
)
def test_wrong_types_are_corrupt(mutate: Callable[[dict[str, Any]], None], reason: str) -> None:
    doc = json.loads(encode_state(sample_state(), 7))
    mutate(doc)
    with pytest.raises(CorruptStateFile) as info:
        decode_state(reseal(doc))
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated at byte 0 (no content)"),
        (b"  \n", "truncated at byte 3 (no content)"),
        (b'{"a": [1, 2', "truncated at byte 11"),
        (b'{"a": "unterminated', "truncated at byte 19"),
        (b'{"a": 1}}', "invalid JSON at byte 8: Extra data"),
        (b'{"a" 1}', "invalid JSON at byte 5: Expecting ':' delimiter"),
        (b'{"\xc3\xa9": x}', "invalid JSON at byte 7: Expecting value"),
        (b'{"a": NaN}', "NaN is not allowed"),
        (b"\xff{}", "invalid UTF-8 at byte 0"),
        (b"[1, 2]", "not a JSON object (a list)"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_unparsable_files_are_corrupt_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptStateFile) as info:
        decode_state(data)
    assert reason in info.value.reason


def test_every_truncation_is_detected() -> None:
    data = encode_state(sample_state(), 7)
    for size in range(len(data) - 1):  # dropping only the final newline is harmless
        with pytest.raises(CorruptStateFile, match=rf"^truncated at byte {size}\b"):
            decode_state(data[:size])
    assert decode_state(data[:-1]).state == sample_state()


def test_every_single_bit_flip_is_detected_or_harmless() -> None:
    # PC-05: any flipped bit either makes the file corrupt or changes nothing that matters.
    state = sample_state()
    data = encode_state(state, 7)
    for i in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            try:
                decoded = decode_state(bytes(flipped))
            except CorruptStateFile:
                continue
            except NewerStateSchema:
                # A flip in the version digit: refused without being interpreted.
                assert data[i : i + 1].isdigit()
                continue
            assert (decoded.state, decoded.generation) == (state, 7), (i, bit)


def test_checksum_mismatch_reason() -> None:
    data = encode_state(sample_state(), 7).replace(b'"restarts": 3', b'"restarts": 4')
    with pytest.raises(CorruptStateFile, match=r"^checksum mismatch \(recorded sha256:"):
        decode_state(data)


def test_newer_schema_is_not_interpreted() -> None:
    doc = json.loads(encode_state(sample_state(), 7))
    doc["schema_version"] = SCHEMA_VERSION + 1
    doc["written_by"] = "omnitron 9.0.0"
    doc["state"] = {"something": "new"}
    doc["checksum"] = "blake3:whatever"
    with pytest.raises(NewerStateSchema) as info:
        decode_state(json.dumps(doc).encode())
    assert info.value.schema_version == SCHEMA_VERSION + 1
    assert info.value.written_by == "omnitron 9.0.0"
