"""Zygote and container side: fork a container's init and run its workload there.

The zygote imports the engine once (``Sandbox.preload``). For each Create it forks the
init process through :func:`containerd_shimkit.container.spawn_init`; inside the container
the workload is either a native executable (ELF or ``#!``, e.g. the CRI pause container or a
sidecar), which is exec'd, or a wasm module, which the engine's :class:`Sandbox` runs in
that same process.

Exit codes: the guest's ``proc_exit(n)`` → n, a normal return → 0, a trap or engine error
→ 137, SIGTERM/SIGINT → 128 + signal (unlike runwasi, where PID 1 ignores SIGTERM), unless
the Sandbox takes the signal (:meth:`Sandbox.stop_blocking`, e.g. a server that drains):
then its own exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from containerd_shimkit import logs, proctitle, zygote
from containerd_shimkit.container import (
    ContainerError,
    ContainerSetup,
    exec_native,
    hide_kernel_filesystems,
    is_native_executable,
    spawn_init,
)
from containerd_shimkit.container import namespaces as linux_namespaces
from containerd_shimkit.container import spec as oci_spec
from containerd_shimkit.container.cgroups import Cgroup
from containerd_shimkit.zygote import Handler

from .context import FileSource, SpecContext, WasmLayer, env_path
from .fdio import read_whole
from .module_cache import ModuleCache, digest_of
from .node_cache import NodeCache
from .sandbox import ResourceLimits, Sandbox
from .shim import Shim

log = logging.getLogger(__name__)

#: Exit code for a trap or engine error (runwasi's, and what containerd reports for a kill).
ERROR_EXIT_CODE = 137
#: Annotation carrying the pod (sandbox) id, for the ``pod=`` log field.
SANDBOX_ID_ANNOTATION = "io.kubernetes.cri.sandbox-id"


def resolve_native(args: list[str], env: list[str]) -> str | None:
    """The native executable ``args[0]`` names in the container, if it is one."""
    if not args:
        return None
    path = args[0].partition("#")[0]
    try:
        resolved = FileSource(path).resolve(env_path(env))
    except FileNotFoundError:
        return None
    return resolved if is_native_executable(resolved) else None


def scrub_environ_block() -> None:
    """Zero the environment strings the kernel shows as ``/proc/<pid>/environ``.

    The init is a fork of the shim, so that memory holds the shim's environment (what
    containerd runs shims with: TTRPC_ADDRESS, the host's variables), which ``/proc`` shows
    as ``/proc/<pid>/environ`` (the guest itself gets no ``/proc``, see
    :class:`WasmWorkload`; native containers of the pod may share its pid namespace).
    ``os.environ``/``unsetenv`` do not touch it. The guest's env comes from the spec only.
    Without a /proc there is nothing to read it through, and nothing to do.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
    except OSError:
        return
    # Fields after "(comm)" start at field 3; env_start and env_end are fields 50 and 51.
    fields = stat.rsplit(")", 1)[1].split()
    env_start, env_end = int(fields[47]), int(fields[48])
    if 0 < env_start < env_end:
        ctypes.memset(env_start, 0, env_end - env_start)


def _zero_bytes(value: bytes) -> None:
    # Empty and one-byte bytes objects are interpreter-wide singletons: never write those.
    # c_char_p points into the object's own buffer, not at a copy.
    address = ctypes.cast(ctypes.c_char_p(value), ctypes.c_void_p).value
    if len(value) > 1 and address:
        ctypes.memset(address, 0, len(value))


def forget_host_environment() -> None:
    """Drop the shim's environment from this process's memory, as far as Python can.

    The init is a fork of the shim: ``os.environ`` still holds containerd's environment
    (TTRPC_ADDRESS, whatever secrets it was started with). The guest's environment comes
    from the spec, and nothing in the init reads ``os.environ`` after this. The values'
    bytes are zeroed before they are dropped (freed memory keeps its contents); copies
    made earlier elsewhere (``str`` objects, buffers already freed) are out of reach. A
    defence in depth: what keeps the guest away from this memory is
    :func:`~containerd_shimkit.container.hide_kernel_filesystems`.
    """
    data: Any = getattr(os.environ, "_data", {})  # the bytes behind os.environ/os.environb
    for value in list(data.values()):
        if isinstance(value, bytes):
            _zero_bytes(value)
    os.environ.clear()  # unsetenv()s each name: the C environ forgets them too


def module_comm(args: list[str]) -> str:
    """``comm`` of a wasm container: the module file's name without ``#function``, as an
    exec of it would show (``/app/hello.wasm#run`` → ``hello.wasm``)."""
    return proctitle.comm_for(args[0].partition("#")[0]) if args else ""


#: prctl(2): whether the process may be ptraced (and its /proc files read) by its uid.
_PR_SET_DUMPABLE = 4


def _not_dumpable() -> None:
    # Another container of the pod sharing its pid namespace, running as the same uid but
    # without CAP_SYS_PTRACE, could otherwise open this process's /proc/<pid>/mem. Set at
    # Start, after the user switch (changing uids resets the flag).
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("cannot make the container process non-dumpable")


class WasmWorkload:
    """What the container's init process runs: a native exec or the engine's Sandbox.

    A wasm guest runs inside this process with the container's ``/`` preopened, so before
    it runs (at the end of :meth:`prepare`, while the init still has all capabilities) the
    container's kernel filesystems are detached (no ``/proc``, ``/sys`` or cgroupfs, see
    :func:`~containerd_shimkit.container.hide_kernel_filesystems`): ``/proc/self/mem``
    would otherwise be write access to the init's own memory, i.e. native code execution,
    and ``/proc`` shows what the init inherited from the shim. Native executables keep
    their mounts: nothing of the shim runs once they have exec'd.
    """

    def __init__(
        self,
        shim: type[Shim],
        memory_limit: int | None,
        layers: tuple[WasmLayer, ...] = (),
        compiled: WasmLayer | None = None,
        forget: Callable[[], None] | None = None,
    ) -> None:
        self.shim = shim
        self.memory_limit = memory_limit
        self.layers = layers
        #: The zygote's artifact for the module file the daemon saw (unverified here).
        self.compiled = compiled
        #: Drops what the zygote holds for other containers (their compiled modules).
        self.forget = forget
        self.native = False
        self.sandbox: Sandbox | None = None
        self.context: SpecContext | None = None

    def prepare(self, setup: ContainerSetup) -> None:
        """Inside the container before Start: choose native or wasm and validate."""
        scrub_environ_block()
        process = setup.spec.get("process") or {}
        args, env = list(process.get("args") or []), list(process.get("env") or [])
        if not self.layers and resolve_native(args, env):
            self.native = True
            log.debug("running a native executable", extra={"arg0": args[0]})
            return
        compiled = None if self.layers else verified(self.compiled, args, env)
        self.context = SpecContext(args, env, self.layers, compiled)
        sandbox = self.shim.sandbox()()
        sandbox.limits = ResourceLimits(memory_bytes=self.memory_limit)
        self.sandbox = sandbox
        try:
            sandbox.can_handle_blocking(self.context)
        except Exception as exc:
            raise ValueError(
                f"cannot run {args[0] if args else '(no args)'!r}: {exc} "
                "(args[0] must be a wasm module or a native executable in the container)"
            ) from exc
        self.seal(setup, args)

    def seal(self, setup: ContainerSetup, args: list[str]) -> None:
        """Cut the guest off from this process before it can run (see the class docstring).

        Raises:
            ContainerError: the mount namespace is another container's (detaching its
                kernel filesystems would take them from that container's processes too), or a
                kernel filesystem could not be detached: Create fails rather than run the
                guest with them.
        """
        if not linux_namespaces.is_new(oci_spec.namespaces(setup.spec), "mount"):
            raise ContainerError(
                "a wasm container needs a mount namespace of its own: its kernel filesystems "
                "(/proc, /sys) are detached before the guest runs"
            )
        with contextlib.suppress(OSError):  # cosmetic; the init already shows the args
            proctitle.set_comm(module_comm(args))
        forget_host_environment()
        if self.forget is not None:
            self.forget()
        hidden = hide_kernel_filesystems()  # last: everything above may still use /proc
        log.debug("kernel filesystems detached", extra={"mounts": ",".join(hidden)})

    def run(self, setup: ContainerSetup) -> int:
        """After Start: exec the native binary, or run the wasm workload to its exit code."""
        if self.native:
            exec_native(setup)
        sandbox, context = self.sandbox, self.context
        assert sandbox is not None and context is not None
        _not_dumpable()
        try:
            return run_until_signal(
                lambda: sandbox.run_wasi_blocking(context), on_stop=sandbox.stop_blocking
            )
        except Exception:
            log.exception("error running the wasm workload")
            return ERROR_EXIT_CODE


def verified(compiled: WasmLayer | None, args: list[str], env: list[str]) -> WasmLayer | None:
    """``compiled`` if it was made from exactly the file ``args[0]`` names in this container.

    The daemon found the file through its own view of the rootfs; a symlink, a mount or a
    ``PATH`` lookup can make the container see another file, so compare what we will run.
    """
    if compiled is None or not args:
        return None
    try:
        path = FileSource(args[0].partition("#")[0]).resolve(env_path(env))
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None  # can_handle reports the missing file
    return compiled if digest_of(data) == compiled.digest else None


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: What stops a wasm container: 128 + the signal becomes its exit code.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def run_until_signal(work: Callable[[], int], on_stop: Callable[[int], bool] | None = None) -> int:
    """Run ``work`` in a thread until it returns; SIGTERM or SIGINT return 128 + the signal,
    unless ``on_stop(signum)`` (called in the signal handler) returns ``True``: the workload
    then stops by itself and its own exit code stands (see :meth:`Sandbox.stop_blocking`).

    The init process is PID 1 of its namespace: without a handler the kernel would drop
    these signals, which is why runwasi's wasm containers ignore SIGTERM. A guest blocked in
    a host call (``sleep``, a read on stdin) cannot be interrupted, so on a signal the
    thread is abandoned; it ends with the process. No event loop: waiting in
    ``Thread.join`` on the main thread is interrupted by the signal's handler, and the
    worker blocks the signals so that the kernel delivers them to the main thread.
    """
    outcome: list[tuple[int, BaseException | None]] = []

    def target() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # inherited by engine threads
        try:
            outcome.append((work(), None))
        except BaseException as exc:
            outcome.append((ERROR_EXIT_CODE, exc))

    def on_signal(signum: int, _frame: object) -> None:
        if outcome:  # once the workload has returned, its exit code stands
            return
        if on_stop is not None and on_stop(signum):
            return  # it stops by itself (a server draining): keep waiting for its code
        raise _Signalled(signum)

    thread = threading.Thread(target=target, name="wasm-guest", daemon=True)
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, on_signal)
        thread.start()
        thread.join()
    except _Signalled as stopped:
        return 128 + stopped.signum
    code, error = outcome[0]
    if error is not None:
        raise error
    return code


def _forgetter(modules: ModuleCache) -> Callable[[], None]:
    def forget() -> None:
        # Runs in the init (a fork): the zygote keeps its cache. Large artifacts are their
        # own mappings, so dropping the last reference unmaps them from the init.
        modules._entries.clear()

    return forget


#: A wasm component's preamble: magic, then version 0x0d and layer 1.
_COMPONENT_PREAMBLE = b"\0asm\x0d\x00\x01\x00"


def _component_bytes(fd: int) -> bytes:
    """The module file's bytes when it is a wasm component (what
    :meth:`Sandbox.preload_for` may need to look at), else ``b""``: core modules and native
    executables, the common case, are not read again."""
    try:
        if os.pread(fd, len(_COMPONENT_PREAMBLE), 0) != _COMPONENT_PREAMBLE:
            return b""
        return read_whole(fd, os.fstat(fd).st_size)
    except (OSError, ValueError):
        return b""


def spawn(
    shim: type[Shim], modules: ModuleCache, request: dict[str, Any], fds: list[int]
) -> dict[str, Any]:
    """Zygote request handler: fork one container's init; reply with its pid.

    ``fds``: stdin, stdout, stderr, the init's sync channel, one memfd per wasm layer, then
    (when ``request["module"]``) the module file the daemon found in the rootfs.
    """
    layer_info = request.get("layers") or []
    has_module = bool(request.get("module"))
    if request.get("op") != "spawn" or len(fds) != 4 + len(layer_info) + has_module:
        raise ValueError(f"bad zygote request {request.get('op')!r} with {len(fds)} fds")
    import json

    # Read in the zygote, before the fork: the init shares the bytes copy-on-write.
    layers = tuple(
        WasmLayer(info["media_type"], info["digest"], read_whole(fd), bool(info["precompiled"]))
        for info, fd in zip(layer_info, fds[4 : 4 + len(layer_info)], strict=True)
    )
    bundle = Path(request["bundle"])
    spec = json.loads((bundle / "config.json").read_text())
    cgroup_state = request.get("cgroup")
    setup = ContainerSetup(
        id=request["id"],
        bundle=bundle,
        spec=spec,
        rootfs=Path(request["rootfs"]),
        cgroup=Cgroup.from_state(cgroup_state) if cgroup_state else None,
        stdin=fds[0],
        stdout=fds[1],
        stderr=fds[2],
    )
    # The zygote's pod id is its daemon's (the group the daemon serves, as on the daemon's
    # own lines); the annotation and the container id are for a zygote that was never told.
    annotated = (spec.get("annotations") or {}).get(SANDBOX_ID_ANNOTATION)
    pod = logs.pod_id.get() or annotated or request["id"]
    # For this request only: the helper and the init inherit them at the fork (their log
    # records carry the ids), the zygote's later lines must not.
    instance_token, pod_token = logs.instance_id.set(request["id"]), logs.pod_id.set(pod)
    try:
        compiled = modules.artifact_for(fds[-1]) if has_module else None
        module = layers[0].data if layers else _component_bytes(fds[-1]) if has_module else b""
        if module:
            shim.sandbox().preload_for(module)
        workload = WasmWorkload(
            shim, request.get("memory_limit"), layers, compiled, forget=_forgetter(modules)
        )
        pid = spawn_init(setup, workload, fds[3], close_fds=(zygote.channel_fd(),))
    finally:
        logs.pod_id.reset(pod_token)
        logs.instance_id.reset(instance_token)
    return {"pid": pid}


def zygote_factory(shim: type[Shim], log_level: int) -> Handler:
    """Runs in the new zygote: route logs, load the engine, return the request handler."""
    # fd 2 becomes each container's stderr; keep the shim log on a descriptor of its own.
    log_stream = os.fdopen(os.dup(2), "w", buffering=1)
    logs.setup(log_level, log_stream)
    sandbox = shim.sandbox()
    sandbox.preload()
    if sandbox.run_wasi_blocking is Sandbox.run_wasi_blocking:
        # This engine's inits run event loops (the default run_wasi_blocking), and the
        # first loop in a process allocates lazily-created state. Doing that once here
        # keeps ~0.5 MB per container shared (measured). Starts no thread.
        asyncio.run(asyncio.sleep(0))
    modules = ModuleCache(shim, node_cache=NodeCache.from_env(shim.name()))
    # Objects that exist now are never collected: keep the collector from touching (and so
    # copying) their pages in every container forked from here.
    import gc

    gc.freeze()
    return lambda request, fds: spawn(shim, modules, request, fds)
