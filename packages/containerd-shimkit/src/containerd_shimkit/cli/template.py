"""The template: a pre-warmed process that forks new shim daemons.

Starting a daemon means starting Python and importing asyncio, protobuf, the Task service,
the shim's Instance and its engine: ~300 ms, paid by the first container of every pod. The
template pays that once per containerd: ``start`` asks it (over an abstract unix socket) to
fork a daemon, which then only has to set itself up (cwd, environment, fds, logs) and serve.

Lifecycle:

- ``start`` finds no template: it spawns the daemon the classic way (exec) and, detached, a
  template for the next pod (``<shim> -address A [-publish-binary B] template <pid> <pad>``).
- The template watches containerd (the ``start`` action's parent, through a pidfd) and exits
  when it does, after :data:`IDLE_SECONDS` without a request, on SIGTERM, or when a module it
  loaded changed on disk (an upgraded shim must not keep serving old code).
- One template per shim binary and containerd address: a second one cannot bind the name
  and exits. Only a peer with the template's own uid is served (``SO_PEERCRED``).

Forked daemons are children of the template (which reaps them) instead of being re-parented
to init; their command line is rewritten to the daemon's (:mod:`containerd_shimkit.proctitle`).
Set ``SHIM_TEMPLATE=off`` in containerd's environment to always exec daemons instead.

The client half (:func:`fork_from_template`, :func:`spawn_template`) runs in ``start`` and
imports only light modules; the server half imports the daemon's modules.
"""

from __future__ import annotations

import _socket
import os
import sys

from . import lightjson
from .flags import Flags, to_argv
from .start import sha256_hex

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import socket
    from typing import Any, NoReturn

    from .main import ShimSpec

#: The action name containerd never uses; the template's own command line.
ACTION = "template"
#: Exit after this long without a request.
IDLE_SECONDS = 3600.0
#: How long ``start`` waits for the template's answer (it forks in milliseconds).
REQUEST_TIMEOUT = 10.0
#: Spare argv room for the daemons' command lines (``-namespace N -id ID`` and ``-debug``;
#: containerd limits both identifiers to 76 characters).
ARGV_PAD = 256
MAX_MESSAGE = 1 << 20


def enabled() -> bool:
    """Whether ``start`` uses a template (``SHIM_TEMPLATE=off`` turns it off)."""
    return os.environ.get("SHIM_TEMPLATE", "on").lower() not in ("off", "0", "false", "no")


def template_name(program: str, address: str) -> str:
    """The template's abstract socket name for this shim binary and containerd."""
    key = f"{os.path.realpath(program)}\0{address}".encode()
    return f"\0containerd-shim-template-{sha256_hex(key)[:32]}"


# --------------------------------------------------------------------------- client


def fork_from_template(flags: Flags, listener: _socket.socket, program: str) -> int | None:
    """Ask the template to fork this group's daemon on ``listener``; its pid, or ``None``
    when there is no template, or it refused (then the caller execs the daemon itself).

    Raises:
        StartError: the template took the listener but did not answer in
            :data:`REQUEST_TIMEOUT`. It may still fork a daemon on it, so exec'ing a second
            one could split containerd's connections between two daemons; the template is
            killed instead (the next ``start`` execs a daemon and a fresh template).
    """
    from .start import StartError

    request = {"argv": [program, *to_argv(flags)], "env": dict(os.environ), "cwd": os.getcwd()}
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    conn.settimeout(REQUEST_TIMEOUT)
    try:
        try:
            conn.connect(template_name(program, flags.address))
            if _peer(conn)[1] != os.geteuid():
                # Abstract names are first come, first served: whoever listens there must be
                # us before it gets the listener (it would serve containerd) or our env.
                return None
            # One C int, packed by hand: ``array`` would import collections.abc (~1.5 ms).
            rights = listener.fileno().to_bytes(4, sys.byteorder, signed=True)
            conn.sendmsg(
                [lightjson.dumps(request).encode()],
                [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)],
            )
        except OSError:
            return None  # no template (or it is gone): it never got the listener
        try:
            data = conn.recv(MAX_MESSAGE)
        except TimeoutError:
            _kill_peer(conn)
            raise StartError(
                f"the shim template did not answer in {REQUEST_TIMEOUT:.0f} s; it was killed "
                "(set SHIM_TEMPLATE=off in containerd's environment to never use one)"
            ) from None
        except OSError:
            return None
    finally:
        conn.close()
    try:
        reply = lightjson.loads(data) if data else {}
    except ValueError:
        reply = {}
    pid = reply.get("pid") if isinstance(reply, dict) else None
    if not isinstance(pid, int):
        return None  # refused (e.g. upgraded on disk) before forking anything
    listener.close()
    return pid


def _peer(conn: _socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end (for a listener: who listened)."""
    import struct

    creds = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return int(pid), int(uid), int(gid)


def _kill_peer(conn: _socket.socket) -> None:
    import signal

    try:
        pid = _peer(conn)[0]
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def spawn_template(flags: Flags, program: str) -> None:
    """Start a template in the background, detached from ``start`` and containerd's pipes.

    Double fork: the template is re-parented away from ``start``, which only waits for the
    short-lived middle process.
    """
    argv = [program, "-address", flags.address]
    if flags.publish_binary:
        argv += ["-publish-binary", flags.publish_binary]
    argv += [ACTION, str(os.getppid()), " " * ARGV_PAD]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - exercised through the integration tests
        try:
            os.setsid()
            if os.fork() == 0:
                os.chdir("/")  # not the first container's bundle, which containerd removes
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, 1 << 16)
                os.execv(program, argv)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


# --------------------------------------------------------------------------- server


def main_template(flags: Flags, spec: ShimSpec, program: str) -> int:
    """Run the template (the ``template`` action) until it has a reason to exit."""
    import signal
    import socket

    try:
        watched = int(flags.rest[0])
        pidfd = os.pidfd_open(watched)
    except (IndexError, ValueError, OSError):
        return 2
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        server.bind(template_name(program, flags.address))
    except OSError:
        return 0  # another template serves this containerd
    from .daemon import import_daemon_modules

    import_daemon_modules()
    if spec.warm is not None:
        spec.warm()
    # Reap the daemons this forks (each resets this to the default for its own children).
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    loaded = _loaded_files()
    import gc

    gc.freeze()  # keep the collector from un-sharing the template's pages in daemons
    # Only now: until the template is warm, connecting is refused and start execs a daemon
    # (instead of waiting here for the imports).
    server.listen(16)
    return _serve(server, pidfd, spec, loaded)


def _serve(server: socket.socket, pidfd: int, spec: ShimSpec, loaded: dict[str, int]) -> int:
    import contextlib
    import select

    poller = select.poll()
    poller.register(server, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    while True:
        events = dict(poller.poll(IDLE_SECONDS * 1000))
        if not events or pidfd in events:
            return 0  # idle, or containerd exited
        conn, _ = server.accept()
        with conn:
            if _peer(conn)[1] != os.geteuid():
                continue  # only our own user may have daemons forked
            try:
                request, fds = _receive(conn)
            except (OSError, ValueError):
                continue
            if _changed(loaded):
                conn.send(lightjson.dumps({"error": "the shim was upgraded"}).encode())
                return 0
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:  # pragma: no cover - becomes a daemon, tested end to end
                _become_daemon(request, fds[0], spec, (server, conn), pidfd)
            os.close(fds[0])
            with contextlib.suppress(OSError):  # start gave up: the daemon serves anyway
                conn.send(lightjson.dumps({"pid": pid}).encode())


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    from ..zygote import recv_with_fds

    data, fds = recv_with_fds(conn)
    request = lightjson.loads(data)
    if not isinstance(request, dict) or not all(k in request for k in ("argv", "env", "cwd")):
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed template request")
    return request, fds


def _loaded_files() -> dict[str, int]:
    """mtime of every Python source or extension the template has loaded, stdlib aside."""
    import contextlib
    import sys
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    out: dict[str, int] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and not path.startswith(stdlib):
            with contextlib.suppress(OSError):
                out[path] = os.stat(path).st_mtime_ns
    return out


def _changed(loaded: dict[str, int]) -> bool:
    for path, mtime in loaded.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def _become_daemon(
    request: dict[str, Any],
    listener: int,
    spec: ShimSpec,
    sockets: tuple[socket.socket, ...],
    pidfd: int,
) -> NoReturn:
    """In the forked child: take the daemon's cwd, environment and fds, then serve."""
    import signal
    import sys

    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sock in sockets:
            os.close(sock.detach())  # detach: the objects must not close reused fds later
        os.close(pidfd)
        os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        from .start import LISTENER_FD

        if listener != LISTENER_FD:
            os.dup2(listener, LISTENER_FD)
        os.closerange(LISTENER_FD + 1, 1 << 16)
        argv = [str(arg) for arg in request["argv"]]
        from ..proctitle import set_cmdline

        set_cmdline(argv)
        sys.argv = argv
        from .daemon import main_serve
        from .flags import parse

        code = main_serve(parse(argv[1:]), spec)
    except BaseException:  # nothing above us: the trace goes to the log FIFO, if open
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
