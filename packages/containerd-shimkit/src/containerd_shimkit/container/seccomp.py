"""Seccomp filters from an OCI ``linux.seccomp`` profile, built with libseccomp via ctypes.

The translation follows runc's ``libcontainer/seccomp``: unknown syscall names are skipped,
a rule whose action equals the default action is dropped, ``errnoRet`` defaults to EPERM,
and conditions on the same argument index are added as separate rules (libseccomp cannot
AND two conditions on one argument). libseccomp's own no_new_privs attribute is turned
off: the caller decides about no_new_privs (``process.noNewPrivileges``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import _libc
from .spec import ContainerError, step

logger = logging.getLogger(__name__)

# <seccomp.h> action values.
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_NOTIFY = 0x7FC00000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_ACT_TRACE = 0x7FF00000

# <seccomp.h> enum scmp_filter_attr.
_SCMP_FLTATR_CTL_NNP = 3
_FLAG_ATTRS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 4,  # SCMP_FLTATR_CTL_TSYNC
    "SECCOMP_FILTER_FLAG_LOG": 6,  # SCMP_FLTATR_CTL_LOG
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 7,  # SCMP_FLTATR_CTL_SSB
}

# <seccomp.h> enum scmp_compare.
OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

_SIMPLE_ACTIONS = {
    "SCMP_ACT_KILL": SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SCMP_ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": SCMP_ACT_TRAP,
    "SCMP_ACT_LOG": SCMP_ACT_LOG,
    "SCMP_ACT_ALLOW": SCMP_ACT_ALLOW,
}


def action_value(name: str, errno_ret: int | None = None) -> int:
    """The libseccomp value of an OCI action; ERRNO and TRACE carry ``errno_ret`` (EPERM
    when absent, like runc)."""
    if name in _SIMPLE_ACTIONS:
        return _SIMPLE_ACTIONS[name]
    code = errno.EPERM if errno_ret is None else errno_ret
    if name == "SCMP_ACT_ERRNO":
        return _SCMP_ACT_ERRNO | (code & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return _SCMP_ACT_TRACE | (code & 0xFFFF)
    if name == "SCMP_ACT_NOTIFY":
        raise ContainerError("seccomp: SCMP_ACT_NOTIFY (a seccomp agent) is not supported")
    raise ContainerError(f"seccomp: unknown action {name!r}")


def arch_name(oci_name: str) -> str:
    """libseccomp's name for an OCI architecture (``SCMP_ARCH_X86_64`` → ``x86_64``)."""
    return oci_name.removeprefix("SCMP_ARCH_").lower()


@dataclass(frozen=True)
class Condition:
    """One argument comparison: ``(arg[index] op value[, value_two])``."""

    index: int
    op: int
    value: int
    value_two: int = 0


@dataclass(frozen=True)
class Rule:
    """One libseccomp rule: an action for a syscall name under ANDed conditions."""

    name: str
    action: int
    conditions: tuple[Condition, ...] = ()


def _condition(arg: Mapping[str, Any]) -> Condition:
    op = OPERATORS.get(str(arg.get("op")))
    index = int(arg.get("index", -1))
    if op is None or not 0 <= index < 6:
        raise ContainerError(f"seccomp: invalid argument condition {dict(arg)!r}")
    return Condition(index, op, int(arg.get("value", 0)), int(arg.get("valueTwo", 0)))


def _condition_sets(conditions: list[Condition]) -> list[tuple[Condition, ...]]:
    indexes = [c.index for c in conditions]
    if len(set(indexes)) != len(indexes):
        # runc: "If two or more arguments have the same condition, revert to old
        # behavior, adding each condition as a separate rule".
        return [(c,) for c in conditions]
    return [tuple(conditions)]


def rules(profile: Mapping[str, Any]) -> list[Rule]:
    """The rules of ``profile``'s ``syscalls``, without the ones that equal the default."""
    default = default_action(profile)
    result = []
    for entry in profile.get("syscalls") or ():
        action = action_value(str(entry.get("action")), entry.get("errnoRet"))
        if action == default:
            continue
        conditions = [_condition(a) for a in entry.get("args") or ()]
        for name in entry.get("names") or ():
            for condition_set in _condition_sets(conditions):
                result.append(Rule(str(name), action, condition_set))
    return result


def default_action(profile: Mapping[str, Any]) -> int:
    """The profile's default action value (``defaultErrnoRet`` for ERRNO)."""
    name = str(profile.get("defaultAction") or "")
    if not name:
        raise ContainerError("seccomp: defaultAction is required")
    return action_value(name, profile.get("defaultErrnoRet"))


def _check_unsupported(profile: Mapping[str, Any]) -> None:
    if profile.get("listenerPath"):
        raise ContainerError("seccomp: listenerPath (a seccomp agent) is not supported")


def _add_architectures(lib: Any, ctx: int, names: Sequence[str]) -> None:
    for oci_name in names:
        token = lib.resolve_arch(arch_name(str(oci_name)).encode())
        if not token:
            logger.warning("seccomp: skipping unknown architecture %s", oci_name)
            continue
        with contextlib.suppress(FileExistsError):  # the native one is always present
            lib.arch_add(ctx, token)


def _add_rule(lib: Any, ctx: int, rule: Rule) -> None:
    number = lib.resolve_syscall(rule.name.encode())
    if number < 0:
        # Profiles list syscalls of newer kernels and other architectures; runc skips them.
        logger.debug("seccomp: skipping unknown syscall %s", rule.name)
        return
    array = (_libc.ScmpArgCmp * max(len(rule.conditions), 1))()
    for i, c in enumerate(rule.conditions):
        array[i] = _libc.ScmpArgCmp(c.index, c.op, c.value, c.value_two)
    lib.rule_add_array(ctx, rule.action, number, len(rule.conditions), array)


@contextmanager
def build_filter(profile: Mapping[str, Any]) -> Iterator[int]:
    """Build (not load) the filter for ``profile``; yields the libseccomp context handle.

    Raises:
        ContainerError: the profile is invalid or libseccomp refused it.
    """
    _check_unsupported(profile)
    default = default_action(profile)
    wanted_rules = rules(profile)
    with step("building the seccomp filter"):
        lib = _libc.seccomp()
        ctx = lib.init(default)
        if not ctx:
            raise ContainerError("seccomp_init failed")
    try:
        with step("building the seccomp filter"):
            lib.attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0)
            for flag in profile.get("flags") or ():
                if flag not in _FLAG_ATTRS:
                    raise ContainerError(f"unknown flag {flag!r}")
                lib.attr_set(ctx, _FLAG_ATTRS[flag], 1)
            _add_architectures(lib, ctx, profile.get("architectures") or ())
            for rule in wanted_rules:
                with step(f"syscall {rule.name}"):
                    _add_rule(lib, ctx, rule)
        yield ctx
    finally:
        lib.release(ctx)


def load(profile: Mapping[str, Any]) -> None:
    """Build the filter for ``profile`` and load it into this process.

    Needs no_new_privs or CAP_SYS_ADMIN, which is why the caller loads it before dropping
    capabilities when ``noNewPrivileges`` is false (runc's order).
    """
    with build_filter(profile) as ctx, step("loading the seccomp filter"):
        _libc.seccomp().load(ctx)


def export_pfc(profile: Mapping[str, Any], fd: int) -> None:
    """Write the filter for ``profile`` as libseccomp's pseudo-C text to ``fd`` (debugging,
    tests)."""
    with build_filter(profile) as ctx:
        _libc.seccomp().export_pfc(ctx, fd)
