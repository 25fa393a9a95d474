"""``wasi:http/outgoing-handler`` and the client side of ``wasi:http/types``, through httpx.

Requests leave from this process, i.e. through the pod's network namespace once the server
runs in the container, with httpx's sync client on the guest's worker thread (the guest
waits for the response anyway). The request is sent when the guest first waits on, or asks
for, the ``future-incoming-response`` after finishing the request body (bodies are buffered,
up to :data:`MAX_REQUEST_BODY`); the response body streams.

Timeouts come from ``request-options`` (nanoseconds) or :data:`DEFAULT_TIMEOUT`, and never
exceed what is left of the incoming request's deadline.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from .context import RequestContext
from .fields import Fields
from .http_types import Once, internal_error, method_name
from .lowering import Case, Err, Ok, current
from .wasi_io import InputStream, OutputStream, Pollable

#: Seconds for each of connect / first byte / between bytes when the guest sets none.
DEFAULT_TIMEOUT = 30.0
#: An outgoing request body is buffered whole: this bounds it.
MAX_REQUEST_BODY = 16 << 20


class RequestOptions:
    """``request-options``: timeouts in nanoseconds (``None``: the default)."""

    def __init__(self) -> None:
        self.connect: int | None = None
        self.first_byte: int | None = None
        self.between_bytes: int | None = None


class BufferOutput(OutputStream):
    """An outgoing request body's stream: buffered up to :data:`MAX_REQUEST_BODY`."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def check_write(self) -> int:
        return max(0, MAX_REQUEST_BODY - self.buffer.tell())

    def write(self, data: bytes) -> None:
        if len(data) > self.check_write():
            raise OSError("outgoing request body too large")
        self.buffer.write(data)


class OutgoingRequestBody:
    """``outgoing-body`` of a client request."""

    def __init__(self) -> None:
        self.stream = BufferOutput()
        self.write_once = Once()
        self.finished = False

    def close(self) -> None:
        pass


class OutgoingRequest:
    """``outgoing-request``: defaults as in wasi:http (GET, no path, no scheme)."""

    def __init__(self, headers: Fields) -> None:
        headers.immutable = True
        self.headers = headers
        self.method = Case("get")
        self.path_with_query: str | None = None
        self.scheme: Case | None = None
        self.authority: str | None = None
        self.body = OutgoingRequestBody()
        self.body_once = Once()

    def close(self) -> None:
        pass


class IteratorInput(InputStream):
    """An incoming response body: httpx's byte iterator, one chunk at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks: Iterator[bytes] = response.iter_raw()
        self._rest = b""
        self.done = False

    def read(self, n: int) -> bytes | None:
        if not self._rest:
            if self.done:
                return None
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                self.done = True
                self.response.close()
                return None
            except httpx.HTTPError as exc:
                self.done = True
                self.response.close()
                raise OSError(str(exc)) from exc
        chunk, self._rest = self._rest[:n], self._rest[n:]
        return chunk

    def close(self) -> None:
        self.response.close()


class IncomingResponse:
    """``incoming-response``."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = Fields.trusted(list(response.headers.raw))
        self.response = response
        self.consumed = False

    def close(self) -> None:
        if not self.consumed:
            self.response.close()


class ClientBody:
    """``incoming-body`` of a client response."""

    def __init__(self, response: httpx.Response) -> None:
        self.stream = IteratorInput(response)
        self.stream_once = Once()

    def close(self) -> None:
        pass


def _error_code(exc: httpx.HTTPError) -> Case:
    """wasi:http ``error-code`` for an httpx failure."""
    if isinstance(exc, httpx.ConnectTimeout):
        return Case("connection-timeout")
    if isinstance(exc, httpx.ReadTimeout):
        return Case("connection-read-timeout")
    if isinstance(exc, httpx.TimeoutException):
        return Case("connection-timeout")
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "name or service" in text or "resolution" in text or "nodename" in text:
            return Case("DNS-error", {"rcode": None, "info-code": None})
        return Case("connection-refused")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return Case("HTTP-protocol-error")
    if isinstance(exc, httpx.RemoteProtocolError):
        return Case("HTTP-protocol-error")
    return internal_error(str(exc))


class FutureIncomingResponse:
    """``future-incoming-response``: sends the request on the first wait or ``get``."""

    def __init__(self, request: OutgoingRequest, options: RequestOptions | None) -> None:
        self.request = request
        self.options = options or RequestOptions()
        self.result: Ok | Err | None = None
        self.taken = False

    def _timeout(self, ctx: RequestContext) -> httpx.Timeout:
        left = ctx.remaining()

        def pick(ns: int | None) -> float:
            return min(left, DEFAULT_TIMEOUT if ns is None else ns / 1e9)

        read = pick(self.options.first_byte)
        return httpx.Timeout(connect=pick(self.options.connect), read=read, write=read, pool=read)

    def ready(self) -> bool:
        if self.result is None:
            body = self.request.body
            if self.request.body_once.taken and not body.finished:
                return False  # the guest is still writing the body
            self._send()
        return True

    def _send(self) -> None:
        ctx = current()
        assert isinstance(ctx, RequestContext)
        req = self.request
        if ctx.client is None:
            self.result = Ok(Err(Case("HTTP-request-denied")))
            return
        if req.scheme is None:
            scheme = "http"
        elif req.scheme.tag == "other":
            scheme = str(req.scheme.payload)
        else:
            scheme = req.scheme.tag.lower()
        if not req.authority:
            self.result = Ok(Err(Case("HTTP-request-URI-invalid")))
            return
        url = f"{scheme}://{req.authority}{req.path_with_query or '/'}"
        try:
            request = ctx.client.build_request(
                method_name(req.method),
                url,
                headers=req.headers.wire(),
                content=req.body.stream.buffer.getvalue(),
                timeout=self._timeout(ctx),
            )
            response = ctx.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.result = Ok(Err(_error_code(exc)))
            return
        except ValueError:  # a URL httpx cannot parse
            self.result = Ok(Err(Case("HTTP-request-URI-invalid")))
            return
        self.result = Ok(Ok(IncomingResponse(response)))

    def get(self) -> Any:
        if self.taken:
            return Err(None)
        if not self.ready():
            return None
        self.taken = True
        return self.result

    def close(self) -> None:
        if self.result is not None and not self.taken and isinstance(self.result.value, Ok):
            with contextlib.suppress(Exception):
                self.result.value.value.response.close()


def _handle(request: OutgoingRequest, options: RequestOptions | None) -> Ok:
    return Ok(FutureIncomingResponse(request, options))


def _setter(attr: str) -> Callable[[Any, Any], Ok]:
    def set_(obj: Any, value: Any) -> Ok:
        setattr(obj, attr, value)
        return Ok(None)

    return set_


def _req_body(req: OutgoingRequest) -> Ok | Err:
    return Ok(req.body) if req.body_once.take() else Err(None)


def _req_body_write(body: OutgoingRequestBody) -> Ok | Err:
    return Ok(body.stream) if body.write_once.take() else Err(None)


def _consume(resp: IncomingResponse) -> Ok | Err:
    if resp.consumed:
        return Err(None)
    resp.consumed = True
    return Ok(ClientBody(resp.response))


def _set_method(req: OutgoingRequest, method: Case) -> Ok | Err:
    if method.tag == "other" and not str(method.payload).isalpha():
        return Err(None)
    req.method = method
    return Ok(None)


def types_functions() -> dict[str, Callable[..., Any]]:
    """The client side of ``wasi:http/types``."""
    return {
        "[constructor]outgoing-request": OutgoingRequest,
        "[method]outgoing-request.body": _req_body,
        "[method]outgoing-request.method": lambda r: r.method,
        "[method]outgoing-request.set-method": _set_method,
        "[method]outgoing-request.path-with-query": lambda r: r.path_with_query,
        "[method]outgoing-request.set-path-with-query": _setter("path_with_query"),
        "[method]outgoing-request.scheme": lambda r: r.scheme,
        "[method]outgoing-request.set-scheme": _setter("scheme"),
        "[method]outgoing-request.authority": lambda r: r.authority,
        "[method]outgoing-request.set-authority": _setter("authority"),
        "[method]outgoing-request.headers": lambda r: r.headers,
        "[constructor]request-options": RequestOptions,
        "[method]request-options.connect-timeout": lambda o: o.connect,
        "[method]request-options.set-connect-timeout": _setter("connect"),
        "[method]request-options.first-byte-timeout": lambda o: o.first_byte,
        "[method]request-options.set-first-byte-timeout": _setter("first_byte"),
        "[method]request-options.between-bytes-timeout": lambda o: o.between_bytes,
        "[method]request-options.set-between-bytes-timeout": _setter("between_bytes"),
        "[method]incoming-response.status": lambda r: r.status,
        "[method]incoming-response.headers": lambda r: r.headers,
        "[method]incoming-response.consume": _consume,
        "[method]future-incoming-response.subscribe": lambda f: Pollable(f.ready),
        "[method]future-incoming-response.get": lambda f: f.get(),
    }


def handler_functions() -> dict[str, Callable[..., Any]]:
    """``wasi:http/outgoing-handler``."""
    return {"handle": _handle}


# The body objects of client requests and responses share the method names of the server
# side's (``outgoing-body.write``, ``incoming-body.stream``): ``linker.py`` dispatches on the
# object's class, see ``dispatch``.
def body_write(body: Any) -> Ok | Err:
    return _req_body_write(body)


def body_stream(body: ClientBody) -> Ok | Err:
    return Ok(body.stream) if body.stream_once.take() else Err(None)


def body_finish(body: OutgoingRequestBody, trailers: Fields | None) -> Ok:
    body.finished = True
    return Ok(None)
