"""The client against the real server, and against scripted raw servers for wire details."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from google.protobuf import empty_pb2

from containerd_shimkit.api import shim_pb2, ttrpc_pb2
from containerd_shimkit.errors import Code
from containerd_shimkit.ttrpc import (
    Client,
    ConnectionClosed,
    MessageType,
    OversizedMessage,
    ProtocolError,
    TtrpcError,
)
from containerd_shimkit.ttrpc.testing import RunningServer, client_for

from .conftest import TASK_V2, FakeTasks, RawPeer

pytestmark = pytest.mark.usefixtures("no_leaks")

Script = Callable[[RawPeer], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[str]:
    """A raw server that runs ``script`` for each connection; yields its socket path."""
    directory = tempfile.mkdtemp(prefix="ttrpc-")
    path = os.path.join(directory, "fake.sock")
    handlers: list[asyncio.Task[None]] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        peer = RawPeer(reader, writer)
        try:
            await script(peer)
        finally:
            await peer.close()

    server = await asyncio.start_unix_server(on_connect, path)
    try:
        yield path
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*handlers), 5)
        shutil.rmtree(directory)


def ok(message: object) -> bytes:
    assert hasattr(message, "SerializeToString")
    return ttrpc_pb2.Response(payload=message.SerializeToString()).SerializeToString()


async def next_request(peer: RawPeer) -> tuple[int, ttrpc_pb2.Request]:
    frame = await peer.next_frame()
    assert (frame.type, frame.flags) == (MessageType.REQUEST, 0)
    return frame.stream_id, ttrpc_pb2.Request.FromString(frame.data)


# -- against the real server ---------------------------------------------------------------


async def test_call_returns_the_decoded_response(served: RunningServer) -> None:
    async with await served.connect() as client:
        state = await client.call(
            TASK_V2, "State", shim_pb2.StateRequest(id="c1"), shim_pb2.StateResponse
        )
        empty = await client.call(
            TASK_V2, "Kill", shim_pb2.KillRequest(id="c1", signal=9), empty_pb2.Empty
        )
    assert state == shim_pb2.StateResponse(id="c1", pid=42)
    assert empty == empty_pb2.Empty()
    assert client.closed


async def test_concurrent_calls_complete_in_any_order(
    served: RunningServer, tasks: FakeTasks
) -> None:
    async with await served.connect() as client:
        wait = asyncio.create_task(
            client.call(TASK_V2, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse)
        )
        await tasks.wait_started.wait()
        states = await asyncio.gather(
            *(
                client.call(
                    TASK_V2, "State", shim_pb2.StateRequest(id=f"s{i}"), shim_pb2.StateResponse
                )
                for i in range(5)
            )
        )
        assert [s.id for s in states] == [f"s{i}" for i in range(5)]
        assert not wait.done()
        tasks.release_wait.set()
        assert (await wait).exit_status == 7


async def test_error_status_raises_ttrpc_error(served: RunningServer) -> None:
    async with await served.connect() as client:
        with pytest.raises(TtrpcError) as info:
            await client.call(TASK_V2, "Kill", shim_pb2.KillRequest(id="c9"), empty_pb2.Empty)
        assert (info.value.code, info.value.message) == (Code.NOT_FOUND, "process c9 not found")
        with pytest.raises(TtrpcError) as info:
            await client.call("no.Such", "Thing", empty_pb2.Empty(), empty_pb2.Empty)
        assert info.value.code is Code.UNIMPLEMENTED


async def test_timeout_raises_deadline_exceeded_and_is_sent_to_the_server(
    served: RunningServer, tasks: FakeTasks
) -> None:
    async with await served.connect() as client:
        with pytest.raises(TtrpcError) as info:
            await client.call(
                TASK_V2, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse, timeout=0.1
            )
        assert info.value.code is Code.DEADLINE_EXCEEDED
        (ctx,) = tasks.contexts
        assert ctx.deadline is not None  # the server got timeout_nano...
        async with asyncio.timeout(5):  # ...and cancelled its handler at the same time
            while tasks.cancelled != ["c1"]:
                await asyncio.sleep(0.01)
        state = await client.call(TASK_V2, "State", shim_pb2.StateRequest(), shim_pb2.StateResponse)
        assert state.pid == 42


async def test_server_shutdown_fails_pending_calls_with_connection_closed(
    served: RunningServer, tasks: FakeTasks
) -> None:
    client = await served.connect()
    wait = asyncio.create_task(
        client.call(TASK_V2, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse)
    )
    await tasks.wait_started.wait()
    await served.server.shutdown()
    with pytest.raises(ConnectionClosed):
        await wait
    assert client.closed
    with pytest.raises(ConnectionClosed):
        await client.call(TASK_V2, "State", shim_pb2.StateRequest(), shim_pb2.StateResponse)
    await client.close()


async def test_close_fails_pending_calls(served: RunningServer, tasks: FakeTasks) -> None:
    client = await served.connect()
    wait = asyncio.create_task(
        client.call(TASK_V2, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse)
    )
    await tasks.wait_started.wait()
    await client.close()
    with pytest.raises(ConnectionClosed):
        await wait
    await client.close()  # idempotent


async def test_close_right_after_connect(served: RunningServer) -> None:
    client = await served.connect()
    await client.close()
    assert client.closed


async def test_oversize_request_is_refused_before_sending(served: RunningServer) -> None:
    async with await served.connect() as client:
        with pytest.raises(OversizedMessage) as info:
            await client.call(
                TASK_V2, "State", shim_pb2.StateRequest(id="x" * (5 << 20)), shim_pb2.StateResponse
            )
        assert info.value.code is Code.RESOURCE_EXHAUSTED
        state = await client.call(
            TASK_V2, "State", shim_pb2.StateRequest(id="ok"), shim_pb2.StateResponse
        )
        assert state.id == "ok"


async def test_cancelled_call_leaves_the_connection_usable(
    served: RunningServer, tasks: FakeTasks, caplog: pytest.LogCaptureFixture
) -> None:
    async with await served.connect() as client:
        wait = asyncio.create_task(
            client.call(TASK_V2, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse)
        )
        await tasks.wait_started.wait()
        wait.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wait
        with caplog.at_level(logging.DEBUG, logger="containerd_shimkit.ttrpc"):
            tasks.release_wait.set()  # the server still answers stream 1: a late response
            state = await client.call(
                TASK_V2, "State", shim_pb2.StateRequest(), shim_pb2.StateResponse
            )
        assert state.pid == 42
        assert any("late response on stream 1" in r.getMessage() for r in caplog.records)


async def test_unix_prefix_is_accepted(served: RunningServer) -> None:
    async with await Client.connect(f"unix://{served.path}") as client:
        await client.call(TASK_V2, "State", shim_pb2.StateRequest(), shim_pb2.StateResponse)


async def test_connect_to_a_missing_socket_raises_os_error() -> None:
    with pytest.raises(FileNotFoundError):
        await Client.connect("/nonexistent/ttrpc.sock")


async def test_client_for_helper(services: list[object]) -> None:
    async with client_for(services) as client:  # type: ignore[arg-type]
        state = await client.call(
            TASK_V2, "State", shim_pb2.StateRequest(id="h"), shim_pb2.StateResponse
        )
    assert state.id == "h"
    assert client.closed


# -- against scripted servers --------------------------------------------------------------


async def test_stream_ids_metadata_and_timeout_on_the_wire() -> None:
    seen: list[tuple[int, ttrpc_pb2.Request]] = []

    async def script(peer: RawPeer) -> None:
        for _ in range(3):
            stream_id, request = await next_request(peer)
            seen.append((stream_id, request))
            peer.send_frame(stream_id, MessageType.RESPONSE, b"")

    async with scripted_server(script) as path, await Client.connect(path) as client:
        await client.call(
            "svc",
            "A",
            shim_pb2.StateRequest(id="a"),
            empty_pb2.Empty,
            metadata={"containerd-namespace-ttrpc": "default", "multi": ["1", "2"]},
        )
        await client.call("svc", "B", empty_pb2.Empty(), empty_pb2.Empty, timeout=5)
        await client.call("svc", "C", empty_pb2.Empty(), empty_pb2.Empty)

    assert [stream_id for stream_id, _ in seen] == [1, 3, 5]
    first, second, third = (request for _, request in seen)
    assert (first.service, first.method) == ("svc", "A")
    assert shim_pb2.StateRequest.FromString(first.payload).id == "a"
    assert [(kv.key, kv.value) for kv in first.metadata] == [
        ("containerd-namespace-ttrpc", "default"),
        ("multi", "1"),
        ("multi", "2"),
    ]
    assert first.timeout_nano == 0
    assert 4_000_000_000 < second.timeout_nano <= 5_000_000_000
    assert third.payload == b""  # Empty: proto3 leaves the field out entirely


async def test_silent_server_times_out() -> None:
    async def script(peer: RawPeer) -> None:
        await next_request(peer)
        assert await peer.closed_by_peer()  # never answer; wait for the client to go

    async with scripted_server(script) as path:
        client = await Client.connect(path)
        with pytest.raises(TtrpcError) as info:
            await client.call("svc", "Hang", empty_pb2.Empty(), empty_pb2.Empty, timeout=0.05)
        assert info.value.code is Code.DEADLINE_EXCEEDED
        assert info.value.message == "context deadline exceeded"
        await client.close()


async def test_response_on_an_unknown_stream_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def script(peer: RawPeer) -> None:
        stream_id, _ = await next_request(peer)
        peer.send_frame(99, MessageType.RESPONSE, ok(shim_pb2.StateResponse(id="stray")))
        peer.send_frame(stream_id, MessageType.DATA, b"not a response")
        peer.send_frame(stream_id, MessageType.RESPONSE, ok(shim_pb2.StateResponse(id="mine")))

    with caplog.at_level(logging.WARNING, logger="containerd_shimkit.ttrpc"):
        async with scripted_server(script) as path, await Client.connect(path) as client:
            state = await client.call("svc", "State", empty_pb2.Empty(), shim_pb2.StateResponse)
    assert state.id == "mine"
    messages = [r.getMessage() for r in caplog.records]
    assert "dropping response on unknown stream 99" in messages
    assert "ignoring frame of type 3 on stream 1" in messages


async def test_unknown_status_code_becomes_unknown() -> None:
    async def script(peer: RawPeer) -> None:
        stream_id, _ = await next_request(peer)
        response = ttrpc_pb2.Response(status=ttrpc_pb2.Status(code=99, message="odd"))
        peer.send_frame(stream_id, MessageType.RESPONSE, response.SerializeToString())

    async with scripted_server(script) as path, await Client.connect(path) as client:
        with pytest.raises(TtrpcError) as info:
            await client.call("svc", "M", empty_pb2.Empty(), empty_pb2.Empty)
    assert (info.value.code, info.value.message) == (Code.UNKNOWN, "odd")


async def test_explicit_ok_status_is_success() -> None:
    async def script(peer: RawPeer) -> None:
        stream_id, _ = await next_request(peer)
        response = ttrpc_pb2.Response(
            status=ttrpc_pb2.Status(code=0),
            payload=shim_pb2.StateResponse(pid=3).SerializeToString(),
        )
        peer.send_frame(stream_id, MessageType.RESPONSE, response.SerializeToString())

    async with scripted_server(script) as path, await Client.connect(path) as client:
        state = await client.call("svc", "M", empty_pb2.Empty(), shim_pb2.StateResponse)
    assert state.pid == 3


async def test_bad_payload_fails_only_that_call() -> None:
    async def script(peer: RawPeer) -> None:
        stream_id, _ = await next_request(peer)
        bad = ttrpc_pb2.Response(payload=b"\xff").SerializeToString()
        peer.send_frame(stream_id, MessageType.RESPONSE, bad)
        stream_id, _ = await next_request(peer)
        peer.send_frame(stream_id, MessageType.RESPONSE, b"\xff")  # not even a Response
        stream_id, _ = await next_request(peer)
        peer.send_frame(stream_id, MessageType.RESPONSE, ok(shim_pb2.StateResponse(pid=1)))

    async with scripted_server(script) as path, await Client.connect(path) as client:
        for _ in range(2):
            with pytest.raises(ProtocolError):
                await client.call("svc", "M", empty_pb2.Empty(), shim_pb2.StateResponse)
        state = await client.call("svc", "M", empty_pb2.Empty(), shim_pb2.StateResponse)
    assert state.pid == 1


async def test_oversize_response_fails_only_that_call() -> None:
    async def script(peer: RawPeer) -> None:
        stream_id, _ = await next_request(peer)
        length = (4 << 20) + 1
        peer.writer.write(struct.pack(">IIBB", length, stream_id, MessageType.RESPONSE, 0))
        peer.writer.write(b"\0" * length)
        stream_id, _ = await next_request(peer)
        peer.send_frame(stream_id, MessageType.RESPONSE, ok(shim_pb2.StateResponse(pid=2)))

    async with scripted_server(script) as path, await Client.connect(path) as client:
        with pytest.raises(OversizedMessage):
            await client.call("svc", "Big", empty_pb2.Empty(), shim_pb2.StateResponse)
        state = await client.call("svc", "Small", empty_pb2.Empty(), shim_pb2.StateResponse)
    assert state.pid == 2


async def test_server_hanging_up_mid_call_raises_connection_closed() -> None:
    async def script(peer: RawPeer) -> None:
        await next_request(peer)  # ...and hang up without answering

    async with scripted_server(script) as path, await Client.connect(path) as client:
        with pytest.raises(ConnectionClosed):
            await client.call("svc", "M", empty_pb2.Empty(), empty_pb2.Empty)
        assert client.closed


async def test_garbage_from_the_server_closes_the_connection() -> None:
    async def script(peer: RawPeer) -> None:
        await next_request(peer)
        peer.writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        assert await peer.closed_by_peer()

    async with scripted_server(script) as path, await Client.connect(path) as client:
        with pytest.raises(ConnectionClosed, match="reserved length byte"):
            await client.call("svc", "M", empty_pb2.Empty(), empty_pb2.Empty)
        assert client.closed
