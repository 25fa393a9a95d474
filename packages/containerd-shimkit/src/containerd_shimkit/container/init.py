"""Spawning a container's init process, and everything that process does.

Process model. The daemon (asyncio, threads) asks a single-threaded *zygote* to create a
container; the zygote calls :func:`spawn_init`, which forks:

* **A**, a short-lived helper: opens the cgroup's ``cgroup.procs`` files, ``setns`` into
  every namespace the spec names with a path, ``unshare`` the others (but the cgroup
  namespace), forks **B**, moves B into the cgroup, tells B so, reports B's host pid over
  a pipe and exits. ``unshare(CLONE_NEWPID)`` only moves the caller's *children*, hence
  the second fork.
* **B**, the container init (pid 1 of its pid namespace when one is new). When A exits, B
  is re-parented to the nearest child subreaper, the daemon, which can then wait for it.
  B sets up the rootfs and the process (see :func:`_prepare_container`), waits until it is
  in its cgroup (:class:`_CgroupGate`) and creates its cgroup namespace, calls
  ``workload.prepare``, reports ready, waits for Start, switches user and capabilities,
  applies no_new_privs and seccomp (:func:`_finalize_process`), and calls
  ``workload.run``, whose return value is its exit code.

Why B is moved into its cgroup while it builds its rootfs rather than before (runc's
order): every move into a cgroup takes a kernel-wide lock whose writer first waits for an
RCU grace period, 5–15 ms on a small node, longer than all of B's mounts. Overlapping the
two takes that wait off every Create. What B does before the gate, mounts and the work of
a fresh fork, is the runtime's own code and is charged to the shim's cgroup (a few hundred
KiB); the workload's code and module load only after it.

Sync channel protocol (the ``channel_fd`` given to :func:`spawn_init`: one end of an
``AF_UNIX``/``SOCK_SEQPACKET`` socket pair; the daemon holds the other end). Every message
is one packet holding one JSON object:

====================  ==========================  ========================================
direction             message                     meaning
====================  ==========================  ========================================
init → daemon         ``{"ready": true}``         created; waiting for Start
init → daemon         ``{"error": "<text>"}``     create failed; init exits with 1
daemon → init         ``{"start": true}``         Start: run the workload
init → daemon         ``{"started": true}``       user, capabilities, seccomp applied;
                                                  the init closes its end and runs the
                                                  workload (native: execve)
init → daemon         ``{"error": "<text>"}``     start failed; init exits with 1
daemon closes its end (EOF before Start)          Delete before Start: init exits with 0
====================  ==========================  ========================================

Exit codes of B: ``workload.run``'s return value; 137 when it raises; 1 when setup fails;
0 when the channel is closed before Start.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import resource
import signal
import socket
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from .. import proctitle
from . import _libc, devices, namespaces, rootfs, seccomp, security, spec
from .spec import ContainerError, describe, step

logger = logging.getLogger(__name__)

_MAX_PACKET = 65536

#: Command line and ``comm`` of the short-lived helper process (followed by the container id
#: in the command line), like runc's ``runc init``.
HELPER_TITLE = "shim-init"


class CgroupJoiner(Protocol):
    """What :func:`spawn_init` needs from a cgroup: its membership files."""

    def open_procs(self) -> list[int]:
        """Open the cgroup's ``cgroup.procs`` file in every hierarchy for writing; writing a
        pid to each moves that process in. The caller closes the fds."""


@dataclass(frozen=True)
class ContainerSetup:
    """Everything the container init is created from.

    Attributes:
        id: the container id (for logs).
        bundle: the bundle directory (relative bind-mount sources resolve against it).
        spec: the parsed ``config.json``.
        rootfs: absolute host path of the already-mounted rootfs
            (see :func:`~containerd_shimkit.container.rootfs.mount_rootfs`).
        cgroup: the init is moved in before it creates its cgroup namespace, mounts
            cgroupfs or prepares the workload; None to stay in the caller's cgroup.
        stdin, stdout, stderr: fds in the process calling :func:`spawn_init`, duplicated
            onto 0/1/2 of the container; None means ``/dev/null``.
    """

    id: str
    bundle: Path
    spec: Mapping[str, Any]
    rootfs: Path
    cgroup: CgroupJoiner | None = None
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


class Workload(Protocol):
    """What runs in the container: prepared at Create, run at Start.

    Both methods run after pivot_root, where the host's files (Python's standard library,
    shared libraries) are gone: import and load everything the workload needs before
    :func:`spawn_init` (the zygote preloads the engine). Logging still works through the
    handlers the caller configured; they should not write to fds 0-2, which become the
    container's stdio.
    """

    def prepare(self, setup: ContainerSetup) -> None:
        """Check and load what will run, inside the container (after pivot_root, still as
        root with all capabilities: the last point where the workload can change the
        container's mounts, e.g. :func:`~.rootfs.hide_kernel_filesystems`). An exception
        fails Create with its message."""

    def run(self, setup: ContainerSetup) -> int:
        """Run the workload after Start (user, capabilities and seccomp are applied) and
        return the exit code; may instead execve (see :func:`exec_native`)."""


# --- the sync channel ------------------------------------------------------------------


def encode_message(message: Mapping[str, Any]) -> bytes:
    """One channel packet."""
    return json.dumps(message, separators=(",", ":")).encode()


def decode_message(packet: bytes) -> dict[str, Any]:
    """Parse one channel packet (``ValueError`` when it is not a JSON object)."""
    message = json.loads(packet)
    if not isinstance(message, dict):
        raise ValueError(f"channel message is not an object: {packet!r}")
    return message


def send_message(fd: int, message: Mapping[str, Any]) -> None:
    """Send one message on a SOCK_SEQPACKET fd."""
    os.write(fd, encode_message(message))


def recv_message(fd: int) -> dict[str, Any] | None:
    """Receive one message; None when the peer has closed the channel."""
    packet = os.read(fd, _MAX_PACKET)
    return decode_message(packet) if packet else None


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A ``(daemon end, init end)`` socket pair for the sync channel."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


# --- the zygote side -------------------------------------------------------------------


def _preload(setup: ContainerSetup) -> None:
    # Nothing may be loaded lazily after pivot_root: the container has no Python stdlib
    # and no libseccomp. Loading here, in the zygote, also caches it for later containers.
    security.last_cap()
    if spec.seccomp(setup.spec) is not None:
        with step("loading libseccomp"):
            _libc.seccomp()


def _validate(setup: ContainerSetup) -> None:
    nss = spec.namespaces(setup.spec)
    namespaces.check_supported(nss)
    if namespaces.is_shared_with_host(nss, "mount"):
        raise ContainerError("config.json: a mount namespace is required")
    if not spec.args(setup.spec):
        raise ContainerError("config.json: process.args must not be empty")


def _flush_stdio() -> None:
    # Unflushed buffers would be written twice (by parent and child) or into the container.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _close_quietly(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _wait_status(pid: int) -> str:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # reaped by someone else (a SIGCHLD handler)
        return "unknown status"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def spawn_init(
    setup: ContainerSetup,
    workload: Workload,
    channel_fd: int,
    *,
    close_fds: Iterable[int] = (),
) -> int:
    """Create the container's init process; returns its host pid.

    Call from a single-threaded process (the zygote): the child runs Python after fork. The
    init is re-parented to the nearest child subreaper (see
    :func:`containerd_shimkit.reaper.set_child_subreaper`) once the helper exits.
    ``channel_fd`` is the init's end of the sync channel (protocol in this module's
    docstring); the caller still owns its copy and should close it after this returns. Then
    read ``ready`` or ``error`` from the other end; the process calling this must not hold
    the other end, or the init never sees Delete-before-Start's EOF.

    The init inherits every fd of the caller. Fds >= 3 become close-on-exec before the
    workload runs, so a native exec leaks none, but an in-process workload keeps them:
    pass the caller's own fds that the container must not hold (the zygote's socket to
    the daemon, say) as ``close_fds``; they are closed right after the fork.

    Raises:
        ContainerError: the spec is unsupported, or the helper failed (its message says
            which step: joining the cgroup, a namespace…).
    """
    _validate(setup)
    _preload(setup)
    _flush_stdio()
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:
        os.close(read_fd)
        _close_quietly(close_fds)
        _helper_main(setup, workload, channel_fd, write_fd)
    os.close(write_fd)
    try:
        reply = _read_all(read_fd)
    finally:
        os.close(read_fd)
    status = _wait_status(pid)
    try:
        message = decode_message(reply)
    except ValueError:
        raise ContainerError(f"container init helper failed ({status})") from None
    if "error" in message:
        raise ContainerError(str(message["error"]))
    return int(message["pid"])


# --- the helper (A) --------------------------------------------------------------------


def _helper_main(
    setup: ContainerSetup, workload: Workload, channel_fd: int, report_fd: int
) -> NoReturn:
    code = 1
    try:
        # A fork of the zygote shows the daemon's argv (-address, another container's -id)
        # until it execs; tools matching shim daemons must not match it.
        _set_title([HELPER_TITLE, setup.id], HELPER_TITLE)
        procs: list[int] = []
        if setup.cgroup is not None:
            with step("opening the cgroup"):
                procs = setup.cgroup.open_procs()
        nss = spec.namespaces(setup.spec)
        namespaces.enter(nss, defer=("cgroup",) if procs else ())
        gate = _CgroupGate.create(procs, new_namespace=namespaces.is_new(nss, "cgroup"))
        pid = os.fork()
        if pid == 0:
            os.close(report_fd)
            _close_quietly(procs)
            gate.in_init()
            _init_main(setup, workload, channel_fd, gate)
        gate.in_helper()
        _join(procs, pid)
        gate.open()
        os.write(report_fd, encode_message({"pid": pid}))
        code = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(report_fd, encode_message({"error": describe(exc)}))
    finally:
        os._exit(code)


def _join(procs: Sequence[int], pid: int) -> None:
    try:
        with step("joining the cgroup"):
            for fd in procs:
                os.write(fd, str(pid).encode())
    except BaseException:
        # The init is our child: kill and reap it here, so nothing outlives the failure.
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise


class _CgroupGate:
    """Holds the container init back from what must happen in its cgroup until the helper
    has moved it there (see the module docstring for why this overlaps its rootfs setup).

    A pipe: the helper writes one byte once the init is in every hierarchy; the init's
    :meth:`wait` reads it, then creates the cgroup namespace if the spec asks for a new
    one (rooted, as it must be, at the container's cgroup). Without a cgroup there is
    nothing to wait for and the helper has created every namespace itself.
    """

    def __init__(self, read_fd: int, write_fd: int, new_namespace: bool) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._new_namespace = new_namespace

    @classmethod
    def create(cls, procs: Sequence[int], *, new_namespace: bool) -> _CgroupGate:
        if not procs:
            return cls(-1, -1, False)
        read_fd, write_fd = os.pipe()
        return cls(read_fd, write_fd, new_namespace)

    def in_init(self) -> None:
        """After the fork, in the init: keep only the read end."""
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1

    def in_helper(self) -> None:
        """After the fork, in the helper: keep only the write end."""
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    def open(self) -> None:
        """In the helper: the init is in its cgroup."""
        if self._write_fd >= 0:
            os.write(self._write_fd, b"1")
            os.close(self._write_fd)
            self._write_fd = -1

    def wait(self) -> None:
        """In the init: return once in the cgroup (at once on later calls)."""
        if self._read_fd < 0:
            return
        fd, self._read_fd = self._read_fd, -1
        try:
            joined = os.read(fd, 1) == b"1"
        finally:
            os.close(fd)
        if not joined:  # the helper died or failed to move us: it reports why
            raise ContainerError("the container init was not moved into its cgroup")
        if self._new_namespace:
            with step("creating the cgroup namespace"):
                _libc.unshare(_libc.CLONE_NEWCGROUP)


# --- the container init (B) ------------------------------------------------------------


def _init_main(
    setup: ContainerSetup, workload: Workload, channel_fd: int, gate: _CgroupGate
) -> NoReturn:
    code = 1
    try:
        code = _init(setup, workload, channel_fd, gate)
    except BaseException:
        logger.exception("container %s: init failed", setup.id)
    finally:
        _flush_stdio()
        os._exit(code)


def _reset_signals() -> None:
    # Handlers installed by the zygote must not run in the container, and a blocked signal
    # mask would be inherited by the workload.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.set_wakeup_fd(-1)  # the zygote's event loop pipe, if it had one
    for signum in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError):
            if callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_DFL)


def _send_quietly(fd: int, message: Mapping[str, Any]) -> None:
    try:
        send_message(fd, message)
    except OSError as exc:
        logger.debug("sync channel: cannot send %s: %s", message, exc)


def _set_title(argv: list[str], comm: str | None = None) -> None:
    try:
        proctitle.set_process_title(argv, comm)
    except OSError as exc:  # cosmetic: never fail a container for it
        logger.debug("cannot set the process title: %s", exc)


def _init(setup: ContainerSetup, workload: Workload, channel_fd: int, gate: _CgroupGate) -> int:
    # What runc's exec shows: the container's own args and comm, from the start (a native
    # process shows them only after its execve at Start; an in-process workload never execs).
    # Now, while the host's /proc is still there to find the argv area.
    _set_title(list(spec.args(setup.spec)))
    _reset_signals()
    os.setsid()  # like runc's init: the container gets its own session
    try:
        _prepare_container(setup, gate)
        gate.wait()
        workload.prepare(setup)
    except Exception as exc:
        logger.debug("container %s: create failed: %s", setup.id, exc)
        _send_quietly(channel_fd, {"error": describe(exc)})
        return 1
    send_message(channel_fd, {"ready": True})
    try:
        message = recv_message(channel_fd)
    except (OSError, ValueError) as exc:
        logger.warning("container %s: bad start message: %s", setup.id, exc)
        return 1
    if message is None:
        return 0  # EOF: the daemon deleted the container before starting it
    if not message.get("start"):
        logger.warning("container %s: unexpected message %s", setup.id, message)
        return 1
    # Before seccomp, which may not allow close_range; only an exec would act on the flags.
    set_cloexec_from(3, use_close_range=True)
    try:
        _finalize_process(setup)
    except Exception as exc:
        _send_quietly(channel_fd, {"error": describe(exc)})
        return 1
    _send_quietly(channel_fd, {"started": True})
    os.close(channel_fd)
    return _run(setup, workload)


def _run(setup: ContainerSetup, workload: Workload) -> int:
    try:
        return int(workload.run(setup))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        logger.exception("container %s: workload failed", setup.id)
        return 137


def _prepare_container(setup: ContainerSetup, gate: _CgroupGate) -> None:
    """Everything before ``ready``, in runc's order (``prepareRootfs``, then the parts of
    ``standard_init`` before the user switch)."""
    # mountinfo lists resolved paths; a rootfs under a symlink (/var/run) must match them.
    root = Path(os.path.realpath(setup.rootfs))
    host_null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)  # opened before pivot_root
    try:
        _build_rootfs(setup, root, gate)
        _set_process_limits(setup.spec)
        with step(f"pivot_root to {root}"):
            rootfs.pivot_root(root)
        # runc's prepareRootfs creates a missing cwd (after pivot_root, so inside the
        # container, and before / may become read-only): images and pods rely on it.
        with step(f"creating the working directory {spec.cwd(setup.spec)}"):
            os.makedirs(spec.cwd(setup.spec), 0o755, exist_ok=True)
        _configure_container(setup.spec)
        setup_stdio(setup.stdin, setup.stdout, setup.stderr, fallback=host_null)
    finally:
        os.close(host_null)
    with step(f"changing directory to {spec.cwd(setup.spec)}"):
        os.chdir(spec.cwd(setup.spec))


def _build_rootfs(setup: ContainerSetup, root: Path, gate: _CgroupGate) -> None:
    s = setup.spec
    mounts = spec.mounts(s)
    rootfs.prepare_root(root, spec.rootfs_propagation(s))
    host_network = namespaces.is_shared_with_host(spec.namespaces(s), "network")
    rootfs.mount_all(
        root, mounts, bundle=Path(setup.bundle), host_network=host_network, before_cgroup=gate.wait
    )
    if devices.needs_setup_dev(mounts):
        devices.setup_dev(root, spec.devices(s))


def _set_process_limits(s: spec.Spec) -> None:
    # Before pivot_root: oom_score_adj goes through the host's /proc, which exists whether
    # or not the spec mounts one.
    set_rlimits(spec.rlimits(s))
    set_oom_score_adj(spec.oom_score_adj(s))


def _configure_container(s: spec.Spec) -> None:
    # After pivot_root, runc's standard_init order.
    set_hostname(s, spec.namespaces(s))
    set_sysctls(spec.sysctl(s))  # before /proc/sys, usually a read-only path, is sealed
    for path in spec.readonly_paths(s):
        with step(f"making {path} read-only"):
            rootfs.readonly_path(path)
    for path in spec.masked_paths(s):
        with step(f"masking {path}"):
            rootfs.mask_path(path)
    _finalize_rootfs(s, spec.mounts(s))


def _finalize_rootfs(s: spec.Spec, mounts: Sequence[spec.Mount]) -> None:
    # runc's finalizeRootfs: /dev and / become read-only only now that they are filled.
    dev_flags = rootfs.dev_mount_flags(mounts)
    if dev_flags is not None:
        with step("remounting /dev read-only"):
            rootfs.remount_readonly("/dev", dev_flags)
    if spec.root_readonly(s):
        with step("remounting / read-only"):
            rootfs.remount_readonly("/")
    # Last: an unbindable tree would refuse the read-only and masked path bind mounts.
    rootfs.apply_root_propagation(spec.rootfs_propagation(s))
    os.umask(0o022)


def _finalize_process(setup: ContainerSetup) -> None:
    """At Start, in runc's order: no_new_privs, seccomp when it needs privileges, user and
    capabilities, then seccomp as late as possible when no_new_privs allows it."""
    s = setup.spec
    user = spec.user(s)
    nnp = spec.no_new_privileges(s)
    profile = spec.seccomp(s)
    if user.umask is not None:
        os.umask(user.umask)
    if nnp:
        security.set_no_new_privs()
    if profile is not None and not nnp:
        seccomp.load(profile)  # needs CAP_SYS_ADMIN without no_new_privs
    security.switch_user_and_capabilities(user, spec.capabilities(s))
    if profile is not None and nnp:
        seccomp.load(profile)


# --- process attributes ------------------------------------------------------------------


def set_rlimits(limits: Sequence[spec.Rlimit]) -> None:
    """Apply ``process.rlimits``. Raising a hard limit needs CAP_SYS_RESOURCE."""
    for limit in limits:
        with step(f"setting {limit.name}"):
            resource.setrlimit(limit.resource, (limit.soft, limit.hard))


def set_oom_score_adj(value: int | None) -> None:
    """Write ``process.oomScoreAdj``; a refusal (negative values need CAP_SYS_RESOURCE) is
    logged and ignored."""
    if value is None:
        return
    try:
        with open("/proc/self/oom_score_adj", "wb") as f:
            f.write(str(value).encode())
    except OSError as exc:
        logger.warning("cannot set oom_score_adj to %d: %s", value, describe(exc))


def set_hostname(s: spec.Spec, nss: Sequence[spec.Namespace]) -> None:
    """Set ``hostname`` and ``domainname`` when the container has a new UTS namespace.

    In a joined UTS namespace (a pod's) they belong to its owner; without a UTS namespace
    they would change the host's, so they are ignored with a warning (runc refuses the
    spec).
    """
    names = [(spec.hostname(s), _libc.sethostname), (spec.domainname(s), _libc.setdomainname)]
    if not any(name for name, _ in names):
        return
    if namespaces.is_shared_with_host(nss, "uts"):
        logger.warning("ignoring hostname/domainname: no UTS namespace in the spec")
        return
    if not namespaces.is_new(nss, "uts"):
        return
    for name, setter in names:
        if name:
            with step(f"setting host/domain name {name}"):
                setter(name)


def set_sysctls(values: Mapping[str, str]) -> None:
    """Write ``linux.sysctl`` through ``/proc/sys`` (``net.ipv4.x`` → ``net/ipv4/x``)."""
    for key, value in values.items():
        with step(f"setting sysctl {key}"):
            path = Path("/proc/sys", *key.split("."))
            path.write_text(value, encoding="utf-8")


def _open_null(fallback: int) -> int:
    try:
        return os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return os.dup(fallback)


def setup_stdio(stdin: int | None, stdout: int | None, stderr: int | None, fallback: int) -> None:
    """Make the given fds the process' 0, 1 and 2 (None: ``/dev/null``).

    The sources are first copied above 2, so a source that is itself 0, 1 or 2 is not
    overwritten before it is used.
    """
    null = _open_null(fallback)
    try:
        with step("setting up stdio"):
            copies = [
                fcntl.fcntl(null if fd is None else fd, fcntl.F_DUPFD_CLOEXEC, 3)
                for fd in (stdin, stdout, stderr)
            ]
            for target, source in enumerate(copies):
                os.dup2(source, target)
                os.close(source)
    finally:
        os.close(null)


#: close_range(2)'s flag: mark close-on-exec instead of closing (Linux 5.11+).
_CLOSE_RANGE_CLOEXEC = 1 << 2
_NR_CLOSE_RANGE = 436  # the same number on every architecture


def _close_range_cloexec(lowest: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(
        ctypes.c_long(_NR_CLOSE_RANGE),
        ctypes.c_uint(lowest),
        ctypes.c_uint(0xFFFFFFFF),
        ctypes.c_uint(_CLOSE_RANGE_CLOEXEC),
    )
    return bool(result == 0)


def set_cloexec_from(lowest: int, *, use_close_range: bool = False) -> None:
    """Mark every fd >= ``lowest`` close-on-exec, so execve leaks nothing of the zygote.

    With ``use_close_range``, one ``close_range`` call where the kernel has it (not under a
    seccomp filter, which may kill the process for a system call it does not know);
    otherwise, or when that fails, the fds listed in ``/proc/self/fd`` (which a workload may
    have hidden, see :func:`~containerd_shimkit.container.rootfs.hide_kernel_filesystems`);
    else every fd below the limit."""
    if use_close_range and _close_range_cloexec(lowest):
        return
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(lowest, min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)))
    for fd in fds:
        if fd >= lowest:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


# --- native executables ----------------------------------------------------------------


def _is_executable_file(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def resolve_in_path(name: str, path: str) -> str | None:
    """Find ``name`` like Go's ``exec.LookPath`` (what runc uses): a name with a slash is
    taken as is, otherwise the first executable regular file in ``path``'s directories
    (an empty entry is the current directory). None when there is none."""
    if "/" in name:
        return name if _is_executable_file(name) else None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if _is_executable_file(candidate):
            return candidate
    return None


def is_native_executable(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an ELF binary or a ``#!`` script (else: maybe wasm)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    return magic == b"\x7fELF" or magic.startswith(b"#!")


def exec_native(setup: ContainerSetup) -> NoReturn:
    """Replace the process with ``process.args``, environment ``process.env``.

    ``args[0]`` is resolved in the spec's ``PATH`` (not the runtime's), like runc. Signals
    Python ignores (SIGPIPE, SIGXFSZ) are restored to their defaults first, as subprocess
    does.

    Raises:
        ContainerError: the executable is not found or execve fails.
    """
    argv = spec.args(setup.spec)
    environ = spec.env(setup.spec)
    if not argv:
        raise ContainerError("process.args is empty")
    path = resolve_in_path(argv[0], environ.get("PATH", ""))
    if path is None:
        raise ContainerError(f'exec: "{argv[0]}": executable file not found in $PATH')
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    set_cloexec_from(3)
    _flush_stdio()
    try:
        os.execve(path, argv, environ)
    except OSError as exc:
        raise ContainerError(f"exec {path}: {describe(exc)}") from exc
