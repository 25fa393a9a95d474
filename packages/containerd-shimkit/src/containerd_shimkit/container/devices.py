"""Device nodes and the standard ``/dev`` symlinks in the container's rootfs.

Runs before pivot_root, with paths under the host path of the rootfs, as runc's
``createDevices``/``setupDevSymlinks``/``setupPtmx`` do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from . import _libc
from .spec import Device, Mount, step

logger = logging.getLogger(__name__)

#: The nodes every container gets (runc's and youki's default devices).
DEFAULT_DEVICES: tuple[Device, ...] = (
    Device("/dev/null", "c", 1, 3),
    Device("/dev/zero", "c", 1, 5),
    Device("/dev/full", "c", 1, 7),
    Device("/dev/random", "c", 1, 8),
    Device("/dev/urandom", "c", 1, 9),
    Device("/dev/tty", "c", 5, 0),
)

_DEV_SYMLINKS = (
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
)

_TYPE_BITS = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def needs_setup_dev(mounts: Sequence[Mount]) -> bool:
    """False when ``/dev`` is bind-mounted from elsewhere (runc's ``needsSetupDev``)."""
    for m in mounts:
        is_bind = m.type == "bind" or "bind" in m.options or "rbind" in m.options
        if is_bind and os.path.normpath(m.destination) == "/dev":
            return False
    return True


def merge_devices(extra: Sequence[Device]) -> list[Device]:
    """The default devices plus ``extra``; an ``extra`` device with the same path wins."""
    paths = {d.path for d in extra}
    return [d for d in DEFAULT_DEVICES if d.path not in paths] + list(extra)


def _mknod(dest: Path, device: Device) -> None:
    mode = device.file_mode & 0o7777
    os.mknod(dest, mode | _TYPE_BITS[device.type], os.makedev(device.major, device.minor))
    # mknod's mode is filtered by the umask; set the exact mode afterwards.
    os.chmod(dest, mode)
    os.chown(dest, device.uid, device.gid)


def _bind_host_node(dest: Path, device: Device) -> None:
    # Without CAP_MKNOD (or in a user namespace) the host's node is bind-mounted instead.
    dest.touch(exist_ok=True)
    _libc.mount(device.path, dest, None, _libc.MS_BIND)


def create_device(rootfs: Path, device: Device) -> None:
    """Create ``device`` under ``rootfs``; an existing node is kept (runc does the same)."""
    dest = rootfs / device.path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _mknod(dest, device)
    except FileExistsError:
        pass
    except PermissionError:
        logger.debug("mknod %s refused, bind-mounting the host node", device.path)
        _bind_host_node(dest, device)


def create_devices(rootfs: Path, devices: Sequence[Device]) -> None:
    """Create every device node in ``devices`` under ``rootfs``."""
    for device in devices:
        with step(f"creating device {device.path}"):
            create_device(rootfs, device)


def setup_dev_symlinks(rootfs: Path) -> None:
    """``/dev/fd``, ``/dev/std{in,out,err}`` (and ``/dev/core`` when ``/proc/kcore`` exists)."""
    links = list(_DEV_SYMLINKS)
    if os.path.exists("/proc/kcore"):
        links.append(("/proc/kcore", "core"))
    for target, name in links:
        with contextlib.suppress(FileExistsError):
            os.symlink(target, rootfs / "dev" / name)


def setup_ptmx(rootfs: Path) -> None:
    """Point ``/dev/ptmx`` at the container's own devpts instance (``pts/ptmx``)."""
    ptmx = rootfs / "dev" / "ptmx"
    ptmx.unlink(missing_ok=True)
    os.symlink("pts/ptmx", ptmx)


def setup_dev(rootfs: Path, devices: Sequence[Device]) -> None:
    """Populate the container's ``/dev``: device nodes, symlinks and ``ptmx``."""
    create_devices(rootfs, merge_devices(devices))
    with step("creating /dev symlinks"):
        setup_dev_symlinks(rootfs)
        setup_ptmx(rootfs)
