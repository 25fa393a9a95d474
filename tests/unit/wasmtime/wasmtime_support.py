"""Shared by the wasmtime engine tests (a plain module: test dirs have no ``__init__``)."""

from __future__ import annotations

import asyncio
import json
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from containerd_shim_wasm.context import RuntimeContext
from containerd_shim_wasmtime import WasmtimeSandbox
from containerd_shim_wasmtime.engine import INTERRUPTIBLE_FLAGS

MODULES = Path(__file__).parent / "modules"


class ForkSafeSandbox(WasmtimeSandbox):
    """The production sandbox with single-threaded compilation.

    The tests fork from pytest, which may already have compiled something with parallel
    compilation: wasmtime's compiler thread pool exists in the parent but not in a forked
    child, where a parallel compile would wait forever. (Production forks from a zygote that
    never compiled; ``test_fork_after_preload`` covers that with the real flags. The flag
    does not change the artifact format, so precompiled bytes stay compatible.)
    """

    _engine_flags = {**WasmtimeSandbox._engine_flags, "parallel_compilation": False}


class InterruptibleSandbox(ForkSafeSandbox):
    """With epoch interruption, which embedders that cancel ``run_wasi`` in-process use."""

    _engine_flags = {**INTERRUPTIBLE_FLAGS, "parallel_compilation": False}


@dataclass
class Outcome:
    """What a forked ``run_wasi`` did: exactly one of ``code`` and ``error`` is set."""

    code: int | None
    error: str | None
    stdout: str
    stderr: str
    elapsed: float


Runner = Callable[..., Outcome]


def run_forked(
    sandbox: WasmtimeSandbox,
    ctx: RuntimeContext,
    root: Path,
    io: Path,
    stdin: bytes = b"",
    cancel_after: float | None = None,
    timeout: float = 30.0,
    blocking: bool = False,
) -> Outcome:
    """Run ``sandbox.run_wasi(ctx)`` in a forked child with files from ``io`` on fds 0/1/2
    and ``root`` as its cwd, in a fresh event loop, cancelling it after ``cancel_after``
    seconds when given; with ``blocking``, ``sandbox.run_wasi_blocking(ctx)`` instead (no
    event loop, no cancellation: what the container init calls)."""
    assert not (blocking and cancel_after is not None), "run_wasi_blocking is not cancellable"
    io.mkdir(exist_ok=True)
    (io / "stdin").write_bytes(stdin)
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(report_r)
            for fd, name, flags in (
                (0, "stdin", os.O_RDONLY),
                (1, "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                (2, "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            ):
                os.dup2(os.open(io / name, flags, 0o644), fd)
            os.chdir(root)
            report = _run_in_child(sandbox, ctx, cancel_after, blocking)
            os.write(report_w, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(report_w)
    try:
        report = _read_report(report_r, timeout)
    except TimeoutError:
        os.kill(pid, 9)
        raise
    finally:
        os.close(report_r)
        os.waitpid(pid, 0)
    code, error, elapsed = report.get("code"), report.get("error"), report["elapsed"]
    assert isinstance(code, int | None) and isinstance(error, str | None)
    assert isinstance(elapsed, float)
    return Outcome(
        code=code,
        error=error,
        stdout=(io / "stdout").read_bytes().decode("utf-8", "surrogateescape"),
        stderr=(io / "stderr").read_text(),
        elapsed=elapsed,
    )


def _run_in_child(
    sandbox: WasmtimeSandbox, ctx: RuntimeContext, cancel_after: float | None, blocking: bool
) -> dict[str, object]:
    async def main() -> int:
        task = asyncio.ensure_future(sandbox.run_wasi(ctx))
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            task.cancel()
        return await task

    started = time.monotonic()
    report: dict[str, object]
    try:
        report = {"code": sandbox.run_wasi_blocking(ctx) if blocking else asyncio.run(main())}
    except BaseException as exc:  # CancelledError included
        report = {"error": f"{type(exc).__name__}: {exc}"}
    report["elapsed"] = time.monotonic() - started
    return report


def _read_report(fd: int, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"the forked run_wasi did not finish within {timeout} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    if not chunks:
        raise RuntimeError("the forked child died without a report")
    report: dict[str, object] = json.loads(b"".join(chunks))
    return report
