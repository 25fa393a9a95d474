"""containerd shim for wasmtime: runtime ``io.containerd.wasmtime.v1``.

The entry point is ``ShimCli.run(WasmtimeShim)``. Importing this package does not import
wasmtime (the shim's ``start``/``delete`` actions stay light): names load on first use, and
the engine is loaded by :meth:`WasmtimeSandbox.preload` in the zygote.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from .compiler import WasmtimeCompiler
    from .sandbox import WasmtimeSandbox
    from .shim import WasmtimeShim

_LAZY = {"WasmtimeCompiler": "compiler", "WasmtimeSandbox": "sandbox", "WasmtimeShim": "shim"}

__all__ = ["WasmtimeCompiler", "WasmtimeSandbox", "WasmtimeShim"]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
