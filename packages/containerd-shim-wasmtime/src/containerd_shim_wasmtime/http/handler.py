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
import itertools
import logging
import threading
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


class EpochTicker:
    """Increments an engine's epoch every :data:`EPOCH_TICK` while guests run on it.

    A daemon thread, started by the first running guest and gone one tick after the last:
    an idle server costs no wake-ups, and the deadlines of guests that outlive their
    server's event loop (cut connections) still expire. One per engine, since the epoch is
    the engine's: two tickers would halve every deadline.
    """

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._running = 0
        self._thread: threading.Thread | None = None

    def enter(self) -> None:
        with self._lock:
            self._running += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._tick, name="wasi-http-epoch", daemon=True
                )
                self._thread.start()

    def exit(self) -> None:
        with self._lock:
            self._running -= 1

    def _tick(self) -> None:
        while True:
            time.sleep(EPOCH_TICK)
            with self._lock:
                if self._running == 0:
                    self._thread = None
                    return
            self.engine.increment_epoch()

    def expire(self, ticks: int) -> None:
        """Move the epoch ``ticks`` ahead: every deadline up to that far away passes."""
        for _ in range(ticks):
            self.engine.increment_epoch()


@functools.cache
def ticker_for(engine: wasmtime.Engine) -> EpochTicker:
    return EpochTicker(engine)


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
        environment: what ``wasi:cli/environment.get-environment`` returns, plus
            ``REQUEST_ID`` (a counter from 0, as runwasi).
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
        self._ticker = ticker_for(self.engine)
        self._active: set[_Request] = set()
        self._active_lock = threading.Lock()
        self._request_ids = itertools.count()

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
        deadline is enforced by epochs (:class:`EpochTicker`) and in host waits.
        """
        ctx = _Request(time.monotonic() + timeout, self.client, loop)
        ctx.waker = request.body.waker  # the connection's pipe notifies this waker
        ctx.ticks = max(1, int(timeout / EPOCH_TICK) + 1)
        ctx.request_id = next(self._request_ids)
        outparam = ResponseOutparam(on_set)
        lowering.bind(ctx)
        with self._active_lock:
            self._active.add(ctx)
        self._ticker.enter()
        try:
            store = wasmtime.Store(self.engine)
            store.set_epoch_deadline(ctx.ticks)
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
            self._ticker.exit()
            with self._active_lock:
                self._active.discard(ctx)
            lowering.bind(None)

    def interrupt(self) -> None:
        """End every guest running :meth:`handle` now: those computing trap at their next
        epoch check, those waiting in a host call wake up and trap. For shutdown: the
        epoch is the engine's, so guests of other components on the same engine (none,
        with one server per process) have their deadlines advanced too."""
        with self._active_lock:
            active = list(self._active)
        for ctx in active:
            ctx.interrupted = True
            ctx.waker.notify()
        if active:
            self._ticker.expire(max(ctx.ticks for ctx in active) + 1)

    def _failure(self, exc: BaseException, ctx: RequestContext) -> GuestFailed:
        cause = ctx.error
        if ctx.interrupted:
            return GuestFailed("interrupted: the server is stopping")
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
