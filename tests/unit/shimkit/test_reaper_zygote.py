"""The reaper hands exit statuses out by pid; the zygote forks and answers over its socket."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import pytest

from containerd_shimkit.reaper import Reaper, exit_code
from containerd_shimkit.zygote import Zygote, ZygoteError


def test_exit_code_maps_signals_to_128_plus() -> None:
    assert exit_code(7 << 8) == 7
    assert exit_code(signal.SIGKILL) == 137


async def test_status_before_and_after_subscription() -> None:
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    try:
        early = os.fork()
        if early == 0:
            os._exit(3)
        await asyncio.sleep(0.2)  # reaped before anyone asked
        late = os.fork()
        if late == 0:
            signal.pause()
            os._exit(0)
        waiting = reaper.wait_for(late)
        os.kill(late, signal.SIGTERM)
        assert (await asyncio.wait_for(reaper.wait_for(early), 2)).code == 3
        assert (await asyncio.wait_for(waiting, 2)).code == 128 + signal.SIGTERM
    finally:
        reaper.uninstall()


def _handler_factory() -> Any:
    def handle(request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        if request.get("boom"):
            raise RuntimeError("boom requested")
        data = os.read(fds[0], 100) if fds else b""
        return {"echo": request["value"], "data": data.decode(), "pid": os.getpid()}

    return handle


@pytest.mark.skipif(sys.platform != "linux", reason="SOCK_SEQPACKET and fd passing")
async def test_zygote_round_trip_fd_passing_and_errors() -> None:
    zygote = Zygote.fork(_handler_factory)
    try:
        read_end, write_end = os.pipe()
        os.write(write_end, b"through an fd")
        reply = await zygote.request({"value": 42}, [read_end])
        os.close(read_end)
        os.close(write_end)
        assert reply["echo"] == 42 and reply["data"] == "through an fd"
        assert reply["pid"] == zygote.pid != os.getpid()
        with pytest.raises(ZygoteError, match="boom requested"):
            await zygote.request({"boom": True, "value": 0})
        assert (await zygote.request({"value": 1}))["echo"] == 1  # still serving
    finally:
        zygote.close()
        _, status = os.waitpid(zygote.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # EOF makes it exit cleanly


async def test_dead_zygote_is_reported() -> None:
    zygote = Zygote.fork(_handler_factory)
    os.kill(zygote.pid, signal.SIGKILL)
    os.waitpid(zygote.pid, 0)
    with pytest.raises(ZygoteError):
        await zygote.request({"value": 1})
    zygote.close()


def _logging_factory() -> Any:
    """A zygote set up as the wasm one is: its log on a descriptor of its own (here
    /dev/null, as in a spare daemon's zygote), and a handler that logs one line."""

    def factory() -> Any:
        import logging

        from containerd_shimkit import logs

        logs.setup(logging.WARNING, os.fdopen(os.open(os.devnull, os.O_WRONLY), "w", 1))

        def handle(request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
            logging.getLogger("zygote-test").info("spawning %s", request["value"])
            return {"ok": True}

        return handle

    return factory()


async def test_identify_gives_the_zygote_its_log_level_and_pod() -> None:
    zygote = Zygote.fork(_logging_factory)
    read_end, write_end = os.pipe()
    try:
        argv = ["/usr/bin/containerd-shim-test-v1", "-namespace", "ns", "-id", "pod-1"]
        await zygote.identify(argv, "pod-1", 20, write_end)  # 20: logging.INFO
        await zygote.request({"value": "c1"})
        os.close(write_end)
        write_end = -1
        zygote.close()
        os.waitpid(zygote.pid, 0)
        log = b""
        while chunk := os.read(read_end, 65536):
            log += chunk
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    line = log.decode()  # the INFO line: the level was WARNING before
    assert "spawning c1" in line and "pod=pod-1" in line, line


async def test_identify_rewrites_the_zygote_command_line() -> None:
    zygote = Zygote.fork(_logging_factory)
    try:
        # Short: the zygote rewrites its command line in place, within this test process's
        # (which the zygote was forked from), however pytest was started.
        argv = ["shim", "-id", "p2"]
        with open(os.devnull, "w") as null:
            await zygote.identify(argv, "pod-2", 20, null.fileno())
        with open(f"/proc/{zygote.pid}/cmdline", "rb") as f:
            shown = f.read().rstrip(b"\0 ").split(b"\0")
        assert shown[: len(argv)] == [a.encode() for a in argv]
    finally:
        zygote.close()
        os.waitpid(zygote.pid, 0)


async def test_identify_without_a_log_descriptor_is_refused() -> None:
    zygote = Zygote.fork(_logging_factory)
    try:
        with pytest.raises(ZygoteError, match="takes the log descriptor"):
            await zygote.request({"op": "zygote.identify", "argv": [], "pod": "", "level": 20})
        assert (await zygote.request({"value": "still serving"}))["ok"] is True
    finally:
        zygote.close()
        os.waitpid(zygote.pid, 0)


def _slow_factory() -> Any:
    """Answers after ``delay`` seconds, with the value and a pid it pretends to have forked."""

    def handle(request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        import time

        time.sleep(request.get("delay", 0))
        return {"echo": request["value"], "pid": request.get("pid", 0)}

    return handle


async def test_a_cancelled_request_never_leaves_its_reply_to_the_next() -> None:
    # A Create cancelled by its deadline while the zygote forks: the zygote still answers,
    # and the next request must get its own reply, not that one.
    zygote = Zygote.fork(_slow_factory)
    abandoned: list[dict[str, Any]] = []
    try:
        slow = asyncio.ensure_future(
            zygote.request({"value": "first", "delay": 0.3, "pid": 4242}, (), abandoned.append)
        )
        await asyncio.sleep(0.05)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        for n in range(3):
            assert (await zygote.request({"value": n}))["echo"] == n
        # The abandoned reply went to its undo callback (which kills the forked init).
        assert abandoned == [{"echo": "first", "pid": 4242}]
    finally:
        zygote.close()
        os.waitpid(zygote.pid, 0)


async def test_a_cancelled_caller_may_close_its_fds_at_once() -> None:
    # The exchange sends duplicates: fds the cancelled caller closed (and numbers reused
    # meanwhile) never reach the zygote in their place.
    zygote = Zygote.fork(_handler_factory)
    try:
        busy = asyncio.ensure_future(zygote.request({"value": "x"}))
        read_end, write_end = os.pipe()
        os.write(write_end, b"the right pipe")
        queued = asyncio.ensure_future(zygote.request({"value": "y"}, [read_end]))
        await asyncio.sleep(0)
        queued.cancel()
        os.close(read_end)
        other_read, other_write = os.pipe()  # likely reuses read_end's number
        os.write(other_write, b"the wrong pipe")
        with pytest.raises(asyncio.CancelledError):
            await queued
        await busy
        # Had the cancelled request sent the reused number, its handler would have read
        # this pipe (and this request would block reading it).
        reply = await asyncio.wait_for(zygote.request({"value": "z"}, [other_read]), 5)
        assert reply["data"] == "the wrong pipe"
        for fd in (write_end, other_read, other_write):
            os.close(fd)
    finally:
        zygote.close()
        os.kill(zygote.pid, signal.SIGKILL)
        os.waitpid(zygote.pid, 0)


_REPLACEMENT = """
import sys
from containerd_shimkit.zygote import serve_inherited
from tests.unit.shimkit.test_reaper_zygote import _handler_factory
sys.exit(serve_inherited(_handler_factory))
"""


async def test_a_dead_zygote_is_replaced_by_the_restart_command() -> None:
    restarts: list[int] = []

    def restart() -> list[str]:
        restarts.append(1)
        return [sys.executable, "-c", _REPLACEMENT]

    zygote = Zygote.fork(_handler_factory, restart=restart)
    first = zygote.pid
    os.kill(first, signal.SIGKILL)
    os.waitpid(first, 0)
    try:
        reply = await zygote.request({"value": 1})
        assert reply["echo"] == 1 and reply["pid"] == zygote.pid != first
        assert restarts == [1]
        assert (await zygote.request({"value": 2}))["pid"] == zygote.pid  # and it stays
        with open(f"/proc/{zygote.pid}/cmdline", "rb") as f:
            assert b"serve_inherited" in f.read()
    finally:
        zygote.close()
        os.waitpid(zygote.pid, 0)


async def test_a_zygote_dying_mid_request_fails_that_request_and_is_replaced() -> None:
    def restart() -> list[str]:
        return [sys.executable, "-c", _REPLACEMENT]

    zygote = Zygote.fork(_slow_factory, restart=restart)
    first = zygote.pid
    try:
        pending = asyncio.ensure_future(zygote.request({"value": 1, "delay": 5}))
        await asyncio.sleep(0.1)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(ZygoteError, match="exited while handling"):
            await pending
        os.waitpid(first, 0)
        assert (await zygote.request({"value": 2}))["echo"] == 2
        assert zygote.pid != first
    finally:
        zygote.close()
        os.waitpid(zygote.pid, 0)
