"""``WasmtimeShim``: the ``io.containerd.wasmtime.v1`` shim's identity.

This module is imported by the shim binary's ``start`` and ``delete`` actions, which run for
every container and must stay cheap: the sandbox and the compiler (and wasmtime) load only
when the daemon or the zygote asks for them.
"""

from __future__ import annotations

from containerd_shim_wasm.shim import Shim

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from containerd_shim_wasm import Compiler, Sandbox, Version

__all__ = ["WasmtimeShim"]


class WasmtimeShim(Shim):
    """The ``io.containerd.wasmtime.v1`` shim: ``ShimCli.run(WasmtimeShim)``."""

    @classmethod
    def name(cls) -> str:
        """``wasmtime``."""
        return "wasmtime"

    @classmethod
    def version(cls) -> Version:
        """This distribution's version; the revision names the wasmtime-py in use (there is
        no ``git describe`` at install time)."""
        from importlib import metadata

        from containerd_shim_wasm import Version

        def of(dist: str) -> str:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                return "<none>"

        return Version(of("containerd-shim-wasmtime"), f"wasmtime-py {of('wasmtime')}")

    @classmethod
    def sandbox(cls) -> type[Sandbox]:
        """:class:`~containerd_shim_wasmtime.sandbox.WasmtimeSandbox`."""
        from .sandbox import WasmtimeSandbox

        return WasmtimeSandbox

    @classmethod
    async def compiler(cls) -> Compiler | None:
        """:class:`~containerd_shim_wasmtime.compiler.WasmtimeCompiler`: OCI layers are
        precompiled and cached in containerd, module files once per pod."""
        from .compiler import WasmtimeCompiler

        return WasmtimeCompiler()
