"""Just enough protobuf wire format for ``start`` and ``delete``.

Those two actions run for every container, so they must not import the protobuf runtime
(~20 ms). They need three tiny messages: ``DeleteResponse`` out, ``BootstrapParams`` in
(containerd 2.3+) and ``BootstrapResult`` out. The tests check these against the generated
classes.
"""

from __future__ import annotations

import time


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/int64 negatives are ten-byte two's complement varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _field_varint(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value) if value else b""


def field_bytes(number: int, value: bytes | str) -> bytes:
    """One length-delimited field: a string, bytes or an embedded message."""
    data = value.encode() if isinstance(value, str) else value
    return _key(number, 2) + _varint(len(data)) + data


def encode_timestamp(seconds: int, nanos: int) -> bytes:
    """``google.protobuf.Timestamp``."""
    return _field_varint(1, seconds) + _field_varint(2, nanos)


def encode_delete_response(pid: int, exit_status: int, now: float | None = None) -> bytes:
    """``containerd.task.v2.DeleteResponse{pid, exit_status, exited_at}``."""
    now = time.time() if now is None else now
    seconds = int(now)
    ts = encode_timestamp(seconds, int((now - seconds) * 1e9))
    return _field_varint(1, pid) + _field_varint(2, exit_status) + field_bytes(3, ts)


def encode_bootstrap_result(address: str, version: int = 2, protocol: str = "ttrpc") -> bytes:
    """``containerd.runtime.bootstrap.v1.BootstrapResult{version, address, protocol}``."""
    return (
        _field_varint(1, version)
        + field_bytes(2, address.encode())
        + field_bytes(3, protocol.encode())
    )


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint too long")


def iter_fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """Split a message into ``(field number, wire type, value)``; groups are refused."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            fields.append((number, 0, value))
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise WireError("truncated length-delimited field")
            fields.append((number, 2, data[pos : pos + length]))
            pos += length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            if pos + size > len(data):
                raise WireError("truncated fixed field")
            fields.append((number, wire_type, data[pos : pos + size]))
            pos += size
        else:
            raise WireError(f"unsupported wire type {wire_type}")
    return fields


#: ttrpc frame types (see :mod:`containerd_shimkit.ttrpc.framing`).
TTRPC_REQUEST, TTRPC_RESPONSE = 1, 2
TTRPC_HEADER_LENGTH = 10


def encode_ttrpc_request(stream_id: int, service: str, method: str, payload: bytes) -> bytes:
    """One ttrpc Request frame: the 10-byte header, then ``ttrpc.Request``."""
    body = field_bytes(1, service) + field_bytes(2, method) + field_bytes(3, payload)
    header = len(body).to_bytes(4, "big") + stream_id.to_bytes(4, "big")
    return header + bytes((TTRPC_REQUEST, 0)) + body


def decode_ttrpc_status(frame: bytes) -> tuple[int, int, str]:
    """``(stream id, status code, status message)`` of one ttrpc Response frame.

    Raises:
        WireError: not a whole Response frame.
    """
    if len(frame) < TTRPC_HEADER_LENGTH or frame[8] != TTRPC_RESPONSE:
        raise WireError("not a ttrpc response frame")
    length = int.from_bytes(frame[:4], "big")
    if len(frame) != TTRPC_HEADER_LENGTH + length:
        raise WireError("truncated ttrpc response frame")
    code, message = 0, ""
    for number, _, value in iter_fields(frame[TTRPC_HEADER_LENGTH:]):
        if number == 1 and isinstance(value, bytes):  # google.rpc.Status
            for n, _, v in iter_fields(value):
                if n == 1 and isinstance(v, int):
                    code = v
                elif n == 2 and isinstance(v, bytes):
                    message = v.decode(errors="replace")
    return int.from_bytes(frame[4:8], "big"), code, message


class BootstrapParams:
    """The fields of ``BootstrapParams`` a shim uses (a plain class: no ``dataclasses``
    import on the ``start`` path)."""

    def __init__(self) -> None:
        self.instance_id = ""
        self.namespace = ""
        self.log_level = 0
        self.containerd_ttrpc_address = ""
        self.containerd_grpc_address = ""
        self.containerd_binary = ""
        self.socket_dir: str | None = None
        #: ``(type_url, value)`` of each extension Any (the runtime options).
        self.extensions: list[tuple[str, bytes]] = []


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise WireError("expected a string field")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("invalid UTF-8 in a string field") from exc


def _any(value: int | bytes) -> tuple[str, bytes]:
    if not isinstance(value, bytes):
        raise WireError("expected an Any")
    type_url, payload = "", b""
    for number, _, inner in iter_fields(value):
        if number == 1:
            type_url = _text(inner)
        elif number == 2 and isinstance(inner, bytes):
            payload = inner
    return type_url, payload


def decode_bootstrap_params(data: bytes) -> BootstrapParams:
    """Decode ``BootstrapParams``.

    Raises:
        WireError: the bytes do not parse as that message.
    """
    params = BootstrapParams()
    strings = {
        1: "instance_id",
        2: "namespace",
        5: "containerd_ttrpc_address",
        6: "containerd_grpc_address",
        7: "containerd_binary",
        9: "socket_dir",
    }
    for number, wire_type, value in iter_fields(data):
        if number in strings:
            if wire_type != 2:
                raise WireError(f"field {number} should be a string")
            setattr(params, strings[number], _text(value))
        elif number == 3:
            if wire_type != 0 or not isinstance(value, int):
                raise WireError("log_level should be a varint")
            params.log_level = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 8:
            for inner_number, _, inner in iter_fields(value if isinstance(value, bytes) else b""):
                if inner_number == 1:
                    params.extensions.append(_any(inner))
    return params
