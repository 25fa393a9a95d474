"""The shim command line: ``start``, ``delete``, ``-v``, ``-info`` and the daemon.

Names load on first use (PEP 562): ``start`` and ``delete`` import only what they run.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from .daemon import zygote_command
    from .delete import CleanupHook, CleanupRequest
    from .main import ShimSpec, run

_LAZY = {
    "CleanupHook": "delete",
    "CleanupRequest": "delete",
    "ShimSpec": "main",
    "run": "main",
    "zygote_command": "daemon",
}

__all__ = ["CleanupHook", "CleanupRequest", "ShimSpec", "run", "zygote_command"]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
