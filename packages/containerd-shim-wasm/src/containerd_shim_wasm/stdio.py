"""Connecting a container's stdio to containerd's FIFOs (daemon side)."""

from __future__ import annotations

import asyncio
import errno
import os


def open_output(path: str) -> int:
    """Open a stdout/stderr FIFO for the container, or ``/dev/null`` when ``path`` is empty.

    ``O_RDWR`` never blocks on a FIFO, and holding a read side means the container gets no
    EPIPE while containerd restarts (the pitfall rust-extensions#154 fixed).
    """
    return os.open(path or os.devnull, os.O_RDWR | os.O_CLOEXEC)


class StdinRelay:
    """Copies containerd's stdin FIFO into a pipe that is the container's fd 0.

    The container cannot read the FIFO itself: opened read-only it would see EOF before
    the writer (ctr, CRI) connects, and opened read-write it would never see EOF. The relay
    waits for the writer, copies without blocking the event loop, and closes the pipe when
    the writer closes, so the workload sees end-of-file exactly when the client sends it.
    """

    def __init__(self, fifo_path: str) -> None:
        self._fifo = os.open(fifo_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.read_end, self._write_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._write_end, False)
        self._pending = b""
        self._eof = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start copying (needs the running loop). The caller closes ``read_end`` once the
        container has its copy."""
        self._loop = asyncio.get_running_loop()
        if self._fifo >= 0:
            self._loop.add_reader(self._fifo, self._on_readable)
        else:  # close_input came before Start: deliver what it drained, then EOF
            self._deliver_rest()

    def close_input(self) -> None:
        """``CloseIO``: the client has sent everything; deliver it, then end-of-file.

        ``ctr`` calls CloseIO as soon as its own stdin ends, while what it wrote may still
        sit in the FIFO (and in ``_pending``): closing at once would cut the input short.
        All of it is in the FIFO already (the client writes before it reads EOF), so it is
        drained without waiting for the writer to close its end.
        """
        if self._fifo >= 0:
            self._stop_reading()
            while True:
                try:
                    data = os.read(self._fifo, 65536)
                except OSError:  # BlockingIOError: drained
                    break
                if not data:
                    break
                self._pending += data
            os.close(self._fifo)
            self._fifo = -1
        self._eof = True
        if self._loop is not None:
            self._deliver_rest()

    def _deliver_rest(self) -> None:
        if self._write_end < 0:
            return
        if self._pending:
            self._flush()  # what it cannot write now, _on_writable writes (then closes)
        if not self._pending:
            self.close()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fifo, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._eof = True
            self._stop_reading()
            if not self._pending:
                self.close()
            return
        self._pending += data
        self._flush()

    def _flush(self) -> None:
        assert self._loop is not None
        try:
            written = os.write(self._write_end, self._pending)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # the container closed its stdin
                self.close()
                return
            raise
        self._pending = self._pending[written:]
        if self._pending:
            # Back-pressure: stop reading the FIFO until the container drains the pipe.
            self._stop_reading()
            self._loop.add_writer(self._write_end, self._on_writable)

    def _on_writable(self) -> None:
        assert self._loop is not None
        self._loop.remove_writer(self._write_end)
        self._flush()
        if not self._pending:
            if self._eof:
                self.close()
            elif self._fifo >= 0:
                self._loop.add_reader(self._fifo, self._on_readable)

    def _stop_reading(self) -> None:
        if self._loop is not None and self._fifo >= 0:
            self._loop.remove_reader(self._fifo)

    def discard(self) -> None:
        """Close everything, ``read_end`` too: the container never took its copy (a failed
        Create)."""
        self.close()
        if self.read_end >= 0:
            os.close(self.read_end)
            self.read_end = -1

    def close(self) -> None:
        """Stop relaying and close everything (the container sees EOF on fd 0)."""
        self._stop_reading()
        if self._loop is not None and self._write_end >= 0:
            self._loop.remove_writer(self._write_end)
        for attr in ("_fifo", "_write_end"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
