"""ttrpc, containerd's lightweight RPC protocol, on asyncio and unix sockets.

Serve an object whose coroutine methods are the snake_case RPC names, and call it::

    from containerd_shimkit.api import shim_pb2
    from containerd_shimkit.ttrpc import Client, Server, Service

    class Tasks:
        async def state(self, request, ctx):
            return shim_pb2.StateResponse(id=request.id, pid=42)

    task = shim_pb2.DESCRIPTOR.services_by_name["Task"]
    server = Server([Service.from_descriptor(task, Tasks())])
    await server.start_unix("/tmp/shim.sock")

    async with await Client.connect("unix:///tmp/shim.sock") as client:
        state = await client.call(
            "containerd.task.v2.Task", "State", shim_pb2.StateRequest(id="c1"),
            shim_pb2.StateResponse, timeout=2,
        )
    await server.shutdown()

Layers, bottom up: :mod:`.framing` (sans-I/O frames), :mod:`.deadline`, :mod:`.service`
(registry and request context), then :mod:`.server` and :mod:`.client` (asyncio).
:mod:`.testing` has fixtures for other layers' tests.
"""

from __future__ import annotations

from .client import Client, Metadata
from .deadline import Deadline
from .errors import Code, ConnectionClosed, OversizedMessage, ProtocolError, TtrpcError
from .framing import (
    MAX_MESSAGE_LENGTH,
    Flags,
    Frame,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    encode_frame,
)
from .server import Server
from .service import Handler, Method, PeerCredentials, RequestContext, Service

__all__ = [
    "MAX_MESSAGE_LENGTH",
    "Client",
    "Code",
    "ConnectionClosed",
    "Deadline",
    "Flags",
    "Frame",
    "FrameDecoder",
    "Handler",
    "MessageType",
    "Metadata",
    "Method",
    "OversizedFrame",
    "OversizedMessage",
    "PeerCredentials",
    "ProtocolError",
    "RequestContext",
    "Server",
    "Service",
    "TtrpcError",
    "encode_frame",
]
