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

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
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
    from .shim import Shim
    from .shim_config import Config, Version

# name -> submodule, loaded on first use (PEP 562): the shim binary's ``start`` and
# ``delete`` actions, which run for every container, need only Shim and ShimCli.
_LAZY = {
    "WASM_LAYER_MEDIA_TYPES": "context",
    "CannotHandle": "sandbox",
    "Compiler": "compiler",
    "Config": "shim_config",
    "Entrypoint": "context",
    "FileSource": "context",
    "OciSource": "context",
    "ResourceLimits": "sandbox",
    "RuntimeContext": "context",
    "Sandbox": "sandbox",
    "Shim": "shim",
    "ShimCli": "cli",
    "Source": "context",
    "SpecContext": "context",
    "Version": "shim_config",
    "WasmLayer": "context",
    "env_path": "context",
}

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


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
