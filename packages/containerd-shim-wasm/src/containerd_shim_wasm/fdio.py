"""Whole-content reads and writes on file descriptors: module files, the memfds that carry
modules and artifacts between the daemon, the zygote and its children, and cache entries."""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_whole(fd: int, size: int | None = None) -> bytes:
    """The file's first ``size`` bytes (default: its whole size, from ``fstat``), read from
    offset 0 whatever the descriptor's position.

    Raises:
        ValueError: the file is shorter than that (it changed while being read).
    """
    if size is None:
        size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0)
    if len(data) != size:
        raise ValueError(f"short read: {len(data)} of {size} bytes")
    return data
