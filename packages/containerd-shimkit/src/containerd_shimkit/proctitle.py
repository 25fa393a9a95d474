"""Rewrite this process's command line as ``ps`` and ``/proc/<pid>/cmdline`` show it.

A daemon forked from the template (:mod:`containerd_shimkit.cli.template`) never execs, so
the kernel still shows the template's argv. Operators (and containerd's tooling) look shim
daemons up by ``-id``/``-namespace``; this overwrites the argv area in place, which is why
the template is started with spare room at the end of its argv. Changing the area's bounds
(``prctl(PR_SET_MM)``) would need CAP_SYS_RESOURCE.
"""

from __future__ import annotations

import ctypes


def _argv_area() -> tuple[int, int]:
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    # Fields after "(comm)" start at field 3; arg_start and arg_end are fields 48 and 49.
    fields = stat.rsplit(b")", 1)[1].split()
    return int(fields[45]), int(fields[46])


def set_cmdline(argv: list[str]) -> bool:
    """Make ``argv`` this process's command line; ``False`` (nothing changed) if it does
    not fit in the original argv's space. The rest of the space is zeroed, so readers of
    ``/proc/<pid>/cmdline`` see trailing empty strings, which ``ps`` shows as spaces."""
    start, end = _argv_area()
    data = b"\0".join(arg.encode() for arg in argv) + b"\0"
    if not 0 < start < end or len(data) > end - start:
        return False
    ctypes.memmove(start, data, len(data))
    ctypes.memset(start + len(data), 0, end - start - len(data))
    return True
