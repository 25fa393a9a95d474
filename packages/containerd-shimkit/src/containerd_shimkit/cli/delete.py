"""The ``delete`` action: clean up after a container whose daemon is gone (or done).

containerd runs it after every task, clean or crashed, with cwd = the bundle and a 5 s
budget, and reads a binary ``DeleteResponse`` from stdout. It must be idempotent and cheap,
so it imports no protobuf runtime. Problems go to stderr, which containerd logs as
"cleanup warnings"; the exit status stays 0 so containerd still removes the bundle.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .flags import Flags
from .wire import encode_delete_response

#: What containerd reports for a container whose shim is gone: 128 + SIGKILL, as runc.
DEAD_SHIM_EXIT_STATUS = 137


@dataclass(frozen=True)
class CleanupRequest:
    """What a cleanup hook is told about the container to clean up."""

    id: str
    namespace: str
    bundle: Path


#: A shim's extra cleanup (kill leftover processes, remove cgroups); returns the init pid.
CleanupHook = Callable[[CleanupRequest], int]


def unmount_rootfs(bundle: Path) -> None:
    """Unmount ``<bundle>/rootfs`` if something is still mounted there."""
    target = os.path.realpath(bundle / "rootfs")
    with open("/proc/self/mountinfo") as f:
        mounted = any(line.split()[4] == target for line in f)
    if mounted:
        from ..container import unmount_rootfs as unmount

        unmount(Path(target))


def main_delete(flags: Flags, cleanup: CleanupHook | None) -> int:
    """Run the ``delete`` action; write the DeleteResponse to stdout."""
    bundle = Path(flags.bundle or os.getcwd())
    pid = 0
    steps: list[Callable[[], object]] = []
    if cleanup is not None:
        request = CleanupRequest(flags.id, flags.namespace, bundle)
        steps.append(lambda: cleanup(request))
    steps.append(lambda: unmount_rootfs(bundle))
    for step in steps:
        try:
            result = step()
        except Exception as exc:
            sys.stderr.write(f"cleanup of {flags.id}: {exc}\n")
            continue
        if isinstance(result, int):
            pid = result
    sys.stdout.buffer.write(encode_delete_response(pid, DEAD_SHIM_EXIT_STATUS))
    sys.stdout.flush()
    return 0
