#!/usr/bin/env python3
"""Run a WASI p1 module with wasmtime-py in this process, the baseline of ``compute.py``.

``compute.py`` starts this in a fresh interpreter for each run, so that its own process
stays clean and the wall time covers what a one-shot runner pays (interpreter, ``import
wasmtime``, compile, instantiate, run). It imports nothing but the standard library and
wasmtime. The guest gets ``argv = [MODULE, *ARGS]`` and the inherited stdout (fd 1); after
it exits this prints one more line to stdout::

    compile_ns=<n> instantiate_ns=<n> run_ns=<n> run_cpu_ns=<n> exit=<code>

``run_cpu_ns`` is this thread's CPU time during ``_start`` (the guest runs on it): unlike
the guest's own ``CLOCK_MONOTONIC`` reading it leaves out the time the thread waited for a
CPU, which on a shared machine is most of the noise.

- default: ``wasmtime.Config()`` as it comes (no epoch interruption);
- ``--flags '{"epoch_interruption": true, "wasm_component_model": true}'``: those
  ``Config`` attributes set (``compute.py`` passes the shim's); with epoch interruption the
  store's deadline is far ahead (nothing increments the epoch here, as nothing does in a
  container that is not being killed), so what this measures is the cost of the checks.

    python benchmarks/compute_direct.py [--flags JSON] MODULE [ARGS...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence

import wasmtime

#: Ticks beyond the current epoch; never reached (no one calls ``increment_epoch``).
EPOCH_DEADLINE = 1 << 32


def engine(flags: Mapping[str, bool | int | str]) -> wasmtime.Engine:
    """An engine with ``wasmtime.Config()``'s defaults but for ``flags``."""
    config = wasmtime.Config()
    for name, value in flags.items():
        setattr(config, name, value)
    return wasmtime.Engine(config)


def run(
    module_path: str, args: Sequence[str], flags: Mapping[str, bool | int | str]
) -> dict[str, int]:
    """Compile, instantiate and call ``_start``; the nanoseconds of each step and the exit
    code (0 if ``_start`` returns, else the code the guest passed to ``proc_exit``)."""
    eng = engine(flags)
    t0 = time.perf_counter_ns()
    module = wasmtime.Module.from_file(eng, module_path)
    t1 = time.perf_counter_ns()
    wasi = wasmtime.WasiConfig()
    wasi.argv = [module_path, *args]
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    store = wasmtime.Store(eng)
    store.set_wasi(wasi)
    if flags.get("epoch_interruption"):
        store.set_epoch_deadline(EPOCH_DEADLINE)
    linker = wasmtime.Linker(eng)
    linker.define_wasi()
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    if not isinstance(start, wasmtime.Func):
        raise LookupError(f"{module_path}: _start is not a function")
    t2, cpu0 = time.perf_counter_ns(), time.thread_time_ns()
    code = 0
    try:
        start(store)
    except wasmtime.ExitTrap as exit_:
        code = int(exit_.code)
    t3, cpu1 = time.perf_counter_ns(), time.thread_time_ns()
    return {
        "compile_ns": t1 - t0,
        "instantiate_ns": t2 - t1,
        "run_ns": t3 - t2,
        "run_cpu_ns": cpu1 - cpu0,
        "exit": code,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the module; exit with the guest's exit code."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--flags", type=json.loads, default={}, help="wasmtime.Config attributes, a JSON object"
    )
    parser.add_argument("module", help="a WASI p1 .wasm file")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the guest's arguments")
    args = parser.parse_args(argv)
    result = run(args.module, args.args, args.flags)
    print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    return result["exit"]


if __name__ == "__main__":
    sys.exit(main())
