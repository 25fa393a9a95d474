"""Fakes for testing code built on the toolkit without containers or containerd."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Self

from .errors import FailedPrecondition
from .task.events import RecordingSink
from .task.instance import ExitStatus, InstanceConfig

__all__ = ["InstanceStub", "RecordingSink"]


class InstanceStub:
    """An in-memory :class:`~containerd_shimkit.Instance`: no process, full lifecycle.

    ``kill`` makes it exit with 128 + signal; ``exit(code)`` ends it normally. Every call
    is recorded in ``calls``. Set ``fail_on`` to a method name to make that call raise.
    """

    instances: dict[str, InstanceStub] = {}
    fail_on: str = ""
    next_pid = 1000

    def __init__(self, id: str, config: InstanceConfig) -> None:
        self.id = id
        self.config = config
        self.calls: list[str] = []
        self._pid = 0
        self._exit: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        InstanceStub.next_pid += 1
        self._pid = InstanceStub.next_pid

    @property
    def pid(self) -> int:
        return self._pid

    def _record(self, name: str) -> None:
        self.calls.append(name)
        if type(self).fail_on == name:
            raise FailedPrecondition(f"stub {name} failed on purpose")

    @classmethod
    async def new(cls, id: str, config: InstanceConfig) -> Self:
        if cls.fail_on == "new":
            raise FailedPrecondition("stub new failed on purpose")
        instance = cls(id, config)
        instance.calls.append("new")
        cls.instances[id] = instance
        return instance

    async def start(self) -> int:
        self._record("start")
        return self._pid

    async def kill(self, signal: int, all: bool = False) -> None:
        self._record(f"kill:{signal}")
        self.exit(128 + signal)

    async def delete(self) -> None:
        self._record("delete")

    async def pause(self) -> None:
        self._record("pause")

    async def resume(self) -> None:
        self._record("resume")

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    def exit(self, code: int) -> None:
        """End the workload with ``code``."""
        if not self._exit.done():
            self._exit.set_result(ExitStatus(code, datetime.now(UTC)))
