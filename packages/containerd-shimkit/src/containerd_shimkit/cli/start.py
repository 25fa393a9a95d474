"""The ``start`` action: find or spawn the daemon for this container's group.

Runs once per container, so it imports only the standard library's light modules. It
computes the group (the pod), derives the socket address the way containerd's own shims do,
reuses a live daemon of the same group or binds the socket and spawns a new daemon on it,
writes ``<bundle>/address`` and prints the address (or a ``BootstrapResult`` for containerd
2.3+, see :mod:`containerd_shimkit.cli.bootstrap`).
"""

from __future__ import annotations

# ``_socket``, not ``socket``: the wrapper module imports enum, selectors and more (~6 ms),
# and start runs for every container; the C socket type has everything used here.
import _socket as socket
import errno
import os
import posixpath
import sys

from . import lightjson
from .flags import Flags, to_argv

# The builtin SHA-256: hashlib would first load OpenSSL (~4 ms) for this one digest.
try:  # Python 3.11
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - Python 3.12+ moved it into _sha2
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[import-not-found, no-redef, unused-ignore]
    except ImportError:  # a build without the builtin hashes
        from hashlib import sha256 as _sha256  # type: ignore[assignment, unused-ignore]


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` in hex, without loading OpenSSL."""
    return str(_sha256(data).hexdigest())


DEFAULT_SOCKET_DIR = "/run/containerd/s"
#: Annotations that put containers into one shim group, in order of preference (runc's).
GROUP_ANNOTATIONS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
#: The daemon finds its listening socket here (as containerd's Go shims do).
LISTENER_FD = 3


class StartError(Exception):
    """``start`` cannot proceed; the message is what containerd will show."""


def group_of(bundle: str, container_id: str) -> str:
    """The grouping key: the pod's sandbox id from ``config.json``, else the container id."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            annotations = lightjson.loads(f.read()).get("annotations") or {}
    except (OSError, ValueError, AttributeError):
        return container_id
    for key in GROUP_ANNOTATIONS:
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return value
    return container_id


def socket_address(
    containerd_address: str, namespace: str, group: str, socket_dir: str = DEFAULT_SOCKET_DIR
) -> str:
    """``unix://<socket_dir>/<sha256 hex>`` exactly as containerd's shim library computes it."""
    # Go: filepath.Join(address, namespace, id), which also cleans the path.
    joined = posixpath.normpath(posixpath.join(containerd_address, namespace, group))
    digest = sha256_hex(joined.encode())
    return f"unix://{socket_dir}/{digest}"


#: The daemon's own ttrpc service for ``start`` (containerd never calls it).
START_SERVICE = "containerd.shimkit.v1.Start"
#: ``Reserve(ConnectRequest{id})``: keeps the daemon from exiting until that container's
#: Create arrives; refused once the daemon has accepted Shutdown.
RESERVE_METHOD = "Reserve"
#: How long ``start`` waits for a live daemon's answer.
RESERVE_TIMEOUT = 5.0
#: The google.rpc code of a daemon that has accepted Shutdown.
_UNAVAILABLE = 14

#: What :func:`reserve` found at a socket path.
RESERVED, CLOSING, DEAD = "reserved", "closing", "dead"


def reserve(path: str, container_id: str) -> str:
    """Ask the daemon listening on ``path`` to hold itself for ``container_id``'s Create.

    ``RESERVED``: it will serve the Create (or it predates reservations, or it is too busy
    to say: it is alive, and nothing else can bind its path). ``CLOSING``: it accepted
    Shutdown and has unlinked its path already. ``DEAD``: nothing listens there.
    """
    from .wire import WireError, decode_ttrpc_status, encode_ttrpc_request, field_bytes

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(RESERVE_TIMEOUT)
    try:
        try:
            probe.connect(path)
        except OSError:
            return DEAD
        payload = field_bytes(1, container_id)  # ConnectRequest{id}
        try:
            probe.sendall(encode_ttrpc_request(1, START_SERVICE, RESERVE_METHOD, payload))
            answer = _read_frame(probe)
        except TimeoutError:
            return RESERVED
        except OSError:
            return CLOSING  # it closed the connection: on its way out
        try:
            _, code, _ = decode_ttrpc_status(answer)
        except WireError:
            return RESERVED
        return CLOSING if code == _UNAVAILABLE else RESERVED
    finally:
        probe.close()


def _read_frame(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 10 or len(data) < 10 + int.from_bytes(data[:4], "big"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "closed")
        data += chunk
    return data


def inode_of(path: str) -> int:
    """The inode ``path`` names now (0 when there is none): a socket path is unlinked only
    while it still names the socket that was probed or bound, never a successor's."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


def bind_or_reuse(path: str, container_id: str = "") -> socket.socket | None:
    """Bind and listen on ``path``; return ``None`` when a live daemon already serves it
    and has reserved itself for ``container_id``'s Create (see :func:`reserve`)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    for _ in range(5):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise StartError(f"cannot bind shim socket {path}: {exc.strerror}") from exc
            inode = inode_of(path)
            found = reserve(path, container_id)
            if found == RESERVED:
                return None
            if found == DEAD and inode and inode_of(path) == inode:
                # A dead daemon's socket file (containerd's shims remove it and bind again);
                # only that file: another start may have bound a new one meanwhile.
                try:  # noqa: SIM105 - contextlib is an import start/delete skip
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            # CLOSING: the daemon unlinked its path before refusing; bind again.
            continue
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock
    raise StartError(f"cannot bind shim socket {path}: it keeps being in use")


def spawn_daemon(flags: Flags, listener: socket.socket, program: str) -> int:
    """Fork and exec the daemon with ``listener`` on fd 3 and no tie to containerd's pipe.

    containerd reads start's stdout and stderr until both close, so the daemon gets
    ``/dev/null`` for fds 0-2 (it opens the bundle's ``log`` FIFO itself).
    """
    argv = [program, *to_argv(flags)]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - replaced by exec
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            if listener.fileno() == LISTENER_FD:
                # dup2(3, 3) is a no-op that would keep close-on-exec set.
                os.set_inheritable(LISTENER_FD, True)
            else:
                os.dup2(listener.fileno(), LISTENER_FD)
            os.closerange(LISTENER_FD + 1, 1 << 16)
            os.execv(program, argv)
        finally:
            os._exit(127)
    listener.close()
    return pid


def write_address(bundle: str, address: str) -> None:
    """Write ``<bundle>/address`` atomically (containerd 1.6/1.7 reconnect from it)."""
    tmp = os.path.join(bundle, ".address.tmp")
    with open(tmp, "w") as f:
        f.write(address)
    os.replace(tmp, os.path.join(bundle, "address"))


def start(
    flags: Flags, program: str, socket_dir: str = DEFAULT_SOCKET_DIR, template: bool = False
) -> str:
    """Run the ``start`` action; return the address to report.

    With ``template``, a new group's daemon is forked by the shim's template when one is
    running (see :mod:`containerd_shimkit.cli.template`), else exec'd as usual while a
    template starts in the background for the next group.
    """
    if not flags.id or not flags.namespace:
        raise StartError("start needs -id and -namespace")
    bundle = os.getcwd()
    address = socket_address(flags.address, flags.namespace, group_of(bundle, flags.id), socket_dir)
    path = address.removeprefix("unix://")
    listener = bind_or_reuse(path, flags.id)
    if listener is not None:
        launch_daemon(flags, listener, program, template)
    write_address(bundle, address)
    return address


def launch_daemon(flags: Flags, listener: socket.socket, program: str, template: bool) -> None:
    """Get a daemon serving ``listener``: from the template, or exec'd."""
    if not template:
        spawn_daemon(flags, listener, program)
        return
    from . import template as templates

    if not templates.enabled():
        spawn_daemon(flags, listener, program)
    elif templates.fork_from_template(flags, listener, program) is None:
        spawn_daemon(flags, listener, program)
        templates.spawn_template(flags, program)


def main_start(flags: Flags, stdin: bytes, program: str, template: bool = False) -> int:
    """``start`` as containerd runs it: output on stdout, errors on stderr, exit status."""
    from .bootstrap import parse_stdin, render

    try:
        request = parse_stdin(stdin, flags)
        address = start(flags, program, request.socket_dir, template)
    except StartError as exc:
        sys.stderr.write(f"{os.path.basename(program)}: {exc}\n")
        return 1
    sys.stdout.buffer.write(render(request, address))
    sys.stdout.flush()
    return 0
