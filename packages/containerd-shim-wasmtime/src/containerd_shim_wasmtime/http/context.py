"""The per-request state host functions reach through :func:`lowering.current`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .lowering import CallContext, HostTrap
from .pipe import Waker

if TYPE_CHECKING:
    import httpx


class DeadlineExceeded(HostTrap):
    """The request's deadline passed while the guest waited in a host call.

    Epoch interruption stops a guest that computes; a guest blocked in ``poll`` is in host
    code, so the host checks the same deadline there.
    """


class RequestContext(CallContext):
    """One request's resource table, waker, deadline and outgoing HTTP client."""

    def __init__(self, *, deadline: float, client: httpx.Client | None) -> None:
        super().__init__()
        self.waker = Waker()
        #: ``time.monotonic()`` after which host waits trap.
        self.deadline = deadline
        self.client = client
        self.exit_code: int | None = None
        #: Set by :meth:`ProxyComponent.interrupt`: host waits trap at once.
        self.interrupted = False
        #: The Store's epoch deadline, in ticks.
        self.ticks = 0
        #: ``REQUEST_ID`` in the guest's environment: 0, 1, 2… per component.
        self.request_id = 0

    def remaining(self) -> float:
        """Seconds left before the deadline; raises :class:`DeadlineExceeded` at 0."""
        if self.interrupted:
            raise DeadlineExceeded("interrupted: the server is stopping")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("request deadline exceeded")
        return left
