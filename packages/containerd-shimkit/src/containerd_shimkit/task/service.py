"""The containerd Task service, on top of the :class:`Instance` protocol.

One method per RPC: look the container up, check the state, delegate to the Instance,
publish the event, answer. Errors are :mod:`containerd_shimkit.errors` classes; the ttrpc
server turns them into statuses. The same object serves ``containerd.task.v2.Task`` and
``containerd.task.v3.Task`` (their messages are identical).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from ..api import events_pb2, shim_pb2, task_types_pb2
from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)
from ..logs import container_context
from .events import EventSink
from .instance import (
    ExitStatus,
    HasPid,
    Instance,
    InstanceConfig,
    Mount,
    SupportsCloseIO,
    SupportsPause,
    SupportsPids,
    SupportsStats,
    SupportsUpdate,
)
from .options import decode_options
from .record import TaskRecord
from .state import TaskEvent, TaskState, transition

log = logging.getLogger(__name__)

Empty = empty_pb2.Empty

#: Go's zero time, which Go shims send as ``exited_at`` of a process that has not exited.
GO_ZERO_TIME_SECONDS = -62135596800

_STATUS = {
    TaskState.CREATED: task_types_pb2.CREATED,
    TaskState.STARTING: task_types_pb2.CREATED,
    TaskState.RUNNING: task_types_pb2.RUNNING,
    TaskState.PAUSED: task_types_pb2.PAUSED,
    TaskState.EXITED: task_types_pb2.STOPPED,
    TaskState.DELETING: task_types_pb2.STOPPED,
}


def timestamp(when: datetime | None) -> Timestamp:
    """A protobuf Timestamp; Go's zero time for ``None`` (not exited yet)."""
    ts = Timestamp()
    if when is None:
        ts.seconds = GO_ZERO_TIME_SECONDS
    else:
        ts.FromDatetime(when.astimezone(UTC))
    return ts


#: containerd's identifier rule (``pkg/identifiers``): alphanumerics separated by single
#: ``.``, ``_`` or ``-``, at most 76 characters.
_ID_PATTERN = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
MAX_ID_LENGTH = 76


def validate_id(id: str) -> None:
    """Refuse a container id containerd itself would refuse (it names paths and cgroups)."""
    if not id:
        raise InvalidArgument("container id must not be empty")
    if len(id) > MAX_ID_LENGTH:
        raise InvalidArgument(
            f"container id {id[:20]!r}… is {len(id)} characters long (at most {MAX_ID_LENGTH})"
        )
    if not _ID_PATTERN.fullmatch(id):
        raise InvalidArgument(
            f"container id {id!r} is invalid: it must be letters and digits separated by "
            "single '.', '_' or '-'"
        )


def validate_bundle(bundle: str) -> None:
    """Refuse a bundle that is not an absolute, normalised path to a directory.

    A relative one would be resolved against the daemon's working directory, never what
    containerd meant (runc refuses it too).
    """
    if not bundle or not os.path.isabs(bundle) or os.path.normpath(bundle) != bundle:
        raise InvalidArgument(f"bundle {bundle!r} must be an absolute, normalised path")
    if not os.path.isdir(bundle):
        raise InvalidArgument(f"bundle {bundle} is not a directory")


#: How long a ``start``'s reservation holds the daemon for the Create it announced.
#: containerd dials and sends the Create right after ``start`` returns (milliseconds);
#: a Create it gave up on (its caller's deadline) never comes, and until the reservation
#: lapses the daemon outlives its pod's last container.
RESERVATION_SECONDS = 10.0


class TaskService:
    """Implements every Task RPC as ``async def <rpc_snake_case>(request, ctx)``."""

    def __init__(
        self,
        instance_type: type[Instance],
        *,
        namespace: str,
        containerd_address: str,
        events: EventSink,
        ttrpc_address: str = "",
        on_idle: Callable[[], None] = lambda: None,
    ) -> None:
        self.instance_type = instance_type
        self.namespace = namespace
        self.containerd_address = containerd_address
        self.ttrpc_address = ttrpc_address
        self.events = events
        self.on_idle = on_idle
        self.tasks: dict[str, TaskRecord] = {}
        # Creates in flight count as "holding a container" for Shutdown.
        self._creating: set[str] = set()
        # Containers a ``start`` has promised this daemon to, by id: their Creates are on
        # their way, so they hold the daemon as well (until the deadline, monotonic time).
        self._reserved: dict[str, float] = {}
        #: Shutdown was accepted: the daemon is on its way out and takes nothing new.
        self.closing = False
        self._shutdown_deferred = False

    # -- helpers -----------------------------------------------------------------------

    def _get(self, id: str, exec_id: str = "") -> TaskRecord:
        if exec_id:
            raise NotFound(
                f"exec {exec_id!r} of container {id!r} does not exist (exec is not supported)"
            )
        record = self.tasks.get(id)
        if record is None:
            raise NotFound(f"container {id!r} does not exist in this shim")
        return record

    async def _watch_exit(self, record: TaskRecord) -> None:
        """Publish TaskExit when the init process ends (the background waiter, from Create
        on: an init killed before Start has exited too, and Wait must say so)."""
        with container_context(record.id):
            status = await record.instance.wait()
            if record.exit is not None:
                return  # a failed Start already recorded (and Delete reports) its end
            # Queue the event before the state changes, so Delete (allowed only once the
            # state says EXITED) can never publish TaskDelete ahead of TaskExit.
            self.events.publish(
                events_pb2.TaskExit(
                    container_id=record.id,
                    id=record.id,
                    pid=record.pid,
                    exit_status=status.code,
                    exited_at=timestamp(status.exited_at),
                )
            )
            record.record_exit(status)
            log.info("container exited", extra={"exit_status": status.code})

    # -- RPCs ----------------------------------------------------------------------------

    async def create(
        self, request: shim_pb2.CreateTaskRequest, ctx: object = None
    ) -> shim_pb2.CreateTaskResponse:
        """Create the container (not started) and publish ``/tasks/create``."""
        id = request.id
        with container_context(id):
            if request.terminal:
                raise InvalidArgument("terminal (tty) is not supported by this shim")
            if request.checkpoint or request.parent_checkpoint:
                raise Unimplemented("checkpoint/restore is not supported by this shim")
            validate_id(id)
            validate_bundle(request.bundle)
            if id in self.tasks or id in self._creating:
                raise AlreadyExists(f"container {id!r} already exists in this shim")
            options = decode_options(request.options.type_url, request.options.value)
            config = InstanceConfig(
                namespace=self.namespace,
                containerd_address=self.containerd_address,
                bundle=Path(request.bundle),
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
                rootfs=tuple(
                    Mount(m.type, m.source, m.target, tuple(m.options)) for m in request.rootfs
                ),
                options=options,
                ttrpc_address=self.ttrpc_address,
            )
            if self.closing:
                raise Unavailable("this shim is shutting down; containerd starts a new one")
            self._creating.add(id)
            self._reserved.pop(id, None)
            try:
                instance = await self.instance_type.new(id, config)
            except BaseException:
                self._creating.discard(id)
                self._shutdown_if_idle()
                raise
            self._creating.discard(id)
            # Its Delete will bring containerd's next Shutdown.
            self._shutdown_deferred = False
            pid = instance.pid if isinstance(instance, HasPid) else 0
            record = TaskRecord(
                id=id,
                bundle=request.bundle,
                instance=instance,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
                pid=pid,
            )
            self.tasks[id] = record
            record.waiter = asyncio.get_running_loop().create_task(self._watch_exit(record))
            self.events.publish(
                events_pb2.TaskCreate(
                    container_id=id,
                    bundle=request.bundle,
                    rootfs=request.rootfs,
                    io=events_pb2.TaskIO(
                        stdin=request.stdin, stdout=request.stdout, stderr=request.stderr
                    ),
                    pid=pid,
                )
            )
            log.info("container created", extra={"pid": pid})
            return shim_pb2.CreateTaskResponse(pid=pid)

    async def start(
        self, request: shim_pb2.StartRequest, ctx: object = None
    ) -> shim_pb2.StartResponse:
        """Start the init process; publish ``/tasks/start`` and watch for its exit."""
        record = self._get(request.id, request.exec_id)
        with container_context(record.id):
            async with record.lock:
                record.advance(TaskEvent.START)
                try:
                    pid = await record.instance.start()
                except BaseException:
                    record.advance(TaskEvent.START_FAILED)
                    record.exit = ExitStatus(137, datetime.now(UTC))
                    record.exited.set()
                    raise
                record.pid = pid
                self.events.publish(events_pb2.TaskStart(container_id=record.id, pid=pid))
                if record.state is TaskState.STARTING:
                    record.advance(TaskEvent.STARTED)
            log.info("container started", extra={"pid": pid})
            return shim_pb2.StartResponse(pid=pid)

    async def kill(self, request: shim_pb2.KillRequest, ctx: object = None) -> empty_pb2.Empty:
        """Signal the init process, or every process of the container with ``all``."""
        record = self._get(request.id, request.exec_id)
        with container_context(record.id):
            if record.state in (TaskState.EXITED, TaskState.DELETING) and not request.all:
                raise NotFound("process already finished")
            log.debug("kill", extra={"signal": request.signal, "all": request.all})
            await record.instance.kill(request.signal, request.all)
            return Empty()

    async def delete(
        self, request: shim_pb2.DeleteRequest, ctx: object = None
    ) -> shim_pb2.DeleteResponse:
        """Delete a created or exited container and publish ``/tasks/delete``."""
        record = self._get(request.id, request.exec_id)
        with container_context(record.id):
            async with record.lock:
                previous = record.state
                if previous in (TaskState.STARTING, TaskState.RUNNING, TaskState.PAUSED):
                    raise FailedPrecondition(
                        f"container {record.id!r} is still running: kill it before deleting"
                    )
                record.advance(TaskEvent.DELETE)
                try:
                    await record.instance.delete()
                except BaseException:
                    record.state = previous
                    raise
                del self.tasks[record.id]
            if record.waiter is not None and not record.waiter.done():
                record.waiter.cancel()
            status = record.exit or ExitStatus(0, datetime.now(UTC))
            exited_at = timestamp(status.exited_at)
            self.events.publish(
                events_pb2.TaskDelete(
                    container_id=record.id,
                    pid=record.pid,
                    exit_status=status.code,
                    exited_at=exited_at,
                )
            )
            log.info("container deleted")
            return shim_pb2.DeleteResponse(
                pid=record.pid, exit_status=status.code, exited_at=exited_at
            )

    async def wait(
        self, request: shim_pb2.WaitRequest, ctx: object = None
    ) -> shim_pb2.WaitResponse:
        """Block until the init process exits (or return its status if it has)."""
        record = self._get(request.id, request.exec_id)
        await record.exited.wait()
        assert record.exit is not None
        return shim_pb2.WaitResponse(
            exit_status=record.exit.code, exited_at=timestamp(record.exit.exited_at)
        )

    async def state(
        self, request: shim_pb2.StateRequest, ctx: object = None
    ) -> shim_pb2.StateResponse:
        """Report status, pid, stdio and exit status."""
        record = self._get(request.id, request.exec_id)
        exit = record.exit
        return shim_pb2.StateResponse(
            id=record.id,
            bundle=record.bundle,
            pid=record.pid,
            status=_STATUS[record.state],
            stdin=record.stdin,
            stdout=record.stdout,
            stderr=record.stderr,
            exit_status=exit.code if exit else 0,
            exited_at=timestamp(exit.exited_at if exit else None),
        )

    async def pids(
        self, request: shim_pb2.PidsRequest, ctx: object = None
    ) -> shim_pb2.PidsResponse:
        """List the container's processes (at least the init pid, which containerd 2.x needs)."""
        record = self._get(request.id)
        instance = record.instance
        pids = await instance.pids() if isinstance(instance, SupportsPids) else []
        if record.pid and record.pid not in pids and record.state is not TaskState.EXITED:
            pids.insert(0, record.pid)
        return shim_pb2.PidsResponse(
            processes=[task_types_pb2.ProcessInfo(pid=pid) for pid in pids]
        )

    async def stats(
        self, request: shim_pb2.StatsRequest, ctx: object = None
    ) -> shim_pb2.StatsResponse:
        """cgroup metrics as ``io.containerd.cgroups.v1/v2.Metrics``."""
        record = self._get(request.id)
        instance = record.instance
        if not isinstance(instance, SupportsStats):
            raise Unimplemented("stats are not supported by this shim's containers")
        type_url, value = await instance.stats()
        response = shim_pb2.StatsResponse()
        response.stats.type_url = type_url
        response.stats.value = value
        return response

    async def pause(self, request: shim_pb2.PauseRequest, ctx: object = None) -> empty_pb2.Empty:
        """Freeze the container (when the Instance supports it)."""
        record = self._get(request.id)
        if not isinstance(record.instance, SupportsPause):
            raise Unimplemented("pause is not supported by this shim")
        async with record.lock:
            transition(record.state, TaskEvent.PAUSE)  # refuse before touching the cgroup
            await record.instance.pause()
            record.advance(TaskEvent.PAUSE)
        self.events.publish(events_pb2.TaskPaused(container_id=record.id))
        return Empty()

    async def resume(self, request: shim_pb2.ResumeRequest, ctx: object = None) -> empty_pb2.Empty:
        """Thaw the container (when the Instance supports it)."""
        record = self._get(request.id)
        if not isinstance(record.instance, SupportsPause):
            raise Unimplemented("resume is not supported by this shim")
        async with record.lock:
            transition(record.state, TaskEvent.RESUME)
            await record.instance.resume()
            record.advance(TaskEvent.RESUME)
        self.events.publish(events_pb2.TaskResumed(container_id=record.id))
        return Empty()

    async def update(
        self, request: shim_pb2.UpdateTaskRequest, ctx: object = None
    ) -> empty_pb2.Empty:
        """Apply new resource limits (OCI LinuxResources JSON in an Any)."""
        record = self._get(request.id)
        if not isinstance(record.instance, SupportsUpdate):
            raise Unimplemented("update is not supported by this shim")
        try:
            resources: dict[str, Any] = json.loads(request.resources.value or b"{}")
        except ValueError as exc:
            raise InvalidArgument(f"resources are not LinuxResources JSON: {exc}") from exc
        await record.instance.update(resources)
        return Empty()

    async def close_io(
        self, request: shim_pb2.CloseIORequest, ctx: object = None
    ) -> empty_pb2.Empty:
        """Close the workload's stdin."""
        record = self._get(request.id, request.exec_id)
        if request.stdin and isinstance(record.instance, SupportsCloseIO):
            await record.instance.close_stdin()
        return Empty()

    async def exec(
        self, request: shim_pb2.ExecProcessRequest, ctx: object = None
    ) -> empty_pb2.Empty:
        """Exec is not supported (as in runwasi)."""
        self._get(request.id)
        raise Unimplemented("exec is not supported by this shim")

    async def resize_pty(
        self, request: shim_pb2.ResizePtyRequest, ctx: object = None
    ) -> empty_pb2.Empty:
        """There is no terminal to resize."""
        raise Unimplemented("terminals are not supported by this shim")

    async def checkpoint(
        self, request: shim_pb2.CheckpointTaskRequest, ctx: object = None
    ) -> empty_pb2.Empty:
        """Checkpointing is not supported."""
        raise Unimplemented("checkpoint is not supported by this shim")

    async def connect(
        self, request: shim_pb2.ConnectRequest, ctx: object = None
    ) -> shim_pb2.ConnectResponse:
        """Liveness probe: the shim pid and the task pid."""
        record = self.tasks.get(request.id)
        return shim_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=record.pid if record else 0)

    async def shutdown(
        self, request: shim_pb2.ShutdownRequest, ctx: object = None
    ) -> empty_pb2.Empty:
        """Exit the shim once it holds no containers.

        ``now`` does not override that (as in runc's shim): a shim that exits under running
        containers destroys them, and nothing containerd sends may do that.
        """
        if self._holding():
            if request.now:
                log.warning("Shutdown(now) ignored: containers are still present")
            self._shutdown_deferred = True
            return Empty()
        self._close()
        return Empty()

    async def reserve(
        self, request: shim_pb2.ConnectRequest, ctx: object = None
    ) -> shim_pb2.ConnectResponse:
        """``start``'s handshake (``containerd.shimkit.v1.Start/Reserve``): hold the daemon
        for container ``request.id``, whose Create containerd sends next.

        Without it a ``start`` that found this daemon alive could hand containerd the
        address of a daemon that a concurrent Shutdown (the pod's last container deleted)
        is about to take down. A daemon that has accepted Shutdown answers UNAVAILABLE,
        having unlinked its socket path, so ``start`` binds a new daemon there.
        """
        if self.closing:
            raise Unavailable("this shim is shutting down")
        loop = asyncio.get_running_loop()
        self._reserved[request.id] = loop.time() + RESERVATION_SECONDS
        loop.call_later(RESERVATION_SECONDS + 0.01, self._shutdown_if_idle)
        return shim_pb2.ConnectResponse(shim_pid=os.getpid())

    def _holding(self) -> bool:
        """Whether the daemon holds a container, a Create in flight or a live reservation."""
        if self._reserved:
            now = asyncio.get_running_loop().time()
            self._reserved = {id: t for id, t in self._reserved.items() if t > now}
        return bool(self.tasks or self._creating or self._reserved)

    def _shutdown_if_idle(self) -> None:
        """Carry out a Shutdown that came while a Create or reservation held the daemon
        and, as it turned out, no container stayed (a failed Create, a start that never
        came back): containerd will not send another."""
        if self._shutdown_deferred and not self.closing and not self._holding():
            self._close()

    def _close(self) -> None:
        log.info("shutting down: no containers left")
        self.closing = True
        self.on_idle()
