"""Durations and sizes as operators write them: ``"1h30m"``, ``"500ms"``, ``"50MB"``.

Both parsers are single left-to-right scans over a length-capped string (no
regular expressions), so hostile input is rejected in time linear in the cap.
Arithmetic is done on integers and converted once, so ``"0.1s"`` is exactly
``0.1`` and ``"1s500ms"`` is exactly ``1.5``.
"""

from __future__ import annotations

import math

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

MAX_DURATION_TEXT = 64
MAX_SIZE_TEXT = 32

# Units in milliseconds; lowercase only ("M" would be ambiguous with months).
_DURATION_UNITS: dict[str, int] = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}
# Case-insensitive. Single letters follow systemd/logrotate (binary); "kb", "mb", ...
# are SI (powers of 1000); "kib", "mib", ... are IEC (powers of 1024).
_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_MAX_SIZE = 2**63 - 1


def _describe(value: object) -> str:
    return type(value).__name__


def _scan_number(text: str, start: int, error: str) -> tuple[int, int, int]:
    """Read ``digits[.digits]`` at ``start``: (integer of all digits, decimals, end)."""
    end = start
    while end < len(text) and text[end].isascii() and text[end].isdigit():
        end += 1
    whole = text[start:end]
    decimals = ""
    dot = end < len(text) and text[end] == "."
    if dot:
        frac_start = end + 1
        end = frac_start
        while end < len(text) and text[end].isascii() and text[end].isdigit():
            end += 1
        decimals = text[frac_start:end]
    if not decimals and (dot or not whole):
        raise ValueError(error)
    return int(whole + decimals or "0"), len(decimals), end


def _scan_unit(text: str, start: int) -> tuple[str, int]:
    end = start
    while end < len(text) and text[end].isascii() and text[end].isalpha():
        end += 1
    return text[start:end], end


def parse_duration(value: object) -> float:
    """Parse a duration into seconds.

    Accepts a number of seconds (``int`` or ``float``, not ``bool``) or a string of
    one or more ``<number><unit>`` parts with units ``ms``, ``s``, ``m``, ``h``,
    ``d``: ``"500ms"``, ``"30s"``, ``"1.5m"``, ``"1h30m"``. A bare number string has
    no unit and is rejected, as is anything negative.

    Raises:
        ValueError: Unparsable, negative or non-finite; the message says why.
        TypeError: Neither a number nor a string.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(
            f"expected a duration (seconds or a string like '30s'), got {_describe(value)}"
        )
    if not isinstance(value, str):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("too large") from None
        if not math.isfinite(seconds):
            raise ValueError("must be a finite number of seconds")
        if seconds < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return seconds
    if len(value) > MAX_DURATION_TEXT:
        raise ValueError(
            f"duration string too long ({len(value)} > {MAX_DURATION_TEXT} characters)"
        )
    text = value.strip()
    if not text:
        raise ValueError("empty duration; write e.g. '30s' or '500ms'")
    if text[0] == "-":
        raise ValueError(f"must not be negative, got {text!r}")
    error = (
        f"invalid duration {text!r}: write numbers with units (ms, s, m, h, d), e.g. '30s', '1h30m'"
    )
    parts: list[tuple[int, int, int]] = []  # (digits, decimals, unit in ms)
    position = 0
    while position < len(text):
        digits, decimals, position = _scan_number(text, position, error)
        unit, end = _scan_unit(text, position)
        if not unit and position == len(text):
            hint = f"; write e.g. '{text}s'" if not parts else ""
            raise ValueError(f"missing unit at the end of {text!r}{hint}")
        if unit not in _DURATION_UNITS:
            raise ValueError(error)
        parts.append((digits, decimals, _DURATION_UNITS[unit]))
        position = end
    scale = max(decimals for _, decimals, _ in parts)
    numerator: int = sum(
        digits * unit * 10 ** (scale - decimals) for digits, decimals, unit in parts
    )
    denominator: int = 1000 * 10**scale
    # int / int is correctly rounded, so the result is the float nearest the exact value.
    return numerator / denominator


def parse_size(value: object) -> int:
    """Parse a size into bytes.

    Accepts a non-negative ``int`` of bytes or a string ``<number><unit>``: ``B``;
    ``K``/``M``/``G``/``T`` and ``KiB``/``MiB``/... (powers of 1024); ``KB``/``MB``/...
    (powers of 1000). Units are case-insensitive and may follow one space:
    ``"50MB"``, ``"1KiB"``, ``"10kb"``, ``"1.5 GiB"``. The result must be a whole
    number of bytes.

    Raises:
        ValueError: Unparsable, negative, fractional or too large.
        TypeError: Neither an int nor a string.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"expected a size (bytes or a string like '50MB'), got {_describe(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        if value > _MAX_SIZE:
            raise ValueError("size too large")
        return value
    if len(value) > MAX_SIZE_TEXT:
        raise ValueError(f"size string too long ({len(value)} > {MAX_SIZE_TEXT} characters)")
    text = value.strip()
    if not text:
        raise ValueError("empty size; write e.g. '50MB'")
    if text[0] == "-":
        raise ValueError(f"must not be negative, got {text!r}")
    error = f"invalid size {text!r}: write a number and a unit, e.g. '50MB', '1KiB', '10kb'"
    digits, decimals, position = _scan_number(text, 0, error)
    if position < len(text) and text[position] == " ":
        position += 1
    unit, end = _scan_unit(text, position)
    if not unit and end == len(text):
        raise ValueError(f"missing unit in {text!r}; write e.g. '{text}B' or use an integer")
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None or end != len(text):
        raise ValueError(error)
    scale: int = 10**decimals
    whole, remainder = divmod(digits * factor, scale)
    if remainder:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    if whole > _MAX_SIZE:
        raise ValueError("size too large")
    return whole


def _fixed_point(seconds: float) -> str:
    """The shortest round-tripping decimal of ``seconds`` without an exponent."""
    text = repr(seconds)
    if "e" not in text:
        return text.removesuffix(".0")
    mantissa, _, exponent_text = text.partition("e")
    exponent = int(exponent_text)
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + exponent
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def format_duration(seconds: float) -> str:
    """The canonical string for a duration: ``"1h30m"``, ``"500ms"``, ``"0s"``.

    ``parse_duration(format_duration(x)) == x`` for every finite ``x >= 0`` whose
    text fits the parser's length cap.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    millis = round(seconds * 1000)
    if millis / 1000 != seconds:
        return _fixed_point(seconds) + "s"
    if millis == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        count, millis = divmod(millis, _DURATION_UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_size(size: int) -> str:
    """The shortest exact string for a size: ``"50MB"``, ``"1KiB"``, ``"1500B"``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"not a size: {size!r}")
    best = f"{size}B"
    if size == 0:
        return best
    for unit, label in (
        ("tib", "TiB"),
        ("gib", "GiB"),
        ("mib", "MiB"),
        ("kib", "KiB"),
        ("tb", "TB"),
        ("gb", "GB"),
        ("mb", "MB"),
        ("kb", "KB"),
    ):
        count, remainder = divmod(size, _SIZE_UNITS[unit])
        if not remainder and count and len(f"{count}{label}") < len(best):
            best = f"{count}{label}"
    return best
