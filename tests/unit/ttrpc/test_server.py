"""The server over real unix sockets, driven frame by frame with a raw peer."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
import tempfile

import pytest

from containerd_shimkit.api import shim_pb2, ttrpc_pb2
from containerd_shimkit.errors import Code
from containerd_shimkit.ttrpc import Client, MessageType, Server, Service
from containerd_shimkit.ttrpc.testing import RunningServer, serve_in_tmp

from .conftest import TASK_DESCRIPTOR, FakeTasks, RawPeer

pytestmark = pytest.mark.usefixtures("no_leaks")


async def raw(served: RunningServer) -> RawPeer:
    return await RawPeer.connect(served.path)


def status(response: ttrpc_pb2.Response) -> tuple[Code, str]:
    assert response.HasField("status")
    return Code(response.status.code), response.status.message


# -- success -------------------------------------------------------------------------------


async def test_success_has_no_status_field(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_request(1, "State", shim_pb2.StateRequest(id="c1"))
    stream_id, response = await peer.next_response()
    assert stream_id == 1
    assert not response.HasField("status")
    assert shim_pb2.StateResponse.FromString(response.payload) == shim_pb2.StateResponse(
        id="c1", pid=42
    )
    await peer.close()


async def test_empty_result_is_a_zero_byte_response(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_request(1, "Kill", shim_pb2.KillRequest(id="c1", signal=9))
    frame = await peer.next_frame()
    assert (frame.stream_id, frame.type, frame.flags, frame.data) == (1, 2, 0, b"")
    await peer.close()


async def test_context_carries_metadata_deadline_and_peer(
    served: RunningServer, tasks: FakeTasks
) -> None:
    peer = await raw(served)
    metadata = [("Containerd-Namespace-TTRPC", "k8s.io"), ("x", "1"), ("X", "2")]
    peer.send_request(
        1, "State", shim_pb2.StateRequest(), timeout_nano=2_000_000_000, metadata=metadata
    )
    await peer.next_response()
    (ctx,) = tasks.contexts
    assert (ctx.service, ctx.method) == ("containerd.task.v2.Task", "State")
    assert ctx.metadata == {"containerd-namespace-ttrpc": ["k8s.io"], "x": ["1", "2"]}
    assert ctx.deadline is not None
    assert 1.0 < ctx.deadline.time_remaining() <= 2.0
    assert ctx.peer is not None
    assert (ctx.peer.pid, ctx.peer.uid, ctx.peer.gid) == (os.getpid(), os.geteuid(), os.getegid())
    await peer.close()


async def test_no_timeout_nano_means_no_deadline(served: RunningServer, tasks: FakeTasks) -> None:
    peer = await raw(served)
    peer.send_request(1, "State", shim_pb2.StateRequest())
    await peer.next_response()
    assert tasks.contexts[0].deadline is None
    assert tasks.contexts[0].metadata == {}
    await peer.close()


async def test_slow_handler_does_not_block_a_fast_one(
    served: RunningServer, tasks: FakeTasks
) -> None:
    peer = await raw(served)
    peer.send_request(1, "Wait", shim_pb2.WaitRequest(id="c1"))
    await tasks.wait_started.wait()
    peer.send_request(3, "State", shim_pb2.StateRequest(id="c1"))
    assert (await peer.next_response())[0] == 3  # answered while Wait is still blocked
    tasks.release_wait.set()
    stream_id, response = await peer.next_response()
    assert stream_id == 1
    assert shim_pb2.WaitResponse.FromString(response.payload).exit_status == 7
    await peer.close()


# -- errors from handlers and routing ------------------------------------------------------


async def test_unknown_service(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_request(1, "State", shim_pb2.StateRequest(), service="containerd.task.v9.Task")
    _, response = await peer.next_response()
    assert status(response) == (Code.UNIMPLEMENTED, "service containerd.task.v9.Task")
    assert response.payload == b""
    await peer.close()


@pytest.mark.parametrize("method", ["Frobnicate", "Checkpoint"])  # unknown / not implemented
async def test_unknown_method(served: RunningServer, method: str) -> None:
    peer = await raw(served)
    peer.send_request(1, method, shim_pb2.CheckpointTaskRequest())
    _, response = await peer.next_response()
    assert status(response) == (Code.UNIMPLEMENTED, f"method {method}")
    await peer.close()


async def test_shim_error_maps_to_its_code(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_request(1, "Kill", shim_pb2.KillRequest(id="c1", signal=0))
    _, response = await peer.next_response()
    assert status(response) == (Code.NOT_FOUND, "process c1 not found")
    await peer.close()


async def test_any_exception_with_a_code_maps_to_it(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_request(1, "Pause", shim_pb2.PauseRequest(id="c1"))
    _, response = await peer.next_response()
    assert status(response) == (Code.FAILED_PRECONDITION, "task is not running")
    await peer.close()


async def test_unexpected_exception_is_unknown_and_logged(
    served: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    peer = await raw(served)
    with caplog.at_level(logging.ERROR, logger="containerd_shimkit.ttrpc"):
        peer.send_request(1, "Pids", shim_pb2.PidsRequest(id="c1"))
        _, response = await peer.next_response()
    assert status(response) == (Code.UNKNOWN, "boom")
    (record,) = caplog.records
    assert "containerd.task.v2.Task/Pids" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    await peer.close()


async def test_handler_returning_none_is_unknown(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_request(1, "Resume", shim_pb2.ResumeRequest(id="c1"))
    _, response = await peer.next_response()
    code, message = status(response)
    assert code is Code.UNKNOWN
    assert "NoneType" in message
    await peer.close()


async def test_oversize_response_becomes_resource_exhausted(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_request(1, "Connect", shim_pb2.ConnectRequest(id="c1"))
    _, response = await peer.next_response()
    code, message = status(response)
    assert code is Code.RESOURCE_EXHAUSTED
    assert message.endswith("exceed maximum message size of 4194304")
    await peer.close()


async def test_deadline_exceeded_cancels_the_handler(
    served: RunningServer, tasks: FakeTasks
) -> None:
    peer = await raw(served)
    peer.send_request(1, "Wait", shim_pb2.WaitRequest(id="c1"), timeout_nano=50_000_000)
    _, response = await peer.next_response()
    assert status(response) == (Code.DEADLINE_EXCEEDED, "context deadline exceeded")
    assert tasks.cancelled == ["c1"]
    await peer.close()


async def test_handler_own_timeout_error_is_not_a_deadline(tasks: FakeTasks) -> None:
    class Slow:
        async def state(
            self, request: shim_pb2.StateRequest, ctx: object
        ) -> shim_pb2.StateResponse:
            raise TimeoutError("backend timed out")

    service = Service.from_descriptor(TASK_DESCRIPTOR, Slow())
    async with serve_in_tmp([service]) as running:
        peer = await RawPeer.connect(running.path)
        peer.send_request(1, "State", shim_pb2.StateRequest(), timeout_nano=10_000_000_000)
        _, response = await peer.next_response()
        assert status(response) == (Code.UNKNOWN, "backend timed out")
        await peer.close()


async def test_stray_cancelled_error_from_a_handler_is_answered() -> None:
    class Stray:
        async def state(
            self, request: shim_pb2.StateRequest, ctx: object
        ) -> shim_pb2.StateResponse:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future  # raises CancelledError although nobody cancelled the request
            raise AssertionError("unreachable")

    async with serve_in_tmp([Service.from_descriptor(TASK_DESCRIPTOR, Stray())]) as running:
        peer = await RawPeer.connect(running.path)
        peer.send_request(1, "State", shim_pb2.StateRequest())
        _, response = await peer.next_response()
        assert status(response) == (Code.CANCELLED, "context canceled")
        await peer.close()


# -- protocol errors -----------------------------------------------------------------------


async def test_even_stream_id_is_rejected(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_request(2, "State", shim_pb2.StateRequest())
    stream_id, response = await peer.next_response()
    assert stream_id == 2
    assert status(response) == (
        Code.INVALID_ARGUMENT,
        "StreamID must be odd for client initiated streams",
    )
    peer.send_request(3, "State", shim_pb2.StateRequest())
    assert not (await peer.next_response())[1].HasField("status")
    await peer.close()


async def test_stream_id_must_increase(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_request(5, "State", shim_pb2.StateRequest())
    await peer.next_response()
    for reused in (5, 3):
        peer.send_request(reused, "State", shim_pb2.StateRequest())
        stream_id, response = await peer.next_response()
        assert stream_id == reused
        assert status(response) == (
            Code.INVALID_ARGUMENT,
            "StreamID cannot be re-used and must increment",
        )
    peer.send_request(7, "State", shim_pb2.StateRequest())
    assert not (await peer.next_response())[1].HasField("status")
    await peer.close()


async def test_body_that_is_not_a_request(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_frame(1, MessageType.REQUEST, b"\x0a\x05ab")
    _, response = await peer.next_response()
    code, message = status(response)
    assert code is Code.INVALID_ARGUMENT
    assert message.startswith("unmarshal request error: ")
    await peer.close()


async def test_payload_that_does_not_decode(served: RunningServer) -> None:
    peer = await raw(served)
    request = ttrpc_pb2.Request(service="containerd.task.v2.Task", method="State", payload=b"\xff")
    peer.send_frame(1, MessageType.REQUEST, request.SerializeToString())
    _, response = await peer.next_response()
    code, message = status(response)
    assert code is Code.INTERNAL
    assert message.startswith("ttrpc: error unmarshalling payload: ")
    await peer.close()


async def test_oversize_frame_is_answered_and_the_connection_survives(
    served: RunningServer,
) -> None:
    peer = await raw(served)
    length = (4 << 20) + 1
    peer.writer.write(struct.pack(">IIBB", length, 1, MessageType.REQUEST, 0))
    for offset in range(0, length, 1 << 20):
        peer.writer.write(b"\xab" * min(1 << 20, length - offset))
        await peer.writer.drain()
    peer.send_request(3, "State", shim_pb2.StateRequest(id="after"))
    stream_id, response = await peer.next_response()
    assert stream_id == 1
    assert status(response) == (
        Code.RESOURCE_EXHAUSTED,
        "message length 4194305 exceed maximum message size of 4194304",
    )
    stream_id, response = await peer.next_response()
    assert stream_id == 3
    assert shim_pb2.StateResponse.FromString(response.payload).id == "after"
    await peer.close()


async def test_data_and_unknown_frames_are_ignored(served: RunningServer) -> None:
    peer = await raw(served)
    peer.send_frame(1, MessageType.DATA, b"stream data", flags=1)
    peer.send_frame(1, 0x7F, b"future frame type")
    peer.send_frame(1, MessageType.RESPONSE, b"")
    peer.send_request(1, "State", shim_pb2.StateRequest(id="c1"))
    stream_id, response = await peer.next_response()
    assert stream_id == 1
    assert not response.HasField("status")
    await peer.close()


async def test_garbage_closes_only_that_connection(served: RunningServer) -> None:
    good = await raw(served)
    bad = await raw(served)
    bad.writer.write(b"GET / HTTP/1.1\r\nHost: shim\r\n\r\n")
    assert await bad.closed_by_peer()
    good.send_request(1, "State", shim_pb2.StateRequest(id="still here"))
    _, response = await good.next_response()
    assert shim_pb2.StateResponse.FromString(response.payload).id == "still here"
    await bad.close()
    await good.close()


# -- connections, peers, lifecycle ---------------------------------------------------------


async def test_peer_closing_cancels_its_pending_handlers(
    served: RunningServer, tasks: FakeTasks
) -> None:
    peer = await raw(served)
    peer.send_request(1, "Wait", shim_pb2.WaitRequest(id="gone"))
    await tasks.wait_started.wait()
    await peer.close()
    async with asyncio.timeout(5):
        while tasks.cancelled != ["gone"]:
            await asyncio.sleep(0.01)


async def test_socket_mode_is_0600(served: RunningServer) -> None:
    mode = os.stat(served.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def test_peer_with_another_uid_is_rejected(
    services: list[Service], caplog: pytest.LogCaptureFixture
) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as directory:
        path = os.path.join(directory, "s.sock")
        server = Server(services, expected_uid=os.geteuid() + 1)
        await server.start_unix(path)
        with caplog.at_level(logging.WARNING, logger="containerd_shimkit.ttrpc"):
            peer = await RawPeer.connect(path)
            peer.send_request(1, "State", shim_pb2.StateRequest())
            assert await peer.closed_by_peer()
        assert any("rejecting connection" in r.getMessage() for r in caplog.records)
        await peer.close()
        await server.shutdown()


async def test_peer_with_another_gid_is_rejected(services: list[Service]) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as directory:
        path = os.path.join(directory, "s.sock")
        server = Server(services, expected_gid=os.getegid() + 1)
        await server.start_unix(path)
        peer = await RawPeer.connect(path)
        assert await peer.closed_by_peer()
        await peer.close()
        await server.shutdown()


async def test_credential_check_can_be_disabled(services: list[Service]) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as directory:
        path = os.path.join(directory, "s.sock")
        server = Server(services, require_same_user=False, expected_uid=os.geteuid() + 1)
        await server.start_unix(path)
        async with await Client.connect(path) as client:
            state = await client.call(
                "containerd.task.v2.Task",
                "State",
                shim_pb2.StateRequest(id="x"),
                shim_pb2.StateResponse,
            )
        assert state.pid == 42
        await server.shutdown()


async def test_serve_on_an_inherited_listening_socket(services: list[Service]) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as directory:
        path = os.path.join(directory, "s.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen()
        server = Server(services)
        serving = asyncio.create_task(server.serve(listener))
        async with await Client.connect(f"unix://{path}") as client:
            state = await client.call(
                "containerd.task.v2.Task",
                "State",
                shim_pb2.StateRequest(id="fd3"),
                shim_pb2.StateResponse,
            )
            assert state.id == "fd3"
        assert not serving.done()  # serve() runs until shutdown
        await server.shutdown()
        await asyncio.wait_for(serving, 5)
        assert listener.fileno() == -1  # the server owned and closed it
        assert os.path.exists(path)  # ...but did not unlink a path it did not bind


async def test_shutdown_cancels_handlers_closes_connections_and_unlinks(
    services: list[Service], tasks: FakeTasks
) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as directory:
        path = os.path.join(directory, "s.sock")
        server = Server(services)
        await server.start_unix(path)
        peer = await RawPeer.connect(path)
        peer.send_request(1, "Wait", shim_pb2.WaitRequest(id="inflight"))
        await tasks.wait_started.wait()
        await server.shutdown()
        assert tasks.cancelled == ["inflight"]
        assert await peer.closed_by_peer()
        assert not os.path.exists(path)
        await server.wait_closed()  # returns at once now
        await server.shutdown()  # idempotent
        await peer.close()
        with pytest.raises(FileNotFoundError):
            await asyncio.open_unix_connection(path)


async def test_shutdown_from_inside_a_handler_is_refused() -> None:
    class Shutter:
        server: Server

        async def shutdown(self, request: shim_pb2.ShutdownRequest, ctx: object) -> object:
            await self.server.shutdown()
            raise AssertionError("unreachable")

    shutter = Shutter()
    async with serve_in_tmp([Service.from_descriptor(TASK_DESCRIPTOR, shutter)]) as running:
        shutter.server = running.server
        peer = await RawPeer.connect(running.path)
        peer.send_request(1, "Shutdown", shim_pb2.ShutdownRequest())
        _, response = await peer.next_response()
        code, message = status(response)
        assert code is Code.UNKNOWN
        assert "inside a request handler" in message
        await peer.close()


async def test_start_unix_refuses_an_existing_path(services: list[Service]) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as directory:
        path = os.path.join(directory, "s.sock")
        first = Server(services)
        await first.start_unix(path)
        second = Server(services)
        with pytest.raises(OSError):
            await second.start_unix(path)
        await second.shutdown()
        await first.shutdown()


def test_duplicate_service_names_are_refused(services: list[Service]) -> None:
    with pytest.raises(ValueError, match="registered twice"):
        Server([*services, *services])


async def test_cancelling_serve_shuts_the_server_down(
    services: list[Service], tasks: FakeTasks
) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as directory:
        path = os.path.join(directory, "s.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen()
        server = Server(services)
        serving = asyncio.create_task(server.serve(listener))
        peer = await RawPeer.connect(path)
        peer.send_request(1, "Wait", shim_pb2.WaitRequest(id="w"))
        await tasks.wait_started.wait()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert tasks.cancelled == ["w"]
        assert await peer.closed_by_peer()
        await server.wait_closed()
        await peer.close()


async def test_start_unix_accepts_a_unix_url(services: list[Service]) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as directory:
        path = os.path.join(directory, "u.sock")
        async with serve_in_tmp(services, f"unix://{path}") as running:
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            client = await running.connect()
            await client.close()
        assert not os.path.exists(path)


async def test_a_shut_down_server_cannot_start_again(services: list[Service]) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as directory:
        server = Server(services)
        await server.shutdown()
        path = os.path.join(directory, "late.sock")
        with pytest.raises(RuntimeError, match="shut down"):
            await server.start_unix(path)
        assert not os.path.exists(path)
