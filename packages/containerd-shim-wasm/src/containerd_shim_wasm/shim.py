"""The ``Shim``: an engine's identity and the classes that do its work."""

from __future__ import annotations

from abc import ABC, abstractmethod

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from .compiler import Compiler
    from .sandbox import Sandbox
    from .shim_config import Version


class Shim(ABC):
    """An engine shim. Never instantiated: every member is a class method.

    Keep the module that defines a Shim free of heavy imports (import the engine inside
    :class:`Sandbox` methods or :meth:`Sandbox.preload`): containerd runs the shim binary
    for ``start`` and ``delete`` of every container, and those paths must stay light.
    """

    @classmethod
    @abstractmethod
    def name(cls) -> str:
        """The engine name, e.g. ``wasmtime`` (runtime ``io.containerd.wasmtime.v1``)."""

    @classmethod
    def version(cls) -> Version:
        """The shim's version; defaults to ``<none>``."""
        from .shim_config import Version

        return Version()

    @classmethod
    @abstractmethod
    def sandbox(cls) -> type[Sandbox]:
        """The :class:`Sandbox` class that runs this engine's workloads."""

    @classmethod
    async def compiler(cls) -> Compiler | None:
        """The :class:`Compiler` for the precompile cache, or ``None`` (the default)."""
        return None

    @classmethod
    def supported_layers_types(cls) -> tuple[str, ...]:
        """OCI layer media types handed to the engine as wasm layers."""
        from .context import WASM_LAYER_MEDIA_TYPES

        return WASM_LAYER_MEDIA_TYPES
