"""Read cgroup statistics files into containerd's cgroups Metrics messages.

The field mapping mirrors github.com/containerd/cgroups (``cgroup1/*.go`` ``Stat`` methods and
``cgroup2/manager.go`` ``Stat``), because containerd's CRI plugin and ``ctr task metrics`` read
these messages: CRI takes CPU usage from v1 ``cpu.usage.total`` (ns) or v2 ``cpu.usage_usec``, and
the memory working set from v1 ``memory.usage.usage - memory.total_inactive_file`` or v2
``memory.usage - memory.inactive_file``.

Unlike containerd, a file the host does not have leaves its fields zero instead of failing the
whole call: a hybrid host, a v2 cgroup without the memory controller or a kernel without swap
accounting still yields the metrics it can. The protobuf modules are imported inside the
``collect_*`` functions so importing :mod:`containerd_shimkit.container.cgroups` stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from containerd_shimkit.api import cgroups_v1_metrics_pb2 as v1pb
    from containerd_shimkit.api import cgroups_v2_metrics_pb2 as v2pb

__all__ = [
    "MAX_UINT64",
    "collect_v1",
    "collect_v2",
    "parse_io_stat",
    "parse_kv",
    "parse_psi",
    "read_kv",
    "read_uint",
]

MAX_UINT64 = 2**64 - 1


def _read(path: Path) -> str | None:
    """File text, or None when it does not exist or cannot be read (ENODEV after rmdir...)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _uint(token: str) -> int:
    # containerd parseUint: negative numbers (e.g. -1 written by the kernel) read as 0.
    value = int(token)
    return value if value >= 0 else 0


def parse_kv(text: str) -> dict[str, int]:
    """``"key value"`` lines (memory.stat, cpu.stat, memory.events...) -> dict.

    Lines that are not exactly a key and an integer are skipped.
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            out[parts[0]] = _uint(parts[1])
        except ValueError:
            continue
    return out


def read_kv(path: Path) -> dict[str, int]:
    """:func:`parse_kv` of a file; empty when the file is missing."""
    text = _read(path)
    return parse_kv(text) if text is not None else {}


def read_uint(path: Path, *, max_value: int = MAX_UINT64) -> int | None:
    """Single-value file; ``max`` reads as ``max_value``; None when missing or unparsable."""
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return max_value
    try:
        return _uint(text)
    except ValueError:
        return None


def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """Pressure file (``some avg10=0.00 avg60=0.00 avg300=0.00 total=0``) -> nested dict."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        values: dict[str, float] = {}
        for item in parts[1:]:
            key, _, raw = item.partition("=")
            try:
                values[key] = float(raw) if key != "total" else int(raw)
            except ValueError:
                continue
        out[parts[0]] = values
    return out


def parse_io_stat(text: str) -> list[tuple[int, int, dict[str, int]]]:
    """v2 io.stat (``8:0 rbytes=1 wbytes=2 rios=3 wios=4 ...``) -> [(major, minor, values)]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        major, sep, minor = parts[0].partition(":")
        if not sep or not major.isdigit() or not minor.isdigit():
            continue
        values = {}
        for item in parts[1:]:
            key, _, raw = item.partition("=")
            if raw.isdigit():
                values[key] = int(raw)
        out.append((int(major), int(minor), values))
    return out


# --- cgroup v1 ---------------------------------------------------------------------------------

# memory.stat key -> v1 MemoryStat field (containerd cgroup1/memory.go parseStats).
_V1_MEMORY_STAT = {
    "cache": "cache",
    "rss": "rss",
    "rss_huge": "rss_huge",
    "mapped_file": "mapped_file",
    "dirty": "dirty",
    "writeback": "writeback",
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
    "hierarchical_memory_limit": "hierarchical_memory_limit",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
}
# The hierarchical totals: total_cache -> total_cache, ..., total_pgpgin -> total_pg_pg_in.
_V1_MEMORY_STAT.update(
    {f"total_{k}": f"total_{v}" for k, v in _V1_MEMORY_STAT.items() if "hierarchical" not in k}
)

# MemoryEntry field -> memory.<module>.<file>.
_V1_ENTRY_FILES = {
    "usage": "usage_in_bytes",
    "max": "max_usage_in_bytes",
    "failcnt": "failcnt",
    "limit": "limit_in_bytes",
}


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


def _fill_v1_entry(entry: v1pb.MemoryEntry, path: Path, module: str) -> None:
    prefix = f"memory.{module}." if module else "memory."
    for field, name in _V1_ENTRY_FILES.items():
        value = read_uint(path / f"{prefix}{name}")
        if value is not None:
            setattr(entry, field, value)


def collect_v1(paths: Mapping[str, Path]) -> v1pb.Metrics:
    """v1 Metrics from the controller directories of one cgroup (keys as in ``Cgroup.paths``).

    Filled from the controllers that are present: pids, cpu (cpuacct usage in ns,
    user/kernel converted from USER_HZ ticks in cpuacct.stat, per-cpu usage; cpu.stat
    throttling), memory (memory.stat, usage/swap/kernel/kernel_tcp entries), memory_oom_control,
    hugetlb and blkio (io_service_bytes / io_serviced).
    """
    from containerd_shimkit.api import cgroups_v1_metrics_pb2 as pb

    m = pb.Metrics()
    # containerd always allocates these (and Go readers such as ctr dereference them without
    # nil checks), so they are present, if zero, whatever the host mounts.
    for present in (m.pids, m.cpu.usage, m.cpu.throttling, m.memory.usage, m.memory.swap):
        present.SetInParent()
    m.memory.kernel.SetInParent()
    m.memory.kernel_tcp.SetInParent()
    if (pids := paths.get("pids")) is not None:
        # containerd: pids.max "max" reads as limit 0 on v1.
        m.pids.current = read_uint(pids / "pids.current") or 0
        m.pids.limit = read_uint(pids / "pids.max", max_value=0) or 0
    if (cpuacct := paths.get("cpuacct")) is not None:
        usage = m.cpu.usage
        usage.total = read_uint(cpuacct / "cpuacct.usage") or 0
        ticks = read_kv(cpuacct / "cpuacct.stat")
        hz = _clock_ticks()
        usage.user = ticks.get("user", 0) * 1_000_000_000 // hz
        usage.kernel = ticks.get("system", 0) * 1_000_000_000 // hz
        percpu = _read(cpuacct / "cpuacct.usage_percpu") or ""
        usage.per_cpu.extend(_uint(tok) for tok in percpu.split() if tok.lstrip("-").isdigit())
    if (cpu := paths.get("cpu")) is not None:
        stat = read_kv(cpu / "cpu.stat")
        throttling = m.cpu.throttling
        throttling.periods = stat.get("nr_periods", 0)
        throttling.throttled_periods = stat.get("nr_throttled", 0)
        throttling.throttled_time = stat.get("throttled_time", 0)
    if (memory := paths.get("memory")) is not None:
        stat = read_kv(memory / "memory.stat")
        for key, field in _V1_MEMORY_STAT.items():
            setattr(m.memory, field, stat.get(key, 0))
        _fill_v1_entry(m.memory.usage, memory, "")
        _fill_v1_entry(m.memory.swap, memory, "memsw")
        _fill_v1_entry(m.memory.kernel, memory, "kmem")
        _fill_v1_entry(m.memory.kernel_tcp, memory, "kmem.tcp")
        oom = read_kv(memory / "memory.oom_control")
        m.memory_oom_control.oom_kill_disable = oom.get("oom_kill_disable", 0)
        m.memory_oom_control.under_oom = oom.get("under_oom", 0)
        m.memory_oom_control.oom_kill = oom.get("oom_kill", 0)
    if (hugetlb := paths.get("hugetlb")) is not None:
        for size in _v1_hugepage_sizes(hugetlb):
            m.hugetlb.add(
                pagesize=size,
                usage=read_uint(hugetlb / f"hugetlb.{size}.usage_in_bytes") or 0,
                max=read_uint(hugetlb / f"hugetlb.{size}.max_usage_in_bytes") or 0,
                failcnt=read_uint(hugetlb / f"hugetlb.{size}.failcnt") or 0,
            )
    if (blkio := paths.get("blkio")) is not None:
        _fill_blkio(m.blkio, blkio)
    return m


def _v1_hugepage_sizes(path: Path) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(
        n.split(".")[1]
        for n in names
        if n.startswith("hugetlb.") and n.endswith(".usage_in_bytes") and n.count(".") == 2
    )


def _fill_blkio(stat: v1pb.BlkIOStat, path: Path) -> None:
    # containerd cgroup1/blkio.go: CFQ/BFQ recursive stats when present, else throttle stats.
    prefix = "blkio."
    if _read(path / "blkio.io_serviced_recursive") is None:
        prefix = "blkio.throttle."
    for field, name in (
        ("io_service_bytes_recursive", "io_service_bytes_recursive"),
        ("io_serviced_recursive", "io_serviced_recursive"),
    ):
        target = getattr(stat, field)
        for line in (_read(path / f"{prefix}{name}") or "").splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue  # "Total N"
            major, sep, minor = parts[0].partition(":")
            if not (sep and major.isdigit() and minor.isdigit() and parts[2].isdigit()):
                continue
            target.add(op=parts[1], major=int(major), minor=int(minor), value=int(parts[2]))


# --- cgroup v2 ---------------------------------------------------------------------------------

# memory.stat key -> v2 MemoryStat field (same names except where noted).
_V2_MEMORY_STAT = (
    "anon",
    "file",
    "kernel_stack",
    "slab",
    "sock",
    "shmem",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "anon_thp",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "slab_reclaimable",
    "slab_unreclaimable",
    "pgfault",
    "pgmajfault",
    "workingset_refault",
    "workingset_activate",
    "workingset_nodereclaim",
    "pgrefill",
    "pgscan",
    "pgsteal",
    "pgactivate",
    "pgdeactivate",
    "pglazyfree",
    "pglazyfreed",
    "thp_fault_alloc",
    "thp_collapse_alloc",
)
_V2_CPU_STAT = (
    "usage_usec",
    "user_usec",
    "system_usec",
    "nr_periods",
    "nr_throttled",
    "throttled_usec",
    "nr_bursts",
    "burst_usec",
)


def _fill_psi(target: v2pb.PSIStats, path: Path) -> bool:
    text = _read(path)
    if text is None:
        return False
    for kind, values in parse_psi(text).items():
        data = getattr(target, kind)
        data.avg10 = values.get("avg10", 0.0)
        data.avg60 = values.get("avg60", 0.0)
        data.avg300 = values.get("avg300", 0.0)
        data.total = int(values.get("total", 0))
    return True


def collect_v2(path: Path) -> v2pb.Metrics:
    """v2 Metrics from one cgroup2 directory (containerd ``cgroup2.Manager.Stat``).

    pids, cpu and memory are always set (zero where the controller is not enabled), as
    containerd does; memory_events when memory.events exists; io from io.stat; hugetlb from the
    ``hugetlb.<size>.current`` files; PSI from the ``*.pressure`` files.
    """
    from containerd_shimkit.api import cgroups_v2_metrics_pb2 as pb

    m = pb.Metrics()
    m.pids.current = read_uint(path / "pids.current") or 0
    m.pids.limit = read_uint(path / "pids.max") or 0

    # cpu.stat's usage fields exist even without the cpu controller enabled.
    cpu = read_kv(path / "cpu.stat")
    for key in _V2_CPU_STAT:
        setattr(m.cpu, key, cpu.get(key, 0))
    if not _fill_psi(m.cpu.psi, path / "cpu.pressure"):
        m.cpu.ClearField("psi")

    stat = read_kv(path / "memory.stat")
    mem = m.memory
    for key in _V2_MEMORY_STAT:
        setattr(mem, key, stat.get(key, 0))
    mem.usage = read_uint(path / "memory.current") or 0
    mem.usage_limit = read_uint(path / "memory.max") or 0
    mem.max_usage = read_uint(path / "memory.peak") or 0
    mem.swap_usage = read_uint(path / "memory.swap.current") or 0
    mem.swap_limit = read_uint(path / "memory.swap.max") or 0
    mem.swap_max_usage = read_uint(path / "memory.swap.peak") or 0
    if not _fill_psi(mem.psi, path / "memory.pressure"):
        mem.ClearField("psi")

    events = _read(path / "memory.events")
    if events is not None:
        kv = parse_kv(events)
        for key in ("low", "high", "max", "oom", "oom_kill"):
            setattr(m.memory_events, key, kv.get(key, 0))

    for major, minor, values in parse_io_stat(_read(path / "io.stat") or ""):
        m.io.usage.add(
            major=major,
            minor=minor,
            rbytes=values.get("rbytes", 0),
            wbytes=values.get("wbytes", 0),
            rios=values.get("rios", 0),
            wios=values.get("wios", 0),
        )
    _fill_psi(m.io.psi, path / "io.pressure")

    for size in _v2_hugepage_sizes(path):
        m.hugetlb.add(
            pagesize=size,
            current=read_uint(path / f"hugetlb.{size}.current") or 0,
            max=read_uint(path / f"hugetlb.{size}.max") or 0,
        )
    return m


def _v2_hugepage_sizes(path: Path) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(
        {
            n.split(".")[1]
            for n in names
            if n.startswith("hugetlb.") and n.endswith((".max", ".current")) and n.count(".") == 2
        }
    )
