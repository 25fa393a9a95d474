"""The ttrpc server: accept unix connections, run each request in its own task, answer.

Behaviour follows containerd/ttrpc's Go server (``server.go``), because containerd relies
on it:

* One reader task per connection and one task per request, so many calls are in flight
  at once and responses go out in completion order (containerd keeps ``Wait`` blocked
  for minutes while it sends ``State`` and ``Kill`` on the same connection).
* Writes are serialized per connection; a frame is never interleaved with another.
* Stream ids must be odd and increasing; other frame types than REQUEST are ignored, as
  ttrpc 1.1 (Debian's containerd 1.6) does.
* An oversize frame is skipped and answered with RESOURCE_EXHAUSTED; the connection
  survives. Bytes that cannot be framed at all close that one connection.
* Handler exceptions become a status exactly once, in :func:`_status_of`.
* A peer whose uid/gid differ from ours is refused (``UnixSocketRequireSameUser``).

Back-pressure, where we are stricter than Go (whose per-request goroutines are bounded only
by its blocking writer): a connection runs at most ``max_in_flight`` requests at once, and
reads nothing more while its write buffer is above :data:`WRITE_HIGH_WATER`. A peer that
pipelines requests without reading the answers therefore ends up blocked on its own
writes instead of growing the daemon, and its handlers are cancelled when it goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Iterable, Mapping
from contextlib import suppress
from types import TracebackType
from typing import Any

from google.protobuf.message import DecodeError, Message

from ..api import ttrpc_pb2
from .deadline import Deadline
from .errors import Code, OversizedMessage, ProtocolError, TtrpcError
from .framing import (
    MAX_MESSAGE_LENGTH,
    Frame,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    encode_frame,
)
from .service import Method, PeerCredentials, RequestContext, Service, metadata_from_pairs

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "WRITE_HIGH_WATER", "Server"]

log = logging.getLogger("containerd_shimkit.ttrpc")

_READ_SIZE = 64 * 1024

#: Requests one connection may have running at once before the server stops reading it.
#: containerd sends all of a pod's calls on one connection and keeps a ``Wait`` open there
#: for every process of the pod (each container and each exec) while also sending
#: ``State``, ``Kill``, ``Stats``... A pod never comes close to 256 concurrent calls, and
#: the bound must stay far above that: when every slot holds a ``Wait``, the ``Kill`` that
#: would end them is not read. A blocked request costs a few KiB (task, coroutine frames,
#: messages), so a flooding connection holds about 1 MiB instead of growing without limit.
DEFAULT_MAX_IN_FLIGHT = 256

#: A connection's write buffer above this many bytes pauses asyncio's protocol; handlers
#: then wait in ``drain()`` and the connection reads nothing more until the buffer is back
#: under a quarter of it (asyncio's default low-water mark). asyncio's own default, spelled
#: out because the bound on what a non-reading peer costs depends on it.
WRITE_HIGH_WATER = 64 * 1024

#: While all slots are taken, keep reading until this many bytes of requests wait in the
#: decoder: only a read sees a peer that closed, whose running handlers must be cancelled.
_READ_AHEAD = 64 * 1024

# struct ucred from <sys/socket.h>: pid_t, uid_t, gid_t.
_UCRED = struct.Struct("3i")


class Server:
    """Serves :class:`Service` objects over unix sockets.

    Example::

        server = Server([Service.from_descriptor(task_descriptor, tasks)])
        await server.start_unix("/run/containerd/s/abc")
        ...
        await server.shutdown()

    Args:
        services: The services to answer; their names must be distinct.
        require_same_user: Refuse peers whose uid or gid differ from the expected ones.
        expected_uid: The uid peers must have (default: our effective uid).
        expected_gid: The gid peers must have (default: our effective gid).
        max_in_flight: Requests of one connection handled at once; further requests
            stay unread in the socket until one of them is answered.
    """

    def __init__(
        self,
        services: Iterable[Service],
        *,
        require_same_user: bool = True,
        expected_uid: int | None = None,
        expected_gid: int | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self._services = _index(services)
        self._max_in_flight = max_in_flight
        self._require_same_user = require_same_user
        self._expected_uid = os.geteuid() if expected_uid is None else expected_uid
        self._expected_gid = os.getegid() if expected_gid is None else expected_gid
        self._listeners: list[asyncio.Server] = []
        self._owned_paths: list[str] = []
        self._connections: set[_Connection] = set()
        self._stopping: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    async def serve(self, listening_socket: socket.socket) -> None:
        """Accept connections on an already bound and listening ``AF_UNIX`` socket.

        Returns once :meth:`shutdown` has completed (like Go's ``Server.Serve``);
        cancelling it shuts the server down. The socket belongs to the server from now
        on, but its path (which the server did not create) is not unlinked.
        """
        await self._listen(listening_socket)
        try:
            await self.wait_closed()
        except asyncio.CancelledError:
            await self.shutdown()
            raise

    async def start_unix(self, path: str | os.PathLike[str]) -> None:
        """Bind ``path`` (mode 0600), start accepting, and return.

        An optional ``unix://`` prefix is removed. :meth:`shutdown` unlinks the path again.

        Raises:
            OSError: the path cannot be bound (for example it already exists).
        """
        path = os.fspath(path).removeprefix("unix://")
        sock = _bind_unix(path)
        try:
            await self._listen(sock)
        except BaseException:
            sock.close()
            os.unlink(path)
            raise
        self._owned_paths.append(path)

    async def shutdown(self) -> None:
        """Stop accepting, close every connection, cancel in-flight handlers, and wait.

        Safe to call more than once and from several tasks. Must not be awaited from a
        request handler, which would wait for itself: schedule it in a task instead.
        """
        if self._in_handler():
            raise RuntimeError("Server.shutdown() awaited inside a request handler")
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())
        # Shielded so that a cancelled caller does not leave the server half stopped.
        await asyncio.shield(self._stopping)

    async def wait_closed(self) -> None:
        """Wait until :meth:`shutdown` has completed."""
        await self._closed.wait()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def _listen(self, sock: socket.socket) -> None:
        if self._stopping is not None:
            raise RuntimeError("Server is shut down")
        self._listeners.append(await asyncio.start_unix_server(self._accept, sock=sock))

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_credentials(writer)
        if self._stopping is not None or not self._peer_allowed(peer):
            writer.close()
            return
        log.debug("connection from %s", peer)
        conn = _Connection(self._services, reader, writer, peer, self._max_in_flight)
        self._connections.add(conn)
        conn.task.add_done_callback(lambda _: self._connections.discard(conn))

    def _peer_allowed(self, peer: PeerCredentials | None) -> bool:
        if not self._require_same_user:
            return True
        if peer is not None and (peer.uid, peer.gid) == (self._expected_uid, self._expected_gid):
            return True
        log.warning(
            "rejecting connection from %s: peer must have uid %d gid %d",
            peer or "unknown peer",
            self._expected_uid,
            self._expected_gid,
        )
        return False

    def _in_handler(self) -> bool:
        current = asyncio.current_task()
        return any(current in conn.requests for conn in self._connections)

    async def _stop(self) -> None:
        try:
            for listener in self._listeners:
                listener.close()
            await asyncio.gather(*(conn.aclose() for conn in list(self._connections)))
            for listener in self._listeners:
                await listener.wait_closed()
            for path in self._owned_paths:
                with suppress(FileNotFoundError):
                    os.unlink(path)
        finally:
            self._closed.set()


class _Connection:
    """One accepted connection: a reader task plus one task per in-flight request."""

    def __init__(
        self,
        services: Mapping[str, Service],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCredentials | None,
        max_in_flight: int,
    ) -> None:
        self._services = services
        self._reader = reader
        self._writer = writer
        self._peer = peer
        self._max_in_flight = max_in_flight
        self._decoder = FrameDecoder()
        self._write_lock = asyncio.Lock()
        self._last_stream_id = 0
        self._closing = False
        # A read started while all slots were taken, and the future a finishing handler
        # resolves to wake the reader up (see _next_bytes).
        self._reading: asyncio.Task[bytes] | None = None
        self._slot_freed: asyncio.Future[None] | None = None
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        #: Handler tasks still running; cancelled when the connection goes away.
        self.requests: set[asyncio.Task[None]] = set()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Cancel the reader and the handlers and close the socket."""
        # Once the reader is tearing down, let it finish: a cancel would also cancel the
        # close waiter it shares with every later ``wait_closed()`` on this writer.
        if not self._closing:
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        # Again, for a reader cancelled before it ever ran (its finally never executed).
        await self._close()

    async def _run(self) -> None:
        try:
            await self._read_loop()
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", self._peer, exc)
        except OSError as exc:  # ECONNRESET and friends: the peer went away
            log.debug("connection from %s lost: %s", self._peer, exc)
        finally:
            await self._close()

    async def _read_loop(self) -> None:
        while True:
            # While the peer does not take our answers, asyncio pauses the protocol above
            # the high-water mark; waiting here until it resumes is what stops the reading.
            await self._writer.drain()
            # Nothing may be awaited between the end of this and _next_bytes: it relies on
            # "below the bound" meaning "no decoded frame is waiting".
            await self._dispatch()
            data = await self._next_bytes()
            if data is None:  # a slot was freed: dispatch what is already decoded
                continue
            if not data:
                return
            self._decoder.feed(data)

    async def _dispatch(self) -> None:
        """Act on every decoded frame, stopping while ``max_in_flight`` requests run."""
        while not self._at_bound() and (event := self._decoder.next_frame()) is not None:
            if isinstance(event, OversizedFrame):
                error = OversizedMessage(event.length, MAX_MESSAGE_LENGTH)
                await self._send(event.stream_id, _status_response(error.code, error.message))
            else:
                await self._on_frame(event)

    def _at_bound(self) -> bool:
        return len(self.requests) >= self._max_in_flight

    async def _next_bytes(self) -> bytes | None:
        """Read from the peer; at the bound, return ``None`` once a handler finishes.

        Below the bound this is a plain read. At the bound a read still runs (up to
        :data:`_READ_AHEAD` bytes of backlog) so that the peer closing is noticed and its
        handlers cancelled even when all of them wait for something that may never come.
        """
        reading = self._reading
        if reading is not None and (reading.done() or not self._at_bound()):
            self._reading = None
            return await reading
        if not self._at_bound():
            return await self._reader.read(_READ_SIZE)
        if reading is None and self._decoder.buffered < _READ_AHEAD:
            reading = self._reading = asyncio.get_running_loop().create_task(
                self._reader.read(_READ_SIZE)
            )
        self._slot_freed = asyncio.get_running_loop().create_future()
        waiting: set[asyncio.Future[Any]] = {self._slot_freed}
        if reading is not None:
            waiting.add(reading)
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._slot_freed = None
        if reading is not None and reading.done():
            self._reading = None
            return reading.result()
        return None

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.requests.discard(task)
        if self._slot_freed is not None and not self._slot_freed.done():
            self._slot_freed.set_result(None)

    async def _on_frame(self, frame: Frame) -> None:
        if frame.type != MessageType.REQUEST:
            log.debug("ignoring frame of type %d on stream %d", frame.type, frame.stream_id)
            return
        rejection = self._check_stream_id(frame.stream_id)
        if rejection is not None:
            await self._send(frame.stream_id, _status_response(Code.INVALID_ARGUMENT, rejection))
            return
        try:
            request = ttrpc_pb2.Request.FromString(frame.data)
        except DecodeError as exc:
            response = _status_response(Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}")
            await self._send(frame.stream_id, response)
            return
        task = asyncio.get_running_loop().create_task(self._respond(frame.stream_id, request))
        self.requests.add(task)
        task.add_done_callback(self._finished)

    def _check_stream_id(self, stream_id: int) -> str | None:
        if stream_id % 2 != 1:
            return "StreamID must be odd for client initiated streams"
        if stream_id <= self._last_stream_id:
            return "StreamID cannot be re-used and must increment"
        self._last_stream_id = stream_id
        return None

    async def _respond(self, stream_id: int, request: ttrpc_pb2.Request) -> None:
        log.debug("stream %d: %s/%s", stream_id, request.service, request.method)
        response = await _handle_request(self._services, request, self._peer)
        log.debug(
            "stream %d: %s/%s -> %s",
            stream_id,
            request.service,
            request.method,
            Code(response.status.code).name if response.HasField("status") else "OK",
        )
        await self._send(stream_id, response)

    async def _send(self, stream_id: int, response: ttrpc_pb2.Response) -> None:
        data = response.SerializeToString()
        if len(data) > MAX_MESSAGE_LENGTH:
            error = OversizedMessage(len(data), MAX_MESSAGE_LENGTH)
            log.error("stream %d: response not sent: %s", stream_id, error.message)
            data = _status_response(error.code, error.message).SerializeToString()
        frame = encode_frame(stream_id, MessageType.RESPONSE, 0, data)
        async with self._write_lock:
            if self._writer.is_closing():
                return
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except ConnectionError as exc:
                # The reader sees the same failure and tears the connection down.
                log.debug("stream %d: response lost, peer gone: %s", stream_id, exc)

    async def _close(self) -> None:
        self._closing = True
        pending: list[asyncio.Future[Any]] = list(self.requests)
        if self._reading is not None:
            pending.append(self._reading)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # Not close(): that waits to flush the write buffer, forever if the peer does not
        # read, and keeps shutdown() waiting with it. Nobody waits for those answers now.
        self._writer.transport.abort()
        with suppress(OSError):
            await self._writer.wait_closed()


async def _handle_request(
    services: Mapping[str, Service],
    request: ttrpc_pb2.Request,
    peer: PeerCredentials | None,
) -> ttrpc_pb2.Response:
    """Run one request to completion and build its Response. Only cancellation escapes."""
    try:
        method = _lookup(services, request.service, request.method)
        message = _decode_payload(method, request.payload)
        ctx = RequestContext(
            service=request.service,
            method=request.method,
            metadata=metadata_from_pairs((kv.key, kv.value) for kv in request.metadata),
            deadline=Deadline.from_timeout_nano(request.timeout_nano),
            peer=peer,
        )
        result = await _call_with_deadline(method, message, ctx)
    except asyncio.CancelledError:
        if _being_cancelled():
            raise
        # The handler let a CancelledError out although nobody cancelled this request
        # (e.g. it awaited a future someone else cancelled): answer rather than hang.
        log.warning("%s/%s: handler was cancelled", request.service, request.method)
        return _status_response(Code.CANCELLED, "context canceled")
    except Exception as exc:
        code, text = _status_of(exc)
        _log_failure(request, code, exc)
        return _status_response(code, text)
    # No status field at all on success: what Go sends, and 0 bytes for an Empty result.
    return ttrpc_pb2.Response(payload=result.SerializeToString())


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _lookup(services: Mapping[str, Service], service_name: str, method_name: str) -> Method:
    service = services.get(service_name)
    if service is None:
        raise TtrpcError(Code.UNIMPLEMENTED, f"service {service_name}")
    method = service.methods.get(method_name)
    if method is None:
        raise TtrpcError(Code.UNIMPLEMENTED, f"method {method_name}")
    return method


def _decode_payload(method: Method, payload: bytes) -> Message:
    try:
        return method.request_type.FromString(payload)
    except DecodeError as exc:
        raise TtrpcError(Code.INTERNAL, f"ttrpc: error unmarshalling payload: {exc}") from exc


async def _call_with_deadline(method: Method, message: Message, ctx: RequestContext) -> Message:
    scope = asyncio.timeout(None if ctx.deadline is None else ctx.deadline.time_remaining())
    try:
        async with scope:
            result = await method.handler(message, ctx)
    except TimeoutError:
        # Only our own timer means the client's deadline passed; a TimeoutError raised by
        # the handler itself is an ordinary failure.
        if scope.expired():
            raise TtrpcError(Code.DEADLINE_EXCEEDED, "context deadline exceeded") from None
        raise
    if not isinstance(result, Message):
        raise TypeError(f"handler of {method.name} returned {type(result).__name__}, not a message")
    return result


def _status_of(exc: Exception) -> tuple[Code, str]:
    """The status for a handler exception: its own ``code``/``message`` if it has them
    (:class:`~containerd_shimkit.errors.ShimError`, :class:`TtrpcError`), else UNKNOWN."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    if isinstance(code, Code) and code is not Code.OK and isinstance(message, str):
        return code, message
    return Code.UNKNOWN, str(exc) or type(exc).__name__


def _log_failure(request: ttrpc_pb2.Request, code: Code, exc: Exception) -> None:
    name = f"{request.service}/{request.method}"
    if code is Code.DEADLINE_EXCEEDED:
        log.info("%s: deadline exceeded", name)
    elif isinstance(getattr(exc, "code", None), Code):
        log.debug("%s: %s: %s", name, code.name, exc)
    else:
        log.exception("%s: unexpected error", name, exc_info=exc)


def _status_response(code: Code, message: str) -> ttrpc_pb2.Response:
    return ttrpc_pb2.Response(status=ttrpc_pb2.Status(code=int(code), message=message))


def _index(services: Iterable[Service]) -> dict[str, Service]:
    index: dict[str, Service] = {}
    for service in services:
        if service.name in index:
            raise ValueError(f"service {service.name} registered twice")
        index[service.name] = service
    return index


def _bind_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        try:
            # Before listen(): connecting to a socket that does not listen yet fails, so
            # nobody can get in while the file still has the umask's mode.
            os.chmod(path, 0o600)
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            os.unlink(path)
            raise
    except BaseException:
        sock.close()
        raise
    return sock


def _peer_credentials(writer: asyncio.StreamWriter) -> PeerCredentials | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)
