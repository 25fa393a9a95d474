"""Publishing task events to containerd.

RPC handlers never wait for containerd: they put events on a queue and one forwarder task
sends them in order over ttrpc (``containerd.services.events.ttrpc.v1.Events/Forward`` on
``TTRPC_ADDRESS``), so a slow or restarting containerd never blocks Create or Wait. Like
containerd's Go publisher, each Forward has a 5 s timeout, the connection is re-dialled when
it drops, and an event is retried a bounded number of times before it is dropped with an
error in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from google.protobuf.message import Message

from ..api import events_ttrpc_pb2, types_pb2

log = logging.getLogger(__name__)

TOPICS: dict[str, str] = {
    "TaskCreate": "/tasks/create",
    "TaskStart": "/tasks/start",
    "TaskExit": "/tasks/exit",
    "TaskDelete": "/tasks/delete",
    "TaskOOM": "/tasks/oom",
    "TaskExecAdded": "/tasks/exec-added",
    "TaskExecStarted": "/tasks/exec-started",
    "TaskPaused": "/tasks/paused",
    "TaskResumed": "/tasks/resumed",
    "TaskCheckpointed": "/tasks/checkpointed",
}

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
FORWARD_TIMEOUT = 5.0
MAX_ATTEMPTS = 5
QUEUE_SIZE = 2048


def topic_of(event: Message) -> str:
    """The containerd topic of a ``containerd.events.Task*`` message."""
    return TOPICS[event.DESCRIPTOR.name]


class EventSink(Protocol):
    """Where the Task service sends events. ``publish`` must not block."""

    def publish(self, event: Message) -> None:
        """Queue ``event`` for delivery, in order."""
        ...


class RecordingSink:
    """An :class:`EventSink` that keeps events in memory (for tests and stand-ins)."""

    def __init__(self) -> None:
        self.events: list[Message] = []

    def publish(self, event: Message) -> None:
        self.events.append(event)

    def topics(self) -> list[str]:
        """The topics published so far, in order."""
        return [topic_of(e) for e in self.events]


def envelope(namespace: str, event: Message, timestamp: float | None = None) -> types_pb2.Envelope:
    """Wrap ``event`` for Forward, with the bare type URL containerd 1.6 needs."""
    env = types_pb2.Envelope(namespace=namespace, topic=topic_of(event))
    env.timestamp.FromNanoseconds(int((timestamp or time.time()) * 1e9))
    # Bare full name, no "type.googleapis.com/" prefix: 1.6 consumers look it up verbatim.
    env.event.type_url = event.DESCRIPTOR.full_name
    env.event.value = event.SerializeToString()
    return env


class RemotePublisher:
    """An :class:`EventSink` that forwards events to containerd over ttrpc."""

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        self._queue: asyncio.Queue[types_pb2.Envelope] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._client: object | None = None

    def start(self) -> None:
        """Start the forwarder task (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._forward_loop())

    def publish(self, event: Message) -> None:
        if not self.address:
            log.debug("no TTRPC_ADDRESS: dropping %s", topic_of(event))
            return
        try:
            self._queue.put_nowait(envelope(self.namespace, event))
        except asyncio.QueueFull:
            log.error("event queue full, dropping %s", topic_of(event))

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) until every queued event has been handled."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning("%d events not delivered to containerd", self._queue.qsize())

    async def close(self) -> None:
        """Stop the forwarder and close the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._disconnect()

    async def _forward_loop(self) -> None:
        while True:
            env = await self._queue.get()
            try:
                await self._deliver(env)
            finally:
                self._queue.task_done()

    async def _deliver(self, env: types_pb2.Envelope) -> None:
        # Retries block the events queued behind this one: order matters more than latency
        # (containerd requires create < start < exit < delete).
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                await self._forward(env)
                return
            except Exception as exc:
                await self._disconnect()
                if attempt == MAX_ATTEMPTS:
                    log.error("evicting event %s after %d attempts: %s", env.topic, attempt, exc)
                    return
                log.warning("publishing %s failed (%s); retrying", env.topic, exc)
                await asyncio.sleep(attempt)  # linear backoff, as containerd's publisher

    async def _forward(self, env: types_pb2.Envelope) -> None:
        from ..ttrpc import Client

        client = self._client
        if client is None or getattr(client, "closed", True):
            client = await asyncio.wait_for(Client.connect(self.address), FORWARD_TIMEOUT)
            self._client = client
        assert isinstance(client, Client)
        request = events_ttrpc_pb2.ForwardRequest(envelope=env)
        from google.protobuf import empty_pb2

        await client.call(
            EVENTS_SERVICE, "Forward", request, empty_pb2.Empty, timeout=FORWARD_TIMEOUT
        )

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            from ..ttrpc import Client

            assert isinstance(client, Client)
            await client.close()
