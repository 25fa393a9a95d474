"""The ``delete`` action's hook: clean up what a crashed daemon left behind.

Light on purpose: it runs for every container. It kills what is still running in the
container's cgroup and removes the cgroup (when the container's Create made it; in a shared
cgroup only the container's init is killed), removes the state file, and the socket of a daemon that
died without removing it; the toolkit unmounts the rootfs.
"""

from __future__ import annotations

import os

from .state import read_state, remove_state

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from _typeshed import StrPath

    from containerd_shimkit import CleanupRequest


def remove_dead_socket(bundle: StrPath) -> None:
    """Unlink the daemon socket named in ``<bundle>/address`` if nothing listens on it.

    A daemon that was killed (SIGKILL, OOM) never unlinks its socket; containerd then runs
    this action, and nothing else would ever remove the file. A live daemon (still serving
    other containers of the pod) accepts the connection and its socket stays.
    """
    try:
        with open(os.path.join(bundle, "address")) as f:
            address = f.read().strip()
    except OSError:
        return
    path = address.removeprefix("unix://")
    if not path.startswith("/"):
        return  # an abstract socket has no file
    import socket

    try:
        probed = os.stat(path).st_ino
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:  # a socket file nobody listens on
        try:
            # Only that file: a start may have bound a new daemon's socket there meanwhile.
            if os.stat(path).st_ino == probed:
                os.unlink(path)
        except FileNotFoundError:
            pass
    except OSError:
        pass
    finally:
        probe.close()


def cleanup(request: CleanupRequest) -> int:
    """Clean up container ``request.id``; return its init pid (0 when unknown).

    Without a state file the daemon deleted the container itself (the normal case, after
    every task): nothing to do, and no socket probe (this runs for every container).
    """
    state = read_state(request.bundle)
    if not state:
        return 0
    remove_dead_socket(request.bundle)
    pid = state.get("pid", 0)
    pid = pid if isinstance(pid, int) else 0
    cgroup_state = state.get("cgroup")
    if cgroup_state:
        import contextlib
        import signal

        from containerd_shimkit.container.cgroups import Cgroup, CgroupNotFoundError

        cgroup = Cgroup.from_state(cgroup_state)
        # A state file of an older shim has no "cgroup_owned": it always made the cgroup.
        if state.get("cgroup_owned", True):
            # Already gone (the daemon deleted it before dying): still remove the state file.
            with contextlib.suppress(CgroupNotFoundError):
                cgroup.kill_all(signal.SIGKILL)
            cgroup.delete()
        elif pid > 0:
            # A cgroup the container shared (``ctr run --cgroup``): kill only its own init
            # (its pid namespace takes the rest), and only while the pid is still in that
            # cgroup, not a recycled pid.
            with contextlib.suppress(OSError):
                if pid in cgroup.pids():
                    os.kill(pid, signal.SIGKILL)
    remove_state(request.bundle)
    return pid
