"""Linux containers: namespaces, rootfs, devices, user, capabilities and seccomp.

This package knows nothing of the Task service or ttrpc. It turns an OCI bundle into a
running container init process, youki-style, for a runtime that then runs a workload in
it (a wasm engine in-process, or a native binary through execve).

Typical use (the daemon mounts the rootfs, a single-threaded zygote spawns the init)::

    from containerd_shimkit.container import (
        ContainerSetup, channel_pair, exec_native, mount_rootfs, recv_message,
        resolve_rootfs, send_message, spawn_init,
    )

    class Native:
        def prepare(self, setup): pass
        def run(self, setup): exec_native(setup)

    rootfs = resolve_rootfs(bundle, spec)
    mount_rootfs([("overlay", "overlay", ["lowerdir=…", "upperdir=…", "workdir=…"])], rootfs)
    daemon_end, init_end = channel_pair()
    pid = spawn_init(ContainerSetup("c1", bundle, spec, rootfs), Native(), init_end.fileno())
    init_end.close()
    assert recv_message(daemon_end.fileno()) == {"ready": True}     # Create done
    send_message(daemon_end.fileno(), {"start": True})              # Start
    assert recv_message(daemon_end.fileno()) == {"started": True}

The protocol on the sync channel and the exact order of the setup steps are documented in
:mod:`containerd_shimkit.container.init`.
"""

from __future__ import annotations

from .init import (
    CgroupJoiner,
    ContainerSetup,
    Workload,
    channel_pair,
    decode_message,
    encode_message,
    exec_native,
    is_native_executable,
    recv_message,
    resolve_in_path,
    send_message,
    spawn_init,
)
from .rootfs import (
    KERNEL_FILESYSTEMS,
    hide_kernel_filesystems,
    mount_rootfs,
    parse_mount_options,
    unmount_rootfs,
)
from .spec import ContainerError, resolve_rootfs

__all__ = [
    "KERNEL_FILESYSTEMS",
    "CgroupJoiner",
    "ContainerError",
    "ContainerSetup",
    "Workload",
    "channel_pair",
    "decode_message",
    "encode_message",
    "exec_native",
    "hide_kernel_filesystems",
    "is_native_executable",
    "mount_rootfs",
    "parse_mount_options",
    "recv_message",
    "resolve_in_path",
    "resolve_rootfs",
    "send_message",
    "spawn_init",
    "unmount_rootfs",
]
