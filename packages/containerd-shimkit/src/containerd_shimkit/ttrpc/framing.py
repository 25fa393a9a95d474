"""ttrpc message framing, sans I/O: bytes in, frames out, and frames to bytes.

Every ttrpc message is a 10-byte header followed by ``length`` bytes of data
(``containerd/ttrpc`` ``channel.go``, ``PROTOCOL.md``)::

    offset 0  u32 big-endian  data length (not counting the header)
    offset 4  u32 big-endian  stream id (odd for client-initiated streams)
    offset 8  u8              message type (REQUEST, RESPONSE, DATA)
    offset 9  u8              flags (meaning depends on the type)

Nothing here touches sockets or asyncio; :class:`FrameDecoder` is fed whatever the
transport read and hands back complete :class:`Frame` events (or :class:`OversizedFrame`
when the peer announced a frame above the limit, whose bytes it then skips).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from .errors import OversizedMessage, ProtocolError

__all__ = [
    "HEADER_LENGTH",
    "MAX_MESSAGE_LENGTH",
    "Event",
    "Flags",
    "Frame",
    "FrameDecoder",
    "MessageType",
    "OversizedFrame",
    "encode_frame",
]

_HEADER = struct.Struct(">IIBB")

#: Size of the fixed frame header (``messageHeaderLength`` in containerd/ttrpc).
HEADER_LENGTH = _HEADER.size

#: Largest data length either side may send: containerd/ttrpc ``channel.go``
#: ``messageLengthMax = 4 << 20``. Bigger frames are refused by the sender and discarded
#: (with a RESOURCE_EXHAUSTED reply) by the receiver.
MAX_MESSAGE_LENGTH = 4 << 20

#: PROTOCOL.md: "Due to the maximum data size being less than 16MB, the first frame byte
#: should always be zero. This first byte should be considered reserved." A length at or
#: above 16 MiB therefore means the stream is not ttrpc (or is desynchronised), and we
#: drop the connection instead of silently discarding up to 4 GiB as Go would.
_RESERVED_LENGTH = 1 << 24


class MessageType(IntEnum):
    """The frame types of ttrpc 1.2 (1.1 peers only know REQUEST and RESPONSE)."""

    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Flags(IntFlag):
    """Frame flags; a unary exchange uses none."""

    REMOTE_CLOSED = 0x1
    REMOTE_OPEN = 0x2
    NO_DATA = 0x4


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame. ``type`` and ``flags`` are raw ints: unknown values must be
    tolerated (and ignored) for compatibility with future peers."""

    stream_id: int
    type: int
    flags: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """The peer announced a frame longer than :data:`MAX_MESSAGE_LENGTH` on ``stream_id``.

    The decoder skips its ``length`` data bytes; the receiver should answer the stream
    with RESOURCE_EXHAUSTED and carry on, as the Go implementation does.
    """

    stream_id: int
    length: int


#: What :meth:`FrameDecoder.next_frame` returns.
Event = Frame | OversizedFrame


def encode_frame(stream_id: int, type: int, flags: int, data: bytes) -> bytes:
    """Serialize one frame.

    Raises:
        OversizedMessage: ``data`` is longer than :data:`MAX_MESSAGE_LENGTH`.
        struct.error: a header field is out of range (a programming error).
    """
    if len(data) > MAX_MESSAGE_LENGTH:
        raise OversizedMessage(len(data), MAX_MESSAGE_LENGTH)
    return _HEADER.pack(len(data), stream_id, type, flags) + data


class FrameDecoder:
    """Incremental frame parser: :meth:`feed` bytes, then :meth:`next_frame` until ``None``.

    Iterating over the decoder yields every event that is complete so far. After a
    :class:`ProtocolError` the decoder stays broken: the connection must be closed.

    Args:
        max_length: Frames with more data than this are reported as
            :class:`OversizedFrame` and skipped. Only tests should lower it.
    """

    def __init__(self, *, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._max_length = max_length
        self._buffer = bytearray()
        # Data bytes of an oversize frame still to be thrown away; they may arrive across
        # any number of feeds and are never buffered.
        self._skip = 0
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        """Append bytes read from the peer."""
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        self._buffer += data

    def next_frame(self) -> Event | None:
        """Return the next complete event, or ``None`` if more bytes are needed.

        Raises:
            ProtocolError: the stream cannot be framed (reserved length byte set).
        """
        if self._error is not None:
            raise self._error
        if len(self._buffer) < HEADER_LENGTH:  # also true while skipping: nothing is kept
            return None
        length, stream_id, type_, flags = _HEADER.unpack_from(self._buffer)
        if length >= _RESERVED_LENGTH:
            self._error = ProtocolError(
                f"frame header announces {length} bytes: reserved length byte is not zero"
            )
            raise self._error
        if length > self._max_length:
            return self._start_skipping(stream_id, length)
        end = HEADER_LENGTH + length
        if len(self._buffer) < end:
            return None
        data = bytes(self._buffer[HEADER_LENGTH:end])
        del self._buffer[:end]
        return Frame(stream_id, type_, flags, data)

    def __iter__(self) -> Iterator[Event]:
        while (event := self.next_frame()) is not None:
            yield event

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame (excluding skipped bytes)."""
        return len(self._buffer)

    def _start_skipping(self, stream_id: int, length: int) -> OversizedFrame:
        del self._buffer[:HEADER_LENGTH]
        skipped = min(length, len(self._buffer))
        del self._buffer[:skipped]
        self._skip = length - skipped
        return OversizedFrame(stream_id, length)
