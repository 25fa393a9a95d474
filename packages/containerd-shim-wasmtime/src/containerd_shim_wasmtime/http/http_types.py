"""The server side of ``wasi:http/types``: the incoming request, its body and trailers, the
outgoing response, its body, and ``response-outparam.set``.

The connection (``server.py``) builds an :class:`IncomingRequest` whose body is a
:class:`~.pipe.Pipe` it fills, and a :class:`ResponseOutparam` whose ``on_set`` tells it the
status and headers; the response body is another pipe the connection drains. The guest's
thread never touches the socket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .fields import Fields, HeaderError
from .lowering import Case, Err, Ok
from .pipe import Pipe
from .wasi_io import PipeInput, PipeOutput, Pollable

_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}


def method_case(method: str) -> Case:
    """A ``method`` variant value for an HTTP method."""
    if method in _METHODS:
        return Case(method.lower())
    return Case("other", method)


def method_name(case: Case) -> str:
    return str(case.payload) if case.tag == "other" else case.tag.upper()


def scheme_case(scheme: str) -> Case:
    lower = scheme.lower()
    if lower == "http":
        return Case("HTTP")
    if lower == "https":
        return Case("HTTPS")
    return Case("other", scheme)


def internal_error(message: str) -> Case:
    """An ``error-code.internal-error`` value."""
    return Case("internal-error", message)


class Once:
    """A child resource that may be taken once (``consume``, ``body``, ``stream``, ``write``)."""

    def __init__(self) -> None:
        self.taken = False

    def take(self) -> bool:
        if self.taken:
            return False
        self.taken = True
        return True


class IncomingBody:
    """``incoming-body``: its stream reads the pipe; ``finish`` gives its trailers."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.stream_once = Once()

    def close(self) -> None:
        pass


class FutureTrailers:
    """``future-trailers``: ready once the body's writer closed (or failed)."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.done = False

    def get(self) -> Any:
        if self.done:
            return Err(None)
        if not (self.pipe._eof or self.pipe._error is not None):
            return None
        self.done = True
        if self.pipe._error is not None:
            return Ok(Err(internal_error(self.pipe._error)))
        trailers = self.pipe.trailers
        return Ok(Ok(Fields.trusted(trailers) if trailers else None))


@dataclass
class IncomingRequest:
    """What the connection knows of a request, as the guest sees it."""

    method: str
    path_with_query: str
    scheme: str
    authority: str | None
    headers: Fields
    body: Pipe
    consumed: bool = False

    def close(self) -> None:
        pass


class OutgoingBody:
    """``outgoing-body``: its stream writes ``pipe``; ``finish`` closes it."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.write_once = Once()
        self.finished = False

    def finish(self, trailers: Fields | None) -> None:
        self.finished = True
        self.pipe.close(trailers.wire() if trailers is not None else None)

    def close(self) -> None:
        # Dropped without finish: the body is incomplete (wasmtime aborts the response too).
        if not self.finished:
            self.pipe.fail("outgoing-body dropped without finish")


class OutgoingResponse:
    """``outgoing-response``: status, headers (immutable once attached) and the body pipe."""

    def __init__(self, headers: Fields, make_pipe: Callable[[], Pipe]) -> None:
        headers.immutable = True
        self.status = 200
        self.headers = headers
        self.body_once = Once()
        self.pipe = make_pipe()

    def close(self) -> None:
        pass


@dataclass
class ResponseHead:
    """What ``response-outparam.set`` hands the connection."""

    status: int
    headers: Fields
    body: Pipe


class ResponseOutparam:
    """``response-outparam``: ``on_set`` receives a :class:`ResponseHead` or an error code."""

    def __init__(self, on_set: Callable[[ResponseHead | Case], None]) -> None:
        self.on_set = on_set
        self.is_set = False
        self.response: OutgoingResponse | None = None

    def close(self) -> None:
        pass

    def finish(self) -> None:
        """The guest returned: a body it never asked for is empty; one it did not finish
        (or one the guest could not finish, as it trapped) is an error."""
        resp = self.response
        if resp is None:
            return
        if resp.body_once.taken:
            resp.pipe.fail("the guest did not finish the response body")
        else:
            resp.pipe.close()


def _from_list(entries: list[tuple[str, bytes]]) -> Ok | Err:
    try:
        return Ok(Fields(entries))
    except HeaderError as e:
        return Err(Case(e.case))


def _mutate(op: Callable[[], None]) -> Ok | Err:
    try:
        op()
    except HeaderError as e:
        return Err(Case(e.case))
    return Ok(None)


def _consume(req: IncomingRequest) -> Ok | Err:
    if req.consumed:
        return Err(None)
    req.consumed = True
    return Ok(IncomingBody(req.body))


def _body_stream(body: IncomingBody) -> Ok | Err:
    return Ok(PipeInput(body.pipe)) if body.stream_once.take() else Err(None)


def _response_body(resp: OutgoingResponse) -> Ok | Err:
    return Ok(OutgoingBody(resp.pipe)) if resp.body_once.take() else Err(None)


def _body_write(body: OutgoingBody) -> Ok | Err:
    return Ok(PipeOutput(body.pipe)) if body.write_once.take() else Err(None)


def _body_finish(body: OutgoingBody, trailers: Fields | None) -> Ok:
    body.finish(trailers)
    return Ok(None)


def _set_status(resp: OutgoingResponse, status: int) -> Ok | Err:
    if not 100 <= status <= 999:
        return Err(None)
    resp.status = status
    return Ok(None)


def _outparam_set(param: ResponseOutparam, response: Ok | Err) -> None:
    param.is_set = True
    if isinstance(response, Ok):
        resp: OutgoingResponse = response.value
        param.response = resp
        param.on_set(ResponseHead(resp.status, resp.headers, resp.pipe))
    else:
        param.on_set(response.value)


def _trailers_pollable(ft: FutureTrailers) -> Pollable:
    return Pollable(lambda: ft.pipe._eof or ft.pipe._error is not None)


def functions(make_pipe: Callable[[], Pipe]) -> dict[str, Callable[..., Any]]:
    """``wasi:http/types`` functions of the server side and of fields (the client side is
    in ``outgoing.py``)."""
    return {
        "[constructor]fields": lambda: Fields(),
        "[static]fields.from-list": _from_list,
        "[method]fields.get": lambda f, n: f.get(n),
        "[method]fields.has": lambda f, n: f.has(n),
        "[method]fields.set": lambda f, n, v: _mutate(lambda: f.set(n, v)),
        "[method]fields.delete": lambda f, n: _mutate(lambda: f.delete(n)),
        "[method]fields.append": lambda f, n, v: _mutate(lambda: f.append(n, v)),
        "[method]fields.entries": lambda f: f.entries(),
        "[method]fields.clone": lambda f: f.clone(),
        "[method]incoming-request.method": lambda r: method_case(r.method),
        "[method]incoming-request.path-with-query": lambda r: r.path_with_query,
        "[method]incoming-request.scheme": lambda r: scheme_case(r.scheme),
        "[method]incoming-request.authority": lambda r: r.authority,
        "[method]incoming-request.headers": lambda r: r.headers,
        "[method]incoming-request.consume": _consume,
        "[method]incoming-body.stream": _body_stream,
        "[static]incoming-body.finish": lambda b: FutureTrailers(b.pipe),
        "[method]future-trailers.subscribe": _trailers_pollable,
        "[method]future-trailers.get": lambda ft: ft.get(),
        "[constructor]outgoing-response": lambda h: OutgoingResponse(h, make_pipe),
        "[method]outgoing-response.status-code": lambda r: r.status,
        "[method]outgoing-response.set-status-code": _set_status,
        "[method]outgoing-response.headers": lambda r: r.headers,
        "[method]outgoing-response.body": _response_body,
        "[method]outgoing-body.write": _body_write,
        "[static]outgoing-body.finish": _body_finish,
        "[static]response-outparam.set": _outparam_set,
        "http-error-code": lambda err: None,
    }
