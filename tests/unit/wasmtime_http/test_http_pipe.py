"""The bounded pipe between the event loop and a guest's thread."""

from __future__ import annotations

import asyncio

import pytest

from containerd_shim_wasmtime.http.pipe import Pipe, PipeError, Waker


async def test_put_waits_while_full_and_get_sees_eof() -> None:
    pipe = Pipe(asyncio.get_running_loop(), Waker(), capacity=10)
    await pipe.put(b"0123456789")
    assert pipe.room() == 0
    blocked = asyncio.create_task(pipe.put(b"abc"))
    await asyncio.sleep(0)
    assert not blocked.done()  # full: the writer waits for the reader
    assert pipe.read(4) == b"0123"
    await blocked
    pipe.close([(b"x-trailer", b"1")])
    chunks = []
    while (chunk := await pipe.get()) is not None:
        chunks.append(chunk)
    assert b"".join(chunks) == b"456789abc"
    assert pipe.finished and pipe.trailers == [(b"x-trailer", b"1")]


async def test_a_failed_writer_is_an_error_after_the_data() -> None:
    pipe = Pipe(asyncio.get_running_loop(), Waker(), capacity=100)
    pipe.write(b"data")
    pipe.fail("client went away")
    assert pipe.read(100) == b"data"
    with pytest.raises(PipeError, match="client went away"):
        pipe.read(100)
    with pytest.raises(PipeError):
        await pipe.get()


async def test_empty_pipe_reads_nothing_until_written() -> None:
    pipe = Pipe(asyncio.get_running_loop(), Waker(), capacity=100)
    assert pipe.read(10) == b"" and not pipe.readable()
    getter = asyncio.create_task(pipe.get())
    await asyncio.sleep(0)
    pipe.write(b"x")  # as the guest's thread would
    assert await getter == b"x"


async def test_a_gone_reader_lets_writers_through() -> None:
    pipe = Pipe(asyncio.get_running_loop(), Waker(), capacity=4)
    await pipe.put(b"1234")
    pipe.close_reader()
    await pipe.put(b"5678")  # dropped, and does not wait
    assert pipe.reader_gone and pipe.room() == 4
