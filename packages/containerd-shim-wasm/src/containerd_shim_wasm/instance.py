"""``WasmInstance``: containerd_shimkit's ``Instance`` for wasm (and native) containers.

Daemon side. Create mounts the rootfs, creates the cgroup, opens stdio and asks the zygote to
fork the container's init process, which sets up the namespaces and the rootfs, checks that
the workload can run (``Sandbox.can_handle``) and reports back over a sync channel; Start
tells it to go. The init process is re-parented to the daemon (a child subreaper), whose
reaper reports its exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

from containerd_shimkit import (
    REAPER,
    ExitStatus,
    FailedPrecondition,
    InstanceConfig,
    InvalidArgument,
    NotFound,
    Unavailable,
    Zygote,
    ZygoteError,
)
from containerd_shimkit.container import (
    ContainerError,
    mount_rootfs,
    resolve_rootfs,
    unmount_rootfs,
)
from containerd_shimkit.container.cgroups import (
    Cgroup,
    CgroupNotFoundError,
    is_systemd_cgroups_path,
    prime_attach,
)

from .context import WasmLayer, env_path
from .fdio import write_all
from .shim import Shim
from .state import remove_state, write_state
from .stdio import StdinRelay, open_output

log = logging.getLogger(__name__)

#: How long the init process may take to set up and validate the workload.
SETUP_TIMEOUT = 30.0
#: Opening the module file for the zygote: never block (a FIFO swapped in), never follow.
_MODULE_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def load_spec(bundle: Path) -> dict[str, Any]:
    """Read ``config.json``; a broken one is an InvalidArgument naming the file."""
    path = bundle / "config.json"
    try:
        spec = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InvalidArgument(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
        raise InvalidArgument(f"{path} has no 'process' object")
    return spec


def memory_limit(spec: dict[str, Any]) -> int | None:
    """``linux.resources.memory.limit`` when it is a positive number of bytes."""
    limit = (((spec.get("linux") or {}).get("resources") or {}).get("memory") or {}).get("limit")
    return limit if isinstance(limit, int) and limit > 0 else None


class _Undo:
    """Cleanup steps of a half-created container, run in reverse on failure.

    Steps marked ``blocking`` (cgroup work, which retries with sleeps while processes
    drain) run in a worker thread, off the event loop that serves the pod's other
    containers.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], object], bool]] = []

    def push(self, what: str, step: Callable[[], object], *, blocking: bool = False) -> None:
        self.steps.append((what, step, blocking))

    async def run(self) -> None:
        steps, self.steps = self.steps[::-1], []
        for what, step, blocking in steps:
            try:
                if blocking:
                    await asyncio.to_thread(step)
                else:
                    step()
            except Exception as exc:
                log.warning("cleanup step failed", extra={"step": what, "error": str(exc)})


class WasmInstance:
    """One container of a wasm shim. Bound to a :class:`Shim` by :func:`instance_class`."""

    shim: ClassVar[type[Shim]]
    zygote: ClassVar[Zygote | None] = None

    def __init__(self, id: str, config: InstanceConfig, spec: dict[str, Any]) -> None:
        self.id = id
        self.config = config
        self.spec = spec
        self.rootfs = resolve_rootfs(config.bundle, spec)
        self.cgroup: Cgroup | None = None
        #: Whether Create made the cgroup: only then is it emptied and removed with the
        #: container (a cgroup given by ``ctr run --cgroup`` may hold other processes).
        self.owns_cgroup = False
        self.mounted = False
        self._pid = 0
        self._channel: socket.socket | None = None
        self._stdin: StdinRelay | None = None
        self._exit: asyncio.Future[ExitStatus] | None = None
        self._undo = _Undo()

    @property
    def pid(self) -> int:
        return self._pid

    # -- create --------------------------------------------------------------------------

    @classmethod
    async def new(cls, id: str, config: InstanceConfig) -> Self:
        spec = load_spec(config.bundle)
        self = cls(id, config, spec)
        try:
            await self._create()
        except BaseException:
            # Shielded: a Create cancelled again (its caller's deadline) must still undo.
            await asyncio.shield(self._undo.run())
            raise
        return self

    async def _create(self) -> None:
        bundle, config, spec = self.config.bundle, self.config, self.spec
        if config.rootfs:
            mounts = [(m.type, m.source, list(m.options)) for m in config.rootfs]
            try:
                mount_rootfs(mounts, self.rootfs)
            except (OSError, ContainerError) as exc:
                raise FailedPrecondition(
                    f"cannot mount the rootfs at {self.rootfs}: {exc}"
                ) from exc
            self.mounted = True
            self._undo.push("unmount rootfs", lambda: unmount_rootfs(self.rootfs))
        linux = spec.get("linux") or {}
        cgroups_path = linux.get("cgroupsPath") or ""
        # The "slice:prefix:name" form also selects the systemd layout: containerd 1.6 drops
        # a non-runc runtime's SystemdCgroup option, but its CRI still writes that form for
        # a .slice pod parent (see is_systemd_cgroups_path).
        systemd = config.options.systemd_cgroup or is_systemd_cgroups_path(cgroups_path)
        self.cgroup = Cgroup.for_container(cgroups_path, self.id, systemd=systemd)
        # Recorded before the cgroup is made: a daemon killed while making it must leave the
        # delete action what to remove (it tolerates directories that are not there).
        self.owns_cgroup = not any(path.is_dir() for path in self.cgroup.paths.values())
        self._save_state()
        self._undo.push("remove state", lambda: remove_state(bundle))
        try:
            owned = self.cgroup.create(linux.get("resources"))
        except OSError as exc:
            raise FailedPrecondition(f"cannot create the cgroup: {exc}") from exc
        # The init is moved into the cgroup a few ms from now: let the kernel's wait for
        # that run meanwhile (see prime_attach). Fire and forget: it never raises.
        asyncio.get_running_loop().run_in_executor(None, prime_attach)
        if owned != self.owns_cgroup:  # made, or taken, by someone else meanwhile
            self.owns_cgroup = owned
            self._save_state()
        if self.owns_cgroup:
            self._undo.push("remove cgroup", self._remove_cgroup, blocking=True)
        await self._spawn()

    def _save_state(self) -> None:
        """Record what the ``delete`` action must clean up if this daemon dies."""
        write_state(
            self.config.bundle,
            {
                "cgroup": self.cgroup.to_state() if self.cgroup else None,
                "cgroup_owned": self.owns_cgroup,
                "rootfs": str(self.rootfs),
                "mounted": self.mounted,
                "pid": self._pid,
            },
        )

    def _stdio_fds(self) -> list[int]:
        fds: list[int] = []
        try:
            if self.config.stdin:
                self._stdin = StdinRelay(self.config.stdin)
                self._undo.push("close stdin", self._stdin.discard)
                fds.append(self._stdin.read_end)
            else:
                fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            fds.append(open_output(self.config.stdout))
            fds.append(open_output(self.config.stderr))
        except OSError as exc:
            for fd in fds:
                if self._stdin is None or fd != self._stdin.read_end:  # the undo closes it
                    os.close(fd)
            raise InvalidArgument(f"cannot open stdio {exc.filename}: {exc.strerror}") from exc
        return fds

    async def _spawn(self) -> None:
        zygote = type(self).zygote
        if zygote is None:
            raise Unavailable("the shim's zygote is not running")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._channel = ours
        self._undo.push("close channel", ours.close)
        module = self._module_path()
        layers = await self._wasm_layers() if module is None else ()
        fds = self._stdio_fds()
        layer_fds = [layer_memfd(layer) for layer in layers]
        if module is not None:
            # For the zygote's compile cache; the init checks it is what it runs.
            with contextlib.suppress(OSError):
                layer_fds.append(os.open(module, _MODULE_OPEN_FLAGS))
        request = {
            "op": "spawn",
            "id": self.id,
            "bundle": str(self.config.bundle),
            "rootfs": str(self.rootfs),
            "cgroup": self.cgroup.to_state() if self.cgroup else None,
            "memory_limit": memory_limit(self.spec),
            "layers": [
                {"media_type": x.media_type, "digest": x.digest, "precompiled": x.precompiled}
                for x in layers
            ],
            "module": len(layer_fds) > len(layers),
        }
        try:
            reply = await zygote.request(
                request, [*fds, theirs.fileno(), *layer_fds], on_abandoned=_kill_abandoned
            )
        except ZygoteError as exc:
            raise InvalidArgument(f"cannot create container {self.id}: {exc}") from exc
        finally:
            theirs.close()
            for fd in [*fds, *layer_fds]:
                if self._stdin is None or fd != self._stdin.read_end:
                    os.close(fd)
        self._pid = int(reply["pid"])
        self._exit = REAPER.wait_for(self._pid)
        self._undo.push("kill init", lambda: self._kill_pid(signal.SIGKILL))
        self._save_state()
        await self._await_ready()
        if self._stdin is not None:
            os.close(self._stdin.read_end)  # the container holds its own copy now
            self._stdin.read_end = -1
        self._undo.steps.clear()

    async def _wasm_layers(self) -> tuple[WasmLayer, ...]:
        """The image's wasm layers; called when the module is not a file in the rootfs.

        A module present in the rootfs (an image with the module as a file) is used as is, so
        such containers never pay for a gRPC round trip to containerd (nor for importing
        grpc). Otherwise the layers come from containerd's content store, precompiled when
        the shim has a Compiler. Failures are logged and the container falls back to the
        rootfs, where Create then reports a missing module clearly.
        """
        if not (self.spec.get("process") or {}).get("args"):
            return ()
        from .layers import LayerError, TooManyWasmLayers, load_wasm_layers

        try:
            return await load_wasm_layers(
                self.config.containerd_address, self.config.namespace, self.id, type(self).shim
            )
        except TooManyWasmLayers as exc:
            raise InvalidArgument(str(exc)) from exc
        except LayerError as exc:
            log.warning(
                "not using the image's wasm layers; the module must come from the rootfs",
                extra={"error": str(exc)},
            )
            return ()

    def _module_path(self) -> Path | None:
        """The file ``args[0]`` names in the rootfs, as far as the daemon can tell."""
        process = self.spec.get("process") or {}
        args, envs = list(process.get("args") or []), list(process.get("env") or [])
        return module_in_rootfs(self.rootfs, args[0], envs) if args else None

    async def _await_ready(self) -> None:
        assert self._channel is not None and self._exit is not None
        data = await _receive_unless_exited(self._channel, self._exit, SETUP_TIMEOUT)
        if data is None:
            if self._exit.done():
                code = self._exit.result().code
                raise InvalidArgument(f"container {self.id} init exited with {code} during setup")
            raise InvalidArgument(f"container {self.id} did not finish setup in {SETUP_TIMEOUT} s")
        message = json.loads(data or b'{"error": "the init process exited"}')
        if "error" in message:
            raise InvalidArgument(message["error"])

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> int:
        assert self._channel is not None and self._exit is not None
        if self._stdin is not None:
            self._stdin.start()
        loop = asyncio.get_running_loop()
        channel, self._channel = self._channel, None
        try:
            try:
                await loop.sock_sendall(channel, b'{"start": true}')
            except OSError as exc:
                raise FailedPrecondition(
                    f"container {self.id} init is gone: {exc.strerror}"
                ) from exc
            # The init answers "started" once user, capabilities and seccomp are applied,
            # or the error that stopped it (a seccomp profile libseccomp refuses, say):
            # that must fail Start, not show up as an unexplained exit status 1. An init
            # that dies first (killed meanwhile) is reported by the exit waiter instead.
            reply = await _receive_unless_exited(channel, self._exit, SETUP_TIMEOUT)
        except OSError as exc:  # ECONNRESET: the init died meanwhile; the waiter reports it
            log.debug("no start reply from the init", extra={"error": str(exc)})
            return self._pid
        finally:
            channel.close()
        message = json.loads(reply) if reply else {}
        if "error" in message:
            raise FailedPrecondition(f"cannot start container {self.id}: {message['error']}")
        return self._pid

    def _remove_cgroup(self) -> None:
        """Kill what the workload left in the cgroup Create made, and remove it.

        The init is PID 1 of its own pid namespace, so its death took its descendants; the
        sweep catches processes of a container that shares the host's pid namespace. A
        cgroup that is already gone (removed by hand, or by a crashed daemon's ``delete``)
        is fine: Delete must not fail forever over it.
        """
        assert self.cgroup is not None
        try:
            self.cgroup.kill_all(signal.SIGKILL)
        except CgroupNotFoundError:
            return
        self.cgroup.delete()

    def _kill_pid(self, sig: int) -> None:
        if self._exit is not None and not self._exit.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, sig)

    async def kill(self, signal: int, all: bool = False) -> None:
        if self._exit is None or self._exit.done():
            raise NotFound("process already finished")
        if all and self.owns_cgroup and self.cgroup is not None:
            # Every process of the container: only in a cgroup of its own (in a shared one
            # that would hit its neighbours; the init's pid namespace takes its own).
            await asyncio.to_thread(self.cgroup.kill_all, signal)
        else:
            self._kill_pid(signal)

    async def wait(self) -> ExitStatus:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    async def delete(self) -> None:
        if self._exit is not None and not self._exit.done():
            # Delete after Create without Start: the init waits for "start"; closing the
            # channel makes it exit, SIGKILL makes sure.
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            self._kill_pid(signal.SIGKILL)
            await asyncio.wait_for(asyncio.shield(self._exit), 10)
        if self._stdin is not None:
            self._stdin.close()
        if self.owns_cgroup:
            await asyncio.to_thread(self._remove_cgroup)
            self.owns_cgroup = False
        if self.mounted:
            unmount_rootfs(self.rootfs)
            self.mounted = False
        remove_state(self.config.bundle)

    # -- optional capabilities -----------------------------------------------------------

    async def stats(self) -> tuple[str, bytes]:
        if self.cgroup is None:
            raise NotFound("cgroup does not exist")
        return self.cgroup.stats()

    async def pids(self) -> list[int]:
        return self.cgroup.pids() if self.cgroup is not None else []

    async def pause(self) -> None:
        assert self.cgroup is not None
        # Freezing waits (up to FREEZE_TIMEOUT) for the kernel: not on the pod's loop.
        await asyncio.to_thread(self.cgroup.freeze)

    async def resume(self) -> None:
        assert self.cgroup is not None
        await asyncio.to_thread(self.cgroup.thaw)

    async def update(self, resources: dict[str, Any]) -> None:
        assert self.cgroup is not None
        self.cgroup.update(resources)

    async def close_stdin(self) -> None:
        if self._stdin is not None:
            self._stdin.close_input()  # not close(): input still in the FIFO must arrive


def module_in_rootfs(rootfs: Path, arg0: str, envs: list[str]) -> Path | None:
    """The existing file inside ``rootfs`` that ``args[0]`` (``path[#func]``) names, if any.

    Resolved as the container would: a path with ``/`` from ``/`` (a relative one from the
    spec's cwd would need the cwd; taking ``/`` errs towards loading layers), a bare name in
    the container's PATH. Symlinks are not followed out of the rootfs.
    """
    path = arg0.partition("#")[0]
    if not path:
        return None
    candidates = [path] if "/" in path else [f"{d}/{path}" for d in env_path(envs).split(":") if d]
    for candidate in candidates:
        target = rootfs / candidate.lstrip("/")
        if target.is_file():
            resolved = target.resolve()
            if resolved.is_relative_to(rootfs.resolve()):
                return resolved
    return None


async def _receive_unless_exited(
    channel: socket.socket, exited: asyncio.Future[ExitStatus], timeout: float
) -> bytes | None:
    """The init's next message on its sync channel (``b""`` at EOF); ``None`` when the
    init exited first or ``timeout`` passed.

    The receive never outlives this call, cancelled or not: the caller closes the channel
    next, and a read still registered for a closed descriptor makes the event loop ignore
    the next socket that gets the same number (its epoll registration is gone, the loop's
    record of it is not), so a later Create of the pod would never hear from its init.
    """
    loop = asyncio.get_running_loop()
    receive = loop.create_task(loop.sock_recv(channel, 65536))
    waiting: set[asyncio.Future[Any]] = {receive, exited}
    try:
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not receive.done():
            receive.cancel()
            loop.remove_reader(channel.fileno())
    return receive.result() if receive in done else None


def _kill_abandoned(reply: dict[str, Any]) -> None:
    """A Create cancelled while the zygote forked its init: that init belongs to nobody."""
    with contextlib.suppress(ProcessLookupError, KeyError, ValueError):
        os.kill(int(reply["pid"]), signal.SIGKILL)  # the daemon (subreaper) reaps it


def layer_memfd(layer: WasmLayer) -> int:
    """An anonymous file holding the layer's bytes, to hand to the zygote.

    Layers can be megabytes: too big for one zygote message, and a memfd costs no copy
    through the socket.
    """
    fd = os.memfd_create(f"wasm-layer-{layer.digest[-12:]}", os.MFD_CLOEXEC)
    write_all(fd, layer.data)
    return fd


def instance_class(shim: type[Shim]) -> type[WasmInstance]:
    """A :class:`WasmInstance` subclass bound to ``shim``."""
    return type(f"{shim.__name__}Instance", (WasmInstance,), {"shim": shim})
