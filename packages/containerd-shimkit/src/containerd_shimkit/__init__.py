"""containerd_shimkit: write containerd runtime shims in Python.

A shim supplies an :class:`Instance` implementation (create, start, kill, delete, wait a
container) and calls :func:`run` from its entry point; the toolkit does the rest: the
``start``/``delete`` actions containerd runs, the daemon, ttrpc, the Task service, events
and logging::

    from containerd_shimkit import ShimSpec, run

    def main() -> None:
        run(ShimSpec(
            name="containerd-shim-example-v1",
            version=lambda: ("0.1.0", "<none>"),
            instance=lambda: ExampleInstance,   # imported only by the daemon
        ))

The package root imports only light modules: ``start`` and ``delete`` run for every
container and must not pay for asyncio or protobuf. Heavy names load on first use.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~6 ms)
if TYPE_CHECKING:
    from .cli import CleanupHook, CleanupRequest, ShimSpec, run
    from .errors import (
        AlreadyExists,
        Code,
        FailedPrecondition,
        Internal,
        InvalidArgument,
        NotFound,
        ShimError,
        Unavailable,
        Unimplemented,
    )
    from .reaper import REAPER, Reaper
    from .task import (
        ExitStatus,
        HasPid,
        Instance,
        InstanceConfig,
        Mount,
        RuntimeOptions,
        SupportsCloseIO,
        SupportsPause,
        SupportsPids,
        SupportsStats,
        SupportsUpdate,
    )
    from .zygote import Zygote, ZygoteError

# name -> submodule; loaded on first attribute access (PEP 562) so that `start` and
# `delete` import only what they use.
_LAZY = {
    "AlreadyExists": "errors",
    "CleanupHook": "cli",
    "CleanupRequest": "cli",
    "Code": "errors",
    "ExitStatus": "task",
    "FailedPrecondition": "errors",
    "HasPid": "task",
    "Instance": "task",
    "InstanceConfig": "task",
    "Internal": "errors",
    "InvalidArgument": "errors",
    "Mount": "task",
    "NotFound": "errors",
    "REAPER": "reaper",
    "Reaper": "reaper",
    "RuntimeOptions": "task",
    "ShimError": "errors",
    "ShimSpec": "cli",
    "SupportsCloseIO": "task",
    "SupportsPause": "task",
    "SupportsPids": "task",
    "SupportsStats": "task",
    "SupportsUpdate": "task",
    "Unavailable": "errors",
    "Unimplemented": "errors",
    "Zygote": "zygote",
    "ZygoteError": "zygote",
    "run": "cli",
}

__all__ = [
    "REAPER",
    "AlreadyExists",
    "CleanupHook",
    "CleanupRequest",
    "Code",
    "ExitStatus",
    "FailedPrecondition",
    "HasPid",
    "Instance",
    "InstanceConfig",
    "Internal",
    "InvalidArgument",
    "Mount",
    "NotFound",
    "Reaper",
    "RuntimeOptions",
    "ShimError",
    "ShimSpec",
    "SupportsCloseIO",
    "SupportsPause",
    "SupportsPids",
    "SupportsStats",
    "SupportsUpdate",
    "Unavailable",
    "Unimplemented",
    "Zygote",
    "ZygoteError",
    "run",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
