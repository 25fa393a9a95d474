"""Building services from protobuf descriptors and plain implementation objects."""

from __future__ import annotations

import pytest
from google.protobuf import empty_pb2

from containerd_shimkit.api import events_ttrpc_pb2, shim_pb2, shim_v3_pb2
from containerd_shimkit.ttrpc import RequestContext, Service
from containerd_shimkit.ttrpc.service import metadata_from_pairs, snake_case

from .conftest import TASK_DESCRIPTOR, FakeTasks


@pytest.mark.parametrize(
    ("rpc", "python"),
    [
        ("Create", "create"),
        ("ResizePty", "resize_pty"),
        ("CloseIO", "close_io"),
        ("Pids", "pids"),
        ("HTTPServer", "http_server"),
        ("Forward", "forward"),
        ("V2Thing", "v2_thing"),
    ],
)
def test_snake_case(rpc: str, python: str) -> None:
    assert snake_case(rpc) == python


def test_every_task_rpc_has_a_distinct_snake_case_name() -> None:
    names = [snake_case(m.name) for m in TASK_DESCRIPTOR.methods]
    assert len(set(names)) == len(names) == 17
    assert {"resize_pty", "close_io", "shutdown"} <= set(names)


def test_from_descriptor_binds_implemented_rpcs_only() -> None:
    tasks = FakeTasks()
    service = Service.from_descriptor(TASK_DESCRIPTOR, tasks)
    assert service.name == "containerd.task.v2.Task"
    assert set(service.methods) == {
        "State",
        "Wait",
        "Kill",
        "Pids",
        "Pause",
        "Resume",
        "Connect",
        "Stats",
    }
    state = service.methods["State"]
    assert state.name == "State"
    assert state.request_type is shim_pb2.StateRequest
    assert state.response_type is shim_pb2.StateResponse
    assert state.handler == tasks.state
    assert service.methods["Kill"].response_type is empty_pb2.Empty


def test_same_implementation_serves_task_v3() -> None:
    tasks = FakeTasks()
    service = Service.from_descriptor(shim_v3_pb2.DESCRIPTOR.services_by_name["Task"], tasks)
    assert service.name == "containerd.task.v3.Task"
    # Our shim_v3.proto reuses the v2 messages (upstream's are byte-identical copies).
    assert service.methods["State"].request_type is shim_pb2.StateRequest
    assert service.methods["State"].handler == tasks.state


def test_events_service_descriptor() -> None:
    class Events:
        async def forward(
            self, request: events_ttrpc_pb2.ForwardRequest, ctx: RequestContext
        ) -> empty_pb2.Empty:
            return empty_pb2.Empty()

    events = events_ttrpc_pb2.DESCRIPTOR.services_by_name["Events"]
    service = Service.from_descriptor(events, Events())
    assert service.name == "containerd.services.events.ttrpc.v1.Events"
    assert service.methods["Forward"].request_type is events_ttrpc_pb2.ForwardRequest


def test_non_callable_attribute_is_a_mistake() -> None:
    class Broken:
        state = "not a method"

    with pytest.raises(TypeError, match=r"Broken.state is not callable"):
        Service.from_descriptor(TASK_DESCRIPTOR, Broken())


def test_metadata_keys_are_lower_cased_and_values_grouped() -> None:
    pairs = [("Containerd-Namespace-Ttrpc", "k8s.io"), ("X", "1"), ("x", "2")]
    assert metadata_from_pairs(pairs) == {
        "containerd-namespace-ttrpc": ["k8s.io"],
        "x": ["1", "2"],
    }
