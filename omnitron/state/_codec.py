"""``state.json`` on the wire: a versioned, checksummed envelope around :class:`DaemonState`.

The file is pretty-printed JSON::

    {
      "checksum": "sha256:…",
      "format": "omnitron-state",
      "generation": 12,
      "schema_version": 1,
      "state": {"apps": [...]},
      "written_at": "2025-01-31T10:00:00.123456Z",
      "written_by": "omnitron 0.1.0"
    }

``checksum`` is the SHA-256 of the canonical JSON (sorted keys, no spaces,
ASCII) of every other field, so a flipped bit anywhere that matters is caught
(PC-05). ``generation`` grows by one with every write, so a loader can tell
which of two files is newer, and a test can tell which write survived a crash.

The converter here is private to this boundary and strict: a wrong type is
an error (``"5"`` is not an int, ``true`` is not a count), never coerced.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from datetime import UTC, datetime
from typing import Any, Final, get_args, get_origin

import attrs
import cattrs
import cattrs.cols
import cattrs.v

from ._errors import CorruptStateFile, NewerStateSchema
from ._records import DaemonState

__all__ = ["FORMAT", "SCHEMA_VERSION", "Decoded", "decode_state", "encode_state"]

FORMAT: Final = "omnitron-state"
SCHEMA_VERSION: Final = 1
_PARTIAL_TOKEN: Final = re.compile(r"[^\s{}\[\],:]+")
_ENVELOPE_KEYS: Final = frozenset(
    {"checksum", "format", "generation", "schema_version", "state", "written_at", "written_by"}
)


@functools.cache
def _written_by() -> str:
    from .. import __version__  # not importlib.metadata: 1.3 MiB of daemon memory

    return f"omnitron {__version__}"


# --------------------------------------------------------------------------- converter


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _is_homogenous_tuple(tp: Any) -> bool:
    args = get_args(tp)
    return get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)

    def tuple_factory(tp: Any) -> Any:
        inner = cattrs.cols.homogenous_tuple_structure_factory(tp, conv)

        def structure(value: object, tp_: Any) -> Any:
            # cattrs would iterate a dict or a string; only a JSON array is a list here.
            if not isinstance(value, list):
                raise TypeError(f"expected a list, got {type(value).__name__}")
            return inner(value, tp_)

        return structure

    conv.register_structure_hook_factory(_is_homogenous_tuple, tuple_factory)
    return conv


_converter = _make_converter()


def _format_exception(exc: BaseException, tp: type | None) -> str:
    # Our hooks and validators say precisely what is wrong; keep their words.
    ours = isinstance(exc, TypeError | ValueError) and not isinstance(
        exc, cattrs.ForbiddenExtraKeysError
    )
    if ours and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, tp)


def _field_errors(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        messages = cattrs.transform_error(exc, path="$.state", format_exception=_format_exception)
        return "; ".join(messages[:5]) + (
            f" (+{len(messages) - 5} more)" if len(messages) > 5 else ""
        )
    return str(exc)


# --------------------------------------------------------------------------- encode


def _canonical(obj: object) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


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
    envelope: dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "generation": generation,
        "written_at": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "written_by": _written_by(),
        "state": _converter.unstructure(state),
    }
    envelope["checksum"] = _checksum(envelope)
    text = json.dumps(envelope, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


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
        state = _converter.structure(doc["state"], DaemonState)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise CorruptStateFile(f"invalid content: {_field_errors(exc)}") from None
    return Decoded(
        state=state,
        generation=generation,
        written_at=doc["written_at"],
        written_by=doc["written_by"],
    )
