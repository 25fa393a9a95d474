"""The zygote: a single-threaded process that forks container processes.

Forking a process that has threads and then running Python in the child is undefined
behaviour (runwasi hit it, see runwasi#357), and the daemon cannot promise to stay
thread-free forever (libraries start threads). So the daemon forks the zygote first thing,
before it imports asyncio or starts anything; the zygote imports the engine once
(``factory()``), then serves spawn requests: each container costs a fork, not an import, and
shares the engine's pages copy-on-write.

Protocol: a ``SOCK_SEQPACKET`` socket pair. The daemon sends one JSON request per packet
with file descriptors attached (``SCM_RIGHTS``); the zygote answers with one JSON packet that
echoes the request's ``seq``. Requests are handled one at a time, and an exchange, once
sent, always runs to its reply even when its caller is cancelled (a cancelled Create must
not leave a reply queued for the next one to read). When the daemon goes away the zygote
reads EOF and exits.

A zygote that dies (OOM killer, crash) is replaced: the next request starts a new one by
exec'ing the shim binary with the ``zygote`` action (:func:`serve_inherited`), never by a
fork, since by then the daemon has threads.
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
        seq = None
        try:
            request = json.loads(data)
            seq = request.pop("seq", None)
            serve = _identify if request.get("op") == IDENTIFY_OP else handler
            reply = serve(request, fds)
        except Exception as exc:
            log.exception("zygote request failed")
            reply = {"error": str(exc) or type(exc).__name__}
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        reply["seq"] = seq
        try:
            sock.send(json.dumps(reply).encode())
        except OSError:
            return


def serve_inherited(handler_factory: Callable[[], Handler], fd: int = 3) -> int:
    """The ``zygote`` action: serve requests on the inherited channel ``fd`` (a
    replacement zygote exec'd by :meth:`Zygote.request`); returns the exit status."""
    global _channel_fd
    sock = socket.socket(fileno=fd)
    _channel_fd = fd
    # Everything else the daemon had open stays with the daemon (stderr is the shim log).
    _close_all_but([fd])
    try:
        _serve(sock, handler_factory())
    except BaseException:
        log.exception("zygote failed")
        return 1
    return 0


#: How long a request may take in the zygote (a Create compiling a big module included)
#: before the zygote is taken for hung, killed and replaced.
REPLY_TIMEOUT = 120.0

#: Called with the reply of a request whose caller was cancelled (to undo what it did).
Abandoned = Callable[[dict[str, Any]], None]


class Zygote:
    """The daemon's handle on its zygote process.

    ``restart`` returns the command line of a replacement zygote (the shim binary with the
    ``zygote`` action); without it a dead zygote stays dead.
    """

    def __init__(
        self, pid: int, sock: socket.socket, restart: Callable[[], list[str]] | None = None
    ) -> None:
        import asyncio

        self.pid = pid
        self.sock = sock
        self.restart = restart
        self._lock = asyncio.Lock()  # one exchange at a time, each to its reply
        self._seq = 0
        self._dead = False

    @classmethod
    def fork(
        cls,
        factory: Callable[[], Handler],
        keep_fds: tuple[int, ...] = (2,),
        restart: Callable[[], list[str]] | None = None,
    ) -> Zygote:
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
        return cls(pid, parent, restart)

    async def request(
        self,
        message: dict[str, Any],
        fds: Sequence[int] = (),
        on_abandoned: Abandoned | None = None,
    ) -> dict[str, Any]:
        """Send one request (with ``fds``, which stay the caller's) and await the reply.

        The exchange is shielded from the caller's cancellation: the zygote may already be
        forking, so its reply is still read (the next request must never read it) and, when
        the caller is gone, handed to ``on_abandoned``.

        Raises:
            ZygoteError: the zygote died or reported an error.
        """
        import asyncio

        # Duplicates: a cancelled caller closes its fds while this exchange may still wait
        # for the lock, and a number reused meanwhile would send the zygote another file.
        owned = [os.dup(fd) for fd in fds]
        exchange = asyncio.ensure_future(self._exchange(message, owned))
        try:
            reply = await asyncio.shield(exchange)
        except asyncio.CancelledError:
            exchange.add_done_callback(lambda done: _abandon(done, on_abandoned))
            raise
        if "error" in reply:
            raise ZygoteError(reply["error"])
        return reply

    async def _exchange(self, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        try:
            async with self._lock:
                if self._dead:
                    self._replace()
                self._seq += 1
                payload = json.dumps({**message, "seq": self._seq}).encode()
                try:
                    self._send(payload, fds)
                except ZygoteError:
                    if self.restart is None:
                        raise
                    # Died since the last request: nothing was delivered, so send it again
                    # to a new zygote.
                    self._replace()
                    self._send(payload, fds)
                return await self._receive(self._seq)
        finally:
            for fd in fds:
                os.close(fd)

    def _send(self, payload: bytes, fds: list[int]) -> None:
        try:
            rights = array.array("i", fds)
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if fds else []
            self.sock.sendmsg([payload], ancillary)
        except OSError as exc:
            self._dead = True
            raise ZygoteError(f"the zygote is gone: {exc.strerror}") from exc

    async def _receive(self, seq: int) -> dict[str, Any]:
        import asyncio

        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.sock.fileno(), on_readable)
        try:
            await asyncio.wait_for(ready, REPLY_TIMEOUT)
        except TimeoutError:
            self._kill()
            raise ZygoteError(
                f"the zygote did not answer in {REPLY_TIMEOUT:.0f} s; it was replaced"
            ) from None
        finally:
            loop.remove_reader(self.sock.fileno())
        try:
            data = self.sock.recv(MAX_MESSAGE)
        except OSError as exc:
            self._dead = True
            raise ZygoteError(f"the zygote is gone: {exc.strerror}") from exc
        if not data:
            self._dead = True
            raise ZygoteError("the zygote exited while handling the request")
        reply: dict[str, Any] = json.loads(data)
        if reply.pop("seq", None) != seq:
            self._kill()  # out of step: nothing it says can be matched to a request
            raise ZygoteError(f"the zygote answered out of order (expected reply {seq})")
        return reply

    def _kill(self) -> None:
        self._dead = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 9)  # SIGKILL; the daemon (its parent) reaps it

    def _replace(self) -> None:
        """Start a new zygote (exec'd: the daemon has threads by now) on a new channel."""
        if self.restart is None:
            raise ZygoteError("the zygote is gone")
        self._kill()
        self.sock.close()
        argv = self.restart()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if child.fileno() == INHERITED_FD:
            os.set_inheritable(INHERITED_FD, True)  # dup2 onto itself would keep CLOEXEC
        try:
            # posix_spawn: no Python runs between fork and exec in a threaded process.
            self.pid = os.posix_spawn(
                argv[0],
                argv,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, child.fileno(), INHERITED_FD)],
            )
        except OSError as exc:
            parent.close()
            raise ZygoteError(f"cannot start a new zygote: {exc.strerror}") from exc
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent
        self._dead = False
        log.warning("the zygote died; started a new one", extra={"zygote_pid": self.pid})

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


#: Where a replacement zygote finds its channel to the daemon.
INHERITED_FD = 3


def _abandon(exchange: Any, on_abandoned: Abandoned | None) -> None:
    if exchange.cancelled() or exchange.exception() is not None:
        return
    reply = exchange.result()
    if on_abandoned is not None and "error" not in reply:
        try:
            on_abandoned(reply)
        except Exception:
            log.exception("undoing an abandoned zygote request failed")


def _close_all_but(keep: list[int]) -> None:
    start = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, 1 << 16)
