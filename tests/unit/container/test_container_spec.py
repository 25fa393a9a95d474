"""Pure parsing of config.json sections (containerd_shimkit.container.spec, namespaces)."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from containerd_shimkit.container import ContainerError, resolve_rootfs, spec
from containerd_shimkit.container import _libc as libc
from containerd_shimkit.container.namespaces import (
    check_supported,
    is_new,
    is_shared_with_host,
    join_order,
    unshare_flags,
)


def test_resolve_rootfs_relative_and_absolute() -> None:
    assert resolve_rootfs(Path("/b"), {"root": {"path": "rootfs"}}) == Path("/b/rootfs")
    assert resolve_rootfs(Path("/b"), {"root": {"path": "/abs/r"}}) == Path("/abs/r")
    assert resolve_rootfs(Path("/b"), {}) == Path("/b/rootfs")


def test_namespaces_to_unshare_flags() -> None:
    nss = spec.namespaces(
        {
            "linux": {
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/run/netns/x"},
                    {"type": "mount"},
                    {"type": "uts"},
                    {"type": "ipc"},
                    {"type": "cgroup"},
                ]
            }
        }
    )
    expected = (
        libc.CLONE_NEWPID
        | libc.CLONE_NEWNS
        | libc.CLONE_NEWUTS
        | libc.CLONE_NEWIPC
        | libc.CLONE_NEWCGROUP
    )
    assert unshare_flags(nss) == expected
    assert is_new(nss, "pid") and not is_new(nss, "network")
    assert not is_shared_with_host(nss, "network") and is_shared_with_host(nss, "time")


def test_clone_flags_match_linux_sched_h() -> None:
    assert libc.CLONE_NEWNS == 0x00020000
    assert libc.CLONE_NEWPID == 0x20000000
    assert libc.CLONE_NEWNET == 0x40000000
    assert libc.CLONE_NEWTIME == 0x80


def test_join_order_follows_runc() -> None:
    nss = [
        spec.Namespace("mount", "/m"),
        spec.Namespace("network", "/n"),
        spec.Namespace("ipc", "/i"),
        spec.Namespace("pid"),
    ]
    assert [ns.type for ns in join_order(nss)] == ["ipc", "network", "mount"]


@pytest.mark.parametrize(
    ("namespaces", "message"),
    [
        ([{"type": "bogus"}], "unknown namespace type"),
        ([{"type": "pid"}, {"type": "pid"}], "listed twice"),
    ],
)
def test_invalid_namespaces(namespaces: list[dict[str, str]], message: str) -> None:
    with pytest.raises(ContainerError, match=message):
        spec.namespaces({"linux": {"namespaces": namespaces}})


def test_user_namespace_is_refused() -> None:
    with pytest.raises(ContainerError, match="user namespaces"):
        check_supported([spec.Namespace("user")])


def test_rlimits_resolve_names_and_infinity() -> None:
    limits = spec.rlimits(
        {
            "process": {
                "rlimits": [
                    {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096},
                    {"type": "RLIMIT_CORE", "soft": 2**64 - 1, "hard": 2**64 - 1},
                ]
            }
        }
    )
    assert limits[0] == spec.Rlimit("RLIMIT_NOFILE", resource.RLIMIT_NOFILE, 1024, 4096)
    assert limits[1].soft == limits[1].hard == resource.RLIM_INFINITY


def test_unknown_rlimit_is_an_error() -> None:
    with pytest.raises(ContainerError, match="RLIMIT_BOGUS"):
        spec.rlimits({"process": {"rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]}})


def test_user_defaults_and_values() -> None:
    assert spec.user({}) == spec.User()
    user = spec.user(
        {"process": {"user": {"uid": 5, "gid": 6, "additionalGids": [7], "umask": 18}}}
    )
    assert user == spec.User(5, 6, (7,), 18)


def test_devices_default_mode_and_validation() -> None:
    devices = spec.devices(
        {"linux": {"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]}}
    )
    assert devices == [spec.Device("/dev/fuse", "c", 10, 229, 0o666, 0, 0)]
    with pytest.raises(ContainerError, match="invalid device"):
        spec.devices({"linux": {"devices": [{"path": "/dev/x", "type": "z"}]}})


def test_env_later_duplicate_wins() -> None:
    assert spec.env({"process": {"env": ["A=1", "B=x=y", "A=2", "EMPTY="]}}) == {
        "A": "2",
        "B": "x=y",
        "EMPTY": "",
    }


def test_capabilities_absent_means_empty_sets() -> None:
    assert spec.capabilities({}) == spec.Capabilities()
    caps = spec.capabilities({"process": {"capabilities": {"bounding": ["CAP_KILL"]}}})
    assert caps.bounding == ("CAP_KILL",) and caps.effective == ()


def test_mounts_require_a_destination() -> None:
    with pytest.raises(ContainerError, match=r"mounts\[0\]"):
        spec.mounts({"mounts": [{"type": "tmpfs"}]})
    assert spec.mounts({"mounts": [{"destination": "/t", "type": "tmpfs", "options": ["ro"]}]}) == [
        spec.Mount("/t", "tmpfs", "", ("ro",))
    ]


def test_step_wraps_errors_with_context() -> None:
    message = r"^mounting /x: No such file or directory$"
    with pytest.raises(ContainerError, match=message), spec.step("mounting /x"):
        raise FileNotFoundError(2, "No such file or directory")
