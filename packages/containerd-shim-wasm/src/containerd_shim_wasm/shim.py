"""The ``Shim``: an engine's identity and the classes that do its work."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from .compiler import Compiler
from .context import WASM_LAYER_MEDIA_TYPES
from .sandbox import Sandbox


@dataclass(frozen=True)
class Version:
    """What ``-v`` prints: the engine shim's version and source revision."""

    version: str = "<none>"
    revision: str = "<none>"


@dataclass(frozen=True)
class Config:
    """Process-level settings of a shim binary.

    Attributes:
        no_setup_logger: leave logging alone (the embedding program configures it).
        default_log_level: the level when neither ``-debug`` nor ``SHIM_LOG_LEVEL`` say.
    """

    no_setup_logger: bool = False
    default_log_level: str = "info"


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
        return WASM_LAYER_MEDIA_TYPES
