"""containerd's log format, with the container and pod ids added without being passed."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from containerd_shimkit import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    logs.setup(logging.DEBUG, buffer)
    yield buffer
    root.handlers[:], level = saved
    root.setLevel(level)


def test_records_carry_instance_and_pod_automatically(stream: io.StringIO) -> None:
    token = logs.pod_id.set("pod-1")
    try:
        with logs.container_context("ctr-1"):
            logging.getLogger("x").info("created", extra={"pid": 42})
        logging.getLogger("x").warning('quote " and\nnewline')
    finally:
        logs.pod_id.reset(token)
    first, second = stream.getvalue().splitlines()
    assert first.startswith('time="') and " level=info msg=created " in first
    assert "instance=ctr-1 pod=pod-1" in first and first.endswith("pid=42")
    assert 'level=warning msg="quote \\" and\\nnewline"' in second
    assert "instance=" not in second and "pod=pod-1" in second


def test_exceptions_are_one_line(stream: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    (line,) = stream.getvalue().splitlines()
    assert "level=error msg=failed" in line and "ValueError: boom" in line


def test_level_from_debug_env_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    assert logs.level_from(True) == logging.DEBUG
    assert logs.level_from(False) == logging.INFO
    monkeypatch.setenv(logs.LEVEL_ENV, "warn")
    assert logs.level_from(False) == logging.WARNING
    monkeypatch.setenv(logs.LEVEL_ENV, "nonsense")
    assert logs.level_from(False) == logging.INFO


def test_a_broken_log_pipe_never_raises() -> None:
    closed = io.StringIO()
    closed.close()
    handler = logs.FifoHandler(closed)
    handler.setFormatter(logs.LogfmtFormatter())
    handler.emit(logging.makeLogRecord({"msg": "dropped"}))  # must not raise
