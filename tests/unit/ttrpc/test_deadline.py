"""Deadline <-> timeout_nano conversions."""

from __future__ import annotations

from containerd_shimkit.ttrpc import Deadline


def test_zero_timeout_nano_means_no_deadline() -> None:
    assert Deadline.from_timeout_nano(0) is None


def test_timeout_nano_is_relative_to_now() -> None:
    deadline = Deadline.from_timeout_nano(2_000_000_000, now=100.0)
    assert deadline == Deadline(102.0)
    assert deadline.time_remaining(now=101.5) == 0.5
    assert not deadline.expired(now=101.5)


def test_negative_timeout_nano_is_already_expired() -> None:
    # Go's server only special-cases 0; a negative timeout is a deadline in the past.
    deadline = Deadline.from_timeout_nano(-5, now=10.0)
    assert deadline is not None
    assert deadline.expired(now=10.0)
    assert deadline.time_remaining(now=10.0) == 0.0


def test_to_timeout_nano_round_trips() -> None:
    deadline = Deadline.from_timeout(1.5, now=0.0)
    assert deadline.to_timeout_nano(now=0.5) == 1_000_000_000


def test_expired_deadline_still_sends_a_positive_timeout() -> None:
    # 0 would tell the server "no deadline"; 1 ns makes it give up at once instead.
    assert Deadline(5.0).to_timeout_nano(now=9.0) == 1


def test_real_clock_is_used_by_default() -> None:
    deadline = Deadline.from_timeout(60)
    assert 59 < deadline.time_remaining() <= 60
    assert 59e9 < deadline.to_timeout_nano() <= 60e9
