"""Go ``flag``-style parsing of the shim command line (no argparse: this runs on every start).

containerd calls ``<shim> -namespace NS -address A -publish-binary B -id ID [-debug] start``.
Go syntax: ``-name value``, ``--name value`` and ``-name=value`` are equivalent, boolean flags
take no value (or ``=true``/``=false``), and parsing stops at the first non-flag argument.
"""

from __future__ import annotations

STRING_FLAGS = ("namespace", "id", "address", "publish-binary", "bundle", "socket", "debug-socket")
BOOL_FLAGS = ("debug", "v", "version", "info")


class UsageError(Exception):
    """The command line is malformed; the message reads like Go's flag package."""


class Flags:
    """The parsed command line.

    A plain class, not a dataclass: ``dataclasses`` costs ~15 ms to import (it pulls in
    ``inspect``), and this is on the path of every ``start`` and ``delete``.
    """

    def __init__(self, **values: object) -> None:
        self.namespace = ""
        self.id = ""
        self.address = ""
        self.publish_binary = ""
        self.bundle = ""
        self.socket = ""
        self.debug_socket = ""
        self.debug = False
        self.v = False
        self.version = False
        self.info = False
        #: ``start``, ``delete`` or ``""`` (serve: the long-running daemon).
        self.action = ""
        self.rest: list[str] = []
        for name, value in values.items():
            if not hasattr(self, name):
                raise TypeError(f"Flags has no field {name!r}")
            setattr(self, name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Flags) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Flags({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


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
