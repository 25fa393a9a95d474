"""Executable lookup, native detection and the sync channel codec (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from containerd_shimkit.container import (
    channel_pair,
    decode_message,
    encode_message,
    is_native_executable,
    recv_message,
    resolve_in_path,
    send_message,
)


def _make(path: Path, content: bytes, mode: int = 0o755) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_resolve_in_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _make(a / "tool", b"#!/bin/sh\n", 0o644)  # not executable: skipped
    _make(b / "tool", b"#!/bin/sh\n")
    (a / "dir").mkdir()
    assert resolve_in_path("tool", f"{a}:{b}") == str(b / "tool")
    assert resolve_in_path("dir", str(a)) is None
    assert resolve_in_path("tool", "") is None
    assert resolve_in_path(str(b / "tool"), "") == str(b / "tool")
    assert resolve_in_path(str(a / "tool"), "") is None


def test_resolve_in_path_empty_entry_is_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make(tmp_path / "here", b"\x7fELF")
    monkeypatch.chdir(tmp_path)
    assert resolve_in_path("here", ":/nonexistent") == "./here"


def test_is_native_executable(tmp_path: Path) -> None:
    assert is_native_executable(_make(tmp_path / "elf", b"\x7fELF\x02\x01"))
    assert is_native_executable(_make(tmp_path / "script", b"#!/bin/sh\necho\n"))
    assert not is_native_executable(_make(tmp_path / "wasm", b"\x00asm\x01\x00\x00\x00"))
    assert not is_native_executable(tmp_path / "missing")
    assert is_native_executable("/bin/sh")


def test_message_codec() -> None:
    assert decode_message(encode_message({"ready": True})) == {"ready": True}
    with pytest.raises(ValueError):
        decode_message(b"[1]")


def test_channel_messages_and_eof() -> None:
    daemon_end, init_end = channel_pair()
    with daemon_end, init_end:
        send_message(init_end.fileno(), {"error": "boom"})
        send_message(init_end.fileno(), {"ready": True})
        assert recv_message(daemon_end.fileno()) == {"error": "boom"}  # one packet each
        assert recv_message(daemon_end.fileno()) == {"ready": True}
        os.close(os.dup(init_end.fileno()))
        init_end.close()
        assert recv_message(daemon_end.fileno()) is None
