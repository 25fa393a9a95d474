"""How the container init runs a Sandbox without an event loop: the Sandbox's blocking
defaults, and :func:`run_until_signal` (exit code 128 + signal on SIGTERM/SIGINT)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from containerd_shim_wasm.context import RuntimeContext, SpecContext
from containerd_shim_wasm.executor import run_until_signal
from containerd_shim_wasm.sandbox import CannotHandle, Sandbox


class AsyncOnly(Sandbox):
    """An engine that implements only the async API."""

    async def run_wasi(self, ctx: RuntimeContext) -> int:
        await asyncio.sleep(0)
        return 7


class CustomCheck(AsyncOnly):
    async def can_handle(self, ctx: RuntimeContext) -> None:
        await asyncio.sleep(0)
        raise CannotHandle("custom check says no")


def test_default_run_wasi_blocking_drives_run_wasi() -> None:
    assert AsyncOnly().run_wasi_blocking(SpecContext(["m.wasm"], [])) == 7


def test_default_can_handle_blocking_needs_no_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_loop(*_: object) -> None:
        raise AssertionError("the default check must not start an event loop")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(asyncio, "run", no_loop)
    (tmp_path / "m.wasm").write_bytes(b"\0asm\x01\0\0\0")
    (tmp_path / "notes.txt").write_bytes(b"hello")
    AsyncOnly().can_handle_blocking(SpecContext(["./m.wasm"], []))
    with pytest.raises(CannotHandle, match="neither a wasm binary"):
        AsyncOnly().can_handle_blocking(SpecContext(["./notes.txt"], []))


def test_default_can_handle_blocking_runs_an_overridden_can_handle() -> None:
    with pytest.raises(CannotHandle, match="custom check says no"):
        CustomCheck().can_handle_blocking(SpecContext(["m.wasm"], []))


def exit_code_in_child(main: Callable[[], int]) -> int:
    """Fork, run ``main`` in the child (whose signal handlers it may change) and return its
    exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = main()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_returns_what_the_work_returns() -> None:
    assert exit_code_in_child(lambda: run_until_signal(lambda: 5)) == 5


def test_an_exception_from_the_work_is_raised_in_the_caller() -> None:
    def fail() -> int:
        raise LookupError("no entrypoint")

    def main() -> int:
        try:
            run_until_signal(fail)
        except LookupError:
            return 42
        return 0

    assert exit_code_in_child(main) == 42


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_ends_a_blocked_guest(signum: int, expected: int) -> None:
    """The work is stuck (as a guest in a host call is) and has started threads of its own,
    as wasmtime does: the signal still reaches the waiting main thread."""
    started_r, started_w = os.pipe()

    def blocked_guest() -> int:
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        os.write(started_w, b"x")
        time.sleep(60)
        return 0

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(started_r)
            code = run_until_signal(blocked_guest)
        finally:
            os._exit(code)
    os.close(started_w)
    try:
        assert os.read(started_r, 1) == b"x"
        os.kill(pid, signum)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(started_r)
    assert os.waitstatus_to_exitcode(status) == expected


@pytest.mark.parametrize(("signals", "expected"), [(1, 0), (2, 143)])
def test_a_workload_that_stops_by_itself_keeps_its_exit_code(signals: int, expected: int) -> None:
    """``on_stop`` takes the first SIGTERM (a server starts draining): the work's own exit
    code stands. A second signal, which it refuses, ends the wait with 128 + signal."""
    started_r, started_w = os.pipe()
    taken_r, taken_w = os.pipe()

    def main() -> int:
        os.close(started_r)
        os.close(taken_r)
        stop = threading.Event()
        drains = 0

        def on_stop(signum: int) -> bool:
            nonlocal drains
            drains += 1
            os.write(taken_w, b"x")
            if drains > 1:
                return False
            if signals == 1:
                stop.set()  # the work ends (drained) on its own
            return True

        def server() -> int:
            os.write(started_w, b"x")
            stop.wait(60)
            return 0

        return run_until_signal(server, on_stop=on_stop)

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = main()
        finally:
            os._exit(code)
    os.close(started_w)
    os.close(taken_w)
    try:
        assert os.read(started_r, 1) == b"x"
        for _ in range(signals):
            os.kill(pid, signal.SIGTERM)
            assert os.read(taken_r, 1) == b"x"
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(started_r)
        os.close(taken_r)
    assert os.waitstatus_to_exitcode(status) == expected
