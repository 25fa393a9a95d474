"""The ``Instance`` protocol: what the Task service needs from a container implementation.

The Task service (:mod:`containerd_shimkit.task.service`) knows nothing else about how a
container runs. A wasm runtime, a test shim running host processes, or anything else plugs
in by implementing this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable


@dataclass(frozen=True)
class Mount:
    """One rootfs mount from ``CreateTaskRequest.rootfs`` (containerd.types.Mount)."""

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuntimeOptions:
    """Runtime options decoded from containerd's ``runtimeoptions.v1.Options``.

    ``systemd_cgroup`` is the ``SystemdCgroup`` key of the CRI runtime's ``options`` table;
    ``extra`` holds every other key, so that an engine can use (or reject) them.
    """

    systemd_cgroup: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceConfig:
    """Everything an :class:`Instance` is created from.

    An empty stdio path means the stream is not connected.
    """

    namespace: str
    containerd_address: str
    bundle: Path
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    rootfs: tuple[Mount, ...] = ()
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    #: The containerd ttrpc address events are published to (``TTRPC_ADDRESS``).
    ttrpc_address: str = ""


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: its exit code (128+signal when killed) and when."""

    code: int
    exited_at: datetime


@runtime_checkable
class Instance(Protocol):
    """One container managed by the shim.

    Lifecycle: ``new`` (containerd's Create) → ``start`` → (``kill``)* → ``wait`` returns →
    ``delete``. ``delete`` may also follow ``new`` directly (Create then Delete without
    Start). ``wait`` may be awaited any number of times, before or after exit.

    Errors are :class:`containerd_shimkit.errors.ShimError` subclasses so that containerd
    receives the right status code.
    """

    @classmethod
    async def new(cls, id: str, config: InstanceConfig) -> Self:
        """Create the container (namespaces, rootfs, cgroup) without running its workload."""
        ...

    async def start(self) -> int:
        """Run the workload; return the pid containerd should know it by."""
        ...

    async def kill(self, signal: int, all: bool = False) -> None:
        """Send ``signal`` to the init process, or to every process when ``all``."""
        ...

    async def delete(self) -> None:
        """Release everything the container holds: processes, mounts, cgroup, state."""
        ...

    async def wait(self) -> ExitStatus:
        """Wait for the init process to exit."""
        ...


@runtime_checkable
class HasPid(Protocol):
    """Optional: an Instance whose init process exists from Create on (reported to containerd)."""

    @property
    def pid(self) -> int:
        """The host pid of the container's init process."""
        ...


@runtime_checkable
class SupportsStats(Protocol):
    """Optional: an Instance that reports cgroup metrics for ``Stats``."""

    async def stats(self) -> tuple[str, bytes]:
        """Return ``(type_url, serialized metrics)``, e.g. ``io.containerd.cgroups.v1.Metrics``."""
        ...


@runtime_checkable
class SupportsPids(Protocol):
    """Optional: an Instance that lists every process of the container for ``Pids``."""

    async def pids(self) -> list[int]:
        """Return the host pids of the container's processes (init first)."""
        ...


@runtime_checkable
class SupportsPause(Protocol):
    """Optional: an Instance that can freeze and thaw its processes."""

    async def pause(self) -> None:
        """Freeze every process of the container."""
        ...

    async def resume(self) -> None:
        """Thaw the container."""
        ...


@runtime_checkable
class SupportsUpdate(Protocol):
    """Optional: an Instance that can change its resource limits while running."""

    async def update(self, resources: dict[str, Any]) -> None:
        """Apply OCI ``LinuxResources`` (already decoded from JSON)."""
        ...


@runtime_checkable
class SupportsCloseIO(Protocol):
    """Optional: an Instance that can close the workload's stdin (``CloseIO``)."""

    async def close_stdin(self) -> None:
        """Close the write side of the workload's stdin."""
        ...
