"""start: grouping, socket naming, bootstrap detection, socket reuse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from containerd_shimkit.api import bootstrap_pb2
from containerd_shimkit.cli.bootstrap import parse_stdin, render
from containerd_shimkit.cli.flags import parse
from containerd_shimkit.cli.start import bind_or_reuse, group_of, socket_address


def test_socket_address_matches_containerd() -> None:
    expected = hashlib.sha256(b"/run/containerd/containerd.sock/k8s.io/abc").hexdigest()
    assert socket_address("/run/containerd/containerd.sock", "k8s.io", "abc") == (
        f"unix:///run/containerd/s/{expected}"
    )
    # filepath.Join cleans the path.
    assert socket_address("/run//c.sock/", "ns", "g") == socket_address("/run/c.sock", "ns", "g")


def test_group_prefers_annotations(tmp_path: Path) -> None:
    assert group_of(tmp_path, "c1") == "c1"
    (tmp_path / "config.json").write_text(
        json.dumps({"annotations": {"io.kubernetes.cri.sandbox-id": "pod1"}})
    )
    assert group_of(tmp_path, "c1") == "pod1"
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "annotations": {
                    "io.kubernetes.cri.sandbox-id": "pod1",
                    "io.containerd.runc.v2.group": "g",
                }
            }
        )
    )
    assert group_of(tmp_path, "c1") == "g"
    (tmp_path / "config.json").write_text("{not json")
    assert group_of(tmp_path, "c1") == "c1"


def test_bind_reuses_a_live_socket_and_replaces_a_dead_one(tmp_path: Path) -> None:
    path = str(tmp_path / "s" / "sock")
    first = bind_or_reuse(path)
    assert first is not None and (Path(path).stat().st_mode & 0o777) == 0o600
    try:
        assert bind_or_reuse(path) is None  # alive: another start must reuse it
    finally:
        first.close()
    second = bind_or_reuse(path)  # the file is left, nobody listens: replaced
    assert second is not None
    second.close()


FLAGS = parse(["-namespace", "k8s.io", "-id", "c1", "-address", "/c.sock", "start"])


def test_legacy_stdin_is_the_options_any() -> None:
    options = any_pb2.Any(type_url="runtimeoptions.v1.Options", value=b"\x1a\x01x")
    request = parse_stdin(options.SerializeToString(), FLAGS)
    assert not request.bootstrap
    assert request.options == ("runtimeoptions.v1.Options", b"\x1a\x01x")
    assert render(request, "unix:///run/s/x") == b"unix:///run/s/x"
    assert not parse_stdin(b"", FLAGS).bootstrap


def test_a_legacy_any_that_parses_as_bootstrap_params_stays_legacy() -> None:
    # Any{type_url="c1", value="k8s.io"} is also BootstrapParams{instance_id, namespace}
    # when the strings line up; it must only count when both match the flags.
    tricky = any_pb2.Any(type_url="other", value=b"k8s.io").SerializeToString()
    assert not parse_stdin(tricky, FLAGS).bootstrap


def test_bootstrap_params_get_a_bootstrap_result() -> None:
    params = bootstrap_pb2.BootstrapParams(
        instance_id="c1", namespace="k8s.io", socket_dir="/run/x/s"
    )
    request = parse_stdin(params.SerializeToString(), FLAGS)
    assert request.bootstrap and request.socket_dir == "/run/x/s"
    result = bootstrap_pb2.BootstrapResult.FromString(render(request, "unix:///run/x/s/h"))
    assert (result.version, result.address, result.protocol) == (2, "unix:///run/x/s/h", "ttrpc")


@pytest.mark.parametrize("payload", [b"\xff\xff", b"garbage that is not protobuf"])
def test_garbage_stdin_is_treated_as_no_options(payload: bytes) -> None:
    request = parse_stdin(payload, FLAGS)
    assert not request.bootstrap
