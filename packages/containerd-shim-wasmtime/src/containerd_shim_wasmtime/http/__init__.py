"""Serving ``wasi:http/proxy`` components over HTTP/1.1, like ``wasmtime serve``.

wasmtime-py's ``add_wasi_http`` is outgoing-only, so every import of the proxy world (and the
WASI CLI set real components also import) is implemented here in Python:

* :mod:`.lowering`: typed conversions compiled once per import, the C callback, resources;
* :mod:`.pipe`: bounded byte pipes between the event loop and a guest's thread;
* :mod:`.wasi_io`, :mod:`.wasi_cli`: ``wasi:io``, clocks, random, cli; closed filesystem/sockets;
* :mod:`.fields`, :mod:`.http_types`, :mod:`.outgoing`: ``wasi:http/types`` (server and client
  side) and ``outgoing-handler`` (httpx);
* :mod:`.linker`: a Linker defining every import of a given component;
* :mod:`.handler`: :class:`ProxyComponent`, one Store and instance per request, deadlines;
* :mod:`.server`: :class:`ProxyServer`, the asyncio/h11 front end;
* :mod:`.config`: :class:`ProxyConfig`, the settings from a container's environment.
"""

from .config import ProxyConfig
from .handler import DEFAULT_REQUEST_TIMEOUT, GuestFailed, ProxyComponent, proxy_engine
from .server import DEFAULT_BACKLOG, DEFAULT_WORKERS, ProxyServer, bind_socket

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_WORKERS",
    "GuestFailed",
    "ProxyComponent",
    "ProxyConfig",
    "ProxyServer",
    "bind_socket",
    "proxy_engine",
]
