"""``wasi:io`` (error, poll, streams) on real buffers and file descriptors.

A stream is any object with the small protocol of :class:`InputStream` /
:class:`OutputStream`; a pollable is a :class:`Pollable` whose ``ready`` is a cheap check.
Waiting happens in one place, :func:`wait_any`, on the request's condition variable, so that a
guest's ``poll`` over a body stream, a timer and an outgoing response is one wait.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from .context import RequestContext
from .lowering import Case, Err, HostTrap, Ok, current
from .pipe import Pipe, PipeError

#: ``blocking-read``/``read`` may return less; this bounds one call's copy.
MAX_READ = 1 << 20


class IoError:
    """A ``wasi:io/error.error``: a message for ``to-debug-string``."""

    def __init__(self, message: str) -> None:
        self.message = message


class Pollable:
    """``ready()`` says whether a wait would return now; ``deadline`` is a time to wake at
    (monotonic clock) for timers, else ``None``."""

    def __init__(self, ready: Callable[[], bool], deadline: float | None = None) -> None:
        self.ready = ready
        self.deadline = deadline


def _ctx() -> RequestContext:
    ctx = current()
    assert isinstance(ctx, RequestContext)
    return ctx


def wait_any(pollables: list[Pollable]) -> list[int]:
    """Block until at least one pollable is ready; their indexes (``wasi:io/poll.poll``)."""
    if not pollables:
        raise ValueError("poll of an empty list")
    ctx = _ctx()
    cond = ctx.waker.cond
    while True:
        ready = [i for i, p in enumerate(pollables) if p.ready()]
        if ready:
            return ready
        timeout = ctx.remaining()
        timers = [p.deadline for p in pollables if p.deadline is not None]
        if timers:
            timeout = min(timeout, max(0.0, min(timers) - time.monotonic()))
        with cond:
            # Re-check under the lock: a notify between the check above and this wait
            # would otherwise be lost (the cap on the wait makes a lost one harmless anyway).
            if not any(p.ready() for p in pollables):
                cond.wait(min(timeout, 1.0))


class InputStream:
    """An ``input-stream``: ``read`` returns bytes (maybe ``b""``) or ``None`` at EOF."""

    def read(self, n: int) -> bytes | None:
        raise NotImplementedError

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


class OutputStream:
    """An ``output-stream``: ``check_write`` says how much ``write`` accepts now."""

    def check_write(self) -> int:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        return self.check_write() > 0

    def close(self) -> None:
        pass


class EmptyInput(InputStream):
    """Stdin of a proxy: always at EOF."""

    def read(self, n: int) -> bytes | None:
        return None


class PipeInput(InputStream):
    """Reads a :class:`Pipe` (a request body; the connection writes it)."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe

    def read(self, n: int) -> bytes | None:
        return self.pipe.read(n)

    def ready(self) -> bool:
        return self.pipe.readable()

    def close(self) -> None:
        # The guest dropped the stream: it will read no more.
        self.pipe.close_reader()


class PipeOutput(OutputStream):
    """Writes a :class:`Pipe` (a response body; the connection reads it)."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe

    def check_write(self) -> int:
        return self.pipe.room()

    def write(self, data: bytes) -> None:
        self.pipe.write(data)


class FdOutput(OutputStream):
    """The guest's stdout/stderr: this process's fds 1/2, i.e. the container's."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def check_write(self) -> int:
        return 1 << 16

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                time.sleep(0.001)


def _stream_error(exc: BaseException | None) -> Err:
    if exc is None:
        return Err(Case("closed"))
    return Err(Case("last-operation-failed", IoError(str(exc) or type(exc).__name__)))


def _read(stream: InputStream, n: int, blocking: bool) -> Ok | Err:
    n = min(n, MAX_READ)
    while True:
        try:
            data = stream.read(n) if n else b""
        except (PipeError, OSError) as exc:
            return _stream_error(exc)
        if data is None:
            return _stream_error(None)
        if data or not blocking or n == 0:
            return Ok(data)
        wait_any([Pollable(stream.ready)])


def _write(stream: OutputStream, data: bytes, blocking: bool) -> Ok | Err:
    try:
        if blocking:
            view = memoryview(data)
            while view:
                room = stream.check_write()
                if room == 0:
                    wait_any([Pollable(stream.ready)])
                    continue
                stream.write(bytes(view[:room]))
                view = view[room:]
        else:
            # As wasmtime: a write beyond what check-write permitted traps. Accepting it
            # would let a guest that never checks buffer a whole body in the host.
            if len(data) > stream.check_write():
                raise HostTrap("output-stream.write exceeds the check-write permit")
            stream.write(data)
    except (PipeError, OSError) as exc:
        return _stream_error(exc)
    return Ok(None)


def _check_write(stream: OutputStream) -> Ok | Err:
    pipe = getattr(stream, "pipe", None)
    if isinstance(pipe, Pipe) and pipe.reader_gone:
        return _stream_error(PipeError("the peer closed the stream"))
    return Ok(stream.check_write())


def _splice(dst: OutputStream, src: InputStream, n: int, blocking: bool) -> Ok | Err:
    room = dst.check_write()
    if room == 0 and blocking:
        wait_any([Pollable(dst.ready)])
        room = dst.check_write()
    got = _read(src, min(n, room), blocking)
    if isinstance(got, Err):
        return got
    written = _write(dst, got.value, blocking)
    if isinstance(written, Err):
        return written
    return Ok(len(got.value))


def _skip(stream: InputStream, n: int, blocking: bool) -> Ok | Err:
    got = _read(stream, n, blocking)
    return got if isinstance(got, Err) else Ok(len(got.value))


def functions() -> dict[str, dict[str, Callable[..., Any]]]:
    """Host functions by (unversioned) interface and function name."""
    return {
        "wasi:io/error": {
            "[method]error.to-debug-string": lambda e: e.message,
        },
        "wasi:io/poll": {
            "[method]pollable.ready": lambda p: bool(p.ready()),
            "[method]pollable.block": lambda p: (wait_any([p]), None)[1],
            "poll": lambda ps: wait_any(ps),
        },
        "wasi:io/streams": {
            "[method]input-stream.read": lambda s, n: _read(s, n, False),
            "[method]input-stream.blocking-read": lambda s, n: _read(s, n, True),
            "[method]input-stream.skip": lambda s, n: _skip(s, n, False),
            "[method]input-stream.blocking-skip": lambda s, n: _skip(s, n, True),
            "[method]input-stream.subscribe": lambda s: Pollable(s.ready),
            "[method]output-stream.check-write": _check_write,
            "[method]output-stream.write": lambda s, d: _write(s, d, False),
            "[method]output-stream.blocking-write-and-flush": lambda s, d: _write(s, d, True),
            "[method]output-stream.flush": lambda s: Ok(None),
            "[method]output-stream.blocking-flush": lambda s: Ok(None),
            "[method]output-stream.subscribe": lambda s: Pollable(s.ready),
            "[method]output-stream.write-zeroes": lambda s, n: _write(s, bytes(n), False),
            "[method]output-stream.blocking-write-zeroes-and-flush": (
                lambda s, n: _write(s, bytes(n), True)
            ),
            "[method]output-stream.splice": lambda d, s, n: _splice(d, s, n, False),
            "[method]output-stream.blocking-splice": lambda d, s, n: _splice(d, s, n, True),
        },
    }
