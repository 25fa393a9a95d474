"""The zygote's compile cache (ModuleCache) and the init's check of its artifacts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from containerd_shim_wasm import Compiler, Sandbox, Shim, WasmLayer
from containerd_shim_wasm.executor import verified
from containerd_shim_wasm.module_cache import ModuleCache, digest_of
from containerd_shim_wasm.node_cache import NodeCache

MODULE = b"\0asm\x01\0\0\0" + b"\x00" * 32
OTHER_MODULE = b"\0asm\x01\0\0\0" + b"\x01" * 32


class CountingCompiler(Compiler):
    """Runs in the forked compile child: records each compile in a file the test reads."""

    log: Path

    def cache_key(self) -> str:
        return "test"

    async def compile(self, layers: Sequence[WasmLayer]) -> list[bytes | None]:
        with self.log.open("a") as f:
            f.write(f"{layers[0].digest}\n")
        return [None if b"decline" in layer.data else b"ART" + layer.data for layer in layers]


def shim_with(log: Path) -> type[Shim]:
    compiler = type("Compiler", (CountingCompiler,), {"log": log})

    class TestShim(Shim):
        @classmethod
        def name(cls) -> str:
            return "test"

        @classmethod
        def sandbox(cls) -> type[Sandbox]:
            raise NotImplementedError

        @classmethod
        async def compiler(cls) -> Compiler | None:
            return compiler()

    return TestShim


@pytest.fixture
def compile_log(tmp_path: Path) -> Path:
    return tmp_path / "compiles"


def compiles(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def open_file(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_compiles_each_module_once(tmp_path: Path, compile_log: Path) -> None:
    cache = ModuleCache(shim_with(compile_log))
    fds = [open_file(tmp_path / f"m{i}.wasm", MODULE) for i in range(3)]
    other = open_file(tmp_path / "other.wasm", OTHER_MODULE)
    try:
        artifacts = [cache.artifact_for(fd) for fd in fds]
        second = cache.artifact_for(other)
    finally:
        for fd in [*fds, other]:
            os.close(fd)
    first = artifacts[0]
    assert first is not None and first.precompiled
    assert first.data == b"ART" + MODULE
    assert first.digest == digest_of(MODULE)
    assert all(a is first for a in artifacts)
    assert second is not None and second.data == b"ART" + OTHER_MODULE
    assert compiles(compile_log) == [digest_of(MODULE), digest_of(OTHER_MODULE)]


def test_a_declined_module_is_not_compiled_again(tmp_path: Path, compile_log: Path) -> None:
    cache = ModuleCache(shim_with(compile_log))
    data = MODULE + b"decline"
    for _ in range(2):
        fd = open_file(tmp_path / "m.wasm", data)
        try:
            assert cache.artifact_for(fd) is None
        finally:
            os.close(fd)
    assert compiles(compile_log) == [digest_of(data)]


@pytest.mark.parametrize("content", [b"#!/bin/sh\necho native\n", b"(module)", b""])
def test_only_wasm_binaries_are_compiled(tmp_path: Path, compile_log: Path, content: bytes) -> None:
    fd = open_file(tmp_path / "x", content)
    try:
        assert ModuleCache(shim_with(compile_log)).artifact_for(fd) is None
    finally:
        os.close(fd)
    assert compiles(compile_log) == []


def test_a_fifo_is_not_read(tmp_path: Path, compile_log: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert ModuleCache(shim_with(compile_log)).artifact_for(fd) is None
    finally:
        os.close(fd)


def test_a_failing_compile_child_gives_none(tmp_path: Path) -> None:
    # The log directory does not exist: the compiler raises in the child.
    fd = open_file(tmp_path / "m.wasm", MODULE)
    try:
        assert ModuleCache(shim_with(tmp_path / "missing" / "log")).artifact_for(fd) is None
    finally:
        os.close(fd)


def test_least_recently_used_artifacts_are_dropped(tmp_path: Path, compile_log: Path) -> None:
    cache = ModuleCache(shim_with(compile_log), max_bytes=len(MODULE) * 2)
    for data in (MODULE, OTHER_MODULE, MODULE):  # the third is over the budget: a recompile
        fd = open_file(tmp_path / "m.wasm", data)
        try:
            assert cache.artifact_for(fd) is not None
        finally:
            os.close(fd)
    first, other = digest_of(MODULE), digest_of(OTHER_MODULE)
    assert compiles(compile_log) == [first, other, first]


def artifact(data: bytes) -> WasmLayer:
    return WasmLayer("application/wasm", digest_of(data), b"ART", True)


def test_verified_accepts_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.wasm").write_bytes(MODULE)
    compiled = artifact(MODULE)
    assert verified(compiled, ["./app.wasm#main", "x"], []) is compiled
    # A bare name is looked up in the container's PATH, as the sandbox does.
    assert verified(compiled, ["app.wasm"], [f"PATH={tmp_path}"]) is compiled


def test_verified_rejects_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.wasm").write_bytes(OTHER_MODULE)
    assert verified(artifact(MODULE), ["./app.wasm"], []) is None
    assert verified(artifact(MODULE), ["./missing.wasm"], []) is None
    assert verified(artifact(MODULE), [], []) is None
    assert verified(None, ["./app.wasm"], []) is None


def test_a_new_pod_loads_what_another_pod_compiled(tmp_path: Path, compile_log: Path) -> None:
    """Two zygotes (two ModuleCaches) on one node: the module is compiled once."""
    node = NodeCache(str(tmp_path / "node"))
    fd = open_file(tmp_path / "m.wasm", MODULE)
    try:
        first = ModuleCache(shim_with(compile_log), node_cache=node).artifact_for(fd)
        second = ModuleCache(shim_with(compile_log), node_cache=node).artifact_for(fd)
    finally:
        os.close(fd)
    assert first is not None and second is not None
    assert first.data == second.data == b"ART" + MODULE
    assert compiles(compile_log) == [digest_of(MODULE)]
    assert node.load("test", digest_of(MODULE)) == b"ART" + MODULE
