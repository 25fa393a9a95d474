"""The wasmtime engine shared by the sandbox and the compiler.

One :class:`wasmtime.Engine` per configuration per process, the engine flags (identical for
the sandbox and the compiler, since an artifact only loads into an engine with the same
settings), and how bytes are classified and loaded (module, component, WAT, artifact).
``wasmtime`` itself is imported inside functions: the shim binary's ``start``/``delete``
must not load it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import wasmtime
    from wasmtime.component import Component

EngineFlags = Mapping[str, bool | int | str]

#: The engine configuration shared by the sandbox and the compiler: a precompiled artifact
#: only loads into an engine whose compatibility-relevant settings are identical.
#:
#: No ``epoch_interruption``: it makes wasmtime check the epoch at every function entry and
#: loop header, which cost 34% on an n-body kernel and 7% on SHA-256
#: (``benchmarks/compute.py``). The shim does not need it: SIGTERM ends the container's
#: process, guest thread included. :data:`INTERRUPTIBLE_FLAGS` is for embedders that
#: cancel ``run_wasi`` and keep their process.
ENGINE_FLAGS: EngineFlags = {"wasm_component_model": True}
#: :data:`ENGINE_FLAGS` plus epoch interruption: a cancelled ``run_wasi`` stops a spinning
#: guest at once instead of abandoning its thread.
INTERRUPTIBLE_FLAGS: EngineFlags = {**ENGINE_FLAGS, "epoch_interruption": True}

WASM_MAGIC = b"\0asm"
_CORE_VERSION = b"\x01\x00\x00\x00"  # core module: version 1
_COMPONENT_LAYER = b"\x01\x00"  # bytes 6..8 of a component preamble: layer 1
_ELFOSABI_WASMTIME = 200  # e_ident[EI_OSABI] of wasmtime's precompiled artifacts
_EF_WASMTIME_MODULE, _EF_WASMTIME_COMPONENT = 1, 2  # ELF e_flags of those artifacts


Kind = Literal["module", "component", "precompiled-module", "precompiled-component"]


def kind_of(data: bytes) -> Kind | None:
    """Classify bytes like wasmparser's ``is_core_wasm``/``is_component`` and wasmtime's
    ``Engine::detect_precompiled`` (which wasmtime-py does not expose); ``None`` otherwise."""
    if data[:4] == WASM_MAGIC and len(data) >= 8:
        if data[4:8] == _CORE_VERSION:
            return "module"
        if data[6:8] == _COMPONENT_LAYER:
            return "component"
    if data[:4] == b"\x7fELF" and len(data) >= 52 and data[7] == _ELFOSABI_WASMTIME:
        e_flags = int.from_bytes(data[48:52], "little")
        if e_flags & _EF_WASMTIME_MODULE:
            return "precompiled-module"
        if e_flags & _EF_WASMTIME_COMPONENT:
            return "precompiled-component"
    return None


_COMPONENT_EXPORT_SECTION = 11
_HTTP_HANDLER = b"wasi:http/incoming-handler@"


def exports_http_handler(data: bytes) -> bool:
    """Whether the component binary ``data`` exports ``wasi:http/incoming-handler@0.2.x``
    (a ``wasi:http/proxy`` component, served rather than run).

    Read from the component's own (top-level) export sections, without compiling it:
    compiling a component takes seconds, and a proxy is compiled for another engine (see
    :func:`~containerd_shim_wasmtime.http.proxy_engine`). Nested modules and components
    are sections of their own and are skipped whole, so their exports do not count.
    """
    if kind_of(data) != "component":
        return False
    at = 8
    try:
        while at < len(data):
            section = data[at]
            size, shift, at = 0, 0, at + 1
            while True:
                byte = data[at]
                at += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            if section == _COMPONENT_EXPORT_SECTION and _HTTP_HANDLER in data[at : at + size]:
                return True
            at += size
    except IndexError:  # truncated: not a component wasmtime would load anyway
        return False
    return False


@functools.cache
def shared_engine(flags: tuple[tuple[str, bool | int | str], ...]) -> wasmtime.Engine:
    """One Engine per configuration per process. Creating one starts no threads (checked
    by a test), so the zygote may create it before forking containers."""
    import atexit

    import wasmtime

    config = wasmtime.Config()
    for name, value in flags:
        setattr(config, name, value)
    # Free cached engines before interpreter teardown unloads wasmtime's ctypes bindings
    # (else "Exception ignored in Managed.__del__" at exit).
    atexit.register(shared_engine.cache_clear)
    return wasmtime.Engine(config)


def engine_for(flags: EngineFlags, **overrides: bool | int | str) -> wasmtime.Engine:
    return shared_engine(tuple(sorted({**flags, **overrides}.items())))


def load_program(engine: wasmtime.Engine, data: bytes, where: str) -> wasmtime.Module | Component:
    """Compile (or, for trusted precompiled bytes, deserialize) a module or component."""
    import wasmtime
    from wasmtime.component import Component

    kind = kind_of(data)
    if kind is None and not data.startswith((WASM_MAGIC, b"\x7fELF")):
        # WAT text (a core module or a component); errors name the line and column.
        data = bytes(wasmtime.wat2wasm(data))
        kind = kind_of(data)
    if kind == "module":
        return wasmtime.Module(engine, data)
    if kind == "component":
        return Component(engine, data)
    if kind == "precompiled-module":
        return wasmtime.Module.deserialize(engine, data)
    if kind == "precompiled-component":
        return Component.deserialize(engine, data)
    raise ValueError(f"{where} is not a wasm module or component")
