"""JSON for ``start`` without importing the ``json`` package.

``json`` imports ``re`` and, through it, ``enum`` (~9 ms together here), and ``start`` runs
for every container only to read ``config.json``'s annotations and talk to the template.
CPython's C accelerator ``_json`` does the actual work for ``json`` too (and is always
built): this drives its scanner and string encoder directly. The tests compare both.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any


class _ScannerContext:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder`` (the defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


_WHITESPACE = " \t\n\r"


def loads(text: str | bytes) -> Any:
    """Parse a JSON document, as ``json.loads`` does.

    Raises:
        ValueError: the text is not one JSON value (``json.JSONDecodeError`` in fallback).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        # The stub wants a JSONDecoder; the scanner only reads the attributes defined above.
        scanner = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]
        value, end = scanner(text, start)
    except StopIteration as exc:
        raise ValueError(f"invalid JSON at character {exc.value}") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return value


def dumps(value: Any) -> str:
    """Serialize strings, ints, bools, None, lists and string-keyed dicts of them."""
    if isinstance(value, str):
        return str(_json.encode_basestring_ascii(value))
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{dumps(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot serialize {type(value).__name__} to JSON here")
