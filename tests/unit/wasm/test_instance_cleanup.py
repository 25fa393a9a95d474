"""WasmInstance's cleanup: what it kills and removes, and that cgroup waits stay off the loop.

The daemon's event loop serves every container of the pod; cgroup kill/remove retries with
sleeps (up to ~1.3 s) while processes drain, so it must run in a worker thread. A cgroup
Create did not make (``ctr run --cgroup /shared``) is never emptied or removed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from containerd_shim_wasm.instance import WasmInstance, _receive_unless_exited, _Undo
from containerd_shimkit import InstanceConfig, RuntimeOptions
from containerd_shimkit.container.cgroups import CgroupNotFoundError


class FakeCgroup:
    """Records calls and the thread they ran in; ``gone`` makes it a vanished cgroup."""

    def __init__(self, gone: bool = False) -> None:
        self.gone = gone
        self.calls: list[tuple[str, int]] = []

    def _record(self, name: str) -> None:
        self.calls.append((name, threading.get_ident()))

    def kill_all(self, signal: int) -> None:
        self._record("kill_all")
        if self.gone:
            raise CgroupNotFoundError(2, "cgroup does not exist")

    def delete(self) -> None:
        self._record("delete")

    def freeze(self) -> None:
        self._record("freeze")

    def thaw(self) -> None:
        self._record("thaw")


def _instance(tmp_path: Path, cgroup: FakeCgroup, owned: bool) -> WasmInstance:
    config = InstanceConfig(
        namespace="ns",
        containerd_address="/c.sock",
        bundle=tmp_path,
        stdin="",
        stdout="",
        stderr="",
        rootfs=(),
        options=RuntimeOptions(),
        ttrpc_address="",
    )
    instance = WasmInstance("c1", config, {"process": {"args": ["/x.wasm"]}, "root": {}})
    instance.cgroup = cgroup  # type: ignore[assignment]
    instance.owns_cgroup = owned
    return instance


async def test_delete_removes_its_own_cgroup_off_the_event_loop(tmp_path: Path) -> None:
    cgroup = FakeCgroup()
    await _instance(tmp_path, cgroup, owned=True).delete()
    loop_thread = threading.get_ident()
    assert [name for name, _ in cgroup.calls] == ["kill_all", "delete"]
    assert all(thread != loop_thread for _, thread in cgroup.calls)


async def test_delete_leaves_a_cgroup_it_did_not_make(tmp_path: Path) -> None:
    cgroup = FakeCgroup()
    await _instance(tmp_path, cgroup, owned=False).delete()
    assert cgroup.calls == []


async def test_delete_of_a_vanished_cgroup_succeeds(tmp_path: Path) -> None:
    cgroup = FakeCgroup(gone=True)
    await _instance(tmp_path, cgroup, owned=True).delete()
    assert [name for name, _ in cgroup.calls] == ["kill_all"]


async def test_pause_and_resume_freeze_off_the_event_loop(tmp_path: Path) -> None:
    cgroup = FakeCgroup()
    instance = _instance(tmp_path, cgroup, owned=False)
    await instance.pause()
    await instance.resume()
    assert [name for name, _ in cgroup.calls] == ["freeze", "thaw"]
    assert all(thread != threading.get_ident() for _, thread in cgroup.calls)


async def test_undo_runs_in_reverse_with_blocking_steps_in_a_thread() -> None:
    ran: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()
    undo = _Undo()

    def step(name: str) -> Any:
        return lambda: ran.append((name, threading.get_ident() == loop_thread))

    undo.push("first", step("first"), blocking=True)
    undo.push("second", step("second"))

    def broken() -> None:
        raise OSError("a failing step does not stop the others")

    undo.push("broken", broken)
    await undo.run()
    assert ran == [("second", True), ("first", False)]
    await undo.run()  # steps run once
    assert len(ran) == 2


async def test_a_cancelled_undo_still_finishes(tmp_path: Path) -> None:
    # WasmInstance.new shields the undo: a Create cancelled again while undoing must not
    # leave half of it undone.
    done = threading.Event()
    undo = _Undo()
    undo.push("slow", lambda: done.wait(0.2) or done.set(), blocking=True)
    task = asyncio.ensure_future(asyncio.shield(undo.run()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.4)
    assert done.is_set()


async def test_a_start_cancelled_while_waiting_leaves_the_loop_listening(tmp_path: Path) -> None:
    # Start cancelled by its deadline while it waits for the init's "started": the channel
    # is closed, and the next Create's channel gets the same descriptor number. A read left
    # registered for the old one made the loop deaf to the new one (its epoll entry went
    # with the close, the loop's record of it did not): that Create timed out at setup.
    loop = asyncio.get_running_loop()
    instance = _instance(tmp_path, FakeCgroup(), owned=False)
    ours, init_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    instance._channel, instance._exit = ours, loop.create_future()
    number = ours.fileno()
    starting = asyncio.ensure_future(instance.start())
    await asyncio.sleep(0.05)  # start() sends "start", then waits for "started"
    init_side.settimeout(5)
    assert init_side.recv(100) == b'{"start": true}'
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    init_side.close()
    new, new_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        assert new.fileno() == number  # the lowest free descriptor: the old channel's
        new.setblocking(False)
        receiving = asyncio.ensure_future(_receive_unless_exited(new, loop.create_future(), 30))
        await asyncio.sleep(0.05)  # waiting in the loop: the message comes later, as an init's
        new_peer.send(b'{"ready": true}')
        assert await asyncio.wait_for(receiving, 5) == b'{"ready": true}'
    finally:
        new.close()
        new_peer.close()


async def test_receive_reports_an_init_that_exited_first() -> None:
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[Any] = loop.create_future()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    try:
        exited.set_result(object())
        assert await _receive_unless_exited(ours, exited, 30) is None
        theirs.close()
        assert await _receive_unless_exited(ours, loop.create_future(), 30) == b""
    finally:
        ours.close()
