"""Go ``flag``-style parsing of the shim command line (no argparse: this runs on every start).

containerd calls ``<shim> -namespace NS -address A -publish-binary B -id ID [-debug] start``.
Go syntax: ``-name value``, ``--name value`` and ``-name=value`` are equivalent, boolean flags
take no value (or ``=true``/``=false``), and parsing stops at the first non-flag argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STRING_FLAGS = ("namespace", "id", "address", "publish-binary", "bundle", "socket", "debug-socket")
BOOL_FLAGS = ("debug", "v", "version", "info")


class UsageError(Exception):
    """The command line is malformed; the message reads like Go's flag package."""


@dataclass
class Flags:
    """The parsed command line."""

    namespace: str = ""
    id: str = ""
    address: str = ""
    publish_binary: str = ""
    bundle: str = ""
    socket: str = ""
    debug_socket: str = ""
    debug: bool = False
    v: bool = False
    version: bool = False
    info: bool = False
    #: ``start``, ``delete`` or ``""`` (serve: the long-running daemon).
    action: str = ""
    rest: list[str] = field(default_factory=list)


def _bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise UsageError(f'invalid boolean value "{text}" for -{name}')


def parse(argv: list[str]) -> Flags:
    """Parse ``argv`` (without the program name).

    Raises:
        UsageError: an unknown flag, a missing value, or a bad boolean.
    """
    flags = Flags()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        attr = name.replace("-", "_")
        if name in BOOL_FLAGS:
            setattr(flags, attr, _bool(name, value) if has_value else True)
        elif name in STRING_FLAGS:
            if not has_value:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
            setattr(flags, attr, value)
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
        i += 1
    if i < len(argv):
        flags.action, flags.rest = argv[i], argv[i + 1 :]
    return flags


def to_argv(flags: Flags) -> list[str]:
    """The daemon's command line: the identifying flags, no action."""
    argv = ["-namespace", flags.namespace, "-id", flags.id, "-address", flags.address]
    if flags.publish_binary:
        argv += ["-publish-binary", flags.publish_binary]
    if flags.debug:
        argv.append("-debug")
    return argv
