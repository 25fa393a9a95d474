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


def _alive(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.1)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def bind_or_reuse(path: str) -> socket.socket | None:
    """Bind and listen on ``path``; return ``None`` when a live daemon already serves it."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    for _ in range(3):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise StartError(f"cannot bind shim socket {path}: {exc.strerror}") from exc
            if _alive(path):
                return None
            # A dead daemon's socket file: containerd's shims remove it and bind again.
            try:  # noqa: SIM105 - contextlib is an import start/delete skip
                os.unlink(path)
            except FileNotFoundError:
                pass
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
    listener = bind_or_reuse(path)
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
