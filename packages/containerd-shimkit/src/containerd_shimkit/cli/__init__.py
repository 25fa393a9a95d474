"""The shim command line: ``start``, ``delete``, ``-v``, ``-info`` and the daemon."""

from __future__ import annotations

from .delete import CleanupHook, CleanupRequest
from .main import ShimSpec, run

__all__ = ["CleanupHook", "CleanupRequest", "ShimSpec", "run"]
