"""Serving a ``wasi:http/proxy`` component as a container's workload, in its init process.

The sandbox calls :meth:`ContainerProxy.run` on the init's guest thread (which blocks
SIGTERM and SIGINT) instead of running the component, and :meth:`ContainerProxy.stop` from
the init's signal handler. The server listens in the container's network namespace (the
init is in it), at ``WASMTIME_HTTP_PROXY_SOCKET_ADDR`` of the container's environment.

Outgoing requests (``wasi:http/outgoing-handler``) are made by an httpx client in the same
process, so they leave from the pod's network namespace with the pod's addresses and DNS
view, like any of its processes; nothing restricts their targets beyond that. Their TLS
roots are certifi's, read in the zygote (:func:`preload`): after ``pivot_root`` the init
sees the container's files, not the shim's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading

import httpx
from wasmtime import component as wc

from .config import ProxyConfig
from .handler import ProxyComponent, proxy_engine
from .server import ProxyServer, bind_socket

log = logging.getLogger(__name__)

#: Seconds the requests in flight get to finish after SIGTERM/SIGINT: below Kubernetes'
#: default ``terminationGracePeriodSeconds`` (30), after which the kubelet kills anyway.
DRAIN_GRACE = 20.0

_ca_data: str | None = None


def preload() -> None:
    """Import what serving imports lazily and read the TLS roots for outgoing requests
    while the shim's files are reachable (in the zygote, before any container is forked):
    an init cannot import after ``pivot_root``. Without the roots (logged) outgoing
    ``https`` requests fail verification; the rest works."""
    global _ca_data
    # What httpx imports lazily: when its client is made (the transport) and at its first
    # request (the IDNA codec for host names).
    import encodings.idna  # noqa: F401

    import httpcore  # noqa: F401

    if _ca_data is not None:
        return
    try:
        import certifi

        with open(certifi.where(), encoding="ascii") as f:
            _ca_data = f.read()
    except (ImportError, OSError) as exc:
        log.warning("no TLS roots for wasi:http outgoing requests: %s", exc)


def _client() -> httpx.Client:
    # Never httpx's default (verify=True), which opens certifi's file: after pivot_root it
    # is not there. Without roots, the system's default paths (absent too: nothing verifies).
    context = (
        ssl.create_default_context(cadata=_ca_data) if _ca_data else ssl.create_default_context()
    )
    # trust_env=False: the init's os.environ was cleared (it was the shim's), and the
    # guest's environment is its own, not the host's proxy settings.
    return httpx.Client(verify=context, trust_env=False)


class ContainerProxy:
    """One container's proxy server: :meth:`run` serves until :meth:`stop` drains it."""

    def __init__(self, drain_grace: float = DRAIN_GRACE) -> None:
        self.drain_grace = drain_grace
        #: The server, while :meth:`run` serves.
        self.server: ProxyServer | None = None
        # Reentrant: stop() runs in a signal handler, which a second signal can interrupt.
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._signum: int | None = None

    def run(self, wasm: bytes, env: list[str], where: str) -> int:
        """Compile ``wasm`` for the proxy engine, listen, serve until stopped (blocking).

        Returns:
            0 when every request finished within the drain grace after :meth:`stop`,
            else 128 + the signal (requests were cut short).

        Raises:
            ValueError: a bad ``WASMTIME_HTTP_PROXY_*`` setting in ``env``.
            OSError: the address cannot be bound.
        """
        config, guest_env = ProxyConfig.from_env(dict(item.partition("=")[::2] for item in env))
        # Compiled here, not in the zygote: the zygote's artifacts are for the sandbox's
        # engine, whose flags differ (no epoch interruption); bound only once ready, so a
        # client sees a refused connection rather than a request stuck behind the compile.
        component = wc.Component(proxy_engine(), wasm)
        sock = bind_socket(config.addr, config.backlog)
        with sock, _client() as client:
            proxy = ProxyComponent(component, environment=list(guest_env.items()), client=client)
            log.info("serving %s as wasi:http/proxy on %s", where, config.addr)
            return asyncio.run(self._serve(proxy, sock, config))

    def stop(self, signum: int) -> bool:
        """Start draining (from a signal handler); ``False`` when not serving (yet, or any
        more) or already draining: the caller then ends the process at once."""
        with self._lock:
            if self._loop is None or self._stop is None or self._signum is not None:
                return False
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop just closed: run() is returning
                return False
            self._signum = signum
            return True

    async def _serve(self, proxy: ProxyComponent, sock: socket.socket, config: ProxyConfig) -> int:
        server = ProxyServer(proxy, workers=config.workers, request_timeout=config.request_timeout)
        stop = asyncio.Event()
        with self._lock:
            self._loop, self._stop = asyncio.get_running_loop(), stop
        self.server = server
        serving = asyncio.create_task(server.serve(sock))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
            if serving.done():
                serving.result()  # raises what stopped it
                raise RuntimeError("the server stopped by itself")
            clean = await server.drain(self.drain_grace)
            await serving
        finally:
            with self._lock:
                self._loop = self._stop = None
            self.server = None
            stopping.cancel()
        signum = self._signum or 0
        log.info("wasi:http server drained%s", "" if clean else ": requests were cut short")
        return 0 if clean else 128 + signum
