"""The ``Compiler``: ahead-of-time compilation of wasm layers, cached in containerd."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from .context import WasmLayer


class Compiler(ABC):
    """Precompiles OCI wasm layers; results are cached in containerd's content store."""

    @abstractmethod
    def cache_key(self) -> str:
        """A stable string that changes whenever previously compiled artifacts would be
        rejected (engine version, engine settings, CPU features)."""

    @abstractmethod
    async def compile(self, layers: Sequence[WasmLayer]) -> list[bytes | None]:
        """Compile each layer; return exactly one entry per layer.

        ``None`` means "leave this layer as it is" (not compilable, or already compiled).
        """
