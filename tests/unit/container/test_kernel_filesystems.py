"""Hiding the kernel's filesystems from an in-process workload (``hide_kernel_filesystems``).

The choice of mounts (:func:`kernel_mount_points`) is tested on mountinfo text; the
detaching itself in a private mount namespace of a forked child (root only).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from containerd_shimkit.container import KERNEL_FILESYSTEMS, _libc, hide_kernel_filesystems
from containerd_shimkit.container.rootfs import kernel_mount_points, parse_mountinfo
from tests.support.forked import result_in_child


def _line(mount_id: int, parent: int, point: str, fstype: str, source: str = "none") -> str:
    return f"{mount_id} {parent} 0:{mount_id} / {point} rw,relatime - {fstype} {source} rw"


#: A wasm container's mount table after pivot_root, with what users may add to it.
CONTAINER_MOUNTINFO = "\n".join(
    [
        _line(100, 99, "/", "overlay", "overlay"),
        _line(101, 100, "/proc", "proc", "proc"),
        _line(102, 100, "/dev", "tmpfs", "tmpfs"),
        _line(103, 102, "/dev/pts", "devpts", "devpts"),
        _line(104, 102, "/dev/shm", "tmpfs", "shm"),
        _line(105, 102, "/dev/mqueue", "mqueue", "mqueue"),
        _line(106, 100, "/sys", "sysfs", "sysfs"),
        _line(107, 106, "/sys/fs/cgroup", "cgroup2", "cgroup"),
        _line(108, 101, "/proc/kcore", "tmpfs", "tmpfs"),  # a masked path
        _line(109, 101, "/proc/acpi", "tmpfs", "tmpfs"),
        _line(110, 101, "/proc/sys", "proc", "proc"),  # a read-only path
        _line(111, 100, "/data", "ext4", "/dev/sda1"),  # a user volume
        _line(112, 100, "/host\\040proc", "proc", "proc"),  # bind of the host's /proc
        _line(113, 112, "/host\\040proc/sys/fs/binfmt_misc", "binfmt_misc", "binfmt_misc"),
        _line(114, 111, "/data/debug", "debugfs", "debugfs"),  # under a user volume
        _line(115, 100, "/stacked", "proc", "proc"),
        _line(116, 115, "/stacked", "tmpfs", "tmpfs"),  # hides the proc below, not enough
        _line(117, 100, "/netns", "nsfs", "nsfs"),
        _line(118, 100, "/etc/hostname", "ext4", "/dev/sda1"),
    ]
)


def test_only_the_outermost_kernel_mounts_are_chosen() -> None:
    points = kernel_mount_points(parse_mountinfo(CONTAINER_MOUNTINFO))
    assert points == ["/data/debug", "/host proc", "/netns", "/proc", "/stacked", "/sys"]


def test_data_devices_and_ipc_filesystems_are_kept() -> None:
    infos = parse_mountinfo(CONTAINER_MOUNTINFO)
    kept = {i.fstype for i in infos} - KERNEL_FILESYSTEMS
    assert kept == {"overlay", "tmpfs", "devpts", "mqueue", "ext4"}
    assert not {"tmpfs", "devpts", "mqueue", "hugetlbfs", "overlay"} & KERNEL_FILESYSTEMS
    assert {"proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "bpf"} <= (
        KERNEL_FILESYSTEMS
    )


def test_nothing_to_detach_without_kernel_filesystems() -> None:
    text = "\n".join([_line(1, 0, "/", "overlay"), _line(2, 1, "/dev", "tmpfs")])
    assert kernel_mount_points(parse_mountinfo(text)) == []


def test_a_prefix_is_not_a_parent() -> None:
    # /procfoo is not under /proc: both must be detached.
    text = "\n".join([_line(2, 1, "/proc", "proc"), _line(3, 1, "/procfoo", "sysfs")])
    assert kernel_mount_points(parse_mountinfo(text)) == ["/proc", "/procfoo"]


# --- in a private mount namespace --------------------------------------------------------


def _in_private_mount_namespace(work: Callable[[], object]) -> object:
    """Run ``work`` in a forked child with a private mount namespace; its JSON result."""

    def privately() -> object:
        _libc.unshare(_libc.CLONE_NEWNS)
        # Nothing done here may propagate to the host's mounts.
        _libc.mount(None, "/", None, _libc.MS_REC | _libc.MS_PRIVATE)
        return work()

    return result_in_child(privately)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces)")
def test_every_kernel_filesystem_is_detached_and_nothing_else(tmp_path: Path) -> None:
    base = tmp_path / "t"
    base.mkdir()

    def work() -> object:
        _libc.mount("tmpfs", base, "tmpfs", 0)
        for name in ("proc", "sys", "stack", "data"):
            (base / name).mkdir()
        _libc.mount("proc", base / "proc", "proc", 0)
        _libc.mount("sysfs", base / "sys", "sysfs", 0)
        _libc.mount("proc", base / "stack", "proc", 0)
        _libc.mount("tmpfs", base / "stack", "tmpfs", 0)  # on top of the proc
        _libc.mount("tmpfs", base / "data", "tmpfs", 0)
        (base / "data" / "file").write_text("kept")
        fd = os.open("/proc/self/mountinfo", os.O_RDONLY)  # /proc goes too
        detached = hide_kernel_filesystems()
        text = b""
        while chunk := os.read(fd, 65536):
            text += chunk
        left = [(i.mount_point, i.fstype) for i in parse_mountinfo(text.decode())]
        return {
            "detached": detached,
            "left": left,
            "proc_self": os.path.exists("/proc/self"),
            "data": (base / "data" / "file").read_text(),
        }

    result = _in_private_mount_namespace(work)
    assert isinstance(result, dict)
    left = [tuple(x) for x in result["left"]]
    assert not [entry for entry in left if entry[1] in KERNEL_FILESYSTEMS], left
    assert (str(base), "tmpfs") in left and (str(base / "data"), "tmpfs") in left
    # The tmpfs over the stacked proc went first, then the proc under it.
    assert result["detached"].count(str(base / "stack")) == 2
    assert "/proc" in result["detached"] and str(base / "proc") in result["detached"]
    assert result["proc_self"] is False
    assert result["data"] == "kept"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces)")
def test_a_shadowed_kernel_mount_is_left_but_one_reachable_under_it_is_not(
    tmp_path: Path,
) -> None:
    base = tmp_path / "t"
    base.mkdir()
    shadowed, reachable = base / "a" / "b", base / "a" / "b" / "c"

    def work() -> object:
        _libc.mount("tmpfs", base, "tmpfs", 0)
        shadowed.mkdir(parents=True)
        _libc.mount("proc", shadowed, "proc", 0)
        _libc.mount("tmpfs", base / "a", "tmpfs", 0)  # /a/b (the proc) is out of reach now
        reachable.mkdir(parents=True)  # in the new tmpfs, at the same path as a proc dir
        _libc.mount("sysfs", reachable, "sysfs", 0)
        fd = os.open("/proc/self/mountinfo", os.O_RDONLY)
        detached = hide_kernel_filesystems()
        text = b""
        while chunk := os.read(fd, 65536):
            text += chunk
        left = [(i.mount_point, i.fstype) for i in parse_mountinfo(text.decode())]
        return {"detached": detached, "left": left, "ls": sorted(os.listdir(reachable))}

    result = _in_private_mount_namespace(work)
    assert isinstance(result, dict)
    left = [tuple(x) for x in result["left"]]
    assert [e for e in left if e[1] in KERNEL_FILESYSTEMS] == [(str(shadowed), "proc")]
    assert str(reachable) in result["detached"]
    assert result["ls"] == []
