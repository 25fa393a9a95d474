"""Reaping children: one ``waitpid(-1)`` loop, exit statuses dispatched by pid.

The daemon is a child subreaper, so every container process that outlives its parent is
re-parented to it. A single SIGCHLD handler reaps them all (a per-pid waiter would race with
it); statuses that arrive before anyone asked for that pid are kept, because a container can
exit before its creator has even learned its pid.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from datetime import UTC, datetime

from .task.instance import ExitStatus

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
#: How many unclaimed statuses to keep (helpers and crashed setups are never claimed).
UNCLAIMED_LIMIT = 1024


def set_child_subreaper() -> None:
    """Make orphaned descendants re-parent to this process (``PR_SET_CHILD_SUBREAPER``)."""
    # CDLL(None): the C library already loaded. find_library("c") would run `ldconfig -p`
    # in a subprocess (~10 ms on every daemon start).
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(err)}")


def exit_code(wait_status: int) -> int:
    """An exit code as containerd reports it: the code, or 128 + the killing signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Reaper:
    """Reaps every child of this process and hands out exit statuses by pid."""

    def __init__(self) -> None:
        self._waiters: dict[int, list[asyncio.Future[ExitStatus]]] = {}
        self._unclaimed: dict[int, ExitStatus] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle SIGCHLD on ``loop`` (and reap anything that already exited)."""
        self._loop = loop
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()

    def uninstall(self) -> None:
        """Stop handling SIGCHLD."""
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._loop = None

    def reap(self) -> None:
        """Collect every exited child without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._deliver(pid, ExitStatus(exit_code(status), datetime.now(UTC)))

    def _deliver(self, pid: int, status: ExitStatus) -> None:
        waiters = self._waiters.pop(pid, None)
        if not waiters:
            if len(self._unclaimed) >= UNCLAIMED_LIMIT:
                self._unclaimed.pop(next(iter(self._unclaimed)))
            self._unclaimed[pid] = status
            return
        for future in waiters:
            if not future.done():
                future.set_result(status)

    def wait_for(self, pid: int) -> asyncio.Future[ExitStatus]:
        """A future resolved with ``pid``'s exit status (immediately if already reaped)."""
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[ExitStatus] = loop.create_future()
        status = self._unclaimed.pop(pid, None)
        if status is not None:
            future.set_result(status)
        else:
            self._waiters.setdefault(pid, []).append(future)
        return future


#: The daemon's reaper (installed by the daemon before it serves).
REAPER = Reaper()
