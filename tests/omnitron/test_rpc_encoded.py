"""A result encoded once answers many calls byte for byte like the plain value."""

from __future__ import annotations

import msgpack
import pytest

from omnitron.rpc import Encoded, Limits
from omnitron.rpc._errors import ProtocolError
from omnitron.rpc._wire import FrameDecoder, pack_response

STATUS = {
    "daemon": {"pid": 4242, "uptime": 1.5, "persistence": "ok"},
    "apps": [{"name": f"app{i}", "processes": [{"pid": i, "cpu": 0.5}]} for i in range(50)],
}


@pytest.mark.parametrize("msgid", [0, 7, 300, 70_000, 2**32 - 1])
def test_an_encoded_result_frames_exactly_like_the_plain_value(msgid: int) -> None:
    encoded = Encoded.of(STATUS)
    assert pack_response(msgid, None, encoded) == pack_response(msgid, None, STATUS)
    decoder = FrameDecoder()
    decoder.feed(pack_response(msgid, None, encoded, Limits()))
    assert decoder.next_frame() == [1, msgid, None, STATUS]
    assert decoder.next_frame() is None


def test_the_limits_are_checked_once_when_encoding() -> None:
    small = Limits(max_container_len=10)
    with pytest.raises(ProtocolError, match="more than 10"):
        Encoded.of(STATUS, small)
    with pytest.raises(ProtocolError, match="max_frame"):
        pack_response(1, None, Encoded.of(STATUS), Limits(max_frame=1000))


def test_the_bytes_are_the_plain_encoding() -> None:
    assert msgpack.unpackb(Encoded.of(STATUS).data) == STATUS
