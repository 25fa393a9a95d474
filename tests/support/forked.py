"""Run a piece of a test in a forked child, for work that changes the process (its
title, environment, mounts, file descriptors) and must not touch the test's own."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable


def result_in_child(work: Callable[[], object]) -> object:
    """Call ``work`` in a forked child and return its result, which must be JSON (tuples
    come back as lists). An exception in the child fails the caller with its traceback."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            payload = {"result": work()}
        except BaseException:
            payload, code = {"error": traceback.format_exc()}, 1
        os.write(write_fd, json.dumps(payload).encode())
        os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    payload = json.loads(b"".join(chunks))
    assert "error" not in payload, payload["error"]
    return payload["result"]
