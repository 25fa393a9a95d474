"""Rewrite this process's command line as ``ps`` and ``/proc/<pid>/cmdline`` show it.

A daemon forked from the template (:mod:`containerd_shimkit.cli.template`) never execs, so
the kernel still shows the template's argv. Operators (and containerd's tooling) look shim
daemons up by ``-id``/``-namespace``; this overwrites the argv area in place, which is why
the template is started with spare room at the end of its argv. Changing the area's bounds
(``prctl(PR_SET_MM)``) would need CAP_SYS_RESOURCE.

Container processes are forks of the daemon too: without a title of their own they would
show the daemon's argv (containerd's socket, another container's ``-id``) and its ``comm``,
and tools matching shim daemons would match them. :func:`set_process_title` gives them the
container's args, as runc's exec does.
"""

from __future__ import annotations

import ctypes
import os

#: prctl(2) option that sets ``comm`` (``/proc/<pid>/comm``, what ``ps -o comm`` shows).
PR_SET_NAME = 15
#: The kernel keeps 15 bytes of ``comm`` (TASK_COMM_LEN - 1).
COMM_MAX = 15


def _argv_area() -> tuple[int, int]:
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    # Fields after "(comm)" start at field 3; arg_start and arg_end are fields 48 and 49.
    fields = stat.rsplit(b")", 1)[1].split()
    return int(fields[45]), int(fields[46])


def set_cmdline(argv: list[str], *, truncate: bool = False) -> bool:
    """Make ``argv`` this process's command line; ``False`` (nothing changed) if it does
    not fit in the original argv's space, unless ``truncate``: then as much as fits is
    written (the previous command line must go even when the new one is too long). The
    rest of the space is zeroed, so readers of ``/proc/<pid>/cmdline`` see trailing empty
    strings, which ``ps`` shows as spaces. Needs ``/proc``."""
    start, end = _argv_area()
    data = b"\0".join(arg.encode(errors="surrogateescape") for arg in argv) + b"\0"
    if not 0 < start < end:
        return False
    if len(data) > end - start:
        if not truncate:
            return False
        data = data[: end - start - 1] + b"\0"
    ctypes.memmove(start, data, len(data))
    ctypes.memset(start + len(data), 0, end - start - len(data))
    return True


def comm_for(arg0: str) -> str:
    """What ``comm`` is after an exec of ``arg0``: its basename, cut to 15 bytes."""
    name = os.path.basename(arg0.rstrip("/")) or arg0
    return name.encode(errors="surrogateescape")[:COMM_MAX].decode(errors="ignore")


def set_comm(name: str) -> None:
    """Set this thread's ``comm`` (the main thread's is the process's name in ``ps``);
    the kernel keeps the first 15 bytes. Threads started later inherit it."""
    libc = ctypes.CDLL(None, use_errno=True)
    raw = name.encode(errors="surrogateescape")[:COMM_MAX]
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_process_title(argv: list[str], comm: str | None = None) -> None:
    """Show this process as ``argv`` (``/proc/<pid>/cmdline``, truncated to the space
    there is) and ``comm`` (default: the basename of ``argv[0]``), as an exec of ``argv``
    would. Call while ``/proc`` is mounted."""
    set_cmdline(argv, truncate=True)
    set_comm(comm if comm is not None else comm_for(argv[0] if argv else ""))
