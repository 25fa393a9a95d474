"""lightjson (start's JSON without the json package) against the json package."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from containerd_shimkit.cli import lightjson

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
ENCODABLE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_loads_agrees_with_json(value: object) -> None:
    text = json.dumps(value, indent=1)
    assert lightjson.loads(f" \n{text}\t") == json.loads(text)
    assert lightjson.loads(text.encode()) == json.loads(text)


@given(ENCODABLE)
def test_dumps_round_trips_through_json(value: object) -> None:
    assert json.loads(lightjson.dumps(value)) == value


def test_constants() -> None:
    assert math.isinf(lightjson.loads("Infinity"))
    assert math.isnan(lightjson.loads("[NaN]")[0])


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "[1,]", "nul", '"\\x"', "{'a': 1}"])
def test_invalid_documents_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)  # the reference rejects them too
    with pytest.raises(ValueError):
        lightjson.loads(text)


def test_dumps_refuses_what_it_does_not_know() -> None:
    with pytest.raises(TypeError, match="float"):
        lightjson.dumps({"x": 1.5})
