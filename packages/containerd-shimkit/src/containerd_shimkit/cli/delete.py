"""The ``delete`` action: clean up after a container whose daemon is gone (or done).

containerd runs it after every task, clean or crashed, with cwd = the bundle and a 5 s
budget, and reads a binary ``DeleteResponse`` from stdout. It must be idempotent and cheap,
so it imports no protobuf runtime. Problems go to stderr, which containerd logs as
"cleanup warnings"; the exit status stays 0 so containerd still removes the bundle.
"""

from __future__ import annotations

import os
import sys

from .flags import Flags
from .wire import encode_delete_response

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~6 ms here)
if TYPE_CHECKING:
    from collections.abc import Callable

#: What containerd reports for a container whose shim is gone: 128 + SIGKILL, as runc.
DEAD_SHIM_EXIT_STATUS = 137


class CleanupRequest:
    """What a cleanup hook is told about the container to clean up.

    ``bundle`` is the bundle directory's path as a string (no ``pathlib`` on this path).
    """

    __slots__ = ("bundle", "id", "namespace")

    def __init__(self, id: str, namespace: str, bundle: str) -> None:
        self.id = id
        self.namespace = namespace
        self.bundle = bundle

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CleanupRequest) and (
            (self.id, self.namespace, self.bundle) == (other.id, other.namespace, other.bundle)
        )

    def __repr__(self) -> str:
        return f"CleanupRequest({self.id!r}, {self.namespace!r}, {self.bundle!r})"


if TYPE_CHECKING:
    from typing import TypeAlias

    #: A shim's extra cleanup (kill leftover processes, remove cgroups); returns the pid.
    CleanupHook: TypeAlias = Callable[[CleanupRequest], int]


def __getattr__(name: str) -> object:
    # ``CleanupHook`` at run time, built on first use: collections.abc is not free either.
    if name == "CleanupHook":
        from collections.abc import Callable

        return Callable[[CleanupRequest], int]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def unmount_rootfs(bundle: str) -> None:
    """Unmount ``<bundle>/rootfs`` if something is still mounted there."""
    target = os.path.realpath(os.path.join(bundle, "rootfs"))
    with open("/proc/self/mountinfo") as f:
        mounted = any(line.split()[4] == target for line in f)
    if mounted:
        from pathlib import Path

        from ..container import unmount_rootfs as unmount

        unmount(Path(target))


def main_delete(flags: Flags, cleanup: CleanupHook | None) -> int:
    """Run the ``delete`` action; write the DeleteResponse to stdout."""
    bundle = flags.bundle or os.getcwd()
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
