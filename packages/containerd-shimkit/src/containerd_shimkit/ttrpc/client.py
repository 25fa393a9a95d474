"""The ttrpc client: unary calls over one unix connection, multiplexed by stream id.

Mirrors containerd/ttrpc's Go client (``client.go``): stream ids 1, 3, 5, … per
connection, any number of calls in flight, responses matched by stream id, a response on
an unknown stream logged and dropped, and every pending call failed with
:class:`ConnectionClosed` (Go's ``ErrClosed``) when the connection goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from types import TracebackType
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from ..api import ttrpc_pb2
from .deadline import Deadline
from .errors import Code, ConnectionClosed, OversizedMessage, ProtocolError, TtrpcError
from .framing import (
    MAX_MESSAGE_LENGTH,
    Frame,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    encode_frame,
)

__all__ = ["Client", "Metadata"]

log = logging.getLogger("containerd_shimkit.ttrpc")

M = TypeVar("M", bound=Message)

#: Request metadata: a value, or several values, per key.
Metadata = Mapping[str, str | Sequence[str]]

_READ_SIZE = 64 * 1024


class Client:
    """A connection to a ttrpc server.

    Example::

        async with await Client.connect("/run/containerd/containerd.sock.ttrpc") as client:
            await client.call(
                "containerd.services.events.ttrpc.v1.Events", "Forward",
                events_ttrpc_pb2.ForwardRequest(envelope=envelope), empty_pb2.Empty,
                timeout=5,
            )

    Use :meth:`connect` rather than the constructor.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder()
        self._write_lock = asyncio.Lock()
        self._next_stream_id = 1
        self._pending: dict[int, asyncio.Future[ttrpc_pb2.Response]] = {}
        self._closed = False
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, path: str | os.PathLike[str]) -> Client:
        """Connect to the unix socket at ``path`` (an optional ``unix://`` prefix is removed).

        Raises:
            OSError: the socket does not exist or refuses the connection.
        """
        reader, writer = await asyncio.open_unix_connection(os.fspath(path).removeprefix("unix://"))
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        """Whether the connection is gone (closed by us or by the peer)."""
        return self._closed

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> M:
        """Call ``service``/``method`` and return its decoded response.

        Args:
            timeout: Seconds to wait for the answer; also sent as ``timeout_nano`` so the
                server stops working on the call at the same time.
            metadata: Request metadata, e.g. ``{"containerd-namespace-ttrpc": "default"}``.

        Raises:
            TtrpcError: the server answered with a non-OK status, or ``timeout`` passed
                (code DEADLINE_EXCEEDED).
            OversizedMessage: the request is too large to send; nothing was sent.
            ConnectionClosed: the connection is, or went, away before the answer came.
        """
        if self._closed:
            raise ConnectionClosed("ttrpc: closed")
        deadline = None if timeout is None else Deadline.from_timeout(timeout)
        stream_id = self._next_stream_id
        frame = _request_frame(stream_id, service, method, request, deadline, metadata)
        self._next_stream_id += 2
        future = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            response = await self._exchange(frame, future, deadline)
        finally:
            del self._pending[stream_id]
        return _unwrap(response, response_type)

    async def close(self) -> None:
        """Close the connection; pending calls fail with :class:`ConnectionClosed`."""
        # Once the reader is tearing down, let it finish: a cancel would also cancel the
        # close waiter it shares with every later ``wait_closed()`` on this writer.
        if not self._closed:
            self._read_task.cancel()
        await asyncio.gather(self._read_task, return_exceptions=True)
        # Again, for a reader cancelled before it ever ran (its finally never executed).
        await self._finish("ttrpc: closed")

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _exchange(
        self,
        frame: bytes,
        future: asyncio.Future[ttrpc_pb2.Response],
        deadline: Deadline | None,
    ) -> ttrpc_pb2.Response:
        scope = asyncio.timeout(None if deadline is None else deadline.time_remaining())
        try:
            async with scope:
                await self._send(frame)
                return await future
        except TimeoutError:
            if scope.expired():
                raise TtrpcError(Code.DEADLINE_EXCEEDED, "context deadline exceeded") from None
            raise

    async def _send(self, frame: bytes) -> None:
        async with self._write_lock:
            if self._closed:
                raise ConnectionClosed("ttrpc: closed")
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except OSError as exc:
                raise ConnectionClosed(f"ttrpc: closed: {exc}") from exc

    async def _read_loop(self) -> None:
        reason = "ttrpc: closed"
        try:
            while data := await self._reader.read(_READ_SIZE):
                self._decoder.feed(data)
                for event in self._decoder:
                    self._dispatch(event)
        except ProtocolError as exc:
            log.warning("closing connection: %s", exc)
            reason = f"ttrpc: closed: {exc}"
        except OSError as exc:
            reason = f"ttrpc: closed: {exc}"
        finally:
            await self._finish(reason)

    async def _finish(self, reason: str) -> None:
        self._closed = True
        self._fail_pending(reason)
        self._writer.close()
        with suppress(OSError):
            await self._writer.wait_closed()

    def _dispatch(self, event: Frame | OversizedFrame) -> None:
        future = self._pending.get(event.stream_id)
        if future is None or future.done():
            self._log_unknown_stream(event.stream_id)
        elif isinstance(event, OversizedFrame):
            future.set_exception(OversizedMessage(event.length, MAX_MESSAGE_LENGTH))
        elif event.type != MessageType.RESPONSE:
            log.warning("ignoring frame of type %d on stream %d", event.type, event.stream_id)
        else:
            try:
                future.set_result(ttrpc_pb2.Response.FromString(event.data))
            except DecodeError as exc:
                future.set_exception(ProtocolError(f"invalid response: {exc}"))

    def _log_unknown_stream(self, stream_id: int) -> None:
        if stream_id < self._next_stream_id and stream_id % 2 == 1:
            # A call we made but gave up on (timeout, cancellation): expected, not alarming.
            log.debug("dropping late response on stream %d", stream_id)
        else:
            log.warning("dropping response on unknown stream %d", stream_id)

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosed(reason))


def _request_frame(
    stream_id: int,
    service: str,
    method: str,
    request: Message,
    deadline: Deadline | None,
    metadata: Metadata | None,
) -> bytes:
    envelope = ttrpc_pb2.Request(
        service=service,
        method=method,
        payload=request.SerializeToString(),
        timeout_nano=0 if deadline is None else deadline.to_timeout_nano(),
        metadata=_metadata_pairs(metadata or {}),
    )
    return encode_frame(stream_id, MessageType.REQUEST, 0, envelope.SerializeToString())


def _metadata_pairs(metadata: Metadata) -> list[ttrpc_pb2.KeyValue]:
    return [
        ttrpc_pb2.KeyValue(key=key, value=value)
        for key, values in metadata.items()
        for value in ([values] if isinstance(values, str) else values)
    ]


def _unwrap(response: ttrpc_pb2.Response, response_type: type[M]) -> M:
    if response.HasField("status") and response.status.code != Code.OK:
        raise TtrpcError(_code(response.status.code), response.status.message)
    try:
        return response_type.FromString(response.payload)
    except DecodeError as exc:
        raise ProtocolError(f"response payload is not a {response_type.__name__}: {exc}") from exc


def _code(value: int) -> Code:
    try:
        return Code(value)
    except ValueError:
        return Code.UNKNOWN
