"""The msgpack-rpc codec: framing, decoder limits and envelope checks (no sockets)."""

from __future__ import annotations

import struct

import msgpack
import pytest

from omnitron.rpc import ErrorCode, Limits, ProtocolError, ServerOptions
from omnitron.rpc._protocol import (
    ErrorInfo,
    Notification,
    Request,
    Response,
    decode_request,
    decode_server_message,
    encode,
)
from omnitron.rpc._wire import (
    TEXT_MAX,
    FrameDecoder,
    describe,
    error_map,
    limit_violation,
    pack_response,
    split_request,
)


def pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def decode_all(data: bytes, limits: Limits | None = None) -> list[object]:
    decoder = FrameDecoder(limits or Limits())
    frames: list[object] = []
    step = decoder._limits.read_size
    for start in range(0, len(data), step):
        decoder.feed(data[start : start + step])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    return frames


def rejection(data: bytes, limits: Limits | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_all(data, limits)
    return info.value


def request_with(value: object) -> bytes:
    return pack([0, 1, "app.get", [{"value": value}]])


# --------------------------------------------------------------------------- framing


def test_frames_split_across_reads_and_several_per_read() -> None:
    data = b"".join(pack([0, i, "daemon.ping", [{}]]) for i in range(50))
    decoder = FrameDecoder()
    frames: list[object] = []
    for byte in data[:40]:  # one byte at a time
        decoder.feed(bytes([byte]))
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    decoder.feed(data[40:])  # the rest at once
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    assert frames == [[0, i, "daemon.ping", [{}]] for i in range(50)]
    assert decoder.buffered == 0


def test_partial_frame_is_reported_as_buffered_not_dispatched() -> None:
    data = pack([0, 1, "daemon.ping", [{}]])
    decoder = FrameDecoder()
    decoder.feed(data[:-1])
    assert decoder.next_frame() is None
    assert decoder.buffered == len(data) - 1


def test_frame_exactly_at_the_limit_passes_and_one_more_byte_fails() -> None:
    limits = Limits(max_frame=4096, read_size=1024)
    overhead = len(pack([0, 1, "m", [{"v": ""}]]))
    body = "x" * (4096 - overhead - 2)  # str16 header is 3 bytes instead of 1
    exact = pack([0, 1, "m", [{"v": body}]])
    assert len(exact) == 4096
    assert decode_all(exact, limits) == [[0, 1, "m", [{"v": body}]]]
    over = pack([0, 1, "m", [{"v": body + "y"}]])
    assert rejection(over, limits).code is ErrorCode.FRAME_TOO_LARGE


def test_huge_str_header_inside_a_message_is_cut_off_at_max_frame() -> None:
    """RP-01: a 100 MB claim never makes the decoder hold more than max_frame + one read."""
    limits = Limits(max_frame=64 * 1024, read_size=4096)
    decoder = FrameDecoder(limits)
    decoder.feed(b"\x94\x00\x01\xdb" + struct.pack(">I", 100_000_000))

    def feed_until_refused() -> tuple[int, ProtocolError]:
        fed = 0
        while True:
            try:
                assert decoder.next_frame() is None
                decoder.feed(b"a" * 4096)
            except ProtocolError as exc:
                return fed, exc
            fed += 4096

    fed, error = feed_until_refused()
    assert error.code is ErrorCode.FRAME_TOO_LARGE
    assert fed <= limits.max_frame + limits.read_size


@pytest.mark.parametrize(
    "header",
    [
        b"\xdb" + struct.pack(">I", 100_000_000),  # str32
        b"\xc6" + struct.pack(">I", 100_000_000),  # bin32
        b"\xc9" + struct.pack(">I", 100_000_000) + b"\x05",  # ext32
        b"\xdf" + struct.pack(">I", 2**32 - 1),  # map32
        b"\xff",  # negative fixint
    ],
)
def test_a_message_that_is_not_an_array_is_refused_at_its_first_byte(header: bytes) -> None:
    assert rejection(header).code is ErrorCode.INVALID_REQUEST


def test_array32_header_claiming_four_billion_items_is_refused_before_allocation() -> None:
    """RP-02."""
    error = rejection(b"\xdd" + struct.pack(">I", 2**32 - 1))
    assert error.code is ErrorCode.PARSE_ERROR
    assert "max_array_len" in error.message


def test_a_megabyte_of_empty_maps_stops_at_the_item_cap() -> None:
    """RP-03: 1 M empty maps would be ~73 MB of dicts; the hook stops at max_items."""
    inner = b"\xdd" + struct.pack(">I", 10_000) + b"\x80" * 10_000
    frame = b"\x94\x00\x01\xa1m\x91\x81\xa1v" + b"\xdc" + struct.pack(">H", 100) + inner * 100
    assert len(frame) > 1_000_000
    error = rejection(frame)
    assert error.code is ErrorCode.PARSE_ERROR
    assert "200000" in error.message


def test_item_cap_counts_every_container_entry() -> None:
    # Each container counts 1 + its length: envelope 5, params 2, map 2, outer list
    # 1 + n, each inner list 11. Seven inner lists make 94, eight make 106.
    limits = Limits(max_items=100)
    assert decode_all(request_with([[1] * 10 for _ in range(7)]), limits)
    too_many = request_with([[1] * 10 for _ in range(8)])
    assert rejection(too_many, limits).code is ErrorCode.PARSE_ERROR


def test_container_length_cap() -> None:
    limits = Limits(max_container_len=100)
    assert decode_all(request_with(list(range(100))), limits)
    assert "max_array_len" in rejection(request_with(list(range(101))), limits).message
    big_map = {str(i): i for i in range(101)}
    assert "max_map_len" in rejection(request_with(big_map), limits).message


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"  # `depth` arrays around a nil


@pytest.mark.parametrize(("depth", "ok"), [(32, True), (33, False), (1000, False), (1025, False)])
def test_nesting_depth(depth: int, ok: bool) -> None:
    """RP-04: our own cap (32) well below msgpack's StackError (1024)."""
    data = nested(depth)
    if ok:
        assert decode_all(data)
    else:
        error = rejection(data)
        assert error.code is ErrorCode.PARSE_ERROR


def test_depth_counts_maps_too() -> None:
    value: object = 1
    for _ in range(31):
        value = {"k": value}
    assert rejection(request_with(value)).code is ErrorCode.PARSE_ERROR  # 3 + 31 > 32


def test_truncated_utf8_and_invalid_utf8_are_parse_errors() -> None:
    """RP-07: UnicodeDecodeError is caught at the codec boundary."""
    frame = b"\x94\x00\x01\xa2\xff\xfe\x90"
    error = rejection(frame)
    assert error.code is ErrorCode.PARSE_ERROR
    assert "utf-8" in error.message


@pytest.mark.parametrize(
    "ext",
    [
        b"\xd4\x05\x00",  # fixext1, type 5
        b"\xc7\x00\x05",  # ext8, empty, type 5
        b"\xd6\xff\x00\x00\x00\x01",  # a well-formed timestamp (type -1)
        b"\xc7\x03\xff\x00\x00\x01",  # timestamp with a bad length
        b"\xd7\xff" + struct.pack(">Q", 0x3FFFFFFF << 34),  # nanoseconds > 999 999 999
    ],
)
def test_every_ext_type_is_rejected(ext: bytes) -> None:
    """RP-08: unknown ext types and timestamps, well-formed or not."""
    frame = b"\x94\x00\x01\xa1m\x91\x81\xa1v" + ext
    assert rejection(frame).code is ErrorCode.PARSE_ERROR


def test_int_map_keys_are_rejected() -> None:
    """RP-09: strict_map_key stops hash-flooding with colliding int keys."""
    frame = b"\x94\x00\x01\xa1m\x91\x81\x01\x02"
    assert rejection(frame).code is ErrorCode.PARSE_ERROR


def test_reserved_byte_0xc1_is_a_parse_error() -> None:
    assert rejection(b"\x94\xc1").code is ErrorCode.PARSE_ERROR


def test_broken_decoder_stays_broken() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x94\xc1")
    with pytest.raises(ProtocolError):
        decoder.next_frame()
    with pytest.raises(ProtocolError):
        decoder.feed(pack([0, 1, "daemon.ping", [{}]]))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({1: "x"}, "map keys must be strings"),
        (list(range(101)), "more than 100"),
        ([[1] * 50, [1] * 50, [1] * 50], "more than 120 array/map entries"),
        ([[[[[None]]]]], "nested deeper than 4 levels"),
        ((1, (2, (3, (4, (5,))))), "nested deeper than 4 levels"),
    ],
)
def test_senders_check_the_limits_before_encoding(value: object, problem: str) -> None:
    limits = Limits(max_container_len=100, max_items=120, max_depth=4)
    violation = limit_violation(value, limits)
    assert violation is not None
    assert problem in violation
    assert limit_violation([1, {"a": [1, 2]}, b"x"], limits) is None
    with pytest.raises(ProtocolError, match=problem):
        pack_response(1, None, value, limits)


def test_what_senders_accept_the_decoder_accepts() -> None:
    limits = Limits(max_container_len=50, max_items=300, max_depth=5)
    value = [{"k": [[1, 2], {"x": None}]} for _ in range(20)]
    frame = pack_response(7, None, value, limits)
    assert decode_all(frame, limits) == [[1, 7, None, value]]


def test_feed_refuses_more_than_read_size() -> None:
    decoder = FrameDecoder(Limits(read_size=16))
    with pytest.raises(ValueError, match="read_size"):
        decoder.feed(b"x" * 17)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_frame": 0},
        {"max_items": -1},
        {"max_depth": 513},
        {"read_size": 1.5},
        {"max_frame": True},
    ],
)
def test_limits_validate(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Limits"):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_limits_are_immutable_values() -> None:
    limits = Limits(max_frame=10)
    with pytest.raises(AttributeError):
        limits.max_frame = 11
    assert limits == Limits(max_frame=10)
    assert hash(limits) == hash(Limits(max_frame=10))
    assert "max_frame=10" in repr(limits)


def test_server_options_validate() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        ServerOptions(max_connections=0)
    with pytest.raises(ValueError, match="frame_deadline"):
        ServerOptions(frame_deadline=float("inf"))
    assert ServerOptions(idle_timeout=None).idle_timeout is None
    assert ServerOptions(limits=Limits(max_frame=1024)).limits.max_frame == 1024


# --------------------------------------------------------------------------- envelopes


def test_request_round_trip_through_the_typed_records() -> None:
    request = Request(msgid=7, method="app.get", params={"name": "api"})
    [obj] = decode_all(encode(request))
    assert decode_request(obj) == request


def test_empty_params_array_means_no_arguments() -> None:
    assert decode_request([0, 1, "daemon.ping", []]).params == {}


@pytest.mark.parametrize(
    ("message", "echoed"),
    [
        ("not an array", None),
        ({"id": 1}, None),
        ([], None),
        ([0], None),
        ([0, 1], 1),
        ([0, 1, "m"], 1),
        ([0, 1, "m", [{}], "extra"], 1),
        ([True, 1, "m", [{}]], None),
        ([5, 1, "m", [{}]], None),
        ([1, 1, None, None], None),  # a response, from a client
        ([2, "m", [{}]], None),  # a notification, from a client
        ([0, None, "m", [{}]], None),
        ([0, b"id", "m", [{}]], None),
        ([0, -1, "m", [{}]], None),
        ([0, 2**32, "m", [{}]], None),
        ([0, 2**64 - 1, "m", [{}]], None),
        ([0, 1.0, "m", [{}]], None),
        ([0, float("nan"), "m", [{}]], None),
        ([0, True, "m", [{}]], None),
        ([0, 3, None, [{}]], 3),
        ([0, 3, 42, [{}]], 3),
        ([0, 3, b"app.get", [{}]], 3),
        ([0, 4, "m", {"name": "x"}], 4),
        ([0, 4, "m", ["x"]], 4),
        ([0, 4, "m", [{}, {}]], 4),
        ([0, 4, "m", None], 4),
    ],
)
def test_malformed_requests_are_invalid_request(message: object, echoed: int | None) -> None:
    """RP-10: the id is echoed only when it is a valid msgpack-rpc id."""
    with pytest.raises(ProtocolError) as info:
        split_request(message)
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert info.value.msgid == echoed


def test_server_messages_decode_into_typed_records() -> None:
    ok = decode_server_message([1, 3, None, {"pong": True}])
    assert ok == Response(msgid=3, result={"pong": True})
    failed = decode_server_message(
        [1, None, {"code": "BUSY", "message": "full", "data": {"retry": 1}}, None]
    )
    assert failed == Response(
        msgid=None, error=ErrorInfo(code="BUSY", message="full", data={"retry": 1})
    )
    pushed = decode_server_message([2, "logs.line", [{"line": "x", "stream": 1}]])
    assert pushed == Notification(method="logs.line", params={"line": "x", "stream": 1})


@pytest.mark.parametrize(
    "message",
    [
        [1, None, None, None],
        [1, -3, None, None],
        [1, 1, "boom", None],
        [1, 1, {"message": "no code"}, None],
        [1, 1, {"code": "X" * 65, "message": ""}, None],
        [1, 1, {"code": "BUSY", "message": "x" * (TEXT_MAX + 1)}, None],
        [1, 1, {"code": "BUSY", "message": "m", "correlation_id": 5}, None],
        [1, 1, {"code": "BUSY", "message": "m", "data": [1]}, None],
        [2, "", [{}]],
        [2, "m", {}],
        [0, 1, "m", [{}]],
        [3],
    ],
)
def test_malformed_server_messages_are_rejected(message: object) -> None:
    """RP-22: the client checks replies as strictly as the server checks requests."""
    with pytest.raises(ProtocolError):
        decode_server_message(message)


def test_error_map_truncates_long_messages() -> None:
    error = error_map("NOT_FOUND", "x" * 10_000, correlation_id="abc")
    assert len(error["message"]) == TEXT_MAX  # type: ignore[arg-type]
    assert error["correlation_id"] == "abc"
    assert "data" not in error


def test_describe_never_reprs_large_or_nested_values() -> None:
    deep: object = []
    for _ in range(2000):
        deep = [deep]
    assert describe(deep) == "an array of 1 items"
    assert describe("x" * 5_000_000) == "a string of 5000000 characters"
    assert describe("\x1b[31mred") == repr("\x1b[31mred")  # escaped, no terminal control
    assert describe(2**64) == "18446744073709551616"
    assert describe(10**40).startswith("an integer of")
    assert describe(True) == "true"
    assert describe(None) == "nil"
    assert describe(b"abc") == "3 bytes of binary"
    assert describe({"a": 1}) == "a map of 1 entries"
