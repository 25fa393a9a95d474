"""The Task service and the ``Instance`` protocol it drives."""

from __future__ import annotations

from .instance import (
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

__all__ = [
    "ExitStatus",
    "HasPid",
    "Instance",
    "InstanceConfig",
    "Mount",
    "RuntimeOptions",
    "SupportsCloseIO",
    "SupportsPause",
    "SupportsPids",
    "SupportsStats",
    "SupportsUpdate",
]
