"""The Task service over an in-memory Instance: lifecycle, states, events, error codes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from containerd_shimkit.api import runtimeoptions_pb2, shim_pb2, task_types_pb2
from containerd_shimkit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from containerd_shimkit.task.service import GO_ZERO_TIME_SECONDS, TaskService
from containerd_shimkit.testing import InstanceStub, RecordingSink

#: Bundles must exist (Create checks): a directory per test, set by ``_reset_stub``.
BUNDLES = Path("/nonexistent")


@pytest.fixture(autouse=True)
def _reset_stub(tmp_path: Path) -> Iterator[None]:
    global BUNDLES
    BUNDLES = tmp_path
    InstanceStub.instances.clear()
    InstanceStub.fail_on = ""
    yield
    InstanceStub.fail_on = ""


def bundle_of(id: str) -> str:
    path = BUNDLES / id
    path.mkdir(exist_ok=True)
    return str(path)


def make_service() -> tuple[TaskService, RecordingSink, list[bool]]:
    sink = RecordingSink()
    idle: list[bool] = []
    service = TaskService(
        InstanceStub,
        namespace="ns",
        containerd_address="/c.sock",
        events=sink,
        on_idle=lambda: idle.append(True),
    )
    return service, sink, idle


async def create(service: TaskService, id: str = "c1", **kw: object) -> shim_pb2.CreateTaskResponse:
    return await service.create(shim_pb2.CreateTaskRequest(id=id, bundle=bundle_of(id), **kw))  # type: ignore[arg-type]


async def test_full_lifecycle_publishes_events_in_order() -> None:
    service, sink, idle = make_service()
    created = await create(service, stdout="/fifo/out")
    assert created.pid == InstanceStub.instances["c1"].pid
    state = await service.state(shim_pb2.StateRequest(id="c1"))
    assert state.status == task_types_pb2.CREATED
    assert state.exited_at.seconds == GO_ZERO_TIME_SECONDS
    assert state.stdout == "/fifo/out"

    started = await service.start(shim_pb2.StartRequest(id="c1"))
    waiter = asyncio.create_task(service.wait(shim_pb2.WaitRequest(id="c1")))
    assert (await service.state(shim_pb2.StateRequest(id="c1"))).status == task_types_pb2.RUNNING
    InstanceStub.instances["c1"].exit(42)
    waited = await asyncio.wait_for(waiter, 1)
    assert waited.exit_status == 42
    state = await service.state(shim_pb2.StateRequest(id="c1"))
    assert state.status == task_types_pb2.STOPPED and state.exit_status == 42

    deleted = await service.delete(shim_pb2.DeleteRequest(id="c1"))
    assert (deleted.pid, deleted.exit_status) == (started.pid, 42)
    assert sink.topics() == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    exit_event = sink.events[2]
    assert exit_event.id == "c1" and exit_event.exit_status == 42  # type: ignore[attr-defined]

    await service.shutdown(shim_pb2.ShutdownRequest())
    assert idle == [True]


async def test_wait_after_exit_returns_immediately_and_repeatedly() -> None:
    service, _, _ = make_service()
    await create(service)
    await service.start(shim_pb2.StartRequest(id="c1"))
    InstanceStub.instances["c1"].exit(3)
    for _ in range(2):
        response = await asyncio.wait_for(service.wait(shim_pb2.WaitRequest(id="c1")), 1)
        assert response.exit_status == 3


async def test_delete_after_create_without_start() -> None:
    service, sink, _ = make_service()
    await create(service)
    response = await service.delete(shim_pb2.DeleteRequest(id="c1"))
    assert response.exit_status == 0
    assert sink.topics() == ["/tasks/create", "/tasks/delete"]
    assert InstanceStub.instances["c1"].calls == ["new", "delete"]
    with pytest.raises(NotFound):
        await service.state(shim_pb2.StateRequest(id="c1"))


async def test_an_init_killed_before_start_has_exited() -> None:
    # ctr run cancelled between Create and Start, then ctr task kill: Wait used to block
    # forever (the exit was only watched from Start on) and the task stayed CREATED.
    service, sink, _ = make_service()
    await create(service)
    await service.kill(shim_pb2.KillRequest(id="c1", signal=9))
    waited = await asyncio.wait_for(service.wait(shim_pb2.WaitRequest(id="c1")), 5)
    assert waited.exit_status == 137
    state = await service.state(shim_pb2.StateRequest(id="c1"))
    assert state.status == task_types_pb2.STOPPED and state.exit_status == 137
    response = await service.delete(shim_pb2.DeleteRequest(id="c1"))
    assert response.exit_status == 137
    assert sink.topics() == ["/tasks/create", "/tasks/exit", "/tasks/delete"]


async def test_shutdown_is_ignored_while_containers_remain_even_with_now() -> None:
    # runc's shim ignores ``now`` while it has tasks: exiting would destroy them.
    service, _, idle = make_service()
    await create(service)
    await service.start(shim_pb2.StartRequest(id="c1"))
    await service.shutdown(shim_pb2.ShutdownRequest())
    await service.shutdown(shim_pb2.ShutdownRequest(now=True))
    assert idle == []
    assert service.tasks["c1"].instance is InstanceStub.instances["c1"]
    await service.kill(shim_pb2.KillRequest(id="c1", signal=9))
    await service.wait(shim_pb2.WaitRequest(id="c1"))
    await service.delete(shim_pb2.DeleteRequest(id="c1"))
    await service.shutdown(shim_pb2.ShutdownRequest(now=True))
    assert idle == [True]


@pytest.mark.parametrize(
    ("id", "message"),
    [
        ("", "must not be empty"),
        ("../../x", "is invalid"),
        ("a/b", "is invalid"),
        ("a..b", "is invalid"),
        ("-a", "is invalid"),
        ("x" * 5000, "characters long"),
        ("x" * 77, "characters long"),
    ],
)
async def test_create_refuses_ids_containerd_refuses(id: str, message: str) -> None:
    service, sink, _ = make_service()
    with pytest.raises(InvalidArgument, match=message):
        await service.create(shim_pb2.CreateTaskRequest(id=id, bundle=bundle_of("ok")))
    assert InstanceStub.instances == {} and sink.events == []


async def test_create_accepts_containerd_ids() -> None:
    service, _, _ = make_service()
    for id in ("a", "x" * 76, "pod_1.web-2", "0abc"):
        await service.create(shim_pb2.CreateTaskRequest(id=id, bundle=bundle_of(id[:20])))
    assert len(service.tasks) == 4


@pytest.mark.parametrize("bundle", ["", "relative/dir", ".", "{tmp}/a/../a", "{tmp}/missing"])
async def test_create_refuses_bad_bundles_before_touching_anything(bundle: str) -> None:
    service, sink, _ = make_service()
    bundle_of("a")
    bundle = bundle.format(tmp=BUNDLES)
    with pytest.raises(InvalidArgument, match="bundle"):
        await service.create(shim_pb2.CreateTaskRequest(id="c1", bundle=bundle))
    assert InstanceStub.instances == {} and sink.events == [] and service.tasks == {}


async def test_kill_signals_and_exit_is_128_plus_signal() -> None:
    service, _sink, _ = make_service()
    await create(service)
    await service.start(shim_pb2.StartRequest(id="c1"))
    await service.kill(shim_pb2.KillRequest(id="c1", signal=15))
    waited = await asyncio.wait_for(service.wait(shim_pb2.WaitRequest(id="c1")), 1)
    assert waited.exit_status == 143
    await asyncio.sleep(0)
    with pytest.raises(NotFound, match="already finished"):
        await service.kill(shim_pb2.KillRequest(id="c1", signal=9))


async def test_error_codes() -> None:
    service, _, _ = make_service()
    with pytest.raises(NotFound):
        await service.start(shim_pb2.StartRequest(id="nope"))
    await create(service)
    with pytest.raises(AlreadyExists):
        await create(service)
    with pytest.raises(InvalidArgument, match="terminal"):
        await create(service, "c2", terminal=True)
    with pytest.raises(Unimplemented, match="checkpoint"):
        await create(service, "c3", checkpoint="/x")
    with pytest.raises(NotFound, match="exec"):
        await service.state(shim_pb2.StateRequest(id="c1", exec_id="e1"))
    with pytest.raises(Unimplemented, match="exec"):
        await service.exec(shim_pb2.ExecProcessRequest(id="c1", exec_id="e1"))
    with pytest.raises(Unimplemented):
        await service.stats(shim_pb2.StatsRequest(id="c1"))
    await service.start(shim_pb2.StartRequest(id="c1"))
    with pytest.raises(FailedPrecondition, match="start"):
        await service.start(shim_pb2.StartRequest(id="c1"))
    with pytest.raises(FailedPrecondition, match="still running"):
        await service.delete(shim_pb2.DeleteRequest(id="c1"))


async def test_failed_create_leaves_nothing_and_allows_retry() -> None:
    service, sink, _idle = make_service()
    InstanceStub.fail_on = "new"
    with pytest.raises(FailedPrecondition):
        await create(service)
    assert service.tasks == {} and sink.events == []
    InstanceStub.fail_on = ""
    await create(service)
    assert "c1" in service.tasks


async def test_failed_delete_keeps_the_container_for_a_retry() -> None:
    service, sink, _ = make_service()
    await create(service)
    InstanceStub.fail_on = "delete"
    with pytest.raises(FailedPrecondition):
        await service.delete(shim_pb2.DeleteRequest(id="c1"))
    state = await service.state(shim_pb2.StateRequest(id="c1"))
    assert state.status == task_types_pb2.CREATED
    InstanceStub.fail_on = ""
    await service.delete(shim_pb2.DeleteRequest(id="c1"))
    assert sink.topics()[-1] == "/tasks/delete"


async def test_runtime_options_reach_the_instance() -> None:
    service, _, _ = make_service()
    options = runtimeoptions_pb2.Options(config_body=b"SystemdCgroup = true\nFoo = 1\n")
    request = shim_pb2.CreateTaskRequest(id="c1", bundle=bundle_of("c1"))
    request.options.type_url = "runtimeoptions.v1.Options"
    request.options.value = options.SerializeToString()
    await service.create(request)
    config = InstanceStub.instances["c1"].config
    assert config.options.systemd_cgroup is True
    assert config.options.extra == {"Foo": 1}


async def test_unknown_options_type_is_invalid_argument() -> None:
    service, _, _ = make_service()
    request = shim_pb2.CreateTaskRequest(id="c1", bundle=bundle_of("c1"))
    request.options.type_url = "containerd.runc.v1.Options"
    with pytest.raises(InvalidArgument, match=r"runtimeoptions\.v1\.Options"):
        await service.create(request)


async def test_pids_lists_init_and_connect_reports_pids() -> None:
    service, _, _ = make_service()
    created = await create(service)
    pids = await service.pids(shim_pb2.PidsRequest(id="c1"))
    assert [p.pid for p in pids.processes] == [created.pid]
    connected = await service.connect(shim_pb2.ConnectRequest(id="c1"))
    assert connected.task_pid == created.pid and connected.shim_pid > 0


async def test_pause_resume_states_and_events() -> None:
    service, sink, _ = make_service()
    await create(service)
    with pytest.raises(FailedPrecondition, match="pause"):
        await service.pause(shim_pb2.PauseRequest(id="c1"))  # not running yet
    await service.start(shim_pb2.StartRequest(id="c1"))
    await service.pause(shim_pb2.PauseRequest(id="c1"))
    state = await service.state(shim_pb2.StateRequest(id="c1"))
    assert state.status == task_types_pb2.PAUSED
    with pytest.raises(FailedPrecondition, match="still running"):
        await service.delete(shim_pb2.DeleteRequest(id="c1"))
    await service.resume(shim_pb2.ResumeRequest(id="c1"))
    assert (await service.state(shim_pb2.StateRequest(id="c1"))).status == task_types_pb2.RUNNING
    await service.pause(shim_pb2.PauseRequest(id="c1"))
    await service.kill(shim_pb2.KillRequest(id="c1", signal=9))  # a frozen task can be killed
    waited = await asyncio.wait_for(service.wait(shim_pb2.WaitRequest(id="c1")), 1)
    assert waited.exit_status == 137
    assert sink.topics()[2:] == ["/tasks/paused", "/tasks/resumed", "/tasks/paused", "/tasks/exit"]
