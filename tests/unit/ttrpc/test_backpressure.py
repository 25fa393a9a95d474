"""Back-pressure: a peer that pipelines requests and never reads stays cheap and harmless.

The server runs at most ``max_in_flight`` requests per connection and stops reading a
connection whose answers pile up. Checks are on counts and ordering only: "the server had
its chance" is a round trip on another connection, after which a server without the
bound would already have started every request it read.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable

import pytest

from containerd_shimkit.api import shim_pb2
from containerd_shimkit.ttrpc import Server, Service
from containerd_shimkit.ttrpc.server import WRITE_HIGH_WATER
from containerd_shimkit.ttrpc.testing import RunningServer

from .conftest import FakeTasks, RawPeer

pytestmark = pytest.mark.usefixtures("no_leaks")

#: Small enough that a few dozen pipelined requests exceed it.
BOUND = 8


@pytest.fixture
async def bounded(services: list[Service]) -> AsyncIterator[RunningServer]:
    """A server that runs at most :data:`BOUND` requests of a connection at once."""
    directory = tempfile.mkdtemp(prefix="ttrpc-")
    server = Server(services, max_in_flight=BOUND)
    path = os.path.join(directory, "ttrpc.sock")
    try:
        await server.start_unix(path)
        yield RunningServer(server, path)
    finally:
        await server.shutdown()
        shutil.rmtree(directory, ignore_errors=True)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a liveness check: the timeout only turns a hang into a failure)."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


async def round_trip(served: RunningServer, request_id: str = "other") -> None:
    """Get an answer on a fresh connection: the server is not stuck, and had its chance."""
    other = await RawPeer.connect(served.path)
    other.send_request(1, "State", shim_pb2.StateRequest(id=request_id))
    _, response = await other.next_response()
    assert shim_pb2.StateResponse.FromString(response.payload).id == request_id
    await other.close()


def pipeline(peer: RawPeer, method: str, count: int) -> list[int]:
    """Send ``count`` requests at once without reading; return their stream ids."""
    stream_ids = [2 * i + 1 for i in range(count)]
    for stream_id in stream_ids:
        if method == "Wait":
            peer.send_request(stream_id, "Wait", shim_pb2.WaitRequest(id=str(stream_id)))
        else:
            peer.send_request(stream_id, "Stats", shim_pb2.StatsRequest(id=str(stream_id)))
    return stream_ids


async def fill_every_slot_with_waits(
    server: RunningServer, tasks: FakeTasks
) -> tuple[RawPeer, list[int]]:
    """A new peer that pipelined 5 × BOUND Waits, once BOUND of them are running (they
    end when ``tasks.release_wait`` is set); the peer and the Waits' stream ids."""
    peer = await RawPeer.connect(server.path)
    stream_ids = pipeline(peer, "Wait", 5 * BOUND)
    await until(lambda: tasks.waits_started >= BOUND)
    return peer, stream_ids


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_pipelined_requests_run_at_most_max_in_flight_at_once(
    bounded: RunningServer, tasks: FakeTasks
) -> None:
    peer, stream_ids = await fill_every_slot_with_waits(bounded, tasks)
    await round_trip(bounded)
    assert tasks.waits_started == BOUND  # the others are still unread
    tasks.release_wait.set()
    answered = [(await peer.next_response())[0] for _ in stream_ids]
    assert sorted(answered) == stream_ids  # every held request ran in the end
    assert tasks.peak_waiting == BOUND
    await peer.close()


async def test_a_peer_that_does_not_read_is_no_longer_read(
    bounded: RunningServer, tasks: FakeTasks
) -> None:
    peer = await RawPeer.connect(bounded.path)
    count = 1000
    stream_ids = pipeline(peer, "Stats", count)
    await round_trip(bounded)
    await round_trip(bounded)
    # Answers that left the handlers sit in the kernel (under twice SO_SNDBUF, the same
    # default on both ends: the limit is checked before each skb, which can overshoot it)
    # or in asyncio's write buffer (the high-water mark plus the frame that crossed it);
    # BOUND more requests may be waiting to be written.
    sndbuf = peer.writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    buffered_answers = (2 * sndbuf + WRITE_HIGH_WATER) // tasks.stats_size + 1
    assert tasks.stats_calls <= BOUND + buffered_answers < count
    # Reading again lets everything through, in some order.
    answered = [(await peer.next_response())[0] for _ in stream_ids]
    assert sorted(answered) == stream_ids
    assert tasks.stats_calls == count
    await peer.close()


async def test_closing_a_flooding_peer_cancels_its_handlers_and_drops_the_rest(
    bounded: RunningServer, tasks: FakeTasks
) -> None:
    peer, _ = await fill_every_slot_with_waits(bounded, tasks)
    # All slots hold a Wait that would never end: only the read-ahead can see the close.
    await peer.close()
    await until(lambda: len(tasks.cancelled) == BOUND)
    await round_trip(bounded)
    assert tasks.waits_started == BOUND
    assert tasks.waiting == 0


async def test_closing_a_peer_blocked_on_writes_frees_its_connection(
    bounded: RunningServer, tasks: FakeTasks
) -> None:
    fds = open_fds()
    peer = await RawPeer.connect(bounded.path)
    count = 1000
    pipeline(peer, "Stats", count)
    await round_trip(bounded)
    await peer.close()
    # Both ends of the connection were ours; the server's end closes once its handlers,
    # blocked on a full write buffer, are gone.
    await until(lambda: open_fds() == fds)
    await round_trip(bounded)
    assert tasks.stats_calls < count  # what was still unread was never handled


async def test_max_in_flight_must_be_positive(services: list[Service]) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        Server(services, max_in_flight=0)


async def test_shutdown_does_not_wait_for_a_peer_that_does_not_read(
    bounded: RunningServer, tasks: FakeTasks
) -> None:
    peer = await RawPeer.connect(bounded.path)
    pipeline(peer, "Stats", 1000)
    await round_trip(bounded)
    async with asyncio.timeout(10):  # liveness: it used to wait for the peer forever
        await bounded.server.shutdown()
    while await peer.reader.read(1 << 20):
        pass  # answers that were already written, then the end
    await peer.close()
