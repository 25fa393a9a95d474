"""Publishing task events to containerd.

RPC handlers never wait for containerd: they put events on a queue and one forwarder task
sends them in order over ttrpc (``containerd.services.events.ttrpc.v1.Events/Forward`` on
``TTRPC_ADDRESS``), so a slow or restarting containerd never blocks Create or Wait.

Delivery across a containerd restart: each Forward has a 5 s timeout, as in containerd's Go
publisher; after a failure the connection is dropped and re-dialled on the next attempt
(containerd's ttrpc socket disappears while it is down and comes back on the same path), and
the event is retried with a backoff from :data:`MIN_BACKOFF` doubling up to
:data:`MAX_BACKOFF`, until :data:`RETRY_WINDOW` after it was published. containerd's own
shims (``pkg/shim/publisher.go``) give up after six attempts 1, 2, 3, 4 and 5 s apart,
~15 s; an exit during a longer restart was lost. Unlike them, a retried event keeps its
place: the events behind it wait (containerd needs create < start < exit < delete), and the
window counts from each event's publication, so the whole queue of an outage expires
together instead of one window per event. Memory stays bounded by :data:`QUEUE_SIZE`.
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
#: The deadline of one Forward (and of one connect), as containerd's Go publisher.
FORWARD_TIMEOUT = 5.0
#: How long after its publication an event is still retried. runc's shim tries for ~15 s; a
#: busy node's containerd can take longer to restart, and waiting costs only queue memory.
RETRY_WINDOW = 60.0
#: The wait after an event's first failed attempt; doubled after each further failure.
MIN_BACKOFF = 0.1
#: The longest wait between attempts: once containerd is back, the queue starts moving at
#: most this late (a failed attempt on a missing socket costs one ``connect`` call).
MAX_BACKOFF = 1.0
#: How often an event containerd *answered* with an error is tried: that is a refusal, not a
#: restart, and must not hold the queue for the whole window.
MAX_REFUSALS = 5
#: Events waiting for containerd; more are dropped (with an error in the log).
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


def _refused(exc: Exception) -> bool:
    """Whether ``exc`` means containerd received the event and rejected it (rather than
    containerd being unreachable, restarting or too slow)."""
    from ..ttrpc import Code, ProtocolError, TtrpcError

    if isinstance(exc, TtrpcError):
        return exc.code not in (Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE, Code.CANCELLED)
    return isinstance(exc, ProtocolError)


class RemotePublisher:
    """An :class:`EventSink` that forwards events to containerd over ttrpc, in order,
    retrying each for up to ``retry_window`` seconds after its publication (see the module
    docstring)."""

    def __init__(
        self,
        address: str,
        namespace: str,
        *,
        retry_window: float = RETRY_WINDOW,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        self.retry_window = retry_window
        self.max_backoff = max_backoff
        # Each envelope with the monotonic time it was published at (its window's start).
        self._queue: asyncio.Queue[tuple[float, types_pb2.Envelope]] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._client: object | None = None
        # Set while containerd is unreachable: one warning per outage, not one per attempt.
        self._outage_since: float | None = None

    def start(self) -> None:
        """Start the forwarder task (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._forward_loop())

    def publish(self, event: Message) -> None:
        """Queue ``event`` for delivery, behind every event published before it."""
        if not self.address:
            log.debug("no TTRPC_ADDRESS: dropping %s", topic_of(event))
            return
        try:
            self._queue.put_nowait((time.monotonic(), envelope(self.namespace, event)))
        except asyncio.QueueFull:
            log.error("event queue full, dropping %s", topic_of(event))

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued event has been delivered or dropped, but at most
        ``timeout`` seconds (the daemon's exit must not wait out a containerd outage)."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            # qsize() leaves out the event being retried.
            log.warning("%d events not delivered to containerd", self._queue.qsize() + 1)

    async def close(self) -> None:
        """Stop the forwarder and close the connection."""
        task, self._task = self._task, None
        while task is not None and not task.done():
            # Again until it ends: on Python 3.11 a wait_for whose inner call finishes at
            # the moment of the cancel swallows it (gh-86296), and the loop would go on.
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        await self._disconnect()

    async def _forward_loop(self) -> None:
        while True:
            published, env = await self._queue.get()
            try:
                await self._deliver(env, published + self.retry_window)
            finally:
                self._queue.task_done()

    async def _deliver(self, env: types_pb2.Envelope, deadline: float) -> None:
        # Retries block the events queued behind this one: order matters more than latency
        # (containerd requires create < start < exit < delete).
        backoff = MIN_BACKOFF
        refusals = 0
        while True:
            try:
                await self._forward(env)
            except Exception as exc:
                await self._disconnect()  # re-dial: containerd may be a new process now
                now = time.monotonic()
                refusals += _refused(exc)
                if refusals >= MAX_REFUSALS or now >= deadline:
                    log.error("evicting event %s: %s", env.topic, exc)
                    return
                if self._outage_since is None:
                    self._outage_since = now
                    log.warning(
                        "publishing %s failed (%s); retrying for up to %.0f s",
                        env.topic,
                        exc,
                        deadline - now,
                    )
                else:
                    log.debug("publishing %s failed again: %s", env.topic, exc)
                await asyncio.sleep(min(backoff, deadline - now))
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if self._outage_since is not None:
                log.info(
                    "containerd reachable again after %.1f s; events are delivered",
                    time.monotonic() - self._outage_since,
                )
                self._outage_since = None
            return

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
