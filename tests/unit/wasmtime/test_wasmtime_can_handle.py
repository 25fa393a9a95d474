"""WasmtimeSandbox.can_handle: validates with wasmtime and says why it refuses. Every test
runs through both ``can_handle`` and ``can_handle_blocking`` (what the container init calls)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import wasmtime
from wasmtime_support import MODULES, ForkSafeSandbox

from containerd_shim_wasm.context import SpecContext, WasmLayer
from containerd_shim_wasm.sandbox import CannotHandle


@pytest.fixture(autouse=True)
def _in_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root)  # args[0] paths are relative to the container's cwd


Check = Callable[[ForkSafeSandbox, SpecContext], Awaitable[None]]


@pytest.fixture(params=["can_handle", "can_handle_blocking"])
def check(request: pytest.FixtureRequest) -> Check:
    async def blocking(sandbox: ForkSafeSandbox, ctx: SpecContext) -> None:
        sandbox.can_handle_blocking(ctx)

    async def async_(sandbox: ForkSafeSandbox, ctx: SpecContext) -> None:
        await sandbox.can_handle(ctx)

    return blocking if request.param == "can_handle_blocking" else async_


def wasm(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((MODULES / name).read_text()))


@pytest.mark.parametrize("name", ["hello.wat", "command.wat", "thunk.wat#thunk"])
async def test_accepts_wat_modules_and_components(
    sandbox: ForkSafeSandbox, check: Check, name: str
) -> None:
    await check(sandbox, SpecContext([name], []))


async def test_accepts_binaries_found_in_path(
    sandbox: ForkSafeSandbox, check: Check, root: Path
) -> None:
    (root / "bin").mkdir()
    (root / "bin" / "hello.wasm").write_bytes(wasm("hello.wat"))
    (root / "cmd.wasm").write_bytes(wasm("command.wat"))
    await check(sandbox, SpecContext(["hello.wasm#foo"], [f"PATH={root / 'bin'}"]))
    await check(sandbox, SpecContext(["./cmd.wasm"], []))


async def test_accepts_one_oci_layer(sandbox: ForkSafeSandbox, check: Check) -> None:
    layer = WasmLayer("application/wasm", "sha256:00", b"anything")
    await check(sandbox, SpecContext(["app.wasm"], [], (layer,)))
    with pytest.raises(CannotHandle, match="only a single module"):
        await check(sandbox, SpecContext(["app.wasm"], [], (layer, layer)))


async def refusal(
    check: Check, sandbox: ForkSafeSandbox, root: Path, name: str, data: bytes
) -> str:
    (root / name).write_bytes(data)
    with pytest.raises(CannotHandle) as info:
        await check(sandbox, SpecContext([f"./{name}"], []))
    return str(info.value)


async def test_rejects_garbage_naming_the_path(
    sandbox: ForkSafeSandbox, check: Check, root: Path
) -> None:
    message = await refusal(check, sandbox, root, "x.wasm", b"MZ\x90\x00\xff\xfe binary junk")
    assert message == "./x.wasm is not a wasm module: bad magic number b'MZ\\x90\\x00'"


async def test_rejects_bad_wat_with_line_and_column(
    sandbox: ForkSafeSandbox, check: Check, root: Path
) -> None:
    message = await refusal(check, sandbox, root, "bad.wat", b"(module\n  (func $f (oops)))\n")
    assert message.startswith("./bad.wat is neither a wasm binary nor valid WAT: ./bad.wat:2:13: ")
    message = await refusal(check, sandbox, root, "script.sh", b"echo hello\n")
    assert "./script.sh:1:1" in message


async def test_rejects_invalid_wasm(sandbox: ForkSafeSandbox, check: Check, root: Path) -> None:
    message = await refusal(check, sandbox, root, "v.wasm", b"\0asm\x01\0\0\0\x99")
    assert message.startswith("./v.wasm is not a valid wasm module: ")
    message = await refusal(check, sandbox, root, "v2.wasm", b"\0asm\x02\0\0\0")
    assert "unsupported wasm version" in message
    # Valid WAT text that wasmtime refuses (a type error).
    message = await refusal(check, sandbox, root, "t.wat", b"(module (func (result i32)))")
    assert message.startswith("./t.wat is not a valid wasm module: ")


async def test_rejects_precompiled_file(sandbox: ForkSafeSandbox, check: Check, root: Path) -> None:
    artifact = wasmtime.Module(wasmtime.Engine(), wasm("hello.wat")).serialize()
    message = await refusal(check, sandbox, root, "hello.cwasm", bytes(artifact))
    assert "precompiled wasmtime artifact" in message


async def test_rejects_missing_file(sandbox: ForkSafeSandbox, check: Check) -> None:
    with pytest.raises(CannotHandle, match=r"'nope\.wasm' not found.*args\[0\]"):
        await check(sandbox, SpecContext(["nope.wasm"], ["PATH=/nonexistent"]))
