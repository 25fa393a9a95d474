"""A ``wasi:http/proxy`` component, and one request through it: a fresh Store and instance
per request, as ``wasmtime serve`` does (instantiation is ~0.1 ms; the cost is elsewhere).

The engine is the proxy's own (:func:`proxy_engine`): epoch interruption on, for per-request
deadlines. The sandbox's engine keeps it off (it costs 7–34 % on compute kernels, see
``engine.py``), and an engine's epoch is global to it, so the ticker that drives deadlines
here must not touch an engine anyone else sets deadlines on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import wasmtime
from wasmtime import component as wc

from ..engine import INTERRUPTIBLE_FLAGS
from . import lowering
from .context import DeadlineExceeded, RequestContext
from .http_types import IncomingRequest, ResponseHead, ResponseOutparam
from .linker import build_linker, implementations
from .lowering import Case
from .pipe import Pipe

log = logging.getLogger(__name__)

#: Seconds between epoch ticks: the granularity of deadlines.
EPOCH_TICK = 0.01
#: The default per-request deadline, in seconds: from the guest's start to its return
#: (the response body included, since a guest streams it from ``handle``).
DEFAULT_REQUEST_TIMEOUT = 60.0
_HANDLER = "wasi:http/incoming-handler"


@functools.cache
def proxy_engine() -> wasmtime.Engine:
    """The process's engine for proxy components: :data:`INTERRUPTIBLE_FLAGS`, so artifacts
    precompiled for interruptible engines load, but a separate ``Engine`` (its own epoch)."""
    config = wasmtime.Config()
    for name, value in INTERRUPTIBLE_FLAGS.items():
        setattr(config, name, value)
    return wasmtime.Engine(config)


class GuestFailed(Exception):
    """The guest trapped, exited or broke the protocol; ``timed_out`` for the deadline."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass
class Outcome:
    """How a request ended on the guest's side."""

    error: GuestFailed | None


class ProxyComponent:
    """A compiled proxy component with its linker, ready to handle requests from any thread.

    Args:
        component: compiled for ``engine`` (default :func:`proxy_engine`).
        environment: what ``wasi:cli/environment.get-environment`` returns.
        client: the httpx client for ``outgoing-handler`` (``None``: requests are denied).
    """

    def __init__(
        self,
        component: wc.Component,
        *,
        engine: wasmtime.Engine | None = None,
        environment: list[tuple[str, str]] | None = None,
        client: httpx.Client | None = None,
        body_capacity: int = 256 << 10,
    ) -> None:
        self.engine = engine or proxy_engine()
        self.component = component
        self.client = client
        self.body_capacity = body_capacity
        impls = implementations(self._make_pipe, list(environment or []))
        self.linker, ids = build_linker(self.engine, component, impls)
        self._request_type = ids[("wasi:http/types", "incoming-request")]
        self._outparam_type = ids[("wasi:http/types", "response-outparam")]
        self._handle = self._find_handler()

    def _find_handler(self) -> wc.ExportIndex:
        for name in self.component.type.exports(self.engine):
            if name.split("@", 1)[0] == _HANDLER:
                iface = self.component.get_export_index(name)
                assert iface is not None
                func = self.component.get_export_index("handle", iface)
                if func is not None:
                    return func
        raise ValueError(f"the component does not export {_HANDLER}")

    def _make_pipe(self) -> Pipe:
        # Response bodies: made by the guest's thread, for the connection's loop, which
        # the request context carries.
        ctx = lowering.current()
        assert isinstance(ctx, _Request)
        return Pipe(ctx.loop, ctx.waker, self.body_capacity)

    def handle(
        self,
        request: IncomingRequest,
        on_set: Callable[[ResponseHead | Case], None],
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        loop: asyncio.AbstractEventLoop,
    ) -> Outcome:
        """Run the guest's ``handle`` for ``request`` on this thread (blocking).

        ``on_set`` is called (on this thread) when the guest sets the response. The
        deadline is enforced by epochs (:data:`EPOCH_TICK`; someone must call
        ``engine.increment_epoch`` that often: the server does) and in host waits.
        """
        ctx = _Request(time.monotonic() + timeout, self.client, loop)
        ctx.waker = request.body.waker  # the connection's pipe notifies this waker
        outparam = ResponseOutparam(on_set)
        lowering.bind(ctx)
        try:
            store = wasmtime.Store(self.engine)
            store.set_epoch_deadline(max(1, int(timeout / EPOCH_TICK) + 1))
            try:
                instance = self.linker.instantiate(store, self.component)
                func = instance.get_func(store, self._handle)
                assert func is not None
                req = wc.ResourceHost.own(ctx.table.push(request), self._request_type)
                out = wc.ResourceHost.own(ctx.table.push(outparam), self._outparam_type)
                func(store, req, out)
                func.post_return(store)
            except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
                return Outcome(self._failure(exc, ctx))
            finally:
                # Whatever the guest left open: an unfinished body is an error, the rest
                # just goes (the Store's handles die with it).
                for obj in ctx.table.values():
                    close = getattr(obj, "close", None)
                    if close is not None:
                        try:
                            close()
                        except Exception:
                            log.debug("closing a leftover resource", exc_info=True)
                outparam.finish()
                del store
            if not outparam.is_set:
                return Outcome(GuestFailed("the guest returned without setting a response"))
            return Outcome(None)
        finally:
            lowering.bind(None)

    def _failure(self, exc: BaseException, ctx: RequestContext) -> GuestFailed:
        cause = ctx.error
        if isinstance(cause, DeadlineExceeded):
            return GuestFailed("request deadline exceeded (in a host call)", timed_out=True)
        reason = _trap_reason(str(exc))
        # Component calls raise WasmtimeError, not Trap: there is no trap code to read.
        if reason == "wasm trap: interrupt":
            return GuestFailed("request deadline exceeded", timed_out=True)
        if ctx.exit_code is not None:
            return GuestFailed(f"the guest exited with code {ctx.exit_code}")
        if cause is not None:
            return GuestFailed(f"host call failed: {type(cause).__name__}: {cause}")
        return GuestFailed(f"guest trapped: {reason}")


def _trap_reason(message: str) -> str:
    """The line that says why, from wasmtime's multi-line "error while executing at wasm
    backtrace: ... Caused by: ..." message."""
    _, sep, cause = message.partition("Caused by:")
    lines = [line.strip() for line in (cause if sep else message).strip().splitlines()]
    return next((line for line in lines if line), "unknown")


class _Request(RequestContext):
    def __init__(
        self, deadline: float, client: httpx.Client | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(deadline=deadline, client=client)
        self.loop = loop
