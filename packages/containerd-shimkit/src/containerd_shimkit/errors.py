"""Errors raised by shim code, each carrying the containerd (gRPC) status code it maps to.

Deep code raises these with a message a user can act on; the ttrpc edge converts them to a
``Status`` exactly once (see :mod:`containerd_shimkit.ttrpc.server`). containerd strips a
trailing ``": <class text>"`` and re-wraps the error, so messages should not end with one.

Tree::

    ShimError                    UNKNOWN (2)
    ├── InvalidArgument          INVALID_ARGUMENT (3)
    ├── DeadlineExceeded         DEADLINE_EXCEEDED (4)
    ├── NotFound                 NOT_FOUND (5)
    ├── AlreadyExists            ALREADY_EXISTS (6)
    ├── PermissionDenied         PERMISSION_DENIED (7)
    ├── ResourceExhausted        RESOURCE_EXHAUSTED (8)
    ├── FailedPrecondition       FAILED_PRECONDITION (9)
    ├── Unimplemented            UNIMPLEMENTED (12)
    ├── Internal                 INTERNAL (13)
    └── Unavailable              UNAVAILABLE (14)
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """gRPC status codes, as used by ttrpc and containerd's errdefs."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ShimError(Exception):
    """Base class of errors that cross the ttrpc boundary with a status code."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ShimError):
    """The request is malformed or asks for something the shim cannot do with it."""

    code = Code.INVALID_ARGUMENT


class DeadlineExceeded(ShimError):
    """The caller's deadline passed before the work finished."""

    code = Code.DEADLINE_EXCEEDED


class NotFound(ShimError):
    """The container, process or resource does not exist (or has already exited)."""

    code = Code.NOT_FOUND


class AlreadyExists(ShimError):
    """A container or exec with this id already exists."""

    code = Code.ALREADY_EXISTS


class PermissionDenied(ShimError):
    """The peer or the operation is not allowed."""

    code = Code.PERMISSION_DENIED


class ResourceExhausted(ShimError):
    """A size or count limit was hit (for example an oversize ttrpc frame)."""

    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(ShimError):
    """The task is in the wrong state for the operation."""

    code = Code.FAILED_PRECONDITION


class Unimplemented(ShimError):
    """The shim does not support this operation."""

    code = Code.UNIMPLEMENTED


class Internal(ShimError):
    """A bug or an unexpected failure inside the shim."""

    code = Code.INTERNAL


class Unavailable(ShimError):
    """A dependency (containerd, the zygote) is not reachable right now."""

    code = Code.UNAVAILABLE
