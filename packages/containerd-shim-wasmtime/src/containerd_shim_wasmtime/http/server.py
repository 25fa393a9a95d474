"""An asyncio HTTP/1.1 front end, on h11, for a :class:`~.handler.ProxyComponent`.

Why h11: it is sans-I/O, like our ttrpc, so the event loop, the sockets, the bounded pipes to
the guest's thread and every timeout stay ours and testable; it validates framing (a
Content-Length that does not match the body, malformed chunks, a bad request line) before any
of it reaches a guest, and writes Content-Length or chunked framing for responses. httptools
is faster but only a parser (we would write the framing and keep-alive rules ourselves), and
aiohttp is a whole framework with its own server loop, buffering and dependencies.

Per connection, one request at a time (no pipelining): the request line and headers are
parsed, then the guest runs on a worker thread while this task feeds the request body into a
bounded pipe (:mod:`.pipe`) and sends the response body out of another, so neither body is
ever whole in memory. Answers of the host itself: 400 (with h11's hint: 431 for huge headers)
for malformed requests and bodies that end early, without touching the guest, or after the
guest started but before it answered; 500 when the guest traps, exits or returns without
setting a response; 504 when the request's deadline stopped it. Errors after the response
head went out can only close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h11

from .fields import Fields
from .handler import DEFAULT_REQUEST_TIMEOUT, Outcome, ProxyComponent
from .http_types import IncomingRequest, ResponseHead
from .lowering import Case
from .pipe import Pipe, PipeError, Waker

log = logging.getLogger(__name__)

#: Default size of the worker pool: guests run in parallel up to this (ctypes releases the
#: GIL while wasm runs; host calls take it back).
DEFAULT_WORKERS = 4
#: Default listen backlog: runwasi's (``WASMTIME_HTTP_PROXY_BACKLOG``).
DEFAULT_BACKLOG = 100
#: Bytes of request or response body buffered between the connection and the guest.
BODY_BUFFER = 256 << 10
#: Seconds an idle keep-alive connection is kept.
KEEP_ALIVE_TIMEOUT = 75.0
_READ = 64 << 10


def bind_socket(addr: str, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A listening TCP socket for ``host:port`` (``[v6]:port`` for IPv6), the format of
    ``WASMTIME_HTTP_PROXY_SOCKET_ADDR``/``wasmtime serve --addr``."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Connection:
    """State of one client connection, for :meth:`ProxyServer.drain`."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task
        self.idle = True


class ProxyServer:
    """Serves HTTP/1.1 with a ``wasi:http/proxy`` component: a fresh instance per request.

    Args:
        component: the linked component (:class:`ProxyComponent`).
        workers: guests that run at once; further requests wait (their deadline has not
            started yet).
        request_timeout: seconds a guest may run for one request, response body included
            (default :data:`~.handler.DEFAULT_REQUEST_TIMEOUT`); 504 if nothing was sent yet.
        keep_alive_timeout: seconds an idle connection stays open.
    """

    def __init__(
        self,
        component: ProxyComponent,
        *,
        workers: int = DEFAULT_WORKERS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.component = component
        self.workers = workers
        self.request_timeout = request_timeout
        self.keep_alive_timeout = keep_alive_timeout
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="wasi-http")
        self._slots = asyncio.Semaphore(workers)
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._server: asyncio.Server | None = None
        self._closed = asyncio.Event()
        self._draining = False
        self._running = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def serve(self, sock: socket.socket) -> None:
        """Accept connections on the listening ``sock`` until :meth:`drain` or :meth:`close`."""
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=_READ)
        try:
            await self._closed.wait()
        finally:
            self._server.close()

    async def drain(self, timeout: float) -> bool:
        """Stop accepting, close idle connections, give requests in flight ``timeout``
        seconds to finish, then cut the rest and interrupt their guests.

        Returns:
            Whether every request finished in time (none was cut).
        """
        self._draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            if conn.idle:
                conn.task.cancel()
        tasks = list(self._connections)
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.close()
        return not pending

    async def close(self) -> None:
        """Stop at once: cut every connection, interrupt the guests still running (see
        :meth:`ProxyComponent.interrupt`), stop the worker pool."""
        self._draining = True
        self._closed.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections))
        # Guests still running (their connection was cut) stop now, so that their threads
        # end: nothing else would before their deadline.
        self.component.interrupt()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> int:
        """Guests running now."""
        return self._running

    def _guest_started(self) -> None:
        self._running += 1

    # -- connections ----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = _Connection(task)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets TCP_NODELAY only on sockets it creates; without it a response's
            # head and body segments meet delayed ACKs (~40 ms per keep-alive request).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connections[task] = state
        conn = h11.Connection(h11.SERVER)
        try:
            await self._serve_connection(conn, state, reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            del self._connections[task]
            if conn.our_state is h11.ERROR:
                writer.transport.abort()  # no clean end: the client must see a cut
            else:
                writer.close()

    async def _serve_connection(
        self,
        conn: h11.Connection,
        state: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        while not self._draining:
            state.idle = True
            try:
                event = await asyncio.wait_for(
                    _next_event(conn, reader), timeout=self.keep_alive_timeout
                )
            except TimeoutError:
                return
            except h11.RemoteProtocolError as exc:
                await _send_simple(conn, writer, exc.error_status_hint, str(exc))
                return
            state.idle = False
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed
            keep_alive = await self._exchange(conn, event, reader, writer)
            if not keep_alive or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _exchange(
        self,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """One request and its response; whether the connection may be kept."""
        loop = asyncio.get_running_loop()
        body = Pipe(loop, Waker(), BODY_BUFFER)
        incoming = _incoming(request, body)
        head: asyncio.Future[ResponseHead | Case] = loop.create_future()

        def settle(value: ResponseHead | Case) -> None:
            if not head.done():
                head.set_result(value)

        def on_set(value: ResponseHead | Case) -> None:  # on the guest's thread
            loop.call_soon_threadsafe(settle, value)

        await self._slots.acquire()
        self._guest_started()
        guest = loop.run_in_executor(
            self._pool,
            functools.partial(
                self.component.handle,
                incoming,
                on_set,
                timeout=self.request_timeout,
                loop=loop,
            ),
        )
        guest.add_done_callback(functools.partial(self._guest_done, body))
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        pump = loop.create_task(_pump(conn, reader, body))
        try:
            waits: list[asyncio.Future[Any]] = [head, guest, pump]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            while not head.done() and not guest.done() and not _failed(pump):
                await asyncio.wait(waits[:2], return_when=asyncio.FIRST_COMPLETED)
            if not head.done() and _failed(pump):
                await _send_simple(conn, writer, 400, "malformed or incomplete request body")
                return False
            if not head.done():
                outcome = guest.result()
                return await self._send_failure(conn, writer, request, outcome)
            value = head.result()
            if isinstance(value, Case):
                log.warning("guest answered %s with error %s", _target(request), value)
                await _send_simple(conn, writer, 500, f"guest error: {value.tag}")
                return False
            if value.status < 200:
                log.warning("%s: the guest answered %d", _target(request), value.status)
                await _send_simple(conn, writer, 500, f"bad response status {value.status}")
                return False
            try:
                await self._send_response(conn, writer, request, value)
            except h11.LocalProtocolError as exc:
                # The guest's body is longer or shorter than its content-length: h11 has
                # put the connection in ERROR, which closes it without a clean end.
                log.warning("%s: bad response from the guest: %s", _target(request), exc)
                return False
            if not pump.done():
                return False  # the guest answered before the client finished its body
            return pump.result() is True
        finally:
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump

    def _guest_done(self, body: Pipe, future: asyncio.Future[Outcome]) -> None:
        # The guest will read no more: the pump discards the rest of the body.
        body.close_reader()
        self._running -= 1
        self._slots.release()
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.error("guest handler failed", exc_info=exc)
        elif future.result().error is not None:
            # Also after the response went out (then only the connection shows it).
            log.warning("guest failed: %s", future.result().error)

    async def _send_failure(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        outcome: Outcome,
    ) -> bool:
        error = outcome.error
        reason = "no response" if error is None else str(error)
        timed_out = error is not None and error.timed_out
        log.warning("%s: %s", _target(request), reason)
        await _send_simple(conn, writer, 504 if timed_out else 500, reason)
        return False

    async def _send_response(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        head: ResponseHead,
    ) -> None:
        headers = head.headers.wire()
        if self._draining:
            headers.append((b"connection", b"close"))  # tell the client not to come back
        response = h11.Response(
            status_code=head.status, headers=headers, reason=_reason(head.status)
        )
        # Output is gathered and written once the body has nothing ready (or 64 KiB are
        # pending): a small response is one send(), not one per h11 event.
        out = bytearray(conn.send(response))
        no_body = request.method == b"HEAD" or head.status in (204, 304)
        while True:
            if out and (len(out) >= _READ or not head.body.readable()):
                writer.write(bytes(out))
                out.clear()
                await writer.drain()
            try:
                chunk = await head.body.get()
            except PipeError as exc:
                # The guest failed mid-body: the client must not take it for complete.
                writer.write(bytes(out))
                log.warning("%s: response body failed: %s", _target(request), exc)
                conn.send_failed()
                return
            if chunk is None:
                break
            if not no_body:
                out += conn.send(h11.Data(data=chunk))
        out += conn.send(h11.EndOfMessage(headers=head.body.trailers or []))
        writer.write(bytes(out))
        await writer.drain()


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _failed(task: asyncio.Task[bool]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None or not task.result())


def _target(request: h11.Request) -> str:
    return f"{request.method.decode()} {request.target.decode('latin-1')}"


def _incoming(request: h11.Request, body: Pipe) -> IncomingRequest:
    authority = next((v.decode("latin-1") for n, v in request.headers if n == b"host"), None)
    return IncomingRequest(
        method=request.method.decode("ascii"),
        path_with_query=request.target.decode("latin-1"),
        scheme="http",
        authority=authority,
        headers=Fields.trusted(list(request.headers)),
        body=body,
    )


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(_READ))


async def _pump(conn: h11.Connection, reader: asyncio.StreamReader, body: Pipe) -> bool:
    """Feed the request body into ``body``; ``False`` if it was malformed or cut short."""
    try:
        while True:
            event = await _next_event(conn, reader)
            if isinstance(event, h11.Data):
                await body.put(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                body.close(list(event.headers) or None)
                return True
            else:
                body.fail("connection closed in the request body")
                return False
    except (h11.RemoteProtocolError, ConnectionError) as exc:
        body.fail(f"bad request body: {exc}")
        return False


async def _send_simple(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, why: str
) -> None:
    """A host-made response (errors), then the connection closes."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"{status} {why}\n".encode()
    try:
        writer.write(
            conn.send(
                h11.Response(
                    status_code=status,
                    reason=_reason(status),
                    headers=[
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                )
            )
        )
        writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
    except (h11.LocalProtocolError, ConnectionError):
        pass
