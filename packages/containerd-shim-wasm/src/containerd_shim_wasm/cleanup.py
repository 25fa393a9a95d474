"""The ``delete`` action's hook: clean up what a crashed daemon left behind.

Light on purpose: it runs for every container. It kills what is still running in the
container's cgroup, removes the cgroup and the state file, and the socket of a daemon that
died without removing it; the toolkit unmounts the rootfs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

from containerd_shimkit import CleanupRequest

from .state import read_state, remove_state


def remove_dead_socket(bundle: Path) -> None:
    """Unlink the daemon socket named in ``<bundle>/address`` if nothing listens on it.

    A daemon that was killed (SIGKILL, OOM) never unlinks its socket; containerd then runs
    this action, and nothing else would ever remove the file. A live daemon (still serving
    other containers of the pod) accepts the connection and its socket stays.
    """
    try:
        address = (bundle / "address").read_text().strip()
    except OSError:
        return
    path = address.removeprefix("unix://")
    if not path.startswith("/"):
        return  # an abstract socket has no file
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:  # a socket file nobody listens on
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def cleanup(request: CleanupRequest) -> int:
    """Clean up container ``request.id``; return its init pid (0 when unknown)."""
    remove_dead_socket(request.bundle)
    state = read_state(request.bundle)
    if not state:
        return 0
    cgroup_state = state.get("cgroup")
    if cgroup_state:
        from containerd_shimkit.container.cgroups import Cgroup, CgroupNotFoundError

        cgroup = Cgroup.from_state(cgroup_state)
        # Already gone (the daemon deleted it before dying): still remove the state file.
        with contextlib.suppress(CgroupNotFoundError):
            cgroup.kill_all(signal.SIGKILL)
        cgroup.delete()
    remove_state(request.bundle)
    pid = state.get("pid", 0)
    return pid if isinstance(pid, int) else 0
