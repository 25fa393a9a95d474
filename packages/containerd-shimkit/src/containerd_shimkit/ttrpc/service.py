"""Service registry: which coroutine handles ``<service>/<method>``, and with which types.

A :class:`Service` is usually built from a protobuf service descriptor and a plain object
whose coroutine methods are the snake_case RPC names::

    class Tasks:
        async def state(
            self, request: shim_pb2.StateRequest, ctx: RequestContext
        ) -> shim_pb2.StateResponse: ...

    Service.from_descriptor(shim_pb2.DESCRIPTOR.services_by_name["Task"], Tasks())

RPCs the object does not implement are simply left out; the server answers them with
UNIMPLEMENTED, which is what containerd expects (and relies on to fall back from
``containerd.task.v3.Task`` to v2).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from .deadline import Deadline

__all__ = [
    "Handler",
    "Method",
    "PeerCredentials",
    "RequestContext",
    "Service",
    "metadata_from_pairs",
    "snake_case",
]


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The connecting process, from ``SO_PEERCRED``."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a handler knows about the call besides its request message."""

    #: Full service name, e.g. ``containerd.task.v2.Task``.
    service: str
    #: RPC name, e.g. ``State``.
    method: str
    #: Request metadata; keys are lower-cased, a key may carry several values.
    metadata: Mapping[str, list[str]] = field(default_factory=dict)
    #: The client's deadline (already enforced by the server), or ``None``.
    deadline: Deadline | None = None
    #: The peer process, when the transport can tell.
    peer: PeerCredentials | None = None


#: ``async (request_message, ctx) -> response_message``. The request parameter is ``Any``
#: so that handlers may annotate their concrete message class.
Handler = Callable[[Any, RequestContext], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class Method:
    """One unary RPC: its name, message classes and handler."""

    name: str
    request_type: type[Message]
    response_type: type[Message]
    handler: Handler


@dataclass(frozen=True, slots=True)
class Service:
    """A named set of methods, registered with a :class:`~containerd_shimkit.ttrpc.Server`."""

    name: str
    methods: Mapping[str, Method]

    @classmethod
    def from_descriptor(cls, descriptor: ServiceDescriptor, implementation: object) -> Service:
        """Bind each RPC of ``descriptor`` to ``implementation.<snake_case(rpc)>``.

        Message classes come from the descriptor, not from the implementation, so one
        object can serve several services (``containerd.task.v2.Task`` and
        ``containerd.task.v3.Task``) even if their messages are distinct classes.

        Raises:
            TypeError: an attribute with an RPC's name exists but is not callable.
        """
        methods: dict[str, Method] = {}
        for rpc in descriptor.methods:
            handler = getattr(implementation, snake_case(rpc.name), None)
            if handler is None:
                continue
            if not callable(handler):
                raise TypeError(
                    f"{type(implementation).__name__}.{snake_case(rpc.name)} is not callable"
                    f" (it would handle {descriptor.full_name}/{rpc.name})"
                )
            methods[rpc.name] = Method(
                name=rpc.name,
                request_type=GetMessageClass(rpc.input_type),
                response_type=GetMessageClass(rpc.output_type),
                handler=handler,
            )
        return cls(descriptor.full_name, methods)


# A word boundary is lower/digit→Upper ("ResizePty") or the last capital of an acronym
# before a capitalised word ("HTTPServer" → "http_server"); "CloseIO" → "close_io".
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """The Python method name for an RPC: ``ResizePty`` → ``resize_pty``."""
    return _WORD_BOUNDARY.sub("_", name).lower()


def metadata_from_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Group ``(key, value)`` pairs by lower-cased key, keeping value order (Go's ``MD``)."""
    metadata: dict[str, list[str]] = {}
    for key, value in pairs:
        metadata.setdefault(key.lower(), []).append(value)
    return metadata
