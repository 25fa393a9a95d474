"""Logging in containerd's format, with the container and pod ids added automatically.

containerd copies whatever the shim writes to the bundle's ``log`` FIFO into its own log, so
records are written logrus-style: ``time="…" level=info msg="…" instance=<id> pod=<id>``.
``instance`` and ``pod`` come from context variables: the Task service sets ``instance`` for
each request and the daemon sets ``pod`` once (one daemon serves one pod), and a container
process sets both when it is forked, so no caller ever passes them.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

instance_id: contextvars.ContextVar[str] = contextvars.ContextVar("instance", default="")
pod_id: contextvars.ContextVar[str] = contextvars.ContextVar("pod", default="")

#: Environment variable that sets the level (``debug``, ``info``, ``warning``, ``error``).
LEVEL_ENV = "SHIM_LOG_LEVEL"

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-_./:@" for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """Formats records as containerd's logrus text lines."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        stamp += f".{int((seconds % 1) * 1e6):06d}Z"
        level = "warning" if record.levelno == logging.WARNING else record.levelname.lower()
        parts = [f'time="{stamp}"', f"level={level}", f"msg={_quote(record.getMessage())}"]
        for key in ("instance", "pod"):
            value = getattr(record, key, "")
            if value:
                parts.append(f"{key}={_quote(value)}")
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in ("instance", "pod") and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class ContextFilter(logging.Filter):
    """Adds ``instance`` and ``pod`` from the context variables to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "instance", ""):
            record.instance = instance_id.get()
        if not getattr(record, "pod", ""):
            record.pod = pod_id.get()
        return True


class FifoHandler(logging.StreamHandler[TextIO]):
    """A stream handler that never blocks the shim and never raises.

    containerd may be down (the FIFO then has no reader and a write fails with EPIPE, or the
    64 KiB pipe fills): a log line is dropped rather than stalling an RPC.
    """

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def level_from(debug: bool, default: str = "info") -> int:
    """The level: ``-debug`` wins, then ``$SHIM_LOG_LEVEL``, then ``default``."""
    if debug:
        return logging.DEBUG
    name = os.environ.get(LEVEL_ENV, default).upper()
    level = logging.getLevelName("WARNING" if name == "WARN" else name)
    return level if isinstance(level, int) else logging.INFO


def setup(level: int, stream: TextIO | None = None) -> None:
    """Send the root logger's records to ``stream`` (default: stderr) in logfmt."""
    handler = FifoHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def redirect(fd: int, level: int) -> None:
    """Send this process's log (set up by :func:`setup`) to ``fd`` from now on, at ``level``.

    For a process that was set up before it knew where its log goes: a spare daemon's
    zygote (see :mod:`containerd_shimkit.cli.template`). The handlers keep their stream
    object; the descriptor under it becomes a copy of ``fd``.
    """
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, FifoHandler):
            handler.flush()
            os.dup2(fd, handler.stream.fileno())
    root.setLevel(level)


@contextmanager
def container_context(instance: str) -> Iterator[None]:
    """Attribute every record logged inside the block to container ``instance``."""
    token = instance_id.set(instance)
    try:
        yield
    finally:
        instance_id.reset(token)
