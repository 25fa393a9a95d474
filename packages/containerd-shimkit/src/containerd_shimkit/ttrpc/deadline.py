"""Request deadlines: the ``timeout_nano`` field of a ttrpc Request as a value object.

The client sends its remaining time in nanoseconds; the server turns it back into an
absolute point on its own monotonic clock, so clock differences between the processes do
not matter (only the transit time is lost, as in Go's ``context.WithTimeout``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["Deadline"]

_NS_PER_SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute deadline on the :func:`time.monotonic` clock (seconds)."""

    expires_at: float

    @classmethod
    def from_timeout(cls, seconds: float, *, now: float | None = None) -> Deadline:
        """The deadline ``seconds`` from now."""
        return cls(_now(now) + seconds)

    @classmethod
    def from_timeout_nano(cls, timeout_nano: int, *, now: float | None = None) -> Deadline | None:
        """The deadline of a Request: ``None`` when ``timeout_nano`` is 0 (no deadline).

        A negative value is an already-expired deadline, as in Go's server (which only
        special-cases 0), not the absence of one.
        """
        if timeout_nano == 0:
            return None
        return cls.from_timeout(timeout_nano / _NS_PER_SECOND, now=now)

    def time_remaining(self, *, now: float | None = None) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires_at - _now(now))

    def expired(self, *, now: float | None = None) -> bool:
        """Whether the deadline has passed."""
        return _now(now) >= self.expires_at

    def to_timeout_nano(self, *, now: float | None = None) -> int:
        """The value to put in ``Request.timeout_nano``.

        At least 1: 0 would tell the server there is no deadline at all.
        """
        return max(1, round(self.time_remaining(now=now) * _NS_PER_SECOND))


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now
