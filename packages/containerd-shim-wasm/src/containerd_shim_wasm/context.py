"""What a :class:`~containerd_shim_wasm.Sandbox` sees of its container.

Only ``args()``, ``envs()`` and ``entrypoint()``: no OCI spec, no containerd, no ids (those
go into every log record automatically). Everything here runs *inside* the container, after
``pivot_root``, so paths are the container's.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import PurePosixPath

#: Media types runwasi recognises as wasm layers (``Shim.supported_layers_types`` default).
WASM_LAYER_MEDIA_TYPES: tuple[str, ...] = (
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    "application/wasm",
)


@dataclass(frozen=True)
class WasmLayer:
    """One wasm layer of an OCI image, loaded from containerd's content store.

    ``data`` is the module (or its precompiled form, when the precompile cache had it);
    ``media_type`` and ``digest`` describe the original layer.
    """

    media_type: str
    digest: str
    data: bytes
    precompiled: bool = False


@dataclass(frozen=True)
class FileSource:
    """The module is a file in the container's rootfs, named by ``args[0]``.

    ``compiled`` is the shim's precompiled artifact of exactly this file (same SHA-256,
    checked inside the container), when the pod's zygote has one: a sandbox may load it
    instead of compiling the file. It is native code made by the shim, never image bytes.
    """

    path: str
    compiled: WasmLayer | None = None

    def resolve(self, env_path: str = "") -> str:
        """Locate the file the way ``which`` would, inside the container.

        A path with a ``/`` is taken relative to the working directory; a bare name is
        looked up in ``env_path`` (the container's ``PATH``) and then the working directory.

        Raises:
            FileNotFoundError: naming every place that was searched.
        """
        if not self.path:
            raise FileNotFoundError("no module: args[0] is empty")
        if "/" in self.path:
            if os.path.isfile(self.path):
                return self.path
            raise FileNotFoundError(f"module {self.path!r} not found in the container")
        searched = [d for d in env_path.split(":") if d] + ["."]
        for directory in searched:
            candidate = os.path.join(directory, self.path)
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(
            f"module {self.path!r} not found in the container (searched {':'.join(searched)})"
        )

    def read(self, env_path: str = "") -> bytes:
        """Return the file's bytes (see :meth:`resolve`)."""
        with open(self.resolve(env_path), "rb") as f:
            return f.read()


@dataclass(frozen=True)
class OciSource:
    """The module came from the image's wasm layers, not from the rootfs."""

    layers: tuple[WasmLayer, ...]

    def read(self) -> bytes:
        """Return the single layer's bytes.

        Raises:
            ValueError: when there is not exactly one layer (as in runwasi, composing
                several modules is not supported).
        """
        if len(self.layers) != 1:
            raise ValueError(
                f"only a single module is supported when using images with OCI layers "
                f"(this image has {len(self.layers)} wasm layers)"
            )
        return self.layers[0].data


Source = FileSource | OciSource


def env_path(envs: list[str]) -> str:
    """The ``PATH`` in a ``KEY=VALUE`` environment list (``""`` when there is none)."""
    for item in envs:
        key, _, value = item.partition("=")
        if key == "PATH":
            return value
    return ""


@dataclass(frozen=True)
class Entrypoint:
    """The module and function to run, from ``args[0]`` = ``path[#func]``.

    ``func`` defaults to ``_start``; ``name`` is the file stem of the path (``None`` when
    the path part is empty); ``arg0`` is ``args[0]`` as given.
    """

    func: str
    name: str | None
    arg0: str | None
    source: Source

    @classmethod
    def parse(
        cls,
        args: list[str],
        layers: tuple[WasmLayer, ...] = (),
        compiled: WasmLayer | None = None,
    ) -> Entrypoint:
        """Parse ``args[0]``; ``layers`` (when any) become the source instead of the file,
        otherwise ``compiled`` is the file's verified artifact (see :class:`FileSource`)."""
        arg0 = args[0] if args else None
        path, _, func = (arg0 or "").partition("#")
        name = PurePosixPath(path).stem if path else None
        source: Source = OciSource(layers) if layers else FileSource(path, compiled)
        return cls(func=func or "_start", name=name or None, arg0=arg0, source=source)


class RuntimeContext(ABC):
    """The container's view, handed to :meth:`Sandbox.run_wasi` and ``can_handle``."""

    @abstractmethod
    def args(self) -> list[str]:
        """OCI ``process.args``, including ``args[0]`` (possibly with a ``#func`` suffix)."""

    @abstractmethod
    def envs(self) -> list[str]:
        """OCI ``process.env`` as ``KEY=VALUE`` strings; never the shim's own environment."""

    @abstractmethod
    def entrypoint(self) -> Entrypoint:
        """The module and function to run."""


class SpecContext(RuntimeContext):
    """A :class:`RuntimeContext` built from an OCI ``process`` and the loaded wasm layers."""

    def __init__(
        self,
        args: list[str],
        envs: list[str],
        layers: tuple[WasmLayer, ...] = (),
        compiled: WasmLayer | None = None,
    ) -> None:
        self._args = list(args)
        self._envs = list(envs)
        self._entrypoint = Entrypoint.parse(self._args, layers, compiled)

    def args(self) -> list[str]:
        return list(self._args)

    def envs(self) -> list[str]:
        return list(self._envs)

    def entrypoint(self) -> Entrypoint:
        return self._entrypoint

    def env_path(self) -> str:
        """The container's ``PATH`` (empty when the spec sets none)."""
        return env_path(self._envs)
