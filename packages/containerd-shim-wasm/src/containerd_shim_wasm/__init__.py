"""containerd_shim_wasm: build containerd shims that run WebAssembly as Linux containers.

An engine implements three small classes and calls :meth:`ShimCli.run`::

    from containerd_shim_wasm import RuntimeContext, Sandbox, Shim, ShimCli

    class MySandbox(Sandbox):
        async def run_wasi(self, ctx: RuntimeContext) -> int:
            module = ctx.entrypoint().source      # a file in the rootfs, or OCI layers
            ...                                   # run it with ctx.args() and ctx.envs()
            return 0

    class MyShim(Shim):
        @classmethod
        def name(cls) -> str:
            return "myengine"                     # runtime io.containerd.myengine.v1

        @classmethod
        def sandbox(cls) -> type[Sandbox]:
            return MySandbox

    def main() -> None:
        ShimCli.run(MyShim)

Containers are real Linux containers (namespaces, cgroups, pivot_root); native executables
(the CRI pause container, sidecars) run through the same shim.
"""

from __future__ import annotations

from .cli import ShimCli
from .compiler import Compiler
from .context import (
    WASM_LAYER_MEDIA_TYPES,
    Entrypoint,
    FileSource,
    OciSource,
    RuntimeContext,
    Source,
    SpecContext,
    WasmLayer,
    env_path,
)
from .sandbox import CannotHandle, ResourceLimits, Sandbox
from .shim import Config, Shim, Version

__all__ = [
    "WASM_LAYER_MEDIA_TYPES",
    "CannotHandle",
    "Compiler",
    "Config",
    "Entrypoint",
    "FileSource",
    "OciSource",
    "ResourceLimits",
    "RuntimeContext",
    "Sandbox",
    "Shim",
    "ShimCli",
    "Source",
    "SpecContext",
    "Version",
    "WasmLayer",
    "env_path",
]
