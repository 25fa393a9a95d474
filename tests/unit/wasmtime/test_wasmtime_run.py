"""WasmtimeSandbox.run_wasi: output, args, env, stdin, exit codes, entrypoints, limits,
components, precompiled layers and cancellation. Guests run in forked children (they own
fds 0/1/2) unless they never touch stdio."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import wasmtime
from wasmtime_support import MODULES, ForkSafeSandbox, InterruptibleSandbox, Runner

from containerd_shim_wasm.context import SpecContext, WasmLayer
from containerd_shim_wasm.sandbox import ResourceLimits
from containerd_shim_wasmtime import WasmtimeCompiler

HELLO_WASM = bytes(wasmtime.wat2wasm((MODULES / "hello.wat").read_text()))


def ctx(*args: str, envs: tuple[str, ...] = (), layers: tuple[WasmLayer, ...] = ()) -> SpecContext:
    return SpecContext(list(args), list(envs), layers)


def test_hello_from_wasm_binary(sandbox: ForkSafeSandbox, root: Path, forked: Runner) -> None:
    (root / "hello.wasm").write_bytes(HELLO_WASM)
    out = forked(sandbox, ctx("hello.wasm"))
    assert (out.code, out.error, out.stdout) == (0, None, "hello world\n")


def test_hello_from_wat_text(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    out = forked(sandbox, ctx("./hello.wat"))
    assert (out.code, out.stdout) == (0, "hello world\n")


def test_output_is_unbuffered(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    # The forked child leaves with os._exit: nothing may sit in a buffer.
    out = forked(sandbox, ctx("partial.wat"))
    assert (out.code, out.stdout, out.stderr) == (0, "no newline", "no newline")


def test_custom_entrypoint(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    out = forked(sandbox, ctx("hello.wat#foo"))
    assert (out.code, out.stdout) == (0, "foo called\n")


def test_args_include_argv0(
    sandbox: ForkSafeSandbox, root: Path, forked: Runner, probe_wasm: bytes
) -> None:
    (root / "probe.wasm").write_bytes(probe_wasm)
    args = ("probe.wasm", "args", "a b", "", "ü")
    out = forked(sandbox, ctx(*args))
    assert out.code == 0
    assert out.stdout.split("\n")[:-1] == list(args)


def test_env_only_from_ctx(
    sandbox: ForkSafeSandbox,
    root: Path,
    forked: Runner,
    probe_wasm: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIM_SECRET", "must-not-leak")  # the shim's own environment
    (root / "probe.wasm").write_bytes(probe_wasm)
    envs = ("PATH=/bin", "EQUALS=a=b", "EMPTY=")
    out = forked(sandbox, ctx("probe.wasm", "env", envs=envs))
    assert out.code == 0
    assert out.stdout.splitlines() == list(envs)


def test_stdin_is_fd0(
    sandbox: ForkSafeSandbox, root: Path, forked: Runner, probe_wasm: bytes
) -> None:
    (root / "probe.wasm").write_bytes(probe_wasm)
    data = b"line one\n\x00binary\xff\n" * 1000
    out = forked(sandbox, ctx("probe.wasm", "cat"), stdin=data)
    assert out.code == 0
    assert out.stdout.encode("utf-8", "surrogateescape") == data


def test_preopened_root(
    sandbox: ForkSafeSandbox, root: Path, forked: Runner, probe_wasm: bytes
) -> None:
    (root / "probe.wasm").write_bytes(probe_wasm)
    out = forked(sandbox, ctx("probe.wasm", "ls", "/"))
    assert out.code == 0
    assert {"probe.wasm", "hello.wat", "spin.wat"} <= set(out.stdout.splitlines())


def test_proc_exit_code(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    assert forked(sandbox, ctx("exit42.wat")).code == 42


def test_c_main_return_code(
    sandbox: ForkSafeSandbox, root: Path, forked: Runner, probe_wasm: bytes
) -> None:
    (root / "probe.wasm").write_bytes(probe_wasm)
    out = forked(sandbox, ctx("probe.wasm", "no-such-mode"))
    assert out.code == 2
    assert "usage: probe" in out.stderr


def test_memory_limit_fails_malloc(
    sandbox: ForkSafeSandbox, root: Path, forked: Runner, probe_wasm: bytes
) -> None:
    (root / "probe.wasm").write_bytes(probe_wasm)
    sandbox.limits = ResourceLimits(memory_bytes=16 << 20)
    out = forked(sandbox, ctx("probe.wasm", "alloc"))
    assert out.code == 3  # malloc returned NULL: no trap, no OOM kill
    mib = int(out.stdout.split()[1])
    assert 8 <= mib < 16


def test_trap_raises(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    out = forked(sandbox, ctx("unreachable.wat"))
    assert out.code is None
    assert out.error is not None and out.error.startswith("Trap:")
    assert "unreachable" in out.error


async def test_missing_export_names_function_and_module(
    sandbox: ForkSafeSandbox, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(root)
    with pytest.raises(LookupError) as info:
        await sandbox.run_wasi(ctx("hello.wat#nope"))
    message = str(info.value)
    assert "'nope'" in message and "hello.wat" in message
    assert "_start, foo" in message  # what it does export


async def test_missing_module_raises(sandbox: ForkSafeSandbox, root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.wasm"):
        await sandbox.run_wasi(ctx("./missing.wasm"))


def test_command_component(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    # wasi:cli/run calling wasi:cli/exit(err): exit code 1, as under `wasmtime run`.
    assert forked(sandbox, ctx("command.wat")).code == 1


def test_component_export_named_by_func(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    assert forked(sandbox, ctx("thunk.wat#thunk")).code == 0
    out = forked(sandbox, ctx("thunk.wat"))
    assert out.error is not None and "LookupError" in out.error and "'_start'" in out.error


def interruptible(root: Path) -> InterruptibleSandbox:
    sandbox = InterruptibleSandbox()
    sandbox._preopen_host_dir = str(root)
    sandbox._cancel_grace = 10.0  # must not be needed: the epoch interrupt stops the guest
    return sandbox


def test_cancel_returns_at_once_without_epoch_interruption(
    sandbox: ForkSafeSandbox, forked_async: Runner
) -> None:
    """The shim's engine: no epoch checks in the code; the guest thread is abandoned (the
    container's process ends right after), so the grace is not waited for."""
    sandbox._cancel_grace = 10.0
    out = forked_async(sandbox, ctx("spin.wat"), cancel_after=0.3)
    assert out.error == "CancelledError: "
    assert out.elapsed < 1.5, out.elapsed


def test_cancel_stops_spinning_guest(root: Path, forked_async: Runner) -> None:
    out = forked_async(interruptible(root), ctx("spin.wat"), cancel_after=0.3)
    assert out.error == "CancelledError: "
    assert out.elapsed < 1.5, out.elapsed


async def test_cancel_in_process(root: Path) -> None:
    sandbox = interruptible(root)
    task = asyncio.create_task(sandbox.run_wasi(ctx(str(root / "spin.wat"))))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0


def test_cancel_guest_blocked_in_host_call(
    root: Path, forked_async: Runner, probe_wasm: bytes
) -> None:
    # sleep() is a host call that no epoch interrupts: run_wasi gives up after the grace.
    (root / "probe.wasm").write_bytes(probe_wasm)
    sandbox = interruptible(root)
    sandbox._cancel_grace = 0.3
    out = forked_async(sandbox, ctx("probe.wasm", "sleep"), cancel_after=0.5)
    assert out.error == "CancelledError: "
    assert 0.7 < out.elapsed < 2.5, out.elapsed


def oci(data: bytes, precompiled: bool = False) -> WasmLayer:
    return WasmLayer("application/wasm", "sha256:" + "ab" * 32, data, precompiled)


def test_oci_layer(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    out = forked(sandbox, ctx("hello.wasm", layers=(oci(HELLO_WASM),)))
    assert (out.code, out.stdout) == (0, "hello world\n")


def test_run_precompiled_oci_layer(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    (artifact,) = asyncio.run(WasmtimeCompiler().compile([oci(HELLO_WASM)]))
    assert artifact is not None
    out = forked(sandbox, ctx("app.wasm#foo", layers=(oci(artifact, precompiled=True),)))
    assert (out.code, out.stdout) == (0, "foo called\n")


def test_run_precompiled_component(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    component = bytes(wasmtime.wat2wasm((MODULES / "command.wat").read_text()))
    (artifact,) = asyncio.run(WasmtimeCompiler().compile([oci(component)]))
    assert artifact is not None
    assert forked(sandbox, ctx("app.wasm", layers=(oci(artifact, precompiled=True),))).code == 1


def test_precompiled_bytes_need_the_precompiled_flag(
    sandbox: ForkSafeSandbox, root: Path, forked: Runner
) -> None:
    # Deserializing is loading native code: never from the image itself.
    (artifact,) = asyncio.run(WasmtimeCompiler().compile([oci(HELLO_WASM)]))
    assert artifact is not None
    (root / "hello.cwasm").write_bytes(artifact)
    for context in (ctx("hello.cwasm"), ctx("x.wasm", layers=(oci(artifact),))):
        out = forked(sandbox, context)
        assert out.error is not None and "precompiled wasmtime artifact" in out.error


def test_corrupt_precompiled_layer_raises(sandbox: ForkSafeSandbox, forked: Runner) -> None:
    (artifact,) = asyncio.run(WasmtimeCompiler().compile([oci(HELLO_WASM)]))
    assert artifact is not None
    for broken in (artifact[: len(artifact) // 2], artifact[:64] + b"\0" * (len(artifact) - 64)):
        out = forked(sandbox, ctx("x.wasm", layers=(oci(broken, precompiled=True),)))
        assert out.error is not None and out.error.startswith("WasmtimeError"), out.error
