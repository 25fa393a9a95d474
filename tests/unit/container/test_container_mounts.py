"""Mount option parsing, secure_join, mountinfo and /dev helpers (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from containerd_shimkit.container import _libc as libc
from containerd_shimkit.container import devices, parse_mount_options, spec
from containerd_shimkit.container.rootfs import (
    MountInfo,
    dev_mount_flags,
    parent_mount,
    parse_mountinfo,
    root_propagation_flags,
    secure_join,
    unmount_rootfs,
)


def test_flags_data_and_propagation_are_split() -> None:
    parsed = parse_mount_options(
        ["nosuid", "noexec", "nodev", "ro", "mode=755", "size=65536k", "rprivate"]
    )
    assert parsed.flags == libc.MS_NOSUID | libc.MS_NOEXEC | libc.MS_NODEV | libc.MS_RDONLY
    assert parsed.data == "mode=755,size=65536k"
    assert parsed.propagation == (libc.MS_PRIVATE | libc.MS_REC,)


def test_clearing_options_and_bind() -> None:
    assert parse_mount_options(["ro", "rw"]).flags == 0
    assert parse_mount_options(["nosuid", "suid"]).flags == 0
    assert parse_mount_options(["rbind"]).flags == libc.MS_BIND | libc.MS_REC
    assert parse_mount_options(["bind", "defaults"]).flags == libc.MS_BIND


def test_overlay_options_are_data() -> None:
    options = ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"]
    parsed = parse_mount_options(options)
    assert parsed.flags == 0
    assert parsed.data == ",".join(options)


def test_recursive_variants_and_ignored_extensions() -> None:
    parsed = parse_mount_options(["rro", "rnosuid", "tmpcopyup"])
    assert parsed.flags == libc.MS_RDONLY | libc.MS_NOSUID
    assert parsed.ignored == ("tmpcopyup",)
    assert parsed.data == ""


def test_rootfs_propagation() -> None:
    assert root_propagation_flags("") == libc.MS_SLAVE | libc.MS_REC
    assert root_propagation_flags("rshared") == libc.MS_SHARED | libc.MS_REC
    assert root_propagation_flags("private") == libc.MS_PRIVATE


def test_secure_join_stays_inside_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "escape").symlink_to("/../../../outside")
    (tmp_path / "rel").symlink_to("etc/../etc")
    (tmp_path / "loop").symlink_to("loop")
    assert secure_join(tmp_path, "/etc/escape/x") == tmp_path / "outside" / "x"
    assert secure_join(tmp_path, "../../etc") == tmp_path / "etc"
    assert secure_join(tmp_path, "/rel/passwd") == tmp_path / "etc" / "passwd"
    assert secure_join(tmp_path, "/missing/a/../b") == tmp_path / "missing" / "b"
    with pytest.raises(Exception, match="too many symlinks"):
        secure_join(tmp_path, "/loop")


MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /sys rw,nosuid - sysfs sysfs rw
40 22 0:30 / /tmp/a\040b rw master:3 - tmpfs tmpfs rw
41 40 0:31 / /tmp/a\040b/rootfs rw - overlay overlay rw,lowerdir=/l
42 40 0:32 / /tmp/a\040b/rootfs rw shared:9 - overlay overlay rw,lowerdir=/l
"""


def test_parse_mountinfo_unescapes_and_keeps_optional_fields() -> None:
    infos = parse_mountinfo(MOUNTINFO)
    assert infos[0] == MountInfo("/", "ext4", ("shared:1",))
    assert infos[2].mount_point == "/tmp/a b"
    assert infos[2].optional == ("master:3",)


def test_parent_mount_prefers_longest_and_topmost() -> None:
    infos = parse_mountinfo(MOUNTINFO)
    assert parent_mount("/tmp/a b/rootfs", infos).optional == ("shared:9",)
    assert parent_mount("/tmp/a b/other", infos).mount_point == "/tmp/a b"
    assert parent_mount("/sysx", infos).mount_point == "/"
    assert parent_mount("/sys/kernel", infos).fstype == "sysfs"


def test_dev_mount_flags_only_when_read_only() -> None:
    rw = [spec.Mount("/dev", "tmpfs", "tmpfs", ("nosuid",))]
    ro = [spec.Mount("/dev/", "tmpfs", "tmpfs", ("nosuid", "ro"))]
    assert dev_mount_flags(rw) is None
    assert dev_mount_flags(ro) == libc.MS_NOSUID | libc.MS_RDONLY


def test_needs_setup_dev_unless_dev_is_bound() -> None:
    assert devices.needs_setup_dev([spec.Mount("/dev", "tmpfs", "tmpfs")])
    assert not devices.needs_setup_dev([spec.Mount("/dev", "bind", "/dev", ("rbind",))])
    assert not devices.needs_setup_dev([spec.Mount("/dev", "", "/dev", ("bind",))])


def test_spec_devices_override_defaults() -> None:
    null = spec.Device("/dev/null", "c", 1, 3, 0o600)
    merged = devices.merge_devices([null, spec.Device("/dev/fuse", "c", 10, 229)])
    paths = [d.path for d in merged]
    assert paths.count("/dev/null") == 1 and null in merged
    assert {"/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"} <= set(paths)


def test_dev_symlinks_and_ptmx(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "ptmx").touch()
    devices.setup_dev_symlinks(tmp_path)
    devices.setup_dev_symlinks(tmp_path)  # idempotent
    devices.setup_ptmx(tmp_path)
    assert os.readlink(tmp_path / "dev" / "fd") == "/proc/self/fd"
    assert os.readlink(tmp_path / "dev" / "stderr") == "/proc/self/fd/2"
    assert os.readlink(tmp_path / "dev" / "ptmx") == "pts/ptmx"


def test_unmount_rootfs_is_idempotent(tmp_path: Path) -> None:
    unmount_rootfs(tmp_path)  # not a mount point
    unmount_rootfs(tmp_path / "missing")


def test_libc_errors_name_the_call(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"mount\('none', '.*missing', 'tmpfs', 0, None\) failed"):
        libc.mount("none", tmp_path / "missing", "tmpfs", 0)
