"""OCI linux.resources -> cgroup file writes (pure planning, v1 and v2), runc's conversions."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from containerd_shimkit.container.cgroup_resources import (
    Write,
    convert_blkio_weight_to_v2,
    convert_cpu_shares_to_v2,
    convert_memory_swap_to_v2,
    plan_v1,
    plan_v2,
)
from containerd_shimkit.container.cgroups import UNIFIED, CgroupError

MiB = 1024 * 1024


def files(writes: list[Write]) -> list[tuple[str, str]]:
    return [(w.file, w.value) for w in writes]


# --- conversions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shares", "weight"),
    [(0, 0), (2, 1), (1024, 39), (512, 20), (262144, 10000), (100, 4)],
)
def test_cpu_shares_to_weight(shares: int, weight: int) -> None:
    # runc/crun: 1 + ((shares - 2) * 9999) / 262142
    assert convert_cpu_shares_to_v2(shares) == weight


@pytest.mark.parametrize(("weight", "io"), [(0, 0), (10, 1), (500, 4950), (1000, 10000)])
def test_blkio_weight_to_io_weight(weight: int, io: int) -> None:
    assert convert_blkio_weight_to_v2(weight) == io


@pytest.mark.parametrize(
    ("swap", "memory", "expected"),
    [
        (0, -1, -1),  # unlimited memory, swap unset: unlimited swap
        (-1, 100, -1),
        (0, 100, 0),
        (300, 100, 200),
        (100, 100, 0),
    ],
)
def test_memory_swap_to_v2(swap: int, memory: int, expected: int) -> None:
    assert convert_memory_swap_to_v2(swap, memory) == expected


@pytest.mark.parametrize(("swap", "memory"), [(100, 0), (100, -1), (50, 100), (100, -5)])
def test_memory_swap_to_v2_rejects(swap: int, memory: int) -> None:
    with pytest.raises(CgroupError) as info:
        convert_memory_swap_to_v2(swap, memory)
    assert info.value.errno == errno.EINVAL


# --- v1 ----------------------------------------------------------------------------------------


def test_v1_full_mapping() -> None:
    resources: dict[str, Any] = {
        "memory": {
            "limit": 64 * MiB,
            "reservation": 32 * MiB,
            "swap": 128 * MiB,
            "swappiness": 10,
            "disableOOMKiller": True,
            "kernel": 1,  # deprecated: ignored like current runc
        },
        "cpu": {
            "shares": 512,
            "quota": 50000,
            "period": 100000,
            "cpus": "0-1",
            "mems": "0",
            "realtimePeriod": 1000000,
            "realtimeRuntime": 950000,
        },
        "pids": {"limit": 32},
        "blockIO": {
            "weight": 300,
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}],
        },
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
        "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
        "devices": [{"allow": False, "access": "rwm"}],
    }
    writes = plan_v1(resources, current_memory_limit=9223372036854771712)
    assert [(w.controller, w.file, w.value) for w in writes] == [
        ("memory", "memory.limit_in_bytes", str(64 * MiB)),
        ("memory", "memory.memsw.limit_in_bytes", str(128 * MiB)),
        ("memory", "memory.soft_limit_in_bytes", str(32 * MiB)),
        ("memory", "memory.swappiness", "10"),
        ("memory", "memory.oom_control", "1"),
        ("cpu", "cpu.shares", "512"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("cpu", "cpu.rt_period_us", "1000000"),
        ("cpu", "cpu.rt_runtime_us", "950000"),
        ("cpuset", "cpuset.cpus", "0-1"),
        ("cpuset", "cpuset.mems", "0"),
        ("pids", "pids.max", "32"),
        ("blkio", "blkio.weight", "300"),
        ("blkio", "blkio.throttle.read_bps_device", "8:0 1048576"),
        ("blkio", "blkio.throttle.write_iops_device", "8:16 100"),
        ("hugetlb", "hugetlb.2MB.limit_in_bytes", "4194304"),
        ("net_cls", "net_cls.classid", "1048577"),
        ("net_prio", "net_prio.ifpriomap", "eth0 5"),
    ]
    period = writes[6]
    assert period.retry_einval  # runc retries the period after the quota on EINVAL
    assert writes[13].fallback == ("blkio.bfq.weight", "300")


def test_v1_swap_first_when_raising_above_current_limit() -> None:
    # Raising both limits: memsw must grow first or the kernel rejects limit > memsw.
    res = {"memory": {"limit": 256 * MiB, "swap": 512 * MiB}}
    assert files(plan_v1(res, current_memory_limit=64 * MiB))[:2] == [
        ("memory.memsw.limit_in_bytes", str(512 * MiB)),
        ("memory.limit_in_bytes", str(256 * MiB)),
    ]
    # Lowering both: memory first.
    assert files(plan_v1(res, current_memory_limit=1024 * MiB))[:2] == [
        ("memory.limit_in_bytes", str(256 * MiB)),
        ("memory.memsw.limit_in_bytes", str(512 * MiB)),
    ]


def test_v1_unlimited_memory_implies_unlimited_swap() -> None:
    writes = plan_v1({"memory": {"limit": -1}})
    assert files(writes) == [
        ("memory.memsw.limit_in_bytes", "-1"),
        ("memory.limit_in_bytes", "-1"),
    ]
    assert writes[0].missing_ok  # swap accounting may be off


@pytest.mark.parametrize(("limit", "value"), [(0, None), (-1, "max"), (-5, "max"), (7, "7")])
def test_pids_limit_values(limit: int, value: str | None) -> None:
    v1 = files(plan_v1({"pids": {"limit": limit}}))
    v2 = files(plan_v2({"pids": {"limit": limit}}))
    expected = [] if value is None else [("pids.max", value)]
    assert v1 == expected
    assert v2 == expected


def test_v1_zero_and_absent_values_write_nothing() -> None:
    assert plan_v1({}) == []
    assert plan_v1({"memory": {"limit": 0, "swappiness": -1}, "cpu": {"shares": 0}}) == []
    assert plan_v1({"memory": None, "cpu": {"cpus": ""}}) == []


def test_v1_rejects_unified_and_bad_values() -> None:
    with pytest.raises(CgroupError, match="unified needs cgroup v2"):
        plan_v1({"unified": {"memory.high": "1"}})
    with pytest.raises(CgroupError, match=r"memory\.limit: expected an integer"):
        plan_v1({"memory": {"limit": "64m"}})
    with pytest.raises(CgroupError, match=r"expected an integer"):
        plan_v1({"memory": {"limit": True}})
    with pytest.raises(CgroupError, match="swappiness"):
        plan_v1({"memory": {"swappiness": 101}})
    with pytest.raises(CgroupError, match="expected an object"):
        plan_v1({"cpu": 5})
    with pytest.raises(CgroupError, match="major and minor"):
        plan_v1({"blockIO": {"throttleReadBpsDevice": [{"rate": 1}]}})


# --- v2 ----------------------------------------------------------------------------------------


def test_v2_full_mapping() -> None:
    resources: dict[str, Any] = {
        "memory": {"limit": 64 * MiB, "reservation": 32 * MiB, "swap": 96 * MiB},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "1", "mems": "0"},
        "pids": {"limit": 10},
        "blockIO": {
            "weight": 500,
            "weightDevice": [{"major": 8, "minor": 0, "weight": 200}],
            "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 2048}],
        },
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        "unified": {"memory.high": "50000000", "cpu.weight": "77"},
    }
    writes = plan_v2(resources)
    assert all(w.controller == UNIFIED for w in writes)
    assert files(writes) == [
        ("memory.swap.max", str(32 * MiB)),
        ("memory.max", str(64 * MiB)),
        ("memory.low", str(32 * MiB)),
        ("cpu.weight", "39"),
        ("cpu.max", "50000 100000"),
        ("cpuset.cpus", "1"),
        ("cpuset.mems", "0"),
        ("pids.max", "10"),
        ("io.bfq.weight", "500"),
        ("io.bfq.weight", "8:0 200"),
        ("io.max", "8:0 wbps=2048"),
        ("hugetlb.2MB.max", "0"),
        ("memory.high", "50000000"),
        ("cpu.weight", "77"),  # unified overrides, written last as in runc
    ]
    assert writes[8].fallback == ("io.weight", "4950")
    assert writes[9].missing_ok


@pytest.mark.parametrize(
    ("cpu", "value"),
    [
        ({"quota": 50000}, "50000"),
        ({"quota": -1, "period": 100000}, "max 100000"),
        ({"period": 250000}, "max 250000"),
        ({"quota": 20000, "period": 50000}, "20000 50000"),
    ],
)
def test_v2_cpu_max(cpu: dict[str, int], value: str) -> None:
    assert files(plan_v2({"cpu": cpu})) == [("cpu.max", value)]


def test_v2_memory_edge_cases() -> None:
    # -1 limit: memory.max "max" and swap "max" (optional when swap accounting is off).
    writes = plan_v2({"memory": {"limit": -1}})
    assert files(writes) == [("memory.swap.max", "max"), ("memory.max", "max")]
    assert writes[0].missing_ok
    # swap == limit: no swap at all.
    assert files(plan_v2({"memory": {"limit": 100, "swap": 100}})) == [
        ("memory.swap.max", "0"),
        ("memory.max", "100"),
    ]
    # limit only: swap untouched.
    assert files(plan_v2({"memory": {"limit": 100}})) == [("memory.max", "100")]
    with pytest.raises(CgroupError, match="should be >= memory limit"):
        plan_v2({"memory": {"limit": 100, "swap": 50}})


def test_v2_rejects() -> None:
    with pytest.raises(CgroupError, match="realtime"):
        plan_v2({"cpu": {"realtimeRuntime": 5}})
    with pytest.raises(CgroupError, match="invalid file name"):
        plan_v2({"unified": {"../escape": "1"}})
    with pytest.raises(CgroupError, match="expected a string"):
        plan_v2({"unified": {"memory.high": 5}})
