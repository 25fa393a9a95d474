"""The ``delete`` action's hook: clean up what a crashed daemon left behind.

Light on purpose: it runs for every container. It kills what is still running in the
container's cgroup, removes the cgroup and the state file; the toolkit unmounts the rootfs.
"""

from __future__ import annotations

import signal

from containerd_shimkit import CleanupRequest

from .state import read_state, remove_state


def cleanup(request: CleanupRequest) -> int:
    """Clean up container ``request.id``; return its init pid (0 when unknown)."""
    state = read_state(request.bundle)
    if not state:
        return 0
    cgroup_state = state.get("cgroup")
    if cgroup_state:
        from containerd_shimkit.container.cgroups import Cgroup

        cgroup = Cgroup.from_state(cgroup_state)
        cgroup.kill_all(signal.SIGKILL)
        cgroup.delete()
    remove_state(request.bundle)
    pid = state.get("pid", 0)
    return pid if isinstance(pid, int) else 0
