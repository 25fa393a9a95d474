"""``TaskRecord``: one container as the Task service tracks it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .instance import ExitStatus, Instance
from .state import TaskEvent, TaskState, transition


@dataclass
class TaskRecord:
    """An :class:`Instance` plus its state, pid and exit status.

    ``lock`` serializes lifecycle operations (start, delete) on this container; Wait, State
    and Kill do not take it, so they are answered while Start or Delete is in progress.
    """

    id: str
    bundle: str
    instance: Instance
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    pid: int = 0
    state: TaskState = TaskState.CREATED
    exit: ExitStatus | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    waiter: asyncio.Task[None] | None = None

    def advance(self, event: TaskEvent) -> TaskState:
        """Apply ``event`` to the state (raises FailedPrecondition when illegal)."""
        self.state = transition(self.state, event)
        return self.state

    def record_exit(self, status: ExitStatus) -> None:
        """Store the exit status and wake every Wait."""
        self.exit = status
        if self.state in (
            TaskState.CREATED,
            TaskState.STARTING,
            TaskState.RUNNING,
            TaskState.PAUSED,
        ):
            self.advance(TaskEvent.EXITED)
        self.exited.set()
