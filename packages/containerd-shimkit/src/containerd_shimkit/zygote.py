"""The zygote: a single-threaded process that forks container processes.

Forking a process that has threads and then running Python in the child is undefined
behaviour (runwasi hit it, see runwasi#357), and the daemon cannot promise to stay
thread-free forever (libraries start threads). So the daemon forks the zygote first thing,
before it imports asyncio or starts anything; the zygote imports the engine once
(``factory()``), then serves spawn requests: each container costs a fork, not an import, and
shares the engine's pages copy-on-write.

Protocol: a ``SOCK_SEQPACKET`` socket pair. The daemon sends one JSON request per packet
with file descriptors attached (``SCM_RIGHTS``); the zygote answers with one JSON packet.
Requests are handled one at a time. When the daemon goes away the zygote reads EOF and exits.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: Handles one request in the zygote; owns (and must close or hand on) the fds it receives.
Handler = Callable[[dict[str, Any], list[int]], dict[str, Any]]

MAX_MESSAGE = 1 << 20
MAX_FDS = 16


class ZygoteError(Exception):
    """The zygote is gone or answered with an error."""


_channel_fd = -1


def channel_fd() -> int:
    """In the zygote: the descriptor of its channel to the daemon (-1 elsewhere).

    Container processes forked from the zygote must close it (a wasm container never execs,
    so close-on-exec does not help).
    """
    return _channel_fd


def recv_with_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the descriptors attached to it (``SCM_RIGHTS``, at most MAX_FDS)."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_LEN(MAX_FDS * fds.itemsize)
    )
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    return data, list(fds)


#: The zygote's own request: take the daemon's identity (see :meth:`Zygote.identify`).
IDENTIFY_OP = "zygote.identify"


def _identify(request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    from . import logs
    from .proctitle import set_cmdline

    if len(fds) != 1:
        raise ValueError(f"{IDENTIFY_OP} takes the log descriptor, got {len(fds)} fds")
    os.dup2(fds[0], 2)
    logs.redirect(fds[0], int(request["level"]))
    logs.pod_id.set(str(request["pod"]))
    set_cmdline([str(arg) for arg in request["argv"]])
    return {}


def _serve(sock: socket.socket, handler: Handler) -> None:
    while True:
        try:
            data, fds = recv_with_fds(sock)
        except OSError:
            return
        if not data:
            return
        try:
            request = json.loads(data)
            serve = _identify if request.get("op") == IDENTIFY_OP else handler
            reply = serve(request, fds)
        except Exception as exc:
            log.exception("zygote request failed")
            reply = {"error": str(exc) or type(exc).__name__}
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        try:
            sock.send(json.dumps(reply).encode())
        except OSError:
            return


class Zygote:
    """The daemon's handle on its zygote process."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        import asyncio

        self.pid = pid
        self.sock = sock
        self._lock = asyncio.Lock()  # one request at a time: replies carry no request id

    @classmethod
    def fork(cls, factory: Callable[[], Handler], keep_fds: tuple[int, ...] = (2,)) -> Zygote:
        """Fork the zygote; in it, ``factory()`` builds the request handler (load the engine).

        Must be called while the calling process has a single thread. The zygote closes every
        inherited descriptor except ``keep_fds`` (by default stderr, the shim log) so that
        containers never hold the daemon's listening socket or a container's FIFOs.
        """
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - exercised through subprocess tests
            code = 0
            try:
                global _channel_fd
                if "ssl" in sys.modules and sys.modules["ssl"] is None:
                    del sys.modules["ssl"]  # the daemon keeps ssl out; engines may need it
                parent.close()
                _channel_fd = child.fileno()
                keep = sorted({child.fileno(), *keep_fds})
                _close_all_but(keep)
                _serve(child, factory())
            except BaseException:
                log.exception("zygote failed")
                code = 1
            finally:
                os._exit(code)
        child.close()
        parent.setblocking(False)
        return cls(pid, parent)

    async def request(self, message: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        """Send one request (with ``fds``) and await the reply.

        Raises:
            ZygoteError: the zygote died or reported an error.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        async with self._lock:
            payload = json.dumps(message).encode()
            try:
                rights = array.array("i", fds)
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if fds else []
                self.sock.sendmsg([payload], ancillary)
            except OSError as exc:
                raise ZygoteError(f"the zygote is gone: {exc.strerror}") from exc
            ready: asyncio.Future[None] = loop.create_future()

            def on_readable() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_reader(self.sock.fileno(), on_readable)
            try:
                await ready
            finally:
                loop.remove_reader(self.sock.fileno())
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except OSError as exc:
                raise ZygoteError(f"the zygote is gone: {exc.strerror}") from exc
        if not data:
            raise ZygoteError("the zygote exited")
        reply: dict[str, Any] = json.loads(data)
        if "error" in reply:
            raise ZygoteError(reply["error"])
        return reply

    async def identify(self, argv: Sequence[str], pod: str, level: int, log_fd: int) -> None:
        """Give the zygote the daemon's identity, learnt after the zygote was forked (a
        spare daemon's, see :mod:`containerd_shimkit.cli.template`): its log (``log_fd``,
        duplicated onto the zygote's stderr and log), log ``level``, ``pod`` id for log
        records and command line.

        Raises:
            ZygoteError: the zygote died or refused.
        """
        request = {"op": IDENTIFY_OP, "argv": list(argv), "pod": pod, "level": level}
        await self.request(request, [log_fd])

    def close(self) -> None:
        """Close the channel; the zygote exits when it reads EOF."""
        self.sock.close()


def _close_all_but(keep: list[int]) -> None:
    start = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, 1 << 16)
