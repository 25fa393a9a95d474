"""``StdinRelay``: what containerd writes to the stdin FIFO reaches the container, then EOF.

``ctr`` sends CloseIO as soon as its own stdin ends, while what it wrote may still be in the
FIFO: :meth:`StdinRelay.close_input` must deliver all of it before the end-of-file.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from containerd_shim_wasm.stdio import StdinRelay


def _read_to_eof(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_close_input_delivers_what_is_still_in_the_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    relay = StdinRelay(str(fifo))
    writer = os.open(fifo, os.O_WRONLY)  # the client (ctr) stays connected
    data = os.urandom(300_000)  # more than the FIFO and the pipe hold together
    written = threading.Event()

    def write_all() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(writer, view) :]
        written.set()

    relay.start()
    reader = asyncio.create_task(asyncio.to_thread(_read_to_eof, relay.read_end))
    await asyncio.to_thread(write_all)
    assert written.is_set()
    relay.close_input()  # CloseIO while the writer is still open
    try:
        assert await asyncio.wait_for(reader, 10) == data
    finally:
        os.close(writer)
        os.close(relay.read_end)
        relay.close()


async def test_close_input_before_start(tmp_path: Path) -> None:
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    relay = StdinRelay(str(fifo))
    writer = os.open(fifo, os.O_WRONLY)
    os.write(writer, b"early input\n")
    relay.close_input()
    relay.start()
    try:
        assert await asyncio.wait_for(asyncio.to_thread(_read_to_eof, relay.read_end), 10) == (
            b"early input\n"
        )
    finally:
        os.close(writer)
        os.close(relay.read_end)
        relay.close()


async def test_writer_closing_gives_eof(tmp_path: Path) -> None:
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    relay = StdinRelay(str(fifo))
    writer = os.open(fifo, os.O_WRONLY)
    relay.start()
    os.write(writer, b"abc")
    os.close(writer)
    try:
        assert await asyncio.wait_for(asyncio.to_thread(_read_to_eof, relay.read_end), 10) == b"abc"
    finally:
        os.close(relay.read_end)
        relay.close()
