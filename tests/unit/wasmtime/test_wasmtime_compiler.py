"""WasmtimeCompiler: artifacts, the cache key, and what it leaves alone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import wasmtime
from wasmtime.component import Component
from wasmtime_support import MODULES

from containerd_shim_wasm.context import WasmLayer
from containerd_shim_wasmtime import WasmtimeCompiler

MODULE = bytes(wasmtime.wat2wasm((MODULES / "hello.wat").read_text()))
COMPONENT = bytes(wasmtime.wat2wasm((MODULES / "command.wat").read_text()))


class FuelCompiler(WasmtimeCompiler):
    _engine_flags = {**WasmtimeCompiler._engine_flags, "consume_fuel": True}


def layer(data: bytes, precompiled: bool = False) -> WasmLayer:
    return WasmLayer("application/wasm", "sha256:" + "cd" * 32, data, precompiled)


async def test_compile_one_entry_per_layer() -> None:
    compiler = WasmtimeCompiler()
    module, component, garbage, wat, already = await compiler.compile(
        [
            layer(MODULE),
            layer(COMPONENT),
            layer(b"not wasm at all"),
            layer((MODULES / "hello.wat").read_bytes()),  # text is not a layer format
            layer(MODULE, precompiled=True),
        ]
    )
    assert module is not None and module[:4] == b"\x7fELF"
    assert component is not None and component[:4] == b"\x7fELF"
    assert (garbage, wat, already) == (None, None, None)
    # The artifacts load into an engine with the same configuration.
    engine = wasmtime.Engine(_config(WasmtimeCompiler))
    wasmtime.Module.deserialize(engine, module)
    Component.deserialize(engine, component)


async def test_compile_skips_precompiled_bytes() -> None:
    (artifact,) = await WasmtimeCompiler().compile([layer(MODULE)])
    assert artifact is not None
    assert await WasmtimeCompiler().compile([layer(artifact)]) == [None]


async def test_invalid_wasm_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert await WasmtimeCompiler().compile([layer(b"\0asm\x01\0\0\0\x99")]) == [None]
    assert "cannot precompile layer sha256:cdcd" in caplog.text


def test_cache_key_is_stable() -> None:
    key = WasmtimeCompiler().cache_key()
    assert key.startswith("wasmtime-py-51.")
    assert WasmtimeCompiler().cache_key() == key
    # ...and across processes (the key labels content shared by every shim on the node).
    script = "from containerd_shim_wasmtime import WasmtimeCompiler as C; print(C().cache_key())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == key, out.stderr


async def test_cache_key_changes_when_wasmtime_would_reject_the_artifact() -> None:
    (fuel_artifact,) = await FuelCompiler().compile([layer(MODULE)])
    assert fuel_artifact is not None
    with pytest.raises(wasmtime.WasmtimeError, match="fuel"):
        wasmtime.Module.deserialize(wasmtime.Engine(_config(WasmtimeCompiler)), fuel_artifact)
    assert FuelCompiler().cache_key() != WasmtimeCompiler().cache_key()


def _config(compiler: type[WasmtimeCompiler]) -> wasmtime.Config:
    config = wasmtime.Config()
    for name, value in compiler._engine_flags.items():
        setattr(config, name, value)
    return config
