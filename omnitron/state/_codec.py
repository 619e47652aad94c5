"""``state.json`` on the wire: a versioned, checksummed envelope around :class:`DaemonState`.

The file is JSON, one envelope key a line and one app a line (keys sorted)::

    {
      "checksum": "sha256:…",
      "format": "omnitron-state",
      "generation": 12,
      "schema_version": 1,
      "state": {
        "apps": [
          {"config_instances": null, "desired": "running", ..., "status": "online"}
        ],
        "stop_reason": null
      },
      "written_at": "2025-01-31T10:00:00.123456Z",
      "written_by": "omnitron 0.1.0"
    }

Earlier versions indented everything; their files read the same, since the
checksum does not depend on the layout. Every part is written by the C JSON
encoder (an indented dump would take the pure-Python one).

``checksum`` is the SHA-256 of the canonical JSON (sorted keys, no spaces,
ASCII) of every other field, so a flipped bit anywhere that matters is caught
(PC-05). ``generation`` grows by one with every write, so a loader can tell
which of two files is newer, and a test can tell which write survived a crash.

The records are converted to and from plain dicts by hand, strictly: a wrong
type is an error (``"5"`` is not an int, ``true`` is not a count), never coerced.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs

from ._errors import CorruptStateFile, NewerStateSchema
from ._records import AppMode, AppState, AppStatus, DaemonState, DesiredStatus, ProcessState

__all__ = ["FORMAT", "SCHEMA_VERSION", "Decoded", "decode_state", "encode_state"]

FORMAT: Final = "omnitron-state"
SCHEMA_VERSION: Final = 1
_PARTIAL_TOKEN: Final = re.compile(r"[^\s{}\[\],:]+")
T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
_ENVELOPE_KEYS: Final = frozenset(
    {"checksum", "format", "generation", "schema_version", "state", "written_at", "written_by"}
)


@functools.cache
def _written_by() -> str:
    from .. import __version__  # not importlib.metadata: 1.3 MiB of daemon memory

    return f"omnitron {__version__}"


# --------------------------------------------------------------------------- converter
#
# The few record types of the state file are written to and read from plain
# dicts by hand: no general converter in the daemon's imports. Reading is strict:
# a wrong type is an error ("5" is not an int, true is not a count), never
# coerced. Each error names its place (``... @ $.state.apps[0].restarts``); the
# errors of one record are all reported, in field order, then its unknown keys.


class _Invalid(Exception):
    """The content is wrong; ``messages`` says where and why, one line each."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def _strict_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _strict_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _optional(read: Callable[[object], T]) -> Callable[[object], T | None]:
    def structure(value: object) -> T | None:
        return None if value is None else read(value)

    return structure


def _enum(kind: type[E]) -> Callable[[object], E]:
    def structure(value: object) -> E:
        return kind(value)

    return structure


def _list_of(read: Callable[[object, str], T]) -> Callable[[object, str], tuple[T, ...]]:
    def structure(value: object, path: str) -> tuple[T, ...]:
        # Only a JSON array is a list here (not a dict or a string).
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        items: list[T] = []
        messages: list[str] = []
        for i, item in enumerate(value):
            try:
                items.append(read(item, f"{path}[{i}]"))
            except _Invalid as exc:
                messages.extend(exc.messages)
        if messages:
            raise _Invalid(messages)
        return tuple(items)

    return structure


# A field's reader takes the JSON value (and, for nested records, its path).
_Field = tuple[str, Callable[..., Any], bool]  # name, reader, nested


def _record(kind: Callable[..., T], fields: list[_Field], required: frozenset[str]) -> Any:
    names = frozenset(name for name, _, _ in fields)

    def structure(value: object, path: str) -> T:
        if not isinstance(value, dict):
            raise _Invalid([f"expected an object, got {type(value).__name__} @ {path}"])
        kwargs: dict[str, Any] = {}
        messages: list[str] = []
        for name, read, nested in fields:
            if name not in value:
                if name in required:
                    messages.append(f"required field missing @ {path}.{name}")
                continue
            try:
                kwargs[name] = read(value[name], f"{path}.{name}") if nested else read(value[name])
            except _Invalid as exc:
                messages.extend(exc.messages)
            except (TypeError, ValueError) as exc:
                messages.append(f"{exc} @ {path}.{name}")
        extra = [key for key in value if key not in names]
        if extra:
            messages.append(f"extra fields found ({', '.join(map(str, extra))}) @ {path}")
        if messages:
            raise _Invalid(messages)
        try:
            return kind(**kwargs)
        except (TypeError, ValueError) as exc:  # the record's own validators
            raise _Invalid([f"{exc} @ {path}"]) from None

    return structure


_process = _record(
    ProcessState,
    [
        ("name", _strict_str, False),
        ("instance", _strict_int, False),
        ("status", _enum(AppStatus), False),
        ("pid", _optional(_strict_int), False),
        ("start_time", _optional(_strict_float), False),
        ("boot_id", _optional(_strict_str), False),
        ("restarts", _strict_int, False),
    ],
    frozenset({"name"}),
)
_app = _record(
    AppState,
    [
        ("name", _strict_str, False),
        ("mode", _enum(AppMode), False),
        ("desired", _enum(DesiredStatus), False),
        ("status", _enum(AppStatus), False),
        ("instances", _strict_int, False),
        ("config_instances", _optional(_strict_int), False),
        ("restarts", _strict_int, False),
        ("last_error", _optional(_strict_str), False),
        ("processes", _list_of(_process), True),
    ],
    frozenset({"name"}),
)
_daemon_state = _record(
    DaemonState,
    [("apps", _list_of(_app), True), ("stop_reason", _optional(_strict_str), False)],
    frozenset(),
)


def _process_dict(process: ProcessState) -> dict[str, Any]:
    return {
        "name": process.name,
        "instance": process.instance,
        "status": process.status.value,
        "pid": process.pid,
        "start_time": process.start_time,
        "boot_id": process.boot_id,
        "restarts": process.restarts,
    }


def _app_dict(app: AppState) -> dict[str, Any]:
    return {
        "name": app.name,
        "mode": app.mode.value,
        "desired": app.desired.value,
        "status": app.status.value,
        "instances": app.instances,
        "config_instances": app.config_instances,
        "restarts": app.restarts,
        "last_error": app.last_error,
        "processes": [_process_dict(process) for process in app.processes],
    }


def _field_errors(exc: _Invalid) -> str:
    messages = exc.messages
    return "; ".join(messages[:5]) + (f" (+{len(messages) - 5} more)" if len(messages) > 5 else "")


# --------------------------------------------------------------------------- encode


def _canonical(obj: object) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _dump(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)


def _checksum(envelope: dict[str, Any]) -> str:
    body = {key: value for key, value in envelope.items() if key != "checksum"}
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def encode_state(state: DaemonState, generation: int, *, written_at: float | None = None) -> bytes:
    """Serialise ``state`` as generation ``generation`` of ``state.json``.

    Args:
        state: The snapshot to write.
        generation: Its generation number (>= 1 for a written file).
        written_at: Wall-clock time to record (default: now); informational only.

    Returns:
        The file's bytes (UTF-8 JSON ending with a newline).
    """
    when = time.time() if written_at is None else written_at
    apps = [_app_dict(app) for app in state.apps]
    envelope: dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "generation": generation,
        "written_at": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "written_by": _written_by(),
        "state": {"apps": apps, "stop_reason": state.stop_reason},
    }
    checksum = "sha256:" + hashlib.sha256(_canonical(envelope)).hexdigest()
    # The file: the envelope's keys one a line, each app on a line of its own.
    # Every piece goes through the C encoder (an indented dump is pure Python).
    apps_text = ",\n".join(f"      {_dump(app)}" for app in apps)
    apps_text = f"[\n{apps_text}\n    ]" if apps else "[]"
    head = {"checksum": checksum, **envelope}
    del head["state"]
    lines = [f"  {_dump(key)}: {_dump(value)}" for key, value in sorted(head.items())]
    state_text = (
        f'  "state": {{\n    "apps": {apps_text},\n'
        f'    "stop_reason": {_dump(state.stop_reason)}\n  }}'
    )
    lines.insert(4, state_text)  # checksum, format, generation, schema_version, state, ...
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")


# --------------------------------------------------------------------------- decode


@attrs.frozen(kw_only=True)
class Decoded:
    """A state file that passed every check.

    Attributes:
        state: The snapshot.
        generation: Its generation number.
        written_at: When it was written (as recorded).
        written_by: Which omnitron wrote it.
    """

    state: DaemonState
    generation: int
    written_at: str
    written_by: str


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse_json(data: bytes) -> object:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":  # cut inside a multi-byte character
            raise CorruptStateFile(f"truncated at byte {len(data)}") from None
        raise CorruptStateFile(f"invalid UTF-8 at byte {exc.start}") from None
    if not text.strip():
        raise CorruptStateFile(f"truncated at byte {len(data)} (no content)")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        # Cut inside the last token ("12.", "nul", an open string) also means truncation.
        tail = text[exc.pos :].strip()
        at_end = (
            not tail
            or exc.msg.startswith("Unterminated string")
            or _PARTIAL_TOKEN.fullmatch(tail) is not None
        )
        if at_end:
            raise CorruptStateFile(f"truncated at byte {len(data)}") from None
        offset = len(text[: exc.pos].encode("utf-8"))
        raise CorruptStateFile(f"invalid JSON at byte {offset}: {exc.msg}") from None
    except ValueError as exc:  # NaN / Infinity
        raise CorruptStateFile(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise CorruptStateFile("invalid JSON: nested too deeply") from None


def decode_state(data: bytes) -> Decoded:
    """Check and parse the bytes of a state file.

    Raises:
        CorruptStateFile: Truncated, not JSON, not ours, checksum mismatch, or a
            field of the wrong type; ``reason`` says which.
        NewerStateSchema: Written with a newer ``schema_version`` than this
            omnitron understands; nothing else was checked.
    """
    doc = _parse_json(data)
    if not isinstance(doc, dict):
        raise CorruptStateFile(f"not a JSON object (a {type(doc).__name__})")
    if doc.get("format") != FORMAT:
        raise CorruptStateFile(f"not an omnitron state file (format {doc.get('format')!r})")
    version = doc.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CorruptStateFile(f"bad schema_version {version!r}")
    if version > SCHEMA_VERSION:
        # A newer omnitron may have changed anything, the checksum included: stop here.
        written_by = doc.get("written_by")
        raise NewerStateSchema(version, written_by if isinstance(written_by, str) else None)
    missing = sorted(_ENVELOPE_KEYS - doc.keys())
    if missing:
        raise CorruptStateFile(f"missing field {missing[0]!r}")
    unknown = sorted(doc.keys() - _ENVELOPE_KEYS)
    if unknown:
        raise CorruptStateFile(f"unknown field {unknown[0]!r}")
    recorded = doc["checksum"]
    try:
        actual = _checksum(doc)
    except (TypeError, ValueError) as exc:  # pragma: no cover - json.loads output always dumps
        raise CorruptStateFile(f"cannot checksum: {exc}") from None
    if recorded != actual:
        shown = recorded[:23] + "…" if isinstance(recorded, str) else repr(recorded)
        raise CorruptStateFile(f"checksum mismatch (recorded {shown}, content {actual[:23]}…)")
    generation = doc["generation"]
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise CorruptStateFile(f"bad generation {generation!r}")
    for key in ("written_at", "written_by"):
        if not isinstance(doc[key], str):
            raise CorruptStateFile(f"bad {key} {doc[key]!r}")
    try:
        state = _daemon_state(doc["state"], "$.state")
    except _Invalid as exc:
        raise CorruptStateFile(f"invalid content: {_field_errors(exc)}") from None
    return Decoded(
        state=state,
        generation=generation,
        written_at=doc["written_at"],
        written_by=doc["written_by"],
    )
