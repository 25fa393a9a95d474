"""Fixtures for the wasmtime engine tests.

``run_wasi`` takes over fds 0/1/2 and preopens a directory as ``/``, so the tests that run
a guest fork a child, point its stdio at files and its ``/`` at a temporary directory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from wasmtime_support import MODULES, ForkSafeSandbox, Runner, run_forked


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The guest's ``/`` and working directory, holding copies of the test modules."""
    directory = tmp_path / "root"
    directory.mkdir()
    for module in MODULES.glob("*.wat"):
        shutil.copy(module, directory)
    return directory


@pytest.fixture(scope="session")
def probe_wasm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """modules/probe.c built for wasm32-wasi (args, env, cat, ls, alloc, sleep)."""
    if shutil.which("clang") is None:
        pytest.skip("clang (wasm32-wasi) is not installed")
    out = tmp_path_factory.mktemp("probe") / "probe.wasm"
    command = ["clang", "--target=wasm32-wasi", "-O2", "-Wl,--strip-all", "-o", str(out)]
    subprocess.run([*command, str(MODULES / "probe.c")], check=True)
    return out.read_bytes()


@pytest.fixture
def sandbox(root: Path) -> ForkSafeSandbox:
    """A sandbox whose ``/`` is ``root``."""
    sandbox = ForkSafeSandbox()
    sandbox._preopen_host_dir = str(root)
    return sandbox


@pytest.fixture(params=["run_wasi", "run_wasi_blocking"])
def forked(request: pytest.FixtureRequest, tmp_path: Path, root: Path) -> Runner:
    """``forked(sandbox, ctx, stdin=b"") -> Outcome`` (see run_forked), once through each of
    the sandbox's two ways to run: the async ``run_wasi`` and ``run_wasi_blocking``."""
    blocking = request.param == "run_wasi_blocking"
    return lambda sandbox, ctx, **kw: run_forked(
        sandbox, ctx, root, tmp_path / "io", blocking=blocking, **kw
    )


@pytest.fixture
def forked_async(tmp_path: Path, root: Path) -> Runner:
    """``forked_async(sandbox, ctx, stdin=b"", cancel_after=None) -> Outcome``: through
    ``run_wasi`` only (cancellation is its contract)."""
    return lambda sandbox, ctx, **kw: run_forked(sandbox, ctx, root, tmp_path / "io", **kw)
