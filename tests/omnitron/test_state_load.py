"""Loading state.json at start-up: fallbacks, evidence, refusals (PC-01..PC-05, PC-15)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from omnitron._log import capture_logs
from omnitron.state import (
    SCHEMA_VERSION,
    AppState,
    DaemonState,
    Home,
    StateSource,
    UnsafeHome,
    _load,
    load_state,
)
from omnitron.state._codec import encode_state


def state_of(*names: str, restarts: int = 0) -> DaemonState:
    return DaemonState(apps=[AppState(name=n, restarts=restarts) for n in names])


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.ensure()
    return h


@pytest.fixture
def fixed_stamp(monkeypatch: pytest.MonkeyPatch) -> str:
    stamp = "20250102T030405Z"
    monkeypatch.setattr(_load, "_stamp", lambda: stamp)
    return stamp


def write(path: Path, state: DaemonState, generation: int) -> bytes:
    data = encode_state(state, generation)
    path.write_bytes(data)
    return data


def reseal(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    doc["checksum"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps(doc)


def newer(data: bytes) -> bytes:
    doc = json.loads(data)
    doc["schema_version"] = SCHEMA_VERSION + 1
    doc["written_by"] = "omnitron 9.9.9"
    return json.dumps(doc).encode()


def files(home: Home) -> list[str]:
    return sorted(os.listdir(home.path))


def test_nothing_on_disk_is_a_fresh_start(home: Home) -> None:
    with capture_logs() as logs:
        result = load_state(home)
    assert result.state == DaemonState()
    assert (result.source, result.generation, result.warnings) == (StateSource.NONE, 0, ())
    assert not result.read_only
    assert [e["event"] for e in logs] == ["state_loaded"]


def test_primary_is_loaded(home: Home) -> None:
    write(home.state_file, state_of("api"), 5)
    write(home.backup_file, state_of("old"), 4)
    result = load_state(home)
    assert (result.state, result.source, result.generation) == (
        state_of("api"),
        StateSource.PRIMARY,
        5,
    )
    assert result.warnings == ()


@pytest.mark.parametrize("keep", [0, 0.5, 0.99])
def test_truncated_primary_falls_back_to_backup(home: Home, keep: float, fixed_stamp: str) -> None:
    # PC-02
    good = write(home.state_file, state_of("api"), 5)
    size = int(len(good) * keep)
    home.state_file.write_bytes(good[:size])
    write(home.backup_file, state_of("api", restarts=1), 4)
    with capture_logs() as logs:
        result = load_state(home)
    assert result.source is StateSource.BACKUP
    assert (result.state, result.generation) == (state_of("api", restarts=1), 4)
    [warning] = result.warnings
    assert str(home.state_file) in warning
    assert f"truncated at byte {size}" in warning
    assert f"kept as state.json.corrupt-{fixed_stamp}" in warning
    assert not result.read_only
    # The evidence is kept byte for byte; the primary is gone until the next write.
    assert (home.path / f"state.json.corrupt-{fixed_stamp}").read_bytes() == good[:size]
    assert not home.state_file.exists()
    [event] = [e for e in logs if e["event"] == "state_loaded_from_backup"]
    assert event["log_level"] == "warning"
    assert event["reason"] == f"truncated at byte {size}" + (" (no content)" if size == 0 else "")


def test_bit_flip_in_primary_falls_back_to_backup(home: Home) -> None:
    # PC-05
    good = bytearray(write(home.state_file, state_of("api"), 5))
    good[good.index(b'"api"') + 2] ^= 0x01
    home.state_file.write_bytes(bytes(good))
    write(home.backup_file, state_of("api"), 4)
    result = load_state(home)
    assert (result.source, result.generation) == (StateSource.BACKUP, 4)
    assert "checksum mismatch" in result.warnings[0]


def test_wrong_field_types_fall_back_to_backup(home: Home) -> None:
    doc = json.loads(encode_state(state_of("api"), 5))
    doc["state"]["apps"][0]["restarts"] = "many"
    home.state_file.write_text(reseal(doc))
    write(home.backup_file, state_of("api"), 4)
    result = load_state(home)
    assert result.source is StateSource.BACKUP
    assert "expected an integer, got str @ $.state.apps[0].restarts" in result.warnings[0]


def test_missing_primary_with_a_backup(home: Home) -> None:
    write(home.backup_file, state_of("api"), 4)
    result = load_state(home)
    assert (result.source, result.generation) == (StateSource.BACKUP, 4)
    assert "state.json is unusable (missing)" in result.warnings[0]


def test_both_corrupt_start_empty_and_keep_the_evidence(home: Home, fixed_stamp: str) -> None:
    # PC-03
    home.state_file.write_bytes(b'{"half": ')
    home.backup_file.write_bytes(b"\x00\x01garbage")
    earlier = home.path / f"state.json.corrupt-{fixed_stamp}"
    earlier.write_bytes(b"evidence of an earlier incident")
    with capture_logs() as logs:
        result = load_state(home)
    assert result.state == DaemonState()
    assert (result.source, result.generation) == (StateSource.NONE, 0)
    assert not result.read_only
    assert earlier.read_bytes() == b"evidence of an earlier incident"  # never overwritten
    assert (home.path / f"state.json.corrupt-{fixed_stamp}-1").read_bytes() == b'{"half": '
    assert (home.path / f"state.json.bak.corrupt-{fixed_stamp}").read_bytes() == b"\x00\x01garbage"
    assert set(result.moved_aside) == {
        home.path / f"state.json.corrupt-{fixed_stamp}-1",
        home.path / f"state.json.bak.corrupt-{fixed_stamp}",
    }
    assert not home.state_file.exists()
    assert not home.backup_file.exists()
    [warning] = result.warnings
    assert "no usable state" in warning
    assert "starting with no apps adopted" in warning
    assert "truncated at byte 9" in warning
    [event] = [e for e in logs if e["event"] == "state_lost"]
    assert event["log_level"] == "error"


def test_corrupt_primary_without_backup(home: Home) -> None:
    home.state_file.write_bytes(b"")
    result = load_state(home)
    assert result.source is StateSource.NONE
    assert "no usable state" in result.warnings[0]
    assert len(result.moved_aside) == 1


def test_newer_schema_is_refused_and_never_overwritten(home: Home) -> None:
    # PC-04 and the decision: start, adopt nothing, never overwrite, say so loudly.
    data = newer(write(home.state_file, state_of("api"), 9))
    home.state_file.write_bytes(data)
    write(home.backup_file, state_of("api"), 8)
    with capture_logs() as logs:
        result = load_state(home)
    assert result.state == DaemonState()
    assert result.source is StateSource.NONE
    assert result.read_only
    assert result.read_only_reason == f"state.json has a newer schema ({SCHEMA_VERSION + 1})"
    [warning] = result.warnings
    assert (
        f"{home.state_file} was written by a newer omnitron (schema {SCHEMA_VERSION + 1}, "
        "omnitron 9.9.9); refusing to downgrade"
    ) in warning
    assert "no apps adopted" in warning
    assert home.state_file.read_bytes() == data
    assert files(home) == ["logs", "state.json", "state.json.bak", "tls"]
    [event] = [e for e in logs if e["event"] == "state_schema_newer"]
    assert event["log_level"] == "error"


def test_newer_schema_in_the_backup_is_not_touched(home: Home) -> None:
    home.state_file.write_bytes(b"")
    data = newer(encode_state(state_of("api"), 8))
    home.backup_file.write_bytes(data)
    result = load_state(home)
    assert result.read_only
    assert home.backup_file.read_bytes() == data


def test_leftover_temp_files_are_removed_not_loaded(home: Home) -> None:
    # PC-01: a crash mid-write leaves temp files holding a newer generation.
    write(home.state_file, state_of("api"), 5)
    newer_tmp = home.path / "state.json.k3j4h5.tmp"
    write(newer_tmp, state_of("api", "web"), 6)
    bak_tmp = home.path / "state.json.bak.tmp"
    write(bak_tmp, state_of("api"), 5)
    unrelated = home.path / "remotes.toml.tmp"
    unrelated.write_text("not ours")
    result = load_state(home)
    assert (result.state, result.generation) == (state_of("api"), 5)
    assert set(result.removed_temp) == {newer_tmp, bak_tmp}
    assert files(home) == ["logs", "remotes.toml.tmp", "state.json", "tls"]


def test_symlinked_state_file_is_refused(home: Home, tmp_path: Path) -> None:
    # PC-15
    target = tmp_path / "elsewhere.json"
    write(target, state_of("api"), 5)
    home.state_file.symlink_to(target)
    with pytest.raises(UnsafeHome, match=r"state.json is a symbolic link; refusing"):
        load_state(home)
    assert target.exists()


@pytest.mark.parametrize(
    ("kind", "reason"), [("directory", "Is a directory"), ("fifo", "not a regular file")]
)
def test_unreadable_primary_makes_the_store_read_only(home: Home, kind: str, reason: str) -> None:
    # Content unknown, maybe the newest: load the backup but never replace the primary.
    if kind == "directory":
        home.state_file.mkdir()
    else:
        os.mkfifo(home.state_file)  # and opening it must not hang the boot
    write(home.backup_file, state_of("api"), 4)
    result = load_state(home)
    assert (result.source, result.state) == (StateSource.BACKUP, state_of("api"))
    assert result.read_only
    assert result.read_only_reason == f"cannot read {home.state_file}"
    assert f"cannot read: {reason}" in result.warnings[0]
    assert os.path.lexists(home.state_file)


def test_evidence_that_cannot_be_moved_makes_the_store_read_only(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.state_file.write_bytes(b"{")
    write(home.backup_file, state_of("api"), 4)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(os, "rename", refuse)
    result = load_state(home)
    assert result.source is StateSource.BACKUP
    assert result.read_only
    assert "could not be moved aside (Read-only file system)" in result.warnings[0]
    assert home.state_file.read_bytes() == b"{"


def test_reset_moves_everything_aside(home: Home, fixed_stamp: str) -> None:
    primary = write(home.state_file, state_of("api"), 5)
    backup = write(home.backup_file, state_of("api"), 4)
    result = load_state(home, reset=True)
    assert result.state == DaemonState()
    assert not result.read_only
    assert (home.path / f"state.json.reset-{fixed_stamp}").read_bytes() == primary
    assert (home.path / f"state.json.bak.reset-{fixed_stamp}").read_bytes() == backup
    assert "state reset as asked" in result.warnings[0]


def test_reset_also_clears_a_newer_schema_file_without_destroying_it(home: Home) -> None:
    data = newer(encode_state(state_of("api"), 9))
    home.state_file.write_bytes(data)
    result = load_state(home, reset=True)
    assert not result.read_only
    [moved] = result.moved_aside
    assert moved.read_bytes() == data
