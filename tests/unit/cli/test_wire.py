"""The hand-written protobuf encoders/decoders match the generated classes."""

from __future__ import annotations

import contextlib

import pytest
from google.protobuf import any_pb2
from hypothesis import given
from hypothesis import strategies as st

from containerd_shimkit.api import bootstrap_pb2, shim_pb2
from containerd_shimkit.cli.wire import (
    WireError,
    decode_bootstrap_params,
    encode_bootstrap_result,
    encode_delete_response,
)


@given(st.integers(0, 2**32 - 1), st.integers(0, 255), st.floats(0, 4e9))
def test_delete_response_decodes_with_protobuf(pid: int, status: int, now: float) -> None:
    message = shim_pb2.DeleteResponse.FromString(encode_delete_response(pid, status, now))
    assert (message.pid, message.exit_status) == (pid, status)
    assert message.exited_at.seconds == int(now)


def test_bootstrap_result_decodes_with_protobuf() -> None:
    result = bootstrap_pb2.BootstrapResult.FromString(encode_bootstrap_result("unix:///run/x", 2))
    assert (result.version, result.address, result.protocol) == (2, "unix:///run/x", "ttrpc")


def test_bootstrap_params_from_protobuf() -> None:
    opts = any_pb2.Any(type_url="runtimeoptions.v1.Options", value=b"\x1a\x02ab")
    params = bootstrap_pb2.BootstrapParams(
        instance_id="c1",
        namespace="k8s.io",
        log_level=bootstrap_pb2.LOG_LEVEL_DEBUG,
        containerd_ttrpc_address="/run/c.sock.ttrpc",
        containerd_grpc_address="/run/c.sock",
        containerd_binary="/usr/bin/containerd",
        socket_dir="/run/s",
        extensions=[bootstrap_pb2.Extension(value=opts)],
    )
    decoded = decode_bootstrap_params(params.SerializeToString())
    assert (decoded.instance_id, decoded.namespace, decoded.log_level) == ("c1", "k8s.io", -4)
    assert decoded.socket_dir == "/run/s"
    assert decoded.containerd_ttrpc_address == "/run/c.sock.ttrpc"
    assert decoded.extensions == [("runtimeoptions.v1.Options", b"\x1a\x02ab")]


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x80", b"\x0b", b"\x00\x01"])
def test_malformed_bytes_raise_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_bootstrap_params(data)


@given(st.binary(max_size=64))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_bootstrap_params(data)
