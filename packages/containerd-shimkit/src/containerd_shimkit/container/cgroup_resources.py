"""OCI ``linux.resources`` -> the cgroup files and values that implement them.

Pure functions (no I/O): :func:`plan_v1` and :func:`plan_v2` turn the resources object of
``config.json`` (or an Update request's LinuxResources JSON) into an ordered list of
:class:`Write` that :class:`~containerd_shimkit.container.cgroups.Cgroup` applies. The mapping
and the conversions mirror runc (``libcontainer/cgroups/fs`` for v1, ``fs2`` for v2) so a
container gets the same limits under this shim as under runc.

Applied: memory (limit, reservation, swap, swappiness, disableOOMKiller), cpu (shares, quota,
period, burst, realtime on v1, idle, cpus, mems), pids.limit, blockIO (weight, leafWeight,
weightDevice, throttle*), hugepageLimits, network (v1 net_cls/net_prio) and, on v2, ``unified``.
Not applied (logged at debug): devices (v1 devices.allow/deny, v2 eBPF), rdma; kernel memory
limits are ignored as in current runc.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from containerd_shimkit.container.cgroups import UNIFIED, CgroupError

__all__ = [
    "Write",
    "convert_blkio_weight_to_v2",
    "convert_cpu_shares_to_v2",
    "convert_memory_swap_to_v2",
    "plan_v1",
    "plan_v2",
]

log = logging.getLogger(__name__)


def _invalid(message: str) -> CgroupError:
    return CgroupError(errno.EINVAL, message)


@dataclass(frozen=True)
class Write:
    """One value to write into one controller file (``controller`` is a v1 controller name or
    :data:`UNIFIED`)."""

    controller: str
    file: str
    value: str
    #: ENOENT is not an error (an optional kernel feature, e.g. swap accounting off).
    missing_ok: bool = False
    #: On ENOENT write this (file, value) instead (e.g. ``blkio.bfq.weight``).
    fallback: tuple[str, str] | None = None
    #: On EINVAL retry after all other writes (runc: cfs_period_us before cfs_quota_us).
    retry_einval: bool = False


def _section(resources: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = resources.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid(f"linux.resources.{key}: expected an object, got {value!r}")
    return value


def _int(section: Mapping[str, Any], key: str, where: str) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"linux.resources.{where}.{key}: expected an integer, got {value!r}")
    return value


def _str(section: Mapping[str, Any], key: str, where: str) -> str:
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _invalid(f"linux.resources.{where}.{key}: expected a string, got {value!r}")
    return value


def _list(section: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    value = section.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise _invalid(f"linux.resources.{where}.{key}: expected a list of objects")
    return value


def _devnum(entry: Mapping[str, Any], where: str) -> str:
    major, minor = _int(entry, "major", where), _int(entry, "minor", where)
    if major is None or minor is None:
        raise _invalid(f"linux.resources.{where}: major and minor are required")
    return f"{major}:{minor}"


def convert_cpu_shares_to_v2(shares: int) -> int:
    """v1 cpu.shares [2, 262144] -> v2 cpu.weight [1, 10000] (runc/crun linear mapping)."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def convert_blkio_weight_to_v2(weight: int) -> int:
    """v1 blkio.weight [10, 1000] -> v2 io.weight [1, 10000] (runc)."""
    if weight == 0:
        return 0
    return 1 + (weight - 10) * 9999 // 990


def convert_memory_swap_to_v2(swap: int, memory: int) -> int:
    """OCI memory.swap is memory+swap; v2 memory.swap.max is swap alone (runc's rules).

    Returns -1 for unlimited and 0 for "leave unset".
    """
    if memory == -1 and swap == 0:
        return -1  # unlimited memory without an explicit swap: swap unlimited too
    if swap in (-1, 0):
        return swap
    if memory in (0, -1):
        raise _invalid("unable to set swap limit without memory limit")
    if memory < 0:
        raise _invalid(f"invalid memory value: {memory}")
    if swap < memory:
        raise _invalid(f"memory+swap limit ({swap}) should be >= memory limit ({memory})")
    return swap - memory


def _v2_num(value: int) -> str | None:
    # runc fs2 numToStr: 0 is "unset", -1 is "max".
    if value == 0:
        return None
    return "max" if value == -1 else str(value)


def _pids_value(limit: int | None) -> str | None:
    # OCI pids.limit: 0 unset, negative unlimited.
    if not limit:
        return None
    return "max" if limit < 0 else str(limit)


def _hugepage_writes(resources: Mapping[str, Any], controller: str, suffix: str) -> list[Write]:
    writes = []
    for entry in _list(resources, "hugepageLimits", "hugepageLimits"):
        size = _str(entry, "pageSize", "hugepageLimits")
        limit = _int(entry, "limit", "hugepageLimits")
        if not size or limit is None or "/" in size:
            raise _invalid(f"linux.resources.hugepageLimits: invalid entry {dict(entry)!r}")
        writes.append(Write(controller, f"hugetlb.{size}.{suffix}", str(limit)))
    return writes


def _log_ignored(resources: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if resources.get(key):
            log.debug("cgroups: linux.resources.%s is not applied", key)


def plan_v1(
    resources: Mapping[str, Any], *, current_memory_limit: int | None = None
) -> list[Write]:
    """OCI ``linux.resources`` (JSON dict) -> ordered writes into v1 controller files.

    ``current_memory_limit`` (memory.limit_in_bytes now) decides the order of the memory and
    memory+swap limits when both change, since the kernel requires limit <= memsw limit at
    every step (runc ``setMemoryAndSwap``).
    """
    if resources.get("unified"):
        raise _invalid("linux.resources.unified needs cgroup v2, but this host uses cgroup v1")
    writes: list[Write] = []

    mem = _section(resources, "memory")
    limit = _int(mem, "limit", "memory")
    swap = _int(mem, "swap", "memory")
    implicit_swap = False
    if limit == -1 and not swap:
        swap, implicit_swap = -1, True  # runc: unlimited memory means unlimited swap too
    limit_w = Write("memory", "memory.limit_in_bytes", str(limit)) if limit else None
    swap_w = (
        Write("memory", "memory.memsw.limit_in_bytes", str(swap), missing_ok=implicit_swap)
        if swap
        else None
    )
    swap_first = False
    if limit_w and swap_w and swap is not None:
        swap_first = swap == -1 or (
            current_memory_limit is not None and current_memory_limit < swap
        )
    order = (swap_w, limit_w) if swap_first else (limit_w, swap_w)
    writes += [w for w in order if w is not None]
    reservation = _int(mem, "reservation", "memory")
    if reservation:
        writes.append(Write("memory", "memory.soft_limit_in_bytes", str(reservation)))
    swappiness = _int(mem, "swappiness", "memory")
    if swappiness is not None and swappiness != -1:
        if not 0 <= swappiness <= 100:
            raise _invalid(f"invalid memory swappiness {swappiness}: the valid range is 0-100")
        writes.append(Write("memory", "memory.swappiness", str(swappiness)))
    if mem.get("disableOOMKiller") is True:
        writes.append(Write("memory", "memory.oom_control", "1"))

    cpu = _section(resources, "cpu")
    shares = _int(cpu, "shares", "cpu")
    if shares:
        writes.append(Write("cpu", "cpu.shares", str(shares)))
    period, quota = _int(cpu, "period", "cpu"), _int(cpu, "quota", "cpu")
    if period:
        writes.append(Write("cpu", "cpu.cfs_period_us", str(period), retry_einval=bool(quota)))
    if quota:
        writes.append(Write("cpu", "cpu.cfs_quota_us", str(quota)))
    burst = _int(cpu, "burst", "cpu")
    if burst is not None:
        writes.append(Write("cpu", "cpu.cfs_burst_us", str(burst)))
    rt_period, rt_runtime = _int(cpu, "realtimePeriod", "cpu"), _int(cpu, "realtimeRuntime", "cpu")
    if rt_period:
        writes.append(Write("cpu", "cpu.rt_period_us", str(rt_period)))
    if rt_runtime:
        writes.append(Write("cpu", "cpu.rt_runtime_us", str(rt_runtime)))
    idle = _int(cpu, "idle", "cpu")
    if idle is not None:
        writes.append(Write("cpu", "cpu.idle", str(idle)))
    for key in ("cpus", "mems"):
        if value := _str(cpu, key, "cpu"):
            writes.append(Write("cpuset", f"cpuset.{key}", value))

    if (pids := _pids_value(_int(_section(resources, "pids"), "limit", "pids"))) is not None:
        writes.append(Write("pids", "pids.max", pids))

    blkio = _section(resources, "blockIO")
    weight = _int(blkio, "weight", "blockIO")
    if weight:
        # CFQ's blkio.weight is gone since Linux 5.0; BFQ offers blkio.bfq.weight (runc).
        writes.append(
            Write("blkio", "blkio.weight", str(weight), fallback=("blkio.bfq.weight", str(weight)))
        )
    leaf = _int(blkio, "leafWeight", "blockIO")
    if leaf:
        writes.append(Write("blkio", "blkio.leaf_weight", str(leaf)))
    for dev in _list(blkio, "weightDevice", "blockIO"):
        num = _devnum(dev, "blockIO.weightDevice")
        if w := _int(dev, "weight", "blockIO.weightDevice"):
            writes.append(
                Write(
                    "blkio",
                    "blkio.weight_device",
                    f"{num} {w}",
                    fallback=("blkio.bfq.weight_device", f"{num} {w}"),
                )
            )
        if lw := _int(dev, "leafWeight", "blockIO.weightDevice"):
            writes.append(Write("blkio", "blkio.leaf_weight_device", f"{num} {lw}"))
    for key, file in _THROTTLE_V1.items():
        for dev in _list(blkio, key, f"blockIO.{key}"):
            rate = _int(dev, "rate", f"blockIO.{key}")
            writes.append(Write("blkio", file, f"{_devnum(dev, f'blockIO.{key}')} {rate or 0}"))

    writes += _hugepage_writes(resources, "hugetlb", "limit_in_bytes")

    net = _section(resources, "network")
    if (class_id := _int(net, "classID", "network")) is not None:
        writes.append(Write("net_cls", "net_cls.classid", str(class_id)))
    for prio in _list(net, "priorities", "network"):
        name = _str(prio, "name", "network.priorities")
        priority = _int(prio, "priority", "network.priorities") or 0
        writes.append(Write("net_prio", "net_prio.ifpriomap", f"{name} {priority}"))

    _log_ignored(resources, ("devices", "rdma"))
    return writes


_THROTTLE_V1 = {
    "throttleReadBpsDevice": "blkio.throttle.read_bps_device",
    "throttleWriteBpsDevice": "blkio.throttle.write_bps_device",
    "throttleReadIOPSDevice": "blkio.throttle.read_iops_device",
    "throttleWriteIOPSDevice": "blkio.throttle.write_iops_device",
}
_THROTTLE_V2 = {
    "throttleReadBpsDevice": "rbps",
    "throttleWriteBpsDevice": "wbps",
    "throttleReadIOPSDevice": "riops",
    "throttleWriteIOPSDevice": "wiops",
}


def plan_v2(resources: Mapping[str, Any]) -> list[Write]:
    """OCI ``linux.resources`` (JSON dict) -> ordered writes into cgroup2 files (runc fs2).

    memory.limit -> memory.max, memory.swap (memory+swap) -> memory.swap.max (swap only),
    memory.reservation -> memory.low, cpu.shares -> cpu.weight, cpu.quota/period -> cpu.max,
    cpu.cpus/mems -> cpuset.cpus/mems, pids.limit -> pids.max, blockIO -> io.bfq.weight/io.weight
    and io.max, hugepageLimits -> hugetlb.<size>.max; ``unified`` entries are written last.
    """
    writes: list[Write] = []
    mem = _section(resources, "memory")
    limit = _int(mem, "limit", "memory")
    swap = _int(mem, "swap", "memory")
    if limit is not None or swap is not None:
        converted = convert_memory_swap_to_v2(swap or 0, limit or 0)
        swap_value = _v2_num(converted)
        if swap_value is None and (swap or 0) > 0:
            swap_value = "0"  # memory == memory+swap: no swap at all
        if swap_value is not None:
            # Without swap accounting memory.swap.max does not exist; "max"/"0" then mean nothing.
            writes.append(
                Write(UNIFIED, "memory.swap.max", swap_value, missing_ok=swap_value in ("max", "0"))
            )
        if (value := _v2_num(limit or 0)) is not None:
            writes.append(Write(UNIFIED, "memory.max", value))
    if (value := _v2_num(_int(mem, "reservation", "memory") or 0)) is not None:
        writes.append(Write(UNIFIED, "memory.low", value))

    cpu = _section(resources, "cpu")
    if _int(cpu, "realtimePeriod", "cpu") or _int(cpu, "realtimeRuntime", "cpu"):
        raise _invalid("linux.resources.cpu.realtime*: not supported on cgroup v2")
    if weight := convert_cpu_shares_to_v2(_int(cpu, "shares", "cpu") or 0):
        writes.append(Write(UNIFIED, "cpu.weight", str(weight)))
    quota, period = _int(cpu, "quota", "cpu") or 0, _int(cpu, "period", "cpu") or 0
    if quota or period:
        cpu_max = str(quota) if quota > 0 else "max"
        if period:
            cpu_max += f" {period}"
        writes.append(Write(UNIFIED, "cpu.max", cpu_max))
    if (burst := _int(cpu, "burst", "cpu")) is not None:
        writes.append(Write(UNIFIED, "cpu.max.burst", str(burst)))
    if (idle := _int(cpu, "idle", "cpu")) is not None:
        writes.append(Write(UNIFIED, "cpu.idle", str(idle)))
    for key in ("cpus", "mems"):
        if value := _str(cpu, key, "cpu"):
            writes.append(Write(UNIFIED, f"cpuset.{key}", value))

    if (pids := _pids_value(_int(_section(resources, "pids"), "limit", "pids"))) is not None:
        writes.append(Write(UNIFIED, "pids.max", pids))

    blkio = _section(resources, "blockIO")
    if blkio_weight := _int(blkio, "weight", "blockIO"):
        io_weight = str(convert_blkio_weight_to_v2(blkio_weight))
        writes.append(
            Write(UNIFIED, "io.bfq.weight", str(blkio_weight), fallback=("io.weight", io_weight))
        )
    for dev in _list(blkio, "weightDevice", "blockIO"):
        if w := _int(dev, "weight", "blockIO.weightDevice"):
            num = _devnum(dev, "blockIO.weightDevice")
            writes.append(Write(UNIFIED, "io.bfq.weight", f"{num} {w}", missing_ok=True))
    for key, name in _THROTTLE_V2.items():
        for dev in _list(blkio, key, f"blockIO.{key}"):
            rate = _int(dev, "rate", f"blockIO.{key}") or 0
            writes.append(
                Write(UNIFIED, "io.max", f"{_devnum(dev, f'blockIO.{key}')} {name}={rate}")
            )

    writes += _hugepage_writes(resources, UNIFIED, "max")

    unified = resources.get("unified") or {}
    if not isinstance(unified, Mapping):
        raise _invalid("linux.resources.unified: expected an object")
    for key, value in unified.items():
        if not isinstance(key, str) or "/" in key or key in ("", ".", ".."):
            raise _invalid(f"linux.resources.unified: invalid file name {key!r}")
        if not isinstance(value, str):
            raise _invalid(f"linux.resources.unified.{key}: expected a string")
        writes.append(Write(UNIFIED, key, value))

    _log_ignored(resources, ("devices", "rdma", "network"))
    return writes
