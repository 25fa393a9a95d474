"""``wasi:clocks``, ``wasi:random``, ``wasi:cli``, and closed ``wasi:filesystem``/``sockets``.

Real proxy components import more than the proxy world (StarlingMonkey imports
``wasi:filesystem`` and ``wasi:cli/terminal-*``; componentize-py imports sockets too), as
``wasmtime serve -S cli=y`` links. What a proxy has no business using answers as if absent:
no preopened directories, no terminal, empty stdin, no sockets (``access-denied``, as
wasmtime-py's own p2 sockets answer). stdout and stderr are this process's fds 1 and 2, which
in a container are the container's log.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from .context import RequestContext
from .lowering import Err, HostTrap, Ok, current
from .wasi_io import EmptyInput, FdOutput, Pollable

_NS = 1_000_000_000


class GuestExit(HostTrap):
    """``wasi:cli/exit.exit``: unwinds the guest; its code is on the request context."""


class Network:
    """``wasi:sockets/network.network``: exists only to be refused."""


def _exit(status: Any) -> None:
    return _exit_code(0 if isinstance(status, Ok) else 1)


def _exit_code(code: int) -> None:
    ctx = current()
    if isinstance(ctx, RequestContext):
        ctx.exit_code = code
    raise GuestExit(f"guest exited with code {code}")


def _environment(environment: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # As runwasi: the container's variables plus REQUEST_ID, a counter of requests.
    ctx = current()
    request_id = ctx.request_id if isinstance(ctx, RequestContext) else 0
    return [*environment, ("REQUEST_ID", str(request_id))]


def _wall_now() -> dict[str, int]:
    ns = time.time_ns()
    return {"seconds": ns // _NS, "nanoseconds": ns % _NS}


def _timer(at_ns: int) -> Pollable:
    at = at_ns / _NS
    return Pollable(lambda: time.monotonic() >= at, deadline=at)


def _no_fs(*args: Any) -> Err:
    return Err("bad-descriptor")


def _denied(*args: Any) -> Err:
    return Err("access-denied")


def functions(environment: list[tuple[str, str]]) -> dict[str, dict[str, Callable[..., Any]]]:
    """Host functions by (unversioned) interface and function name."""
    stdin, stdout, stderr = EmptyInput(), FdOutput(1), FdOutput(2)
    return {
        "wasi:clocks/monotonic-clock": {
            "now": time.monotonic_ns,
            "resolution": lambda: 1,
            "subscribe-instant": _timer,
            "subscribe-duration": lambda d: _timer(time.monotonic_ns() + d),
        },
        "wasi:clocks/wall-clock": {
            "now": _wall_now,
            "resolution": lambda: {"seconds": 0, "nanoseconds": 1},
        },
        "wasi:random/random": {
            "get-random-bytes": lambda n: secrets.token_bytes(n),
            "get-random-u64": lambda: secrets.randbits(64),
        },
        "wasi:random/insecure": {
            "get-insecure-random-bytes": lambda n: os.urandom(n),
            "get-insecure-random-u64": lambda: secrets.randbits(64),
        },
        "wasi:random/insecure-seed": {
            "insecure-seed": lambda: (secrets.randbits(64), secrets.randbits(64)),
        },
        "wasi:cli/environment": {
            "get-environment": lambda: _environment(environment),
            "get-arguments": list,
            "initial-cwd": lambda: None,
        },
        "wasi:cli/exit": {"exit": _exit, "exit-with-code": _exit_code},
        "wasi:cli/stdin": {"get-stdin": lambda: stdin},
        "wasi:cli/stdout": {"get-stdout": lambda: stdout},
        "wasi:cli/stderr": {"get-stderr": lambda: stderr},
        "wasi:cli/terminal-stdin": {"get-terminal-stdin": lambda: None},
        "wasi:cli/terminal-stdout": {"get-terminal-stdout": lambda: None},
        "wasi:cli/terminal-stderr": {"get-terminal-stderr": lambda: None},
        "wasi:filesystem/preopens": {"get-directories": list},
        # No descriptor can exist (no preopens), so only these are reachable.
        "wasi:filesystem/types": {"filesystem-error-code": lambda err: None},
        "wasi:sockets/instance-network": {"instance-network": Network},
        "wasi:sockets/tcp-create-socket": {"create-tcp-socket": _denied},
        "wasi:sockets/udp-create-socket": {"create-udp-socket": _denied},
        "wasi:sockets/ip-name-lookup": {"resolve-addresses": _denied},
    }
