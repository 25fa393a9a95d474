"""WasmtimeShim identity, import lightness, and preload/fork behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from wasmtime_support import MODULES

from containerd_shim_wasm.context import WASM_LAYER_MEDIA_TYPES
from containerd_shim_wasmtime import WasmtimeCompiler, WasmtimeSandbox, WasmtimeShim


def python(script: str) -> str:
    """Run ``script`` in a fresh interpreter (nothing imported, no threads) and return
    its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_identity() -> None:
    assert WasmtimeShim.name() == "wasmtime"
    assert WasmtimeShim.sandbox() is WasmtimeSandbox
    assert WasmtimeShim.supported_layers_types() == WASM_LAYER_MEDIA_TYPES
    version = WasmtimeShim.version()
    assert version.revision.startswith("wasmtime-py 51.")
    assert version.version  # "<none>" when the distribution is not installed


async def test_compiler() -> None:
    assert isinstance(await WasmtimeShim.compiler(), WasmtimeCompiler)


def test_import_does_not_load_wasmtime() -> None:
    # start/delete import the shim module: it adds only itself and the Shim base class;
    # asking for the sandbox class loads the engine module, still not wasmtime itself.
    out = python("""
        import sys
        import containerd_shim_wasm
        before = set(sys.modules)
        from containerd_shim_wasmtime import WasmtimeShim
        WasmtimeShim.name()
        print(sorted(m for m in set(sys.modules) - before if "containerd" in m))
        print(sorted(set(sys.modules) - before - {"containerd_shim_wasm.shim"}))
        WasmtimeShim.sandbox(), WasmtimeShim.version()
        print("wasmtime" in sys.modules, "asyncio" in sys.modules)
    """)
    ours, stdlib, loaded = out.splitlines()
    assert ours == (
        "['containerd_shim_wasm.shim', 'containerd_shim_wasmtime', 'containerd_shim_wasmtime.shim']"
    )
    assert "typing" not in stdlib and "dataclasses" not in stdlib, stdlib
    assert loaded == "False False"


def test_fork_after_preload() -> None:
    # The production path: preload in a thread-free zygote, then fork a container that
    # compiles and runs with the real (parallel-compilation) engine flags.
    out = python(f"""
        import asyncio, os, sys, time
        from containerd_shim_wasm.context import SpecContext
        from containerd_shim_wasmtime import WasmtimeSandbox
        threads = lambda: len(os.listdir("/proc/self/task"))
        WasmtimeSandbox.preload()
        assert threads() == 1, "preload started a thread"
        assert "wasmtime" in sys.modules and "wasmtime.component" in sys.modules
        sandbox = WasmtimeSandbox()
        asyncio.run(sandbox.can_handle(SpecContext([{str(MODULES / "hello.wat")!r}], [])))
        for _ in range(100):  # can_handle's worker thread may still be exiting
            if threads() == 1:
                break
            time.sleep(0.01)
        print("threads", threads(), flush=True)
        pid = os.fork()
        if pid == 0:
            os._exit(asyncio.run(sandbox.run_wasi(SpecContext(
                [{str(MODULES / "exit42.wat")!r}], []))))
        print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    assert out.split() == ["threads", "1", "exit", "42"]
