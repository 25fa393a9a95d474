"""``wasi:http/types.fields``: headers and trailers, validated as wasmtime validates them.

Pure Python, no wasmtime: the rules are unit-tested on their own.

* Names are RFC 9110 tokens, stored lower-case (wasmtime keeps them in an ``http::HeaderMap``,
  which lower-cases), values are field values (no NUL, CR or LF; no leading or trailing
  whitespace): anything else is ``header-error.invalid-syntax``.
* The hop-by-hop headers of wasmtime-wasi-http's ``DEFAULT_FORBIDDEN_HEADERS`` are
  ``header-error.forbidden``: framing is the host's business (h11 writes ``content-length``
  or ``transfer-encoding`` itself).
* Fields attached to a request or response (or received) are immutable:
  ``header-error.immutable``.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# h11's field-value grammar: visible characters and obs-text, inner spaces/tabs only.
_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")

#: wasmtime-wasi-http's ``DEFAULT_FORBIDDEN_HEADERS``.
FORBIDDEN = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    }
)


class HeaderError(Exception):
    """A ``header-error`` case: ``invalid-syntax``, ``forbidden`` or ``immutable``."""

    def __init__(self, case: str) -> None:
        super().__init__(case)
        self.case = case


def check_name(name: str) -> str:
    """The lower-cased name, or :class:`HeaderError`."""
    raw = name.encode("latin-1", "replace")
    if not _TOKEN.fullmatch(raw):
        raise HeaderError("invalid-syntax")
    lower = name.lower()
    if lower in FORBIDDEN:
        raise HeaderError("forbidden")
    return lower


def check_value(value: bytes) -> bytes:
    if not _VALUE.fullmatch(value):
        raise HeaderError("invalid-syntax")
    return bytes(value)


class Fields:
    """An ordered multimap of lower-case names to byte values."""

    def __init__(self, entries: list[tuple[str, bytes]] | None = None, *, immutable: bool = False):
        self._entries: list[tuple[str, bytes]] = []
        for name, value in entries or ():
            self._entries.append((check_name(name), check_value(value)))
        self.immutable = immutable

    @classmethod
    def trusted(cls, entries: list[tuple[bytes, bytes]]) -> Fields:
        """Immutable fields from h11/httpx, which already validated them (lower-case names).

        Forbidden names are kept, as wasmtime shows incoming hop-by-hop headers to the guest.
        """
        fields = cls(immutable=True)
        fields._entries = [(n.decode("latin-1").lower(), bytes(v)) for n, v in entries]
        return fields

    def _mutable(self) -> None:
        if self.immutable:
            raise HeaderError("immutable")

    def get(self, name: str) -> list[bytes]:
        lower = name.lower()
        return [v for n, v in self._entries if n == lower]

    def has(self, name: str) -> bool:
        lower = name.lower()
        return any(n == lower for n, _ in self._entries)

    def set(self, name: str, values: list[bytes]) -> None:
        self._mutable()
        lower = check_name(name)
        checked = [check_value(v) for v in values]
        self._entries = [(n, v) for n, v in self._entries if n != lower]
        self._entries.extend((lower, v) for v in checked)

    def delete(self, name: str) -> None:
        self._mutable()
        lower = check_name(name)
        self._entries = [(n, v) for n, v in self._entries if n != lower]

    def append(self, name: str, value: bytes) -> None:
        self._mutable()
        self._entries.append((check_name(name), check_value(value)))

    def entries(self) -> list[tuple[str, bytes]]:
        return list(self._entries)

    def clone(self) -> Fields:
        """A mutable copy (``fields.clone``), whatever this one is."""
        copy = Fields()
        copy._entries = list(self._entries)
        return copy

    def wire(self) -> list[tuple[bytes, bytes]]:
        """For h11/httpx: names and values as bytes."""
        return [(n.encode("latin-1"), v) for n, v in self._entries]
