"""Fixtures for the ttrpc tests: a fake Task implementation and a raw frame-level peer."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import pytest
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from containerd_shimkit.api import shim_pb2, ttrpc_pb2
from containerd_shimkit.errors import Code, NotFound
from containerd_shimkit.ttrpc import Frame, FrameDecoder, MessageType, RequestContext, Service
from containerd_shimkit.ttrpc.framing import OversizedFrame, encode_frame
from containerd_shimkit.ttrpc.testing import RunningServer, serve_in_tmp

TASK_V2 = "containerd.task.v2.Task"
TASK_DESCRIPTOR = shim_pb2.DESCRIPTOR.services_by_name["Task"]


class CodedError(Exception):
    """Not a ShimError, but carries ``code``/``message`` the server should honour."""

    code = Code.FAILED_PRECONDITION

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FakeTasks:
    """A few Task RPCs with controllable behaviour; the rest stay unimplemented."""

    def __init__(self) -> None:
        self.release_wait = asyncio.Event()
        self.wait_started = asyncio.Event()
        self.cancelled: list[str] = []
        self.contexts: list[RequestContext] = []
        #: Wait calls started, running now, and the most ever running at once.
        self.waits_started = 0
        self.waiting = 0
        self.peak_waiting = 0
        self.stats_calls = 0
        #: Bytes of the Any that Stats returns: big answers fill a peer's socket quickly.
        self.stats_size = 16 * 1024

    async def state(
        self, request: shim_pb2.StateRequest, ctx: RequestContext
    ) -> shim_pb2.StateResponse:
        self.contexts.append(ctx)
        return shim_pb2.StateResponse(id=request.id, pid=42)

    async def wait(
        self, request: shim_pb2.WaitRequest, ctx: RequestContext
    ) -> shim_pb2.WaitResponse:
        self.contexts.append(ctx)
        self.wait_started.set()
        self.waits_started += 1
        self.waiting += 1
        self.peak_waiting = max(self.peak_waiting, self.waiting)
        try:
            await self.release_wait.wait()
        except asyncio.CancelledError:
            self.cancelled.append(request.id)
            raise
        finally:
            self.waiting -= 1
        return shim_pb2.WaitResponse(exit_status=7)

    async def stats(
        self, request: shim_pb2.StatsRequest, ctx: RequestContext
    ) -> shim_pb2.StatsResponse:
        self.stats_calls += 1
        return shim_pb2.StatsResponse(stats=any_pb2.Any(value=b"s" * self.stats_size))

    async def kill(self, request: shim_pb2.KillRequest, ctx: RequestContext) -> empty_pb2.Empty:
        if request.signal == 0:
            raise NotFound(f"process {request.id} not found")
        return empty_pb2.Empty()

    async def pids(self, request: shim_pb2.PidsRequest, ctx: RequestContext) -> Message:
        raise RuntimeError("boom")

    async def pause(self, request: shim_pb2.PauseRequest, ctx: RequestContext) -> Message:
        raise CodedError("task is not running")

    async def resume(self, request: shim_pb2.ResumeRequest, ctx: RequestContext) -> Message:
        return None  # type: ignore[return-value]  # a buggy handler

    async def connect(
        self, request: shim_pb2.ConnectRequest, ctx: RequestContext
    ) -> shim_pb2.ConnectResponse:
        return shim_pb2.ConnectResponse(version="x" * (5 << 20))  # too big to send


@pytest.fixture
def tasks() -> FakeTasks:
    return FakeTasks()


@pytest.fixture
def services(tasks: FakeTasks) -> list[Service]:
    return [Service.from_descriptor(TASK_DESCRIPTOR, tasks)]


@pytest.fixture
async def served(services: list[Service]) -> AsyncIterator[RunningServer]:
    async with serve_in_tmp(services) as running:
        yield running
    assert not os.path.exists(running.path), "shutdown must remove the socket"


@pytest.fixture
async def no_leaks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running or file descriptors open."""
    fds_before = set(os.listdir("/proc/self/fd"))
    yield
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert leftover == []
    assert set(os.listdir("/proc/self/fd")) - fds_before == set()


@dataclass
class RawPeer:
    """One side of a connection that speaks frames directly, to test wire-level behaviour."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def __post_init__(self) -> None:
        self.decoder = FrameDecoder()

    @classmethod
    async def connect(cls, path: str) -> RawPeer:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    def send_frame(self, stream_id: int, type: int, data: bytes, flags: int = 0) -> None:
        self.writer.write(encode_frame(stream_id, type, flags, data))

    def send_request(
        self,
        stream_id: int,
        method: str,
        message: Message,
        *,
        service: str = TASK_V2,
        timeout_nano: int = 0,
        metadata: Iterable[tuple[str, str]] = (),
    ) -> None:
        request = ttrpc_pb2.Request(
            service=service,
            method=method,
            payload=message.SerializeToString(),
            timeout_nano=timeout_nano,
            metadata=[ttrpc_pb2.KeyValue(key=k, value=v) for k, v in metadata],
        )
        self.send_frame(stream_id, MessageType.REQUEST, request.SerializeToString())

    async def next_event(self, timeout: float = 5) -> Frame | OversizedFrame:
        async with asyncio.timeout(timeout):
            while (event := self.decoder.next_frame()) is None:
                data = await self.reader.read(65536)
                assert data, "connection closed while waiting for a frame"
                self.decoder.feed(data)
        return event

    async def next_frame(self, timeout: float = 5) -> Frame:
        event = await self.next_event(timeout)
        assert isinstance(event, Frame)
        return event

    async def next_response(self, timeout: float = 5) -> tuple[int, ttrpc_pb2.Response]:
        frame = await self.next_frame(timeout)
        assert frame.type == MessageType.RESPONSE
        assert frame.flags == 0
        return frame.stream_id, ttrpc_pb2.Response.FromString(frame.data)

    async def closed_by_peer(self, timeout: float = 5) -> bool:
        """Whether the other side closes the connection without sending anything more."""
        async with asyncio.timeout(timeout):
            try:
                return await self.reader.read(65536) == b""
            except ConnectionResetError:
                return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
