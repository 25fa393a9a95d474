"""The sans-I/O frame codec: exact bytes, partial input, oversize skipping, garbage."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from containerd_shimkit.errors import Code
from containerd_shimkit.ttrpc.errors import OversizedMessage, ProtocolError
from containerd_shimkit.ttrpc.framing import (
    HEADER_LENGTH,
    MAX_MESSAGE_LENGTH,
    Flags,
    Frame,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    encode_frame,
)


def header(length: int, stream_id: int, type: int = MessageType.REQUEST, flags: int = 0) -> bytes:
    return struct.pack(">IIBB", length, stream_id, type, flags)


def decode_all(decoder: FrameDecoder, *chunks: bytes) -> list[Frame | OversizedFrame]:
    events: list[Frame | OversizedFrame] = []
    for chunk in chunks:
        decoder.feed(chunk)
        events.extend(decoder)
    return events


def test_constants_match_containerd_ttrpc() -> None:
    assert HEADER_LENGTH == 10
    assert MAX_MESSAGE_LENGTH == 4194304
    assert (MessageType.REQUEST, MessageType.RESPONSE, MessageType.DATA) == (1, 2, 3)
    assert (Flags.REMOTE_CLOSED, Flags.REMOTE_OPEN, Flags.NO_DATA) == (1, 2, 4)


def test_encode_matches_the_observed_cri_create_header() -> None:
    # containerd 1.6.20 sent a 666-byte Create request on stream 1 with this header.
    frame = encode_frame(1, MessageType.REQUEST, 0, b"\0" * 666)
    assert frame[:10] == bytes.fromhex("0000029a000000010100")
    assert len(frame) == 676


def test_encode_refuses_oversize_data() -> None:
    with pytest.raises(OversizedMessage) as info:
        encode_frame(1, MessageType.REQUEST, 0, b"\0" * (MAX_MESSAGE_LENGTH + 1))
    assert info.value.code is Code.RESOURCE_EXHAUSTED
    assert info.value.length == MAX_MESSAGE_LENGTH + 1
    assert info.value.message == "message length 4194305 exceed maximum message size of 4194304"


def test_encode_accepts_exactly_the_maximum() -> None:
    assert len(encode_frame(1, 1, 0, b"\0" * MAX_MESSAGE_LENGTH)) == MAX_MESSAGE_LENGTH + 10


def test_zero_length_frame_is_a_frame() -> None:
    assert decode_all(FrameDecoder(), header(0, 7, MessageType.RESPONSE)) == [
        Frame(7, MessageType.RESPONSE, 0, b"")
    ]


def test_waits_for_the_whole_frame() -> None:
    decoder = FrameDecoder()
    wire = encode_frame(3, MessageType.RESPONSE, 0, b"hello")
    decoder.feed(wire[:4])
    assert decoder.next_frame() is None
    decoder.feed(wire[4:12])
    assert decoder.next_frame() is None
    assert decoder.buffered == 12
    decoder.feed(wire[12:])
    assert decoder.next_frame() == Frame(3, 2, 0, b"hello")
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


def test_unknown_types_and_flags_are_passed_through() -> None:
    # Future peers may send types we do not know; the caller decides to ignore them.
    assert decode_all(FrameDecoder(), encode_frame(1, 9, 0xFF, b"x")) == [Frame(1, 9, 0xFF, b"x")]


def test_oversize_frame_is_reported_and_skipped_across_feeds() -> None:
    decoder = FrameDecoder()
    length = MAX_MESSAGE_LENGTH + 5
    body = b"\xaa" * length
    following = encode_frame(5, MessageType.REQUEST, 0, b"next")
    wire = header(length, 3) + body + following
    chunks = [wire[i : i + 65536] for i in range(0, len(wire), 65536)]
    assert decode_all(decoder, *chunks) == [OversizedFrame(3, length), Frame(5, 1, 0, b"next")]
    assert decoder.buffered == 0


def test_oversize_event_comes_as_soon_as_the_header_is_complete() -> None:
    decoder = FrameDecoder()
    decoder.feed(header(MAX_MESSAGE_LENGTH + 1, 1))
    assert decoder.next_frame() == OversizedFrame(1, MAX_MESSAGE_LENGTH + 1)
    decoder.feed(b"\0" * MAX_MESSAGE_LENGTH)
    assert decoder.next_frame() is None
    decoder.feed(b"\0" + header(0, 3))
    assert decoder.next_frame() == Frame(3, 1, 0, b"")


def test_reserved_length_byte_is_a_protocol_error_and_sticks() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ProtocolError, match="reserved"):
        decoder.next_frame()
    decoder.feed(encode_frame(1, 1, 0, b""))
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_largest_length_below_the_reserved_range_is_skipped_not_fatal() -> None:
    decoder = FrameDecoder()
    decoder.feed(header((1 << 24) - 1, 1))
    assert decoder.next_frame() == OversizedFrame(1, (1 << 24) - 1)


# -- properties ---------------------------------------------------------------------------

frames = st.builds(
    Frame,
    stream_id=st.integers(0, 2**32 - 1),
    type=st.integers(0, 255),
    flags=st.integers(0, 255),
    data=st.binary(max_size=300),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(st.lists(frames, max_size=20), st.lists(st.integers(0, 10_000), max_size=30))
def test_round_trip_under_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(f.stream_id, f.type, f.flags, f.data) for f in sent)
    decoder = FrameDecoder()
    assert decode_all(decoder, *chunked(wire, cuts)) == sent
    assert decoder.buffered == 0


MAX_IN_TEST = 64  # a small limit makes oversize frames cheap to generate


@st.composite
def frames_some_oversize(draw: st.DrawFn) -> tuple[bytes, Frame | OversizedFrame]:
    stream_id = draw(st.integers(0, 2**32 - 1))
    data = draw(st.binary(max_size=3 * MAX_IN_TEST))
    if len(data) > MAX_IN_TEST:
        return header(len(data), stream_id) + data, OversizedFrame(stream_id, len(data))
    return encode_frame(stream_id, 1, 0, data), Frame(stream_id, 1, 0, data)


@given(st.lists(frames_some_oversize(), max_size=20), st.lists(st.integers(0, 10_000)))
def test_oversize_frames_never_desynchronise_the_stream(
    items: list[tuple[bytes, Frame | OversizedFrame]], cuts: list[int]
) -> None:
    wire = b"".join(raw for raw, _ in items)
    decoder = FrameDecoder(max_length=MAX_IN_TEST)
    assert decode_all(decoder, *chunked(wire, cuts)) == [event for _, event in items]


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=10))
def test_arbitrary_bytes_only_ever_raise_protocol_error(garbage: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_length=MAX_IN_TEST)
    try:
        for event in decode_all(decoder, *chunked(garbage, cuts)):
            assert isinstance(event, Frame | OversizedFrame)
            if isinstance(event, Frame):
                assert len(event.data) <= MAX_IN_TEST
    except ProtocolError:
        pass
