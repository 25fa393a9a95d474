"""containerd shim for wasmtime: runtime ``io.containerd.wasmtime.v1``.

The entry point is ``ShimCli.run(WasmtimeShim)``. Importing this package does not import
wasmtime (the shim's ``start``/``delete`` actions stay light); the engine is loaded by
:meth:`WasmtimeSandbox.preload` in the zygote.
"""

from .shim import WasmtimeCompiler, WasmtimeSandbox, WasmtimeShim

__all__ = ["WasmtimeCompiler", "WasmtimeSandbox", "WasmtimeShim"]
