"""Fixtures for running real containers through ``containerd_shimkit.container``.

Every test gets a busybox rootfs mounted as an overlay (lower layer shared by the session),
a harness that spawns containers with the test process in the zygote's role, and cleanup:
container processes are killed and reaped, the overlay is unmounted.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroup_helpers import MakeCgroup, cgroup_maker
from ctrlib_harness import BUSYBOX, Harness

from containerd_shimkit.container import _libc, mount_rootfs, unmount_rootfs


@pytest.fixture(scope="session")
def busybox_lower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem (the overlay's lower layer), built once."""
    if not BUSYBOX.exists():
        pytest.skip("needs /bin/busybox (Debian busybox-static)")
    lower = tmp_path_factory.mktemp("ctrlib-lower")
    lower.chmod(0o755)
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "data", "root", "run"):
        (lower / d).mkdir(mode=0o755)
    (lower / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, lower / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            (lower / "bin" / applet).symlink_to("busybox")
    (lower / "etc" / "secret").write_text("top secret\n")
    return lower


@pytest.fixture
def overlay(tmp_path: Path, busybox_lower: Path) -> Iterator[dict[str, Path]]:
    """The busybox rootfs mounted as an overlay at ``<bundle>/rootfs``."""
    bundle = tmp_path / "bundle"
    dirs = {"lower": busybox_lower, "upper": tmp_path / "upper", "work": tmp_path / "work"}
    for name in ("upper", "work"):
        dirs[name].mkdir(mode=0o755)
    dirs["bundle"] = bundle
    dirs["rootfs"] = bundle / "rootfs"
    options = [f"lowerdir={busybox_lower}", f"upperdir={dirs['upper']}", f"workdir={dirs['work']}"]
    mount_rootfs([("overlay", "overlay", options)], dirs["rootfs"])
    try:
        yield dirs
    finally:
        unmount_rootfs(dirs["rootfs"])


@pytest.fixture
def harness(overlay: dict[str, Path]) -> Iterator[Harness]:
    """A :class:`Harness`; the test process is made a child subreaper while it runs."""
    _libc.prctl(_libc.PR_SET_CHILD_SUBREAPER, 1)
    h = Harness(overlay["bundle"])
    try:
        yield h
    finally:
        h.cleanup()
        _libc.prctl(_libc.PR_SET_CHILD_SUBREAPER, 0)


@pytest.fixture
def make_cgroup() -> Iterator[MakeCgroup]:
    """Makes real cgroups (root only) and removes them, with their processes, afterwards."""
    yield from cgroup_maker()
