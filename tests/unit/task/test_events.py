"""RemotePublisher against a fake containerd events server that goes away and comes back."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from google.protobuf import empty_pb2

from containerd_shimkit.api import events_pb2, events_ttrpc_pb2
from containerd_shimkit.errors import InvalidArgument
from containerd_shimkit.task import events as events_mod
from containerd_shimkit.task.events import RemotePublisher
from containerd_shimkit.ttrpc import RequestContext, Server, Service

EVENTS = events_ttrpc_pb2.DESCRIPTOR.services_by_name["Events"]


class FakeContainerd:
    """containerd's ttrpc events service on a fixed path; :meth:`stop` removes the socket
    (as a stopped containerd does) and :meth:`start` serves the same path again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.received: list[tuple[str, str]] = []  # (topic, container id)
        self.attempts: dict[str, int] = {}  # container id -> Forward calls that reached us
        self.refuse: set[str] = set()  # container ids answered with an error
        self._server: Server | None = None

    async def forward(
        self, request: events_ttrpc_pb2.ForwardRequest, ctx: RequestContext
    ) -> empty_pb2.Empty:
        env = request.envelope
        cid = _container_id(env.event.type_url, env.event.value)
        self.attempts[cid] = self.attempts.get(cid, 0) + 1
        if cid in self.refuse:
            raise InvalidArgument(f"refusing {cid}")
        self.received.append((env.topic, cid))
        return empty_pb2.Empty()

    async def start(self) -> None:
        assert self._server is None
        self._server = Server([Service.from_descriptor(EVENTS, self)])
        await self._server.start_unix(self.path)

    async def stop(self) -> None:
        assert self._server is not None
        await self.close()
        assert not os.path.exists(self.path)

    async def close(self) -> None:
        """Shut the server down, if it runs."""
        if self._server is None:
            return
        await self._server.shutdown()  # closes the publisher's connection, unlinks the path
        self._server = None

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[str, str]]:
        """The events received once there are ``count`` (fails after ``timeout``)."""

        async def poll() -> None:
            while len(self.received) < count:
                await asyncio.sleep(0.02)

        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            pytest.fail(f"only {self.received} reached containerd")
        return self.received


def _container_id(type_url: str, value: bytes) -> str:
    name = type_url.rsplit(".", 1)[-1]
    message = getattr(events_pb2, name).FromString(value)
    return str(message.container_id)


@pytest.fixture
def socket_path() -> Iterator[str]:
    # Not pytest's tmp_path: unix socket paths are limited to 107 bytes.
    directory = tempfile.mkdtemp(prefix="events-")
    yield os.path.join(directory, "containerd.sock.ttrpc")
    shutil.rmtree(directory, ignore_errors=True)


def _lifecycle(cid: str) -> list[object]:
    return [
        events_pb2.TaskCreate(container_id=cid, pid=10),
        events_pb2.TaskStart(container_id=cid, pid=10),
        events_pb2.TaskExit(container_id=cid, id=cid, pid=10, exit_status=3),
        events_pb2.TaskDelete(container_id=cid, id=cid, pid=10, exit_status=3),
    ]


LIFECYCLE_TOPICS = ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]


@pytest.mark.slow
async def test_an_exit_published_while_containerd_is_down_for_12_s_still_arrives_in_order(
    socket_path: str,
) -> None:
    """runc's shim retries for ~15 s and ours gave up after ~10 s: an exit during a
    containerd restart was lost. Now it waits for containerd, keeping the events' order."""
    ctd = FakeContainerd(socket_path)
    await ctd.start()
    publisher = RemotePublisher(socket_path, "ns")
    publisher.start()
    try:
        create, start, exit_, delete = _lifecycle("c1")
        publisher.publish(create)  # type: ignore[arg-type]
        publisher.publish(start)  # type: ignore[arg-type]
        await ctd.wait_for(2)  # connected to the first "containerd"
        await ctd.stop()
        publisher.publish(exit_)  # type: ignore[arg-type]
        await asyncio.sleep(12.0)  # containerd restarting
        publisher.publish(delete)  # type: ignore[arg-type]
        await ctd.start()  # a new containerd on the same path: the publisher re-dials
        received = await ctd.wait_for(4)
        assert [topic for topic, _ in received] == LIFECYCLE_TOPICS
    finally:
        await publisher.close()
        await ctd.close()


async def test_events_keep_their_order_across_a_short_outage(socket_path: str) -> None:
    ctd = FakeContainerd(socket_path)
    await ctd.start()
    publisher = RemotePublisher(socket_path, "ns")
    publisher.start()
    try:
        first, second = _lifecycle("a"), _lifecycle("b")
        for event in first[:2]:
            publisher.publish(event)  # type: ignore[arg-type]
        await ctd.wait_for(2)
        await ctd.stop()
        for event in [*first[2:], *second]:
            publisher.publish(event)  # type: ignore[arg-type]
        await asyncio.sleep(0.5)  # several failed attempts, with backoff
        await ctd.start()
        received = await ctd.wait_for(8)
        assert received == [(t, "a") for t in LIFECYCLE_TOPICS] + [
            (t, "b") for t in LIFECYCLE_TOPICS
        ]
        await asyncio.wait_for(publisher.flush(), 10.0)
    finally:
        await publisher.close()
        await ctd.close()


async def test_events_older_than_the_window_are_dropped_and_the_queue_moves_on(
    socket_path: str,
) -> None:
    """Memory and the forwarder stay bounded when containerd never comes back: every
    event published during the outage expires, and later ones are delivered."""
    ctd = FakeContainerd(socket_path)
    publisher = RemotePublisher(socket_path, "ns", retry_window=0.5, max_backoff=0.1)
    publisher.start()
    try:
        for event in _lifecycle("lost"):
            publisher.publish(event)  # type: ignore[arg-type]
        # The queue drains by eviction (a guard against hanging, not a timing assertion).
        await asyncio.wait_for(publisher._queue.join(), 30.0)
        await ctd.start()
        publisher.publish(_lifecycle("kept")[0])  # type: ignore[arg-type]
        assert await ctd.wait_for(1) == [("/tasks/create", "kept")]
        assert "lost" not in ctd.attempts
    finally:
        await publisher.close()
        await ctd.close()


async def test_an_event_containerd_refuses_does_not_hold_the_queue(socket_path: str) -> None:
    """An error *answer* is not a restart: the event is tried a few times, not for the
    whole retry window, and the events behind it are delivered."""
    ctd = FakeContainerd(socket_path)
    ctd.refuse.add("bad")
    await ctd.start()
    publisher = RemotePublisher(socket_path, "ns")
    publisher.start()
    try:
        publisher.publish(_lifecycle("bad")[0])  # type: ignore[arg-type]
        publisher.publish(_lifecycle("good")[0])  # type: ignore[arg-type]
        assert await ctd.wait_for(1) == [("/tasks/create", "good")]
        assert ctd.attempts["bad"] == events_mod.MAX_REFUSALS
    finally:
        await publisher.close()
        await ctd.close()


async def test_flush_gives_up_while_containerd_is_down(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon flushes before it exits; a containerd outage must not keep it alive for
    the whole retry window."""
    publisher = RemotePublisher(socket_path, "ns")
    publisher.start()
    try:
        publisher.publish(_lifecycle("c1")[2])  # type: ignore[arg-type]
        await asyncio.wait_for(publisher.flush(timeout=0.3), 10.0)
        assert "1 events not delivered to containerd" in caplog.text
    finally:
        await asyncio.wait_for(publisher.close(), 10.0)
