"""Pure helpers of tests/support: /proc parsing, leak attribution, CRI logs and protos, CNI."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

import pytest

from tests.support.containerd import (
    LeakTracker,
    argv_names_address,
    descendants,
    parse_containerd_version,
    parse_mountinfo,
    shim_socket_name,
)
from tests.support.cri import (
    DOCUMENTATION_SUBNETS,
    BridgeNetwork,
    cri_log_messages,
    kubelet_cgroup_parent,
    parse_cri_log,
    pick_documentation_subnet,
    strip_gogoproto,
)

ROOTFS = "/run/ctrtest-ab/state/io.containerd.runtime.v2.task/default/x/rootfs"
MOUNTINFO = "\n".join(
    [
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
        f"97 22 0:50 / {ROOTFS} rw - overlay overlay rw,lowerdir=/a",
        "98 22 0:4 net:[4026532600] /run/netns/cni-1 rw shared:5 - nsfs nsfs rw",
        "99 22 0:51 / /tmp/with\\040space rw - tmpfs tmpfs rw",
    ]
)


def test_parse_mountinfo() -> None:
    assert parse_mountinfo(MOUNTINFO) == [
        ("/", "ext4"),
        (ROOTFS, "overlay"),
        ("/run/netns/cni-1", "nsfs"),
        ("/tmp/with space", "tmpfs"),
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["shim", "-namespace", "k8s.io", "-address", "/run/a/c.sock", "-id", "x"], True),
        (["shim", "--address", "/run/a/c.sock", "start"], True),
        (["shim", "-address=/run/a/c.sock"], True),
        (["shim", "--address=/run/a/c.sock"], True),
        (["shim", "-address", "/run/a/c.sock.ttrpc"], False),
        (["shim", "-address", "/run/b/c.sock"], False),
        (["ctr", "-a", "/run/a/c.sock", "version"], False),
        (["grep", "address", "/run/a/c.sock"], False),
        (["shim", "-address"], False),
    ],
)
def test_argv_names_address(argv: list[str], expected: bool) -> None:
    assert argv_names_address(argv, "/run/a/c.sock") is expected


def test_descendants() -> None:
    parents = {2: 1, 3: 2, 4: 3, 5: 1, 6: 5}
    assert descendants([2], parents) == {3, 4}
    assert descendants([1], parents) == {2, 3, 4, 5, 6}
    assert descendants([4], parents) == set()


def test_shim_socket_name_is_runc_scheme() -> None:
    # shim-protocol.md §3.3: sha256 of "<address>/<ns>/<grouping id>".
    expected = hashlib.sha256(b"/run/containerd/containerd.sock/k8s.io/abc").hexdigest()
    assert shim_socket_name("/run/containerd/containerd.sock", "k8s.io", "abc") == expected


def test_parse_containerd_version() -> None:
    v16 = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
    assert parse_containerd_version(v16) == "1.6.20~ds1"
    v21 = "containerd github.com/containerd/containerd/v2 2.1.9+unknown \n"
    assert parse_containerd_version(v21) == "2.1.9+unknown"
    with pytest.raises(RuntimeError):
        parse_containerd_version("runc version 1.1.5")


def test_leak_tracker_collects_ids_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "containerd.log"
    sid = "a" * 64
    log.write_text(
        'time="t" level=info msg="shim disconnected" id=myid42 namespace=wasmns\n'
        f'time="t" level=debug msg="RunPodSandbox returns sandbox id \\"{sid}\\""\n'
        'time="t" level=debug msg="cni result" '
        "path=/run/netns/cni-4a90865f-26a1-66b3-7ea5-0df26c120248\n"
        'time="t" level=info msg="starting signal loop" '
        "path=/run/x/state/io.containerd.runtime.v2.task/otherns/ctr-7 pid=1\n"
        "partial line without newline id=notyet"
    )
    tracker = LeakTracker(Path("/run/x/c.sock"), tmp_path / "base", log)
    tracker._read_ids(tmp_path / "no-bundles")
    assert {"myid42", sid, "cni-4a90865f-26a1-66b3-7ea5-0df26c120248", "ctr-7"} <= tracker.tokens
    assert "notyet" not in tracker.tokens  # only complete lines are read
    assert "otherns" in tracker.namespaces


def test_leak_tracker_owns_only_its_cgroups(tmp_path: Path) -> None:
    tracker = LeakTracker(Path("/run/x/c.sock"), tmp_path, tmp_path / "log")
    tracker.add_tokens(["t1", "b" * 64, "--rm", "/bin/echo"])
    assert tracker._owns_cgroup("t1")
    assert tracker._owns_cgroup(f"cri-containerd-{'b' * 64}.scope")
    assert not tracker._owns_cgroup("t2")
    assert not tracker._owns_cgroup("x-t2.scope")
    assert "/bin/echo" not in tracker.tokens


CRI_LOG = "\n".join(
    [
        "2026-11-23T21:30:47.1Z stdout F hello-cri",
        "2026-11-23T21:30:47.2Z stderr F oops",
        "2026-11-23T21:30:47.3Z stdout P part one, ",
        "2026-11-23T21:30:47.4Z stdout F part two",
        "2026-11-23T21:30:47.5Z stdout F ",  # an empty line keeps the separator
    ]
)


def test_parse_cri_log() -> None:
    recs = parse_cri_log(CRI_LOG)
    assert [(r.stream, r.partial, r.content) for r in recs][:3] == [
        ("stdout", False, "hello-cri"),
        ("stderr", False, "oops"),
        ("stdout", True, "part one, "),
    ]
    assert cri_log_messages(CRI_LOG, "stdout") == ["hello-cri", "part one, part two", ""]
    assert cri_log_messages(CRI_LOG) == ["hello-cri", "oops", "part one, part two", ""]
    with pytest.raises(ValueError):
        parse_cri_log("not a cri log line\n")


def test_strip_gogoproto() -> None:
    src = """syntax = "proto3";
package runtime.v1;
import "github.com/gogo/protobuf/gogoproto/gogo.proto";
option (gogoproto.goproto_stringer_all) = false;
option go_package = "x";
message A {
  string id = 1 [(gogoproto.customname) = "ID"];
  repeated B b = 2 [(gogoproto.nullable) = false, deprecated = true];
}
"""
    out = strip_gogoproto(src)
    assert "gogo" not in out
    assert 'option go_package = "x";' in out
    assert "string id = 1;" in out
    assert "repeated B b = 2 [deprecated = true];" in out
    assert strip_gogoproto(out) == out


def test_pick_documentation_subnet_avoids_host_networks() -> None:
    host = [ipaddress.IPv4Network("192.0.2.0/24"), ipaddress.IPv4Network("10.0.0.0/8")]
    assert str(pick_documentation_subnet(host)) == "198.51.100.0/24"
    assert pick_documentation_subnet([]) == DOCUMENTATION_SUBNETS[0]
    with pytest.raises(RuntimeError):
        pick_documentation_subnet(list(DOCUMENTATION_SUBNETS))


def test_bridge_network_refuses_routable_subnets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="documentation"):
        BridgeNetwork(tmp_path, tmp_path / "ipam", subnet="10.88.0.0/16")


def test_bridge_conflist(tmp_path: Path) -> None:
    net = BridgeNetwork(tmp_path / "net.d", tmp_path / "ipam", subnet="203.0.113.0/24")
    assert len(net.bridge) <= 15  # IFNAMSIZ - 1
    plugin = net.conflist()["plugins"][0]
    assert plugin["type"] == "bridge"
    assert plugin["isGateway"] is False
    assert plugin["ipMasq"] is False
    assert plugin["ipam"]["ranges"] == [[{"subnet": "203.0.113.0/24"}]]
    assert plugin["ipam"]["dataDir"] == str(tmp_path / "ipam")
    path = net.write()
    assert path.parent == tmp_path / "net.d"
    assert path.name.endswith(".conflist")


def test_kubelet_cgroup_parent() -> None:
    assert kubelet_cgroup_parent("u-1") == "/kubepods/besteffort/podu-1"
    assert kubelet_cgroup_parent("u-1", systemd=True) == "kubepods-besteffort-podu_1.slice"
