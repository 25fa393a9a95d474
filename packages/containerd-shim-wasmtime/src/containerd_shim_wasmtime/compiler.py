"""``WasmtimeCompiler``: wasmtime's precompiled artifacts for the precompile caches."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

from containerd_shim_wasm import Compiler, WasmLayer

from .engine import (
    ENGINE_FLAGS,
    EngineFlags,
    engine_for,
    exports_http_handler,
    kind_of,
    load_program,
    shared_engine,
)


class WasmtimeCompiler(Compiler):
    """Precompiles OCI wasm layers to wasmtime's native artifacts (``Module.serialize``)."""

    _engine_flags: ClassVar[EngineFlags] = ENGINE_FLAGS

    def cache_key(self) -> str:
        """Our equivalent of ``Engine::precompile_compatibility_hash`` (not in wasmtime-py).

        Every artifact carries a ``.wasmtime.engine`` ELF section with exactly what wasmtime
        compares when loading it: its version, the target, the Cranelift shared and ISA
        flags (host CPU features), tunables and wasm features. The key hashes that section
        from an empty module compiled by our engine, plus the wasmtime-py version.
        """
        return _cache_key(tuple(sorted(self._engine_flags.items())))

    async def compile(self, layers: Sequence[WasmLayer]) -> list[bytes | None]:
        """Serialize each module/component layer; ``None`` for precompiled or unknown ones,
        for ``wasi:http/proxy`` components (see below) and for invalid wasm (logged: the
        run then reports the error)."""
        import asyncio

        engine = engine_for(self._engine_flags)

        def compile_one(layer: WasmLayer) -> bytes | None:
            import logging

            import wasmtime

            if layer.precompiled or kind_of(layer.data) not in ("module", "component"):
                return None
            if exports_http_handler(layer.data):
                # A wasi:http/proxy component runs on the proxy engine (epoch interruption
                # on, for request deadlines), never on this one: an artifact of ours would
                # not be for its flags. Its container compiles it for that engine.
                return None
            try:
                return bytes(load_program(engine, layer.data, layer.digest).serialize())
            except wasmtime.WasmtimeError as exc:
                logging.getLogger(__name__).warning(
                    "cannot precompile layer %s: %s", layer.digest, exc
                )
                return None

        return await asyncio.to_thread(lambda: [compile_one(layer) for layer in layers])


@functools.cache
def _cache_key(flags: tuple[tuple[str, bool | int | str], ...]) -> str:
    import hashlib
    import importlib.metadata

    import wasmtime

    artifact = bytes(wasmtime.Module(shared_engine(flags), b"\0asm\x01\0\0\0").serialize())
    digest = hashlib.sha256(_elf_section(artifact, b".wasmtime.engine") or artifact)
    return f"wasmtime-py-{importlib.metadata.version('wasmtime')}-{digest.hexdigest()[:32]}"


def _elf_section(elf: bytes, name: bytes) -> bytes | None:
    """The contents of section ``name`` of a little-endian ELF64 file, if present."""
    import struct

    try:
        (shoff,) = struct.unpack_from("<Q", elf, 40)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 58)
        headers = [struct.unpack_from("<I20xQQ", elf, shoff + i * shentsize) for i in range(shnum)]
        names = headers[shstrndx][1]
        for name_at, offset, size in headers:
            start = names + name_at
            if elf[start : elf.index(b"\0", start)] == name:
                return elf[offset : offset + size]
    except (struct.error, IndexError, ValueError):
        pass
    return None
