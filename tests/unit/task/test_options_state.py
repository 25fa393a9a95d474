"""Runtime options decoding and the state machine table."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from containerd_shimkit.api import runtimeoptions_pb2
from containerd_shimkit.errors import FailedPrecondition, InvalidArgument
from containerd_shimkit.task import options as options_module
from containerd_shimkit.task.options import decode_options, parse_toml_options
from containerd_shimkit.task.state import TRANSITIONS, TaskEvent, TaskState, transition


def test_no_options_is_the_default() -> None:
    options = decode_options("", b"")
    assert options.systemd_cgroup is False and options.extra == {}


def test_config_path_is_read_when_the_body_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "shim.toml"
    path.write_text("SystemdCgroup = true\n")
    value = runtimeoptions_pb2.Options(config_path=str(path)).SerializeToString()
    assert decode_options("runtimeoptions.v1.Options", value).systemd_cgroup is True
    missing = runtimeoptions_pb2.Options(config_path=str(tmp_path / "nope")).SerializeToString()
    with pytest.raises(InvalidArgument, match="cannot read runtime options file"):
        decode_options("runtimeoptions.v1.Options", missing)


def test_prefixed_type_url_is_accepted() -> None:
    value = runtimeoptions_pb2.Options(config_body=b"SystemdCgroup = true").SerializeToString()
    options = decode_options("type.googleapis.com/runtimeoptions.v1.Options", value)
    assert options.systemd_cgroup is True


def test_bad_toml_and_bad_types_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        parse_toml_options("SystemdCgroup = ")
    with pytest.raises(InvalidArgument, match="true or false"):
        parse_toml_options('SystemdCgroup = "yes"')
    with pytest.raises(InvalidArgument, match="malformed"):
        decode_options("runtimeoptions.v1.Options", b"\xff\xff\xff")


def test_unknown_keys_are_logged_not_silently_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        options = parse_toml_options("SystemdCgrop = true\n")
    assert options.extra == {"SystemdCgrop": True}
    assert "SystemdCgrop" in caplog.text


def test_empty_runtime_options_are_reported_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """containerd 1.6 sends the Any with an empty value (it dropped the options table)."""
    monkeypatch.setattr(options_module, "_warned_empty", False)
    with caplog.at_level(logging.WARNING):
        first = decode_options("runtimeoptions.v1.Options", b"")
        decode_options("runtimeoptions.v1.Options", b"")
    assert first.systemd_cgroup is False and first.extra == {}
    warnings = [r.getMessage() for r in caplog.records if "empty" in r.getMessage()]
    assert len(warnings) == 1 and "ConfigPath" in warnings[0], warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        body = runtimeoptions_pb2.Options(config_body=b"SystemdCgroup = true\n")
        decode_options("runtimeoptions.v1.Options", body.SerializeToString())
        decode_options("", b"")  # no options table at all: nothing to report
    assert caplog.records == []


def test_every_state_event_pair_is_either_a_transition_or_refused() -> None:
    for state in TaskState:
        for event in TaskEvent:
            if (state, event) in TRANSITIONS:
                assert transition(state, event) is TRANSITIONS[(state, event)]
            else:
                with pytest.raises(FailedPrecondition, match=event.value):
                    transition(state, event)
