"""start's reservation handshake with a live daemon, and the daemon's Shutdown hand-over.

A real ttrpc server (the daemon's Task service over :class:`InstanceStub` plus ``start``'s
own service) runs on an event loop in a thread; ``start``'s side is the real, blocking
:func:`bind_or_reuse` of the ``start`` action.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from containerd_shimkit.api import shim_pb2
from containerd_shimkit.cli.daemon import SocketPath, _start_service
from containerd_shimkit.cli.start import CLOSING, DEAD, RESERVED, bind_or_reuse, reserve
from containerd_shimkit.task.service import TaskService
from containerd_shimkit.testing import InstanceStub, RecordingSink
from containerd_shimkit.ttrpc import Server

T = TypeVar("T")


class Daemon:
    """A Task service with start's Reserve on ``path``, served from a thread's loop."""

    def __init__(self, path: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.idle: list[bool] = []
        self.socket_path = SocketPath("")
        listener = bind_or_reuse(path)
        assert listener is not None
        self.socket_path = SocketPath(path)

        def on_idle() -> None:
            self.socket_path.release()
            self.idle.append(True)

        async def build() -> tuple[TaskService, Server]:
            service = TaskService(
                InstanceStub,
                namespace="ns",
                containerd_address="/c.sock",
                events=RecordingSink(),
                on_idle=on_idle,
            )
            server = Server([_start_service(service)])
            self.serving = asyncio.ensure_future(
                server.serve(socket.socket(fileno=listener.detach()))
            )
            return service, server

        self.service, self.server = self.call(build())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        self.call(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    InstanceStub.instances.clear()
    d = Daemon(str(tmp_path / "s" / "sock"))
    yield d
    d.stop()


def _create(d: Daemon, id: str, bundle: Path) -> None:
    bundle.mkdir(exist_ok=True)
    d.call(d.service.create(shim_pb2.CreateTaskRequest(id=id, bundle=str(bundle))))


def test_a_live_daemon_is_reserved_and_defers_shutdown_until_the_create(
    daemon: Daemon, tmp_path: Path
) -> None:
    path = daemon.socket_path.path
    assert bind_or_reuse(path, "c2") is None  # reuse: reserved for c2
    # The pod's last container was deleted meanwhile: containerd's Shutdown must not take
    # down the daemon that c2's Create is on its way to.
    daemon.call(daemon.service.shutdown(shim_pb2.ShutdownRequest()))
    assert daemon.idle == [] and Path(path).exists()
    _create(daemon, "c2", tmp_path / "c2")
    daemon.call(daemon.service.shutdown(shim_pb2.ShutdownRequest()))
    assert daemon.idle == []  # c2 holds it now
    InstanceStub.instances["c2"].exit(0)
    daemon.call(daemon.service.delete(shim_pb2.DeleteRequest(id="c2")))
    daemon.call(daemon.service.shutdown(shim_pb2.ShutdownRequest()))
    assert daemon.idle == [True]


def test_a_daemon_that_accepted_shutdown_is_never_handed_out(daemon: Daemon) -> None:
    path = daemon.socket_path.path
    daemon.call(daemon.service.shutdown(shim_pb2.ShutdownRequest()))
    assert daemon.idle == [True]
    assert not Path(path).exists()  # unlinked at once, before the daemon exits
    fresh = bind_or_reuse(path, "c3")  # so start binds a new daemon's socket
    assert fresh is not None
    try:
        # ...which the old daemon, on its way out, leaves alone.
        daemon.socket_path.release()
        assert Path(path).exists()
    finally:
        fresh.close()


def test_a_closing_daemon_refuses_a_reservation(daemon: Daemon, tmp_path: Path) -> None:
    # A start that connected just before the Shutdown: the daemon answers UNAVAILABLE.
    daemon.service.closing = True
    assert reserve(daemon.socket_path.path, "c4") == CLOSING
    with pytest.raises(Exception, match="shutting down"):
        _create(daemon, "c4", tmp_path / "c4")


def test_a_failed_create_carries_out_the_deferred_shutdown(daemon: Daemon, tmp_path: Path) -> None:
    assert reserve(daemon.socket_path.path, "c5") == RESERVED
    daemon.call(daemon.service.shutdown(shim_pb2.ShutdownRequest()))
    assert daemon.idle == []
    InstanceStub.fail_on = "new"
    try:
        with pytest.raises(Exception, match="failed on purpose"):
            _create(daemon, "c5", tmp_path / "c5")
    finally:
        InstanceStub.fail_on = ""
    assert daemon.idle == [True]  # containerd sends no second Shutdown after a failed Create


def test_nothing_listening_is_dead(tmp_path: Path) -> None:
    assert reserve(str(tmp_path / "nothing"), "c6") == DEAD
