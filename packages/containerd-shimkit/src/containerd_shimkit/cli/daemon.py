"""The long-running shim daemon: one per group (pod), serving the Task API over ttrpc.

Order matters: the daemon imports what it and its zygote share (asyncio, protobuf, the Task
service; a daemon forked from the template has them already), becomes a child subreaper
and runs the shim's ``prepare_daemon`` hook, which forks the zygote, while it still has one
thread; only then does it start the event loop. A spare daemon (:func:`main_spare`) does
all that before it knows its pod, then takes the pod's identity when handed a ``start``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .flags import Flags
from .start import LISTENER_FD, group_of, inode_of

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ..task.service import TaskService
    from ..ttrpc import Service
    from .main import ShimSpec

#: How long to wait for the Shutdown answer to reach containerd before closing.
SHUTDOWN_GRACE = 0.05


def open_log(bundle: Path) -> None:
    """Point fd 2 at the bundle's ``log`` FIFO, which containerd copies into its own log.

    Non-blocking: when containerd is down or slow a log line is dropped instead of
    stalling the daemon (containerd opened the FIFO read-write, so it has a reader).
    """
    try:
        fd = os.open(bundle / "log", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 2)
    os.close(fd)


def import_daemon_modules() -> None:
    """Import what the daemon runs on (also done once by the template, for its children)."""
    # asyncio imports ssl (~4 MB resident) for TLS this daemon never uses: its sockets are
    # unix sockets, and grpc brings its own TLS. The zygote puts it back for engines.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    import asyncio  # noqa: F401 - the import is the point
    import logging  # noqa: F401

    from .. import logs, proctitle, ttrpc  # noqa: F401
    from ..api import shim_pb2, shim_v3_pb2  # noqa: F401
    from ..reaper import set_child_subreaper  # noqa: F401
    from ..task import events, service  # noqa: F401


#: The daemon's command line (program and identifying flags) and pod id, once known: a
#: replacement zygote is started with them (:func:`zygote_command`).
_identity: list[str] = []


def zygote_command() -> list[str]:
    """The command line of a replacement zygote: the shim binary, the daemon's flags, the
    ``zygote`` action and the pod id (see :class:`containerd_shimkit.Zygote`)."""
    from .main import ZYGOTE_ACTION

    if len(_identity) < 2:
        raise RuntimeError("the daemon does not know its identity yet")
    *argv, pod = _identity
    return [*argv, ZYGOTE_ACTION, pod]


def main_zygote(flags: Flags, spec: ShimSpec) -> int:
    """The ``zygote`` action: a replacement zygote serving on the inherited fd 3."""
    from .. import logs
    from ..zygote import serve_inherited

    build = spec.zygote_handler
    if build is None or len(flags.rest) != 1:
        sys.stderr.write("the zygote action needs a shim with a zygote and a pod id\n")
        return 2
    level = logs.level_from(flags.debug, spec.default_log_level)
    logs.pod_id.set(flags.rest[0])
    return serve_inherited(lambda: build(level))


def main_serve(flags: Flags, spec: ShimSpec, program: str) -> int:
    """Run the daemon until Shutdown (with no containers left) or SIGTERM."""
    _take_identity(flags, spec, program)
    _prepare(spec)
    return _run(_serve(flags, spec))


def main_spare(control: socket.socket, spec: ShimSpec) -> int:
    """Run a spare daemon: prepared (zygote forked, event loop running) before it knows
    its pod, it waits on ``control`` for the template's hand-over (one packet: the
    template request's JSON with the listener attached, see
    :mod:`containerd_shimkit.cli.template`), then becomes that daemon. Returns 0 at once
    on EOF (the template is gone)."""
    _prepare(spec)
    return _run(_serve_when_handed_over(control, spec))


def _take_identity(flags: Flags, spec: ShimSpec, program: str) -> None:
    """The log FIFO of the bundle (the cwd) on fd 2, the log level and the pod id; then
    leave the bundle: containerd removes it with the first container, and nothing may be
    resolved against it for the pod's other containers."""
    from .. import logs
    from .flags import to_argv

    bundle = Path.cwd()
    open_log(bundle)
    if spec.setup_logging:
        logs.setup(logs.level_from(flags.debug, spec.default_log_level))
    pod = group_of(str(bundle), flags.id)
    logs.pod_id.set(pod)
    _identity[:] = [program, *to_argv(flags), pod]
    os.chdir("/")


def _prepare(spec: ShimSpec) -> None:
    """Import, become the subreaper, fork the zygote: all a daemon does before serving."""
    # Loaded before the zygote's fork below, so that daemon and zygote share them.
    import_daemon_modules()
    from ..reaper import set_child_subreaper

    set_child_subreaper()
    if spec.prepare_daemon is not None:
        # Fork the zygote now: after the heavy imports, so daemon and zygote share their
        # pages copy-on-write, and before the event loop, while there is one thread.
        spec.prepare_daemon()


def _run(main: Coroutine[None, None, int]) -> int:
    import asyncio
    import logging

    try:
        return asyncio.run(main)
    except BaseException:
        # The only trace containerd keeps of a daemon that dies is its log FIFO.
        logging.getLogger("containerd_shimkit.daemon").exception("shim daemon failed")
        raise


async def _serve_when_handed_over(control: socket.socket, spec: ShimSpec) -> int:
    import asyncio

    from .flags import parse
    from .template import adopt_request, receive_request

    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(control.fileno(), on_readable)
    try:
        await readable
    finally:
        loop.remove_reader(control.fileno())
    try:
        request, fds = receive_request(control)
    except (OSError, ValueError):
        return 0  # the template went away (or sent nonsense): nobody is waiting for us
    finally:
        control.close()
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return 0
    argv = adopt_request(request, fds[0])
    flags = parse(argv[1:])
    _take_identity(flags, spec, argv[0])
    if spec.identify_daemon is not None:
        try:
            await spec.identify_daemon(argv)
        except Exception:
            # Serve anyway: containerd was told this daemon is up. What the hook could not
            # reach (a dead zygote) fails the pod's Creates with its own error.
            import logging

            log = logging.getLogger("containerd_shimkit.daemon")
            log.exception("cannot pass the pod's identity to the spare's helper processes")
    return await _serve(flags, spec)


class SocketPath:
    """The daemon's socket path, unlinked at most once and only while it is still ours.

    After this daemon accepted Shutdown a ``start`` may bind a new daemon at the same path;
    removing that one's file would cut containerd off from it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._inode = inode_of(path) if path else 0

    def release(self) -> None:
        """Unlink the path if it still names this daemon's socket (idempotent)."""
        if self._inode and inode_of(self.path) == self._inode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._inode = 0


def _start_service(service: TaskService) -> Service:
    """``start``'s own service on the daemon's socket (see ``TaskService.reserve``)."""
    from ..api import shim_pb2
    from ..ttrpc import Method, Service
    from .start import RESERVE_METHOD, START_SERVICE

    method = Method(
        RESERVE_METHOD, shim_pb2.ConnectRequest, shim_pb2.ConnectResponse, service.reserve
    )
    return Service(START_SERVICE, {RESERVE_METHOD: method})


def _listener(flags: Flags) -> socket.socket:
    if flags.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(flags.socket.removeprefix("unix://"))
        sock.listen(128)
        return sock
    return socket.socket(fileno=LISTENER_FD)


async def _serve(flags: Flags, spec: ShimSpec) -> int:
    import asyncio
    import logging
    import signal

    from ..api import shim_pb2, shim_v3_pb2
    from ..reaper import REAPER
    from ..task.events import RemotePublisher
    from ..task.service import TaskService
    from ..ttrpc import Server, Service

    log = logging.getLogger("containerd_shimkit.daemon")
    loop = asyncio.get_running_loop()
    REAPER.install(loop)
    stop = asyncio.Event()
    listener = _listener(flags)
    path = listener.getsockname()
    socket_path = SocketPath(path if isinstance(path, str) else "")

    def on_idle() -> None:
        # Shutdown accepted: from now on no ``start`` may find this daemon at its path
        # (the next one binds a new daemon there), then let the answer go out and stop.
        socket_path.release()
        loop.call_later(SHUTDOWN_GRACE, stop.set)

    ttrpc_address = os.environ.get("TTRPC_ADDRESS", "")
    publisher = RemotePublisher(ttrpc_address, flags.namespace)
    publisher.start()
    service = TaskService(
        spec.instance(),
        namespace=flags.namespace,
        containerd_address=flags.address,
        events=publisher,
        ttrpc_address=ttrpc_address,
        on_idle=on_idle,
    )
    server = Server(
        [
            Service.from_descriptor(shim_pb2.DESCRIPTOR.services_by_name["Task"], service),
            Service.from_descriptor(shim_v3_pb2.DESCRIPTOR.services_by_name["Task"], service),
            _start_service(service),
        ]
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    serving = loop.create_task(server.serve(listener))
    log.info("shim serving", extra={"pid": os.getpid(), "address": path})
    await stop.wait()
    for record in list(service.tasks.values()):
        # Only on SIGTERM with containers left: containerd never asks for this itself.
        log.warning("stopping with a container still present", extra={"instance": record.id})
        try:
            await record.instance.kill(signal.SIGKILL, True)
            await record.instance.wait()
            await record.instance.delete()
        except Exception:
            log.exception("cleanup failed", extra={"instance": record.id})
    await server.shutdown()
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    await publisher.flush()
    await publisher.close()
    socket_path.release()
    log.info("shim exiting")
    sys.stderr.flush()
    return 0
