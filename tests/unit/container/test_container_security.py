"""Capability tables and masks, seccomp profile translation (no root needed)."""

from __future__ import annotations

import errno
import tempfile
from typing import Any

import pytest

from containerd_shimkit.container import ContainerError
from containerd_shimkit.container import seccomp as sc
from containerd_shimkit.container.security import CAPABILITIES, CapabilityMasks, cap_mask
from containerd_shimkit.container.spec import Capabilities


def test_capability_numbers_match_linux_capability_h() -> None:
    assert CAPABILITIES["CAP_CHOWN"] == 0
    assert CAPABILITIES["CAP_NET_BIND_SERVICE"] == 10
    assert CAPABILITIES["CAP_SYS_ADMIN"] == 21
    assert CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    assert sorted(CAPABILITIES.values()) == list(range(41))


def test_cap_mask_skips_unknown_and_too_new(caplog: pytest.LogCaptureFixture) -> None:
    assert cap_mask(["CAP_CHOWN", "CAP_KILL", "CAP_BOGUS"], last=40) == 0b100001
    assert cap_mask(["CAP_BPF"], last=38) == 0
    assert "CAP_BOGUS" in caplog.text


def test_masks_are_clamped_to_what_is_available() -> None:
    names = ("CAP_CHOWN", "CAP_SYS_RESOURCE")
    wanted = CapabilityMasks.from_spec(
        Capabilities(bounding=names, effective=names, permitted=names, ambient=names), 40
    )
    clamped = wanted.clamped(available=~(1 << 24))
    assert clamped.permitted == clamped.effective == 1
    assert clamped.bounding == wanted.bounding
    assert clamped.ambient == 0  # not inheritable


def test_action_values() -> None:
    assert sc.action_value("SCMP_ACT_ALLOW") == 0x7FFF0000
    assert sc.action_value("SCMP_ACT_KILL") == 0
    assert sc.action_value("SCMP_ACT_ERRNO") == 0x00050000 | errno.EPERM
    assert sc.action_value("SCMP_ACT_ERRNO", errno.ENOSYS) == 0x00050000 | errno.ENOSYS
    with pytest.raises(ContainerError, match="not supported"):
        sc.action_value("SCMP_ACT_NOTIFY")
    with pytest.raises(ContainerError, match="unknown action"):
        sc.action_value("SCMP_ACT_WHATEVER")


def test_arch_names() -> None:
    assert sc.arch_name("SCMP_ARCH_X86_64") == "x86_64"
    assert sc.arch_name("SCMP_ARCH_AARCH64") == "aarch64"


PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": errno.ENOSYS,
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
            ],
        },
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"},
                {"index": 1, "value": 5, "op": "SCMP_CMP_NE"},
            ],
        },
    ],
}


def test_rules_follow_runc() -> None:
    rules = sc.rules(PROFILE)
    names = [r.name for r in rules]
    assert "getpid" not in names  # same action as the default
    personality = [r for r in rules if r.name == "personality"]
    assert [len(r.conditions) for r in personality] == [1, 1]  # same index: separate rules
    (clone,) = [r for r in rules if r.name == "clone"]
    assert clone.conditions == (sc.Condition(0, 7, 2114060288, 0), sc.Condition(1, 1, 5, 0))


def test_invalid_condition() -> None:
    bad = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]}
    ]}  # fmt: skip
    with pytest.raises(ContainerError, match="invalid argument condition"):
        sc.rules(bad)


def test_filter_builds_with_libseccomp() -> None:
    profile = dict(
        PROFILE, architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64", "SCMP_ARCH_NOPE"]
    )
    profile["syscalls"] = [
        *PROFILE["syscalls"],
        {"names": ["no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
    ]
    try:
        with tempfile.TemporaryFile() as out:
            sc.export_pfc(profile, out.fileno())
            out.seek(0)
            text = out.read().decode()
    except ContainerError as exc:
        pytest.skip(f"libseccomp unavailable: {exc}")
    assert "personality" in text and "clone" in text
    assert f"ERRNO({errno.ENOSYS})" in text


def test_listener_path_is_refused() -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x"}
    with pytest.raises(ContainerError, match="listenerPath"), sc.build_filter(profile):
        pass
