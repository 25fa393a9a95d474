"""Layout detection, cgroupsPath -> directories (cgroupfs and systemd drivers), saved state."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from containerd_shimkit.container import cgroups
from containerd_shimkit.container.cgroups import (
    UNIFIED,
    Cgroup,
    CgroupError,
    CgroupV1,
    CgroupV2,
    HostLayout,
    clean_path,
    detect_layout,
    expand_slice,
    is_systemd_cgroups_path,
    parse_mountinfo,
    parse_proc_cgroup,
    scan_layout,
    systemd_path,
)

from .conftest import FakeTree

# --- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("", ""),
        ("/default/ctr1", "/default/ctr1"),
        ("/k8s.io//abc/", "/k8s.io/abc"),
        ("/../../etc", "/etc"),
        ("//twice", "/twice"),
        ("rel/a", "rel/a"),
        ("../../x", "x"),
        ("a/../..", "."),
        ("./a/./b", "a/b"),
    ],
)
def test_clean_path_mirrors_runc(raw: str, cleaned: str) -> None:
    assert clean_path(raw) == cleaned


@pytest.mark.parametrize(
    ("slice_name", "path"),
    [
        ("system.slice", "/system.slice"),
        ("-.slice", "/"),
        ("kubepods.slice", "/kubepods.slice"),
        (
            "kubepods-besteffort-pod123.slice",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod123.slice",
        ),
        ("test-a-b.slice", "/test.slice/test-a.slice/test-a-b.slice"),
    ],
)
def test_expand_slice(slice_name: str, path: str) -> None:
    assert expand_slice(slice_name) == path


@pytest.mark.parametrize(
    "bad", ["", ".slice", "foo", "a/b.slice", "test--a.slice", "-test.slice", "test-.slice"]
)
def test_expand_slice_rejects(bad: str) -> None:
    with pytest.raises(CgroupError, match="invalid slice name") as info:
        expand_slice(bad)
    assert info.value.errno == errno.EINVAL


def test_systemd_path_cri_form() -> None:
    got = systemd_path("kubepods-besteffort-pod123.slice:cri-containerd:abc", "abc")
    assert got == (
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod123.slice"
        "/cri-containerd-abc.scope"
    )


def test_systemd_path_defaults() -> None:
    assert systemd_path("", "ctr1") == "/system.slice/runc-ctr1.scope"
    assert systemd_path(":docker:x", "x") == "/system.slice/docker-x.scope"
    assert systemd_path("system.slice::x", "x") == "/system.slice/-x.scope"  # as runc
    assert systemd_path("user.slice:p:my-sub.slice", "x") == "/user.slice/my-sub.slice"


@pytest.mark.parametrize(
    ("path", "systemd"),
    [
        ("kubepods-besteffort-pod1_2.slice:cri-containerd:abc", True),  # CRI, .slice parent
        (":cri-containerd:abc", True),  # empty slice: system.slice
        ("/kubepods/besteffort/pod12/abc", False),  # CRI, cgroupfs parent
        ("/k8s.io/abc", False),
        ("", False),
        ("abc", False),
        ("x:p:n", False),  # not a slice
        (".slice:p:n", False),
        ("a.slice:p:", False),
        ("a.slice:p:n:x", False),
        ("/a.slice:p:n", False),
    ],
)
def test_is_systemd_cgroups_path(path: str, systemd: bool) -> None:
    assert is_systemd_cgroups_path(path) is systemd


@pytest.mark.parametrize("bad", ["/k8s.io/abc", "a:b", "a:b:c:d", "system.slice:p:", "x:p:n"])
def test_systemd_path_rejects(bad: str) -> None:
    with pytest.raises(CgroupError) as info:
        systemd_path(bad, "id")
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value, OSError)


def test_parse_proc_cgroup() -> None:
    own = parse_proc_cgroup(
        "9:name=systemd:/\n4:memory:/process_api/x\n2:cpu,cpuacct:/a\n0::/user.slice\n"
    )
    assert own == {
        "name=systemd": "/",
        "memory": "/process_api/x",
        "cpu": "/a",
        "cpuacct": "/a",
        UNIFIED: "/user.slice",
    }


MOUNTINFO_HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:40 / /other/cgroup rw - cgroup cgroup rw,pids
"""


def test_parse_mountinfo_hybrid() -> None:
    root = Path("/sys/fs/cgroup")
    layout = parse_mountinfo(MOUNTINFO_HYBRID, root)
    assert layout == HostLayout(
        "hybrid",
        root,
        {
            "cpu": root / "cpu,cpuacct",
            "cpuacct": root / "cpu,cpuacct",
            "memory": root / "memory",
            "name=systemd": root / "systemd",
        },
        root / "unified",
    )


def test_parse_mountinfo_v2_and_none() -> None:
    text = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
    root = Path("/sys/fs/cgroup")
    assert parse_mountinfo(text, root) == HostLayout("v2", root, {}, root)
    assert parse_mountinfo(text, Path("/elsewhere")) is None
    assert parse_mountinfo("garbage\n\n", root) is None


def test_parse_mountinfo_unescapes() -> None:
    text = "32 31 0:29 / /my\\040root/memory rw - cgroup cgroup rw,memory\n"
    layout = parse_mountinfo(text, Path("/my root"))
    assert layout is not None
    assert layout.v1 == {"memory": Path("/my root/memory")}


def test_detect_layout_on_this_host_is_consistent() -> None:
    # Whatever this machine is, detection must produce a usable description.
    layout = detect_layout(Path("/sys/fs/cgroup"))
    assert layout.mode in ("v1", "hybrid", "v2")
    if layout.mode == "v2":
        assert layout.unified == Path("/sys/fs/cgroup")
    else:
        assert layout.v1


# --- fake trees --------------------------------------------------------------------------------


def test_scan_layout_modes(v1_tree: FakeTree, tmp_path: Path) -> None:
    layout = scan_layout(v1_tree.root)
    assert layout.mode == "v1"
    assert layout.unified is None
    assert layout.v1["name=systemd"] == v1_tree.root / "systemd"
    assert layout.v1["memory"] == v1_tree.root / "memory"

    hybrid = FakeTree(tmp_path / "h", "hybrid")
    assert scan_layout(hybrid.root).mode == "hybrid"
    assert scan_layout(hybrid.root).unified == hybrid.root / UNIFIED

    v2 = FakeTree(tmp_path / "v2", "v2")
    assert scan_layout(v2.root) == HostLayout("v2", v2.root, {}, v2.root)


def test_scan_layout_comounted_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "cpu,cpuacct").mkdir(parents=True)
    (root / "cpu,cpuacct" / "cgroup.procs").write_text("")
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    layout = scan_layout(root)
    assert layout.v1 == {"cpu": root / "cpu,cpuacct", "cpuacct": root / "cpu,cpuacct"}


def test_scan_layout_empty(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="no cgroup hierarchy") as info:
        scan_layout(tmp_path)
    assert info.value.errno == errno.ENOENT


def test_v1_absolute_path(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/default/ctr1", "ctr1", systemd=False, root=v1_tree.root)
    assert isinstance(cg, CgroupV1)
    assert cg.mode == "v1"
    r = v1_tree.root
    names = ("blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids")
    expected = {name: r / name / "default" / "ctr1" for name in names}
    expected["name=systemd"] = r / "systemd" / "default" / "ctr1"
    assert cg.paths == expected


def test_hybrid_adds_unified_dir(hybrid_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/k8s.io/abc", "abc", systemd=False, root=hybrid_tree.root)
    assert cg.mode == "hybrid"
    assert isinstance(cg, CgroupV1)
    assert cg.paths[UNIFIED] == hybrid_tree.root / "unified" / "k8s.io" / "abc"
    assert cg.paths["memory"] == hybrid_tree.root / "memory" / "k8s.io" / "abc"


def test_v2_absolute_path(v2_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/default/ctr1", "ctr1", systemd=False, root=v2_tree.root)
    assert isinstance(cg, CgroupV2)
    assert cg.paths == {UNIFIED: v2_tree.root / "default" / "ctr1"}


def test_relative_and_empty_paths_follow_own_cgroup(
    hybrid_tree: FakeTree, v2_tree: FakeTree, own_cgroup: Path, tmp_path: Path
) -> None:
    # v1: relative to our own cgroup in each hierarchy (runc GetOwnCgroupPath).
    r = hybrid_tree.root
    cg = Cgroup.for_container("", "ctr1", systemd=False, root=r)
    assert cg.paths["memory"] == r / "memory/process_api/abc/ctr1"
    assert cg.paths["pids"] == r / "pids/ctr1"
    assert cg.paths[UNIFIED] == r / "unified/user.slice/session-1.scope/ctr1"
    cg = Cgroup.for_container("sub/../../ctr2", "x", systemd=False, root=r)
    assert cg.paths["memory"] == r / "memory/process_api/abc/ctr2"
    # v2: relative to the *parent* of our own cgroup (runc fs2 defaultDirPath).
    cg = Cgroup.for_container("pod/ctr3", "ctr3", systemd=False, root=v2_tree.root)
    assert cg.paths[UNIFIED] == v2_tree.root / "user.slice/pod/ctr3"


def test_systemd_driver_paths(hybrid_tree: FakeTree, v2_tree: FakeTree) -> None:
    spec = "kubepods-besteffort-pod123.slice:cri-containerd:abc"
    unit = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod123.slice"
    unit += "/cri-containerd-abc.scope"
    cg = Cgroup.for_container(spec, "abc", systemd=True, root=v2_tree.root)
    assert cg.paths == {UNIFIED: v2_tree.root / unit}
    cg = Cgroup.for_container(spec, "abc", systemd=True, root=hybrid_tree.root)
    assert cg.paths["name=systemd"] == hybrid_tree.root / "systemd" / unit
    assert cg.paths["cpu"] == hybrid_tree.root / "cpu" / unit
    assert cg.paths[UNIFIED] == hybrid_tree.root / "unified" / unit


def test_systemd_driver_rejects_cgroupfs_path(v2_tree: FakeTree) -> None:
    with pytest.raises(CgroupError, match="slice:prefix:name"):
        Cgroup.for_container("/k8s.io/abc", "abc", systemd=True, root=v2_tree.root)


@pytest.mark.parametrize("path", ["/", "/..", "."])
def test_root_cgroup_is_refused(v1_tree: FakeTree, path: str) -> None:
    with pytest.raises(CgroupError) as info:
        Cgroup.for_container(path, "x", systemd=False, root=v1_tree.root)
    assert info.value.errno == errno.EINVAL


def test_state_round_trip(hybrid_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/default/ctr1", "ctr1", systemd=False, root=hybrid_tree.root)
    state = json.loads(json.dumps(cg.to_state()))
    again = Cgroup.from_state(state)
    assert type(again) is CgroupV1
    assert again.mode == "hybrid"
    assert again.paths == cg.paths
    assert again.root == hybrid_tree.root


def test_state_v2_round_trip(v2_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/a/b", "b", systemd=False, root=v2_tree.root)
    again = Cgroup.from_state(json.loads(json.dumps(cg.to_state())))
    assert type(again) is CgroupV2
    assert again.paths == cg.paths


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"version": 2, "mode": "v2", "root": "/sys/fs/cgroup", "paths": {"unified": "/x"}},
        {"version": 1, "mode": "v3", "root": "/sys/fs/cgroup", "paths": {"unified": "/x"}},
        {"version": 1, "mode": "v2", "root": "/sys/fs/cgroup", "paths": {}},
        {"version": 1, "mode": "v2", "root": "/sys/fs/cgroup", "paths": {"unified": "/etc"}},
        {
            "version": 1,
            "mode": "v2",
            "root": "/sys/fs/cgroup",
            "paths": {"unified": "/sys/fs/cgroup/../../etc"},
        },
        {"version": 1, "mode": "v2", "root": "/sys/fs/cgroup", "paths": None},
    ],
)
def test_state_rejects_bad_input(state: dict[str, object]) -> None:
    with pytest.raises(CgroupError):
        Cgroup.from_state(state)


def test_detection_is_cached(v1_tree: FakeTree) -> None:
    first = detect_layout(v1_tree.root)
    (v1_tree.root / "extra").mkdir()
    (v1_tree.root / "extra" / "cgroup.procs").write_text("")
    assert detect_layout(v1_tree.root) is first
    cgroups.detect_layout.cache_clear()
    assert "name=extra" in detect_layout(v1_tree.root).v1
