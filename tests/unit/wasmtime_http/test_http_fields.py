"""wasi:http ``fields``: wasmtime's validation rules, without a guest."""

from __future__ import annotations

import pytest

from containerd_shim_wasmtime.http.fields import FORBIDDEN, Fields, HeaderError


def error(fn: object, *args: object) -> str:
    with pytest.raises(HeaderError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.case


def test_names_are_case_insensitive_and_stored_lower_case() -> None:
    fields = Fields([("X-Test", b"1"), ("x-test", b"2"), ("Other", b"3")])
    assert fields.get("X-TEST") == [b"1", b"2"]
    assert fields.has("other") and not fields.has("missing")
    assert fields.entries() == [("x-test", b"1"), ("x-test", b"2"), ("other", b"3")]
    fields.set("X-Test", [b"a"])
    fields.append("x-new", b"b")
    fields.delete("OTHER")
    assert fields.entries() == [("x-test", b"a"), ("x-new", b"b")]


@pytest.mark.parametrize("name", ["", "bad name", "a:b", "ü", "x\r\n"])
def test_invalid_names(name: str) -> None:
    assert error(Fields, [(name, b"v")]) == "invalid-syntax"
    assert error(Fields().append, name, b"v") == "invalid-syntax"


@pytest.mark.parametrize("value", [b"a\r\nb", b"\x00", b" leading", b"trailing ", b"a\nb"])
def test_invalid_values(value: bytes) -> None:
    assert error(Fields, [("x", value)]) == "invalid-syntax"
    assert error(Fields().set, "x", [b"ok", value]) == "invalid-syntax"


@pytest.mark.parametrize("value", [b"", b"a b\tc", b"\xff\x80 obs-text", b"=;,\"'"])
def test_valid_values(value: bytes) -> None:
    assert Fields([("x", value)]).get("x") == [value]


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_forbidden_hop_by_hop_headers(name: str) -> None:
    assert error(Fields, [(name.upper(), b"v")]) == "forbidden"
    assert error(Fields().set, name, [b"v"]) == "forbidden"


def test_immutable_fields_refuse_changes_and_clone_mutable() -> None:
    fields = Fields([("a", b"1")], immutable=True)
    assert error(fields.set, "a", [b"2"]) == "immutable"
    assert error(fields.append, "b", b"2") == "immutable"
    assert error(fields.delete, "a") == "immutable"
    copy = fields.clone()
    copy.append("b", b"2")
    assert copy.entries() == [("a", b"1"), ("b", b"2")]
    assert fields.entries() == [("a", b"1")]


def test_received_fields_keep_what_the_peer_sent() -> None:
    fields = Fields.trusted([(b"Connection", b"keep-alive"), (b"X-A", b"1")])
    assert fields.immutable
    assert fields.entries() == [("connection", b"keep-alive"), ("x-a", b"1")]
    assert fields.wire() == [(b"connection", b"keep-alive"), (b"x-a", b"1")]
