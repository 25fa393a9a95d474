"""The task state machine.

Rule 1: every legal transition is a row of ``TRANSITIONS``; nothing else changes a state.
Rule 2: this module knows nothing about containers or RPCs, only states and events.

::

    CREATED --start--> STARTING --started--> RUNNING --exited--> EXITED
       |                   \\--failed--> EXITED   pause| ^resume     |
       |                                        PAUSED --exited--^   |
       \\--delete--> DELETING <--------------delete-----------------/
                        \\--delete_failed--> (back to where it came from)
"""

from __future__ import annotations

from enum import Enum

from ..errors import FailedPrecondition


class TaskState(Enum):
    """Where a container is in its lifecycle."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"
    DELETING = "deleting"


class TaskEvent(Enum):
    """What happens to a container."""

    START = "start"
    STARTED = "started"
    START_FAILED = "start_failed"
    EXITED = "exited"
    DELETE = "delete"
    PAUSE = "pause"
    RESUME = "resume"


TRANSITIONS: dict[tuple[TaskState, TaskEvent], TaskState] = {
    (TaskState.CREATED, TaskEvent.START): TaskState.STARTING,
    # The init can die before Start (killed, or it gave up waiting): Wait must return.
    (TaskState.CREATED, TaskEvent.EXITED): TaskState.EXITED,
    (TaskState.STARTING, TaskEvent.STARTED): TaskState.RUNNING,
    (TaskState.STARTING, TaskEvent.START_FAILED): TaskState.EXITED,
    # A process can exit while Start is still returning (it ran for microseconds).
    (TaskState.STARTING, TaskEvent.EXITED): TaskState.EXITED,
    (TaskState.RUNNING, TaskEvent.EXITED): TaskState.EXITED,
    (TaskState.RUNNING, TaskEvent.PAUSE): TaskState.PAUSED,
    (TaskState.PAUSED, TaskEvent.RESUME): TaskState.RUNNING,
    # A frozen process can still be killed (SIGKILL reaches frozen tasks).
    (TaskState.PAUSED, TaskEvent.EXITED): TaskState.EXITED,
    (TaskState.CREATED, TaskEvent.DELETE): TaskState.DELETING,
    (TaskState.EXITED, TaskEvent.DELETE): TaskState.DELETING,
}


def transition(state: TaskState, event: TaskEvent) -> TaskState:
    """Return the state after ``event``.

    Raises:
        FailedPrecondition: the event is not allowed in ``state``.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise FailedPrecondition(f"cannot {event.value} a task that is {state.value}") from None
