"""The proxy server's settings from a container's environment, as runwasi reads them.

runwasi's wasmtime shim takes ``WASMTIME_HTTP_PROXY_SOCKET_ADDR`` (default ``0.0.0.0:8080``)
and a backlog (default 100) from the *container's* environment and removes them before the
guest sees it. Its code reads ``WASMTIME_HTTP_BACKLOG`` while its documentation says
``WASMTIME_HTTP_PROXY_BACKLOG``: both are accepted here, the documented one first. The two
``…_WORKERS`` and ``…_REQUEST_TIMEOUT`` variables are ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .handler import DEFAULT_REQUEST_TIMEOUT
from .server import DEFAULT_BACKLOG, DEFAULT_WORKERS

ADDR = "WASMTIME_HTTP_PROXY_SOCKET_ADDR"
BACKLOG = "WASMTIME_HTTP_PROXY_BACKLOG"
BACKLOG_RUNWASI_CODE = "WASMTIME_HTTP_BACKLOG"
WORKERS = "WASMTIME_HTTP_PROXY_WORKERS"
REQUEST_TIMEOUT = "WASMTIME_HTTP_PROXY_REQUEST_TIMEOUT"
_OURS = (ADDR, BACKLOG, BACKLOG_RUNWASI_CODE, WORKERS, REQUEST_TIMEOUT)


@dataclass(frozen=True)
class ProxyConfig:
    """Where and how a proxy component is served."""

    addr: str = "0.0.0.0:8080"
    backlog: int = DEFAULT_BACKLOG
    workers: int = DEFAULT_WORKERS
    #: Seconds; see :data:`~.handler.DEFAULT_REQUEST_TIMEOUT`.
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> tuple[ProxyConfig, dict[str, str]]:
        """The settings in ``env``, and ``env`` without them (what the guest sees).

        Raises:
            ValueError: a setting that does not parse, naming the variable.
        """

        def number(name: str, kind: type[int] | type[float], default: float) -> float:
            raw = env.get(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None
            if value <= 0:
                raise ValueError(f"{name}={raw!r} must be positive")
            return value

        backlog_name = BACKLOG if BACKLOG in env else BACKLOG_RUNWASI_CODE
        addr = env.get(ADDR, cls.addr)
        _, sep, port = addr.rpartition(":")
        if not sep or not port.isdigit() or not int(port) < 65536:
            raise ValueError(f"{ADDR}={addr!r} is not host:port")
        config = cls(
            addr=addr,
            backlog=int(number(backlog_name, int, cls.backlog)),
            workers=int(number(WORKERS, int, cls.workers)),
            request_timeout=number(REQUEST_TIMEOUT, float, cls.request_timeout),
        )
        return config, {k: v for k, v in env.items() if k not in _OURS}
