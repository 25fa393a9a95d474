"""The template: a pre-warmed process that forks new shim daemons.

Starting a daemon means starting Python and importing asyncio, protobuf, the Task service,
the shim's Instance and its engine: ~300 ms, paid by the first container of every pod. The
template pays that once per containerd: ``start`` asks it (over a unix socket next to
containerd's own, see :func:`template_name`) to fork a daemon, which then only has to set
itself up (cwd, environment, fds, logs) and serve.

Lifecycle:

- ``start`` finds no template: it spawns the daemon the classic way (exec) and, detached, a
  template for the next pod (``<shim> -address A [-publish-binary B] template <pid> <pad>``).
- The template watches containerd (the ``start`` action's parent, through a pidfd) and exits
  when it does, after :data:`IDLE_SECONDS` without a request, on SIGTERM, or when a module it
  loaded changed on disk (an upgraded shim must not keep serving old code).
- One template per shim binary and containerd address: it holds a lock (``flock`` on
  ``<socket>.lock``) from before its imports until it exits, and a second one, which cannot
  take the lock, exits at once. The lock's holder removes a dead template's socket file
  before it binds its own, and both files when it exits. Only a peer with the template's own
  uid is served, and ``start`` hands its listener only to a template of its own uid
  (``SO_PEERCRED``).

Forked daemons are children of the template (which reaps them) instead of being re-parented
to init; their command line is rewritten to the daemon's (:mod:`containerd_shimkit.proctitle`).
Set ``SHIM_TEMPLATE=off`` in containerd's environment to always exec daemons instead.

The spare: when the shim can pass a late identity on to its zygote
(``ShimSpec.identify_daemon``), the template keeps one daemon forked ahead of need
(:func:`containerd_shimkit.cli.daemon.main_spare`: zygote forked, event loop running,
command line ``… template spare``), :data:`SPARE_DELAY` after it starts and after each
hand-over. A ``start`` then costs the template a ``sendmsg`` instead of a fork, and the pod's
daemon skips its zygote's fork and its loop's start (~6 ms of every new pod's first
container). The spare reads the request with the listener from its channel, takes the
daemon's cwd, environment, log FIFO, pod id and command line, tells its zygote, and serves.
It exits when the template does (EOF on the channel); a dead spare is replaced. The price is
one idle daemon and zygote per containerd, sharing most pages with the template.

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
    from collections.abc import Callable
    from typing import Any, NoReturn

    from .main import ShimSpec

#: The action name containerd never uses; the template's own command line.
ACTION = "template"
#: Exit after this long without a request.
IDLE_SECONDS = 3600.0
#: How long after starting, and after handing its spare over, the template forks a spare.
SPARE_DELAY = 0.1
#: The longest wait before forking a spare again after spares kept dying.
MAX_SPARE_DELAY = 60.0
#: Where a spare keeps its end of the channel to the template (above the listener's fd 3).
SPARE_CONTROL_FD = 4
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
    """Where the template for this shim binary and containerd listens: a socket file in the
    directory of containerd's socket (``/run/containerd/shim-template-<hash>`` for the
    default address).

    Not an abstract socket name: any local user in the host's network namespace could bind
    that first and keep every new pod on the slow path. containerd's directory is writable
    by containerd's user only (the template checks, see :func:`_claim`), the very user that
    runs the shim, so nobody else can take this path.
    """
    key = f"{os.path.realpath(program)}\0{address}".encode()
    # dirname, not a fixed directory: the hash only tells shim binaries and containerds in
    # one directory apart, and ``start`` must not stat anything more than before.
    directory = os.path.dirname(address.removeprefix("unix://"))
    if not directory.startswith("/"):
        return ""  # no directory to trust (containerd always passes an absolute path)
    return f"{directory}/shim-template-{sha256_hex(key)[:16]}"


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
                # Only our own user can bind in containerd's directory, but should that
                # directory be open to others, whoever listens there must be us before it
                # gets the listener (it would serve containerd) or our environment.
                return None
            send_request(conn, request, listener.fileno())
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


def send_request(conn: _socket.socket, request: dict[str, Any], listener: int) -> None:
    """One packet: ``request`` as JSON, with the ``listener`` descriptor attached."""
    # One C int, packed by hand: ``array`` would import collections.abc (~1.5 ms) in start.
    rights = listener.to_bytes(4, sys.byteorder, signed=True)
    conn.sendmsg(
        [lightjson.dumps(request).encode()], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)]
    )


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
    path = template_name(program, flags.address)
    if not path:
        return 0
    # Before the imports, so that the templates a burst of first pods spawns do not all
    # import everything only to find another one serving.
    lock = _claim(path)
    if lock is None:
        return 0  # another template serves this containerd (or its directory is unsafe)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        server.bind(path)
        os.chmod(path, 0o600)
    except OSError:
        server.close()
        _release(path, lock)
        return 0
    from .daemon import import_daemon_modules

    import_daemon_modules()
    if spec.warm is not None:
        spec.warm()
    # Reap the daemons this forks (each resets this to the default for its own children).
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    loaded = _loaded_files()
    import gc

    gc.freeze()  # keep the collector from un-sharing the template's pages in daemons
    # A plain SIGTERM would skip the cleanup: the socket and lock files would stay. Not
    # earlier: the children ``warm`` may fork must not inherit the handler.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    # Only now: until the template is warm, connecting is refused and start execs a daemon
    # (instead of waiting here for the imports).
    server.listen(16)
    spare_argv = [program, "-address", flags.address]
    if flags.publish_binary:
        spare_argv += ["-publish-binary", flags.publish_binary]
    spare_argv += [ACTION, "spare"]  # until handed over (then the daemon's own)
    return _Server(server, pidfd, spec, loaded, spare_argv, path, lock).serve()


def _exit_on_signal(signum: int, frame: object) -> None:
    sys.exit(0)  # unwinds through _Server.serve, which removes the template's files


def _claim(path: str) -> int | None:
    """Become the only template for ``path``: the locked descriptor of ``<path>.lock``, or
    None when another live template holds it or the directory is unsafe.

    A socket file at ``path`` then belongs to a dead template (a live one holds the lock from
    before it binds until after it unlinks) and is removed. The lock, not a probe of the
    socket, tells them apart: a live template binds at once but listens only once warm, so
    until then its socket refuses connections like a dead one's.
    """
    import contextlib
    import fcntl
    import stat

    directory = os.path.dirname(path)
    try:
        st = os.lstat(directory)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None  # another user could create the path first: no template here
    lock_path = f"{path}.lock"
    for _ in range(3):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = os.fstat(fd)
            current = os.stat(lock_path)
        except OSError:  # BlockingIOError: another template holds it
            os.close(fd)
            if not os.path.exists(lock_path):
                continue  # removed meanwhile by its exiting holder: try a fresh one
            return None
        if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a dead template's socket
            return fd
        # The previous holder unlinked this file as it exited, after we opened it: the lock
        # is on a file nobody else will open. Lock the one at the path now.
        os.close(fd)
    return None


def _release(path: str, lock: int) -> None:
    """Remove the template's socket and lock files, then let the lock go (in that order: a
    newer template, which takes the lock only after this, finds neither)."""
    import contextlib

    for name in (path, f"{path}.lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    os.close(lock)


class _Spare:
    """A daemon forked ahead of need (see :func:`daemon.main_spare`) and the template's end
    of its channel. Handing it a request saves a new pod's daemon its fork, its zygote's
    fork and its event loop's start (~6 ms of every new pod's first container)."""

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self.control = control

    def hand_over(self, request: dict[str, Any], listener: int) -> int | None:
        """Send the spare ``start``'s request and listener; its pid, or None if it is gone."""
        try:
            send_request(self.control, request, listener)
        except OSError:
            return None
        return self.pid


class _Server:
    """The template's loop: fork (or hand over) a daemon for each ``start``; keep a spare."""

    def __init__(
        self,
        server: socket.socket,
        pidfd: int,
        spec: ShimSpec,
        loaded: dict[str, int],
        spare_argv: list[str],
        path: str | None = None,
        lock: int | None = None,
    ) -> None:
        import select
        import time

        self.server = server
        self.path = path
        self.lock = lock
        self.pidfd = pidfd
        self.spec = spec
        self.loaded = loaded
        self.spare_argv = spare_argv
        self.poller = select.poll()
        self.poller.register(server, select.POLLIN)
        self.poller.register(pidfd, select.POLLIN)
        self.spare: _Spare | None = None
        # Doubled each time a spare dies before it is handed over (whatever kills it would
        # kill the next one too), back to SPARE_DELAY after a hand-over.
        self.spare_delay = SPARE_DELAY
        # Only shims that can pass a late identity on to their zygote get a spare.
        keeps_spares = spec.identify_daemon is not None
        self.spare_due = time.monotonic() + SPARE_DELAY if keeps_spares else None

    def serve(self) -> int:
        try:
            return self._loop()
        finally:
            # Free the name at once: the start that found this template stale spawns the
            # next one, which must be able to bind it.
            self.server.close()
            if self.path is not None and self.lock is not None:
                _release(self.path, self.lock)
                self.lock = None
            self._drop_spare()  # it reads EOF and exits

    def _loop(self) -> int:
        import time

        idle_until = time.monotonic() + IDLE_SECONDS
        while True:
            now = time.monotonic()
            wake = idle_until
            if self.spare is None and self.spare_due is not None:
                wake = min(wake, self.spare_due)
            events = dict(self.poller.poll(max(0.0, wake - now) * 1000))
            if self.pidfd in events:
                return 0  # containerd exited
            if self.spare is not None and self.spare.control.fileno() in events:
                self._drop_spare()  # it died: make another one later, and later each time
                self.spare_delay = min(self.spare_delay * 2, MAX_SPARE_DELAY)
                self.spare_due = time.monotonic() + self.spare_delay
            if self.server.fileno() not in events:
                now = time.monotonic()
                if now >= idle_until:
                    return 0
                if self.spare is None and self.spare_due is not None and now >= self.spare_due:
                    self._fork_spare()
                continue
            idle_until = time.monotonic() + IDLE_SECONDS
            conn, _ = self.server.accept()
            with conn:
                if not self._answer(conn):
                    return 0

    def _answer(self, conn: socket.socket) -> bool:
        """Serve one ``start``; False when the template must exit (its code changed)."""
        import contextlib

        if _peer(conn)[1] != os.geteuid():
            return True  # only our own user may have daemons forked
        try:
            request, fds = receive_request(conn)
        except (OSError, ValueError):
            return True
        if _changed(self.loaded):
            conn.send(lightjson.dumps({"error": "the shim was upgraded"}).encode())
            return False
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return True
        pid = self._from_spare(request, fds[0])
        if pid is None:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - becomes a daemon, tested end to end
                _become_daemon(request, fds[0], self.spec, (self.server, conn), self._fds())
        os.close(fds[0])
        with contextlib.suppress(OSError):  # start gave up: the daemon serves anyway
            conn.send(lightjson.dumps({"pid": pid}).encode())
        return True

    def _from_spare(self, request: dict[str, Any], listener: int) -> int | None:
        import time

        if self.spare is None:
            return None
        pid = self.spare.hand_over(request, listener)
        self._drop_spare()
        self.spare_delay = SPARE_DELAY
        self.spare_due = time.monotonic() + SPARE_DELAY
        return pid

    def _fork_spare(self) -> None:
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - becomes a spare daemon, tested end to end
            os.close(ours.detach())  # or the spare would never see the template go
            _become_spare(theirs, self.spec, (self.server,), self._fds(), self.spare_argv)
        theirs.close()
        self.spare = _Spare(pid, ours)
        self.poller.register(ours, 0)  # POLLHUP (always reported): the spare is gone

    def _fds(self) -> tuple[int, ...]:
        """The template's own descriptors, which its forked children must close: the pidfd,
        and the lock (held by any process with it open, so it would outlive the template)."""
        return (self.pidfd,) if self.lock is None else (self.pidfd, self.lock)

    def _drop_spare(self) -> None:
        if self.spare is not None:
            self.poller.unregister(self.spare.control)
            self.spare.control.close()
            self.spare = None


def receive_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One request and its descriptors, as :func:`send_request` sent them.

    Raises:
        ValueError: EOF or a malformed request (its descriptors are closed).
    """
    from ..zygote import recv_with_fds

    data, fds = recv_with_fds(conn)
    request = lightjson.loads(data)
    if not isinstance(request, dict) or not all(k in request for k in ("argv", "env", "cwd")):
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed template request")
    return request, fds


def adopt_request(request: dict[str, Any], listener: int) -> list[str]:
    """Become the daemon ``start`` asked for: its cwd, environment, listener (moved to
    :data:`~containerd_shimkit.cli.start.LISTENER_FD`) and command line, which is
    returned."""
    from ..proctitle import set_cmdline
    from .start import LISTENER_FD

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if listener != LISTENER_FD:
        os.dup2(listener, LISTENER_FD)
        os.close(listener)
    argv = [str(arg) for arg in request["argv"]]
    set_cmdline(argv)
    sys.argv = argv
    return argv


def _loaded_files() -> dict[str, int]:
    """mtime of every Python source or extension the template has loaded, stdlib aside."""
    import contextlib
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


def _in_child(
    sockets: tuple[socket.socket, ...], fds: tuple[int, ...], body: Callable[[int], int]
) -> NoReturn:
    """In a child the template forked: leave the template (its sockets, its descriptors
    ``fds``, SIGCHLD and SIGTERM dispositions and session), put /dev/null on fds 0-2, run
    ``body(null fd)`` and exit with its result."""
    import signal

    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for sock in sockets:
            os.close(sock.detach())  # detach: the objects must not close reused fds later
        for fd in fds:
            os.close(fd)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        code = body(null)
    except BaseException:  # nothing above us: the trace goes to the log FIFO, if open
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _become_spare(
    control: socket.socket,
    spec: ShimSpec,
    sockets: tuple[socket.socket, ...],
    fds: tuple[int, ...],
    argv: list[str],
) -> NoReturn:
    """In the forked child: detach from the template, then wait as a spare daemon."""

    def spare(null: int) -> int:
        import socket

        from ..proctitle import set_cmdline
        from .daemon import main_spare
        from .start import LISTENER_FD

        fd = control.detach()
        if fd != SPARE_CONTROL_FD:
            os.dup2(fd, SPARE_CONTROL_FD)
        os.closerange(SPARE_CONTROL_FD + 1, 1 << 16)
        # A placeholder where the listener goes at hand-over, so that no socket the spare
        # makes meanwhile (its zygote's) lands on that descriptor.
        os.dup2(null, LISTENER_FD)
        set_cmdline(argv)
        sys.argv = argv
        return main_spare(socket.socket(fileno=SPARE_CONTROL_FD), spec)

    _in_child(sockets, fds, spare)


def _become_daemon(
    request: dict[str, Any],
    listener: int,
    spec: ShimSpec,
    sockets: tuple[socket.socket, ...],
    fds: tuple[int, ...],
) -> NoReturn:
    """In the forked child: take the daemon's cwd, environment and fds, then serve."""

    def daemon(_null: int) -> int:
        from .daemon import main_serve
        from .flags import parse
        from .start import LISTENER_FD

        argv = adopt_request(request, listener)
        os.closerange(LISTENER_FD + 1, 1 << 16)
        return main_serve(parse(argv[1:]), spec, argv[0])

    _in_child(sockets, fds, daemon)
