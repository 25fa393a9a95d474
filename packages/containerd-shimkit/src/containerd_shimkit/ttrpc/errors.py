"""Exceptions raised by the ttrpc layer.

Tree::

    Exception
    ├── TtrpcError(code, message)   a call ended with a non-OK status (from the peer, or local)
    │   └── OversizedMessage        RESOURCE_EXHAUSTED: a message above the 4 MiB frame limit
    ├── ProtocolError               the peer broke the protocol (unframeable bytes, bad message)
    └── ConnectionClosed            the connection went away (Go's ``ttrpc.ErrClosed``)

Handlers raise :class:`containerd_shimkit.errors.ShimError` subclasses rather than
:class:`TtrpcError`; the server maps both (anything with a :class:`Code` ``code`` and a
``message``) to a status on the wire.
"""

from __future__ import annotations

from ..errors import Code

__all__ = ["Code", "ConnectionClosed", "OversizedMessage", "ProtocolError", "TtrpcError"]


class TtrpcError(Exception):
    """A call failed with a gRPC status code and message.

    Attributes:
        code: The status code (never :attr:`Code.OK`).
        message: The status message, as sent on the wire.
    """

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class OversizedMessage(TtrpcError):
    """A message is larger than the protocol allows, so it was not sent (or was discarded).

    Attributes:
        length: The rejected data length in bytes.
        maximum: The limit it exceeded (:data:`~.framing.MAX_MESSAGE_LENGTH`).
    """

    def __init__(self, length: int, maximum: int) -> None:
        # Same text as Go's OversizedMessageError, so logs read alike on both sides.
        super().__init__(
            Code.RESOURCE_EXHAUSTED,
            f"message length {length} exceed maximum message size of {maximum}",
        )
        self.length = length
        self.maximum = maximum


class ProtocolError(Exception):
    """The peer broke the protocol.

    Raised by :class:`~containerd_shimkit.ttrpc.framing.FrameDecoder` for bytes that cannot
    be framed (the connection cannot continue), and by the client for a response that does
    not decode (only that call fails).
    """


class ConnectionClosed(Exception):
    """The connection is closed (EOF, reset, or :meth:`Client.close`); the call did not complete."""
