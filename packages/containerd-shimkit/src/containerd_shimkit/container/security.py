"""User switch, capabilities and no_new_privs for the container process.

Order (runc's ``finalizeNamespace``): drop the bounding set while still root, keep the
permitted set across setuid with PR_SET_KEEPCAPS, switch groups and user, then set the
effective/permitted/inheritable sets with capset(2) and raise the ambient ones.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from . import _libc
from .spec import Capabilities, User, step

logger = logging.getLogger(__name__)

#: Capability names → numbers (<linux/capability.h>).
CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}


@functools.cache
def last_cap() -> int:
    """The highest capability number the running kernel knows (cached: read it before
    pivot_root, the container may have no /proc)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def cap_mask(names: Iterable[str], last: int) -> int:
    """The bit mask of ``names``; unknown names (or ones the kernel lacks) are skipped
    with a warning, as runc does."""
    mask = 0
    for name in names:
        number = CAPABILITIES.get(name.upper())
        if number is None or number > last:
            logger.warning("ignoring unknown capability %s", name)
            continue
        mask |= 1 << number
    return mask


@dataclass(frozen=True)
class CapabilityMasks:
    """``process.capabilities`` as 64-bit masks."""

    bounding: int
    effective: int
    permitted: int
    inheritable: int
    ambient: int

    @classmethod
    def from_spec(cls, caps: Capabilities, last: int) -> CapabilityMasks:
        """Masks from the spec's capability names."""
        return cls(
            bounding=cap_mask(caps.bounding, last),
            effective=cap_mask(caps.effective, last),
            permitted=cap_mask(caps.permitted, last),
            inheritable=cap_mask(caps.inheritable, last),
            ambient=cap_mask(caps.ambient, last),
        )

    def clamped(self, available: int) -> CapabilityMasks:
        """These masks limited to what capset(2) can grant from the ``available`` permitted
        set (e.g. a host without CAP_SYS_RESOURCE cannot hand it out)."""
        permitted = self.permitted & available
        return CapabilityMasks(
            bounding=self.bounding,
            effective=self.effective & permitted,
            permitted=permitted,
            inheritable=self.inheritable & available,
            ambient=self.ambient & permitted & self.inheritable & available,
        )


def _names(mask: int) -> str:
    return ",".join(n for n, v in CAPABILITIES.items() if mask >> v & 1) or "-"


def drop_bounding(keep: int, last: int) -> None:
    """Drop every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP)."""
    for number in range(last + 1):
        if not keep >> number & 1 and _libc.prctl(_libc.PR_CAPBSET_READ, number) == 1:
            _libc.prctl(_libc.PR_CAPBSET_DROP, number)


def set_user(user: User) -> None:
    """Switch supplementary groups, gid and uid (all of real, effective and saved).

    Groups are always set, to an empty list when there are none, so that nothing of the
    parent's groups leaks in (runc does the same).
    """
    os.setgroups(list(user.additional_gids))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)


def apply_capabilities(masks: CapabilityMasks) -> None:
    """Set the effective, permitted and inheritable sets, then the ambient set.

    A failure to raise an ambient capability is logged, not fatal.
    """
    _libc.capset(masks.effective, masks.permitted, masks.inheritable)
    _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_CLEAR_ALL)
    for number in range(64):
        if masks.ambient >> number & 1:
            try:
                _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_RAISE, number)
            except OSError as exc:
                logger.warning("cannot raise ambient capability %d: %s", number, exc.strerror)


def switch_user_and_capabilities(user: User, caps: Capabilities) -> None:
    """runc's ``finalizeNamespace`` for this process: bounding set, user, capabilities."""
    last = last_cap()
    wanted = CapabilityMasks.from_spec(caps, last)
    _, available, _ = _libc.capget()
    masks = wanted.clamped(available)
    if masks.permitted != wanted.permitted:
        missing = wanted.permitted & ~masks.permitted
        logger.warning("capabilities not available to this runtime: %s", _names(missing))
    with step("dropping capabilities from the bounding set"):
        drop_bounding(masks.bounding, last)
    with step(f"switching to uid {user.uid} gid {user.gid}"):
        # Keep the permitted set across setuid(non-zero); capset then picks from it.
        _libc.prctl(_libc.PR_SET_KEEPCAPS, 1)
        set_user(user)
        _libc.prctl(_libc.PR_SET_KEEPCAPS, 0)
    with step("setting capabilities"):
        apply_capabilities(masks)


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS): execve can no longer grant privileges."""
    with step("setting no_new_privs"):
        _libc.prctl(_libc.PR_SET_NO_NEW_PRIVS, 1)
