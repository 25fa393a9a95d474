"""A bounded byte pipe between the event loop (the connection) and a guest's thread.

Bodies stream through it both ways: the connection ``put``s request body chunks that the
guest's ``input-stream`` reads, and the guest's ``output-stream`` writes response chunks that
the connection ``get``s. Its capacity bounds what one request holds in memory, whatever the
body's size: a writer on a full pipe waits (the loop side) or sees ``check-write`` return 0
(the guest side, which then polls).

The guest side never blocks inside the pipe; it waits in ``wasi:io/poll`` on the request's
:class:`Waker`, which every state change notifies, so one ``poll`` over several pollables
needs one condition variable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading


class Waker:
    """One condition per request: guest threads wait on it in ``poll``; pipes notify it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()


class PipeError(Exception):
    """The other side failed (the client went away, the guest trapped mid-body)."""


class Pipe:
    """Bytes in flight, at most ``capacity`` of them (one chunk may exceed it when empty)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, waker: Waker, capacity: int) -> None:
        self._loop = loop
        self.waker = waker
        self.capacity = capacity
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()
        self._eof = False  # the writer closed: readers see EOF once the chunks are gone
        self._error: str | None = None  # the writer failed: readers see an error
        self._reader_gone = False  # the reader closed: further writes are dropped
        self._loop_event = asyncio.Event()
        # Whether the loop side awaits ``_loop_event``: waking the loop costs a write to
        # its self-pipe and an iteration, so the guest's thread only does it then. The
        # loop sets this *before* it re-checks the state, the thread checks it *after* it
        # changed the state: one of them always sees the other.
        self._loop_waiting = False
        #: Trailers that came with (request) or go after (response) the body.
        self.trailers: list[tuple[bytes, bytes]] | None = None

    # -- state changes notify both sides -------------------------------------------------

    def _changed(self) -> None:
        self.waker.notify()
        if self._loop_waiting:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
                self._loop.call_soon_threadsafe(self._loop_event.set)

    def close(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """The writer is done (EOF), optionally with trailers."""
        with self._lock:
            if self._eof or self._error is not None:
                return
            self._eof = True
            self.trailers = trailers
        self._changed()

    def fail(self, reason: str) -> None:
        """The writer failed: the reader sees an error after what was already written."""
        with self._lock:
            if self._eof or self._error is not None:
                return
            self._error = reason
        self._changed()

    def close_reader(self) -> None:
        """The reader is gone: drop what is buffered and any later writes."""
        with self._lock:
            self._reader_gone = True
            self._chunks.clear()
            self._size = 0
        self._changed()

    # -- non-blocking primitives (the guest side) -------------------------------------------

    @property
    def finished(self) -> bool:
        """Everything was read and the writer closed without error."""
        return self._eof and not self._chunks

    def readable(self) -> bool:
        return bool(self._chunks) or self._eof or self._error is not None

    def read(self, n: int) -> bytes | None:
        """Up to ``n`` bytes; ``b""`` if none yet; ``None`` at EOF; raises at an error."""
        with self._lock:
            if not self._chunks:
                if self._error is not None:
                    raise PipeError(self._error)
                return None if self._eof else b""
            chunk = self._chunks.popleft()
            if len(chunk) > n:
                chunk, rest = chunk[:n], chunk[n:]
                self._chunks.appendleft(rest)
            self._size -= len(chunk)
        self._changed()
        return chunk

    def room(self) -> int:
        """How many bytes a write may add now (0: wait)."""
        if self._reader_gone:
            return self.capacity
        return max(0, self.capacity - self._size)

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if self._eof or self._error is not None:
                raise PipeError("write after close")
            if self._reader_gone:
                return
            self._chunks.append(bytes(data))
            self._size += len(data)
        self._changed()

    @property
    def reader_gone(self) -> bool:
        return self._reader_gone

    # -- awaitable side (the event loop) -------------------------------------------------

    async def put(self, data: bytes) -> None:
        """Write ``data``, waiting while the pipe is full (the guest is behind)."""
        while self._full(len(data)):
            self._loop_event.clear()
            self._loop_waiting = True
            try:
                if self._full(len(data)):
                    await self._loop_event.wait()
            finally:
                self._loop_waiting = False
        self.write(data)

    def _full(self, n: int) -> bool:
        return self._size > 0 and self._size + n > self.capacity and not self._reader_gone

    async def get(self) -> bytes | None:
        """The next chunk; ``None`` at EOF; raises :class:`PipeError` if the writer failed."""
        while True:
            self._loop_event.clear()
            self._loop_waiting = True
            try:
                chunk = self.read(1 << 20)
                if chunk is None or chunk:
                    return chunk
                await self._loop_event.wait()
            finally:
                self._loop_waiting = False
