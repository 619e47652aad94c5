"""Durations and sizes: the accepted forms, exact values, round trips, hostile input (CF-13)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnitron.config import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("0.1s", 0.1),
        (".5s", 0.5),
        ("1s500ms", 1.5),
        ("  10s ", 10.0),
        ("0s", 0.0),
        (30, 30.0),
        (0.25, 0.25),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("30", "missing unit at the end of '30'; write e.g. '30s'"),
        ("1h30", "missing unit at the end of '1h30'"),
        ("abc", "invalid duration 'abc'"),
        ("5x", "invalid duration '5x'"),
        ("5M", "invalid duration '5M'"),
        ("5.s", "invalid duration '5.s'"),
        ("1..5s", "invalid duration"),
        ("", "empty duration"),
        ("-1s", "must not be negative"),
        ("1 s", "invalid duration"),
        ("9" * 65 + "s", "duration string too long"),
    ],
)
def test_bad_durations(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        parse_duration(text)


@pytest.mark.parametrize("value", [True, None, [1], {"s": 1}])
def test_durations_reject_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf")])
def test_durations_reject_bad_numbers(value: float) -> None:
    with pytest.raises(ValueError, match=r"finite|negative"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("50MB", 50_000_000),
        ("1KiB", 1024),
        ("10kb", 10_000),
        ("10KB", 10_000),
        ("1.5 GiB", 3 * 2**29),
        ("2M", 2 * 2**20),
        ("512B", 512),
        ("1.5kB", 1500),
        (4096, 4096),
        ("0B", 0),
    ],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("50", "missing unit in '50'"),
        ("1.1B", "'1.1B' is not a whole number of bytes"),
        ("5XB", "invalid size '5XB'"),
        ("50MBx", "invalid size '50MBx'"),
        ("MB", "invalid size 'MB'"),
        ("-1MB", "must not be negative"),
        ("1" * 40 + "B", "size string too long"),
        ("99999999999TiB", "size too large"),
    ],
)
def test_bad_sizes(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.")):
        parse_size(text)


@pytest.mark.parametrize("value", [True, 1.5, None])
def test_sizes_reject_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="expected a size"):
        parse_size(value)


def test_format() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.5) == "500ms"
    assert format_duration(0) == "0s"
    assert format_duration(1e-7) == "0.0000001s"
    assert format_duration(0.0005) == "0.0005s"
    assert format_size(50_000_000) == "50MB"
    assert format_size(50 * 2**20) == "50MiB"
    assert format_size(1500) == "1500B"
    assert format_size(0) == "0B"


@settings(database=None, max_examples=300)
@given(
    st.integers(0, 400),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
)
def test_duration_round_trip_by_units(d: int, h: int, m: int, s: int, ms: int) -> None:
    text = "".join(
        f"{n}{unit}"
        for n, unit in zip((d, h, m, s, ms), ["d", "h", "m", "s", "ms"], strict=True)
        if n
    )
    seconds = parse_duration(text or "0s")
    assert seconds == (d * 86_400_000 + h * 3_600_000 + m * 60_000 + s * 1000 + ms) / 1000
    assert format_duration(seconds) == (text or "0s")


@settings(database=None, max_examples=300)
@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_duration_float_round_trip(seconds: float) -> None:
    text = format_duration(seconds)
    if len(text) <= 64:
        assert parse_duration(text) == seconds


@settings(database=None, max_examples=300)
@given(st.integers(min_value=0, max_value=2**50))
def test_size_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


_HOSTILE = st.text(alphabet="0123456789.smhdKMGiBb -", max_size=200) | st.text(max_size=200)


@settings(database=None, max_examples=500)
@given(_HOSTILE)
def test_parsers_never_crash(text: str) -> None:
    # The parsers scan once, left to right (no regex backtracking): hostile input
    # is an error or a value, never an exception of another kind.
    for parse in (parse_duration, parse_size):
        try:
            result = parse(text)
        except ValueError:
            pass
        else:
            assert result >= 0


@pytest.mark.parametrize(
    "text",
    ["1" * 100_000, "1s" * 50_000, "." * 100_000, "9" * 99_999 + "s", " " * 100_000 + "1s"],
)
def test_adversarial_100k_input_is_rejected_before_parsing(text: str) -> None:
    """CF-13: a 100k-character hostile string hits the length cap, so it is never parsed."""
    for parse in (parse_duration, parse_size):
        with pytest.raises(ValueError, match="too long"):
            parse(text)
