"""Decode containerd's runtime options into :class:`RuntimeOptions`.

containerd sends ``CreateTaskRequest.options`` (and ``start``'s stdin) as an ``Any``. For a
non-runc runtime the CRI plugin wraps the runtime's ``options`` table as
``runtimeoptions.v1.Options`` with the TOML text in ``config_body`` (or a file in
``config_path``).

What each containerd actually sends for a CRI handler whose table is
``{SystemdCgroup = true, Bogus = 1}`` (observed on the wire):

* 1.7 and 2.x: ``config_body = "Bogus = 1\nSystemdCgroup = true\n"`` (the whole table), or
  only ``config_path``/``type_url`` when the table sets ``ConfigPath``.
* 1.6: an ``Any`` with that type URL and an **empty** value. 1.6 decodes the table into the
  message's own fields (``TypeUrl``, ``ConfigPath``) and drops every other key, so only a
  ``ConfigPath`` file gets options through.
"""

from __future__ import annotations

import logging
import tomllib
from typing import Any

from ..errors import InvalidArgument
from .instance import RuntimeOptions

log = logging.getLogger(__name__)

RUNTIME_OPTIONS_TYPE_URL = "runtimeoptions.v1.Options"
#: Keys this toolkit understands; anything else is kept in ``RuntimeOptions.extra``.
KNOWN_KEYS = frozenset({"SystemdCgroup"})

_warned_empty = False


def decode_options(type_url: str, value: bytes) -> RuntimeOptions:
    """Decode an options ``Any``; an empty ``type_url`` means "no options".

    Raises:
        InvalidArgument: the type is not ``runtimeoptions.v1.Options``, or its TOML is broken.
    """
    if not type_url:
        return RuntimeOptions()
    bare = type_url.rsplit("/", 1)[-1]
    if bare != RUNTIME_OPTIONS_TYPE_URL:
        raise InvalidArgument(
            f"unsupported runtime options type {type_url!r}: this shim takes "
            f"{RUNTIME_OPTIONS_TYPE_URL} (a CRI runtime `options` table)"
        )
    from ..api import runtimeoptions_pb2

    options = runtimeoptions_pb2.Options()
    try:
        options.ParseFromString(value)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise InvalidArgument(f"malformed {RUNTIME_OPTIONS_TYPE_URL}: {exc}") from exc
    text = options.config_body.decode("utf-8", "replace")
    source = "config_body"
    if not text and not options.config_path:
        _warn_empty_options()
    if not text and options.config_path:
        source = options.config_path
        try:
            with open(options.config_path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise InvalidArgument(
                f"cannot read runtime options file {options.config_path}: {exc.strerror}"
            ) from exc
    return parse_toml_options(text, source)


def parse_toml_options(text: str, source: str = "config_body") -> RuntimeOptions:
    """Parse the TOML of a runtime's ``options`` table."""
    try:
        table: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"runtime options ({source}) are not valid TOML: {exc}") from exc
    systemd = table.get("SystemdCgroup", False)
    if not isinstance(systemd, bool):
        raise InvalidArgument(
            f"runtime option SystemdCgroup must be true or false, not {systemd!r}"
        )
    extra = {k: v for k, v in table.items() if k not in KNOWN_KEYS}
    if extra:
        # Not an error: containerd passes the whole CRI `options` table (TypeUrl,
        # ConfigPath, ...), but a typo must not disappear silently.
        log.warning(
            "ignoring unknown runtime options %s (known: %s)",
            ", ".join(sorted(extra)),
            ", ".join(sorted(KNOWN_KEYS)),
        )
    return RuntimeOptions(systemd_cgroup=systemd, extra=extra)


def _warn_empty_options() -> None:
    """Say (once per process) that containerd sent the options message with nothing in it.

    Only containerd 1.6 does that, and only when the handler *has* an ``options`` table: it
    kept none of its keys. Staying silent would make a typo and a dropped setting look alike.
    """
    global _warned_empty
    if _warned_empty:
        return
    _warned_empty = True
    log.warning(
        "containerd sent an empty %s (no config_body, no config_path): the runtime's CRI "
        "options table was dropped. containerd 1.6 passes only TypeUrl and ConfigPath to "
        "this shim; put the options in a TOML file and name it with ConfigPath",
        RUNTIME_OPTIONS_TYPE_URL,
    )
