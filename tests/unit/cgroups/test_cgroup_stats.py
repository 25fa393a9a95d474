"""Stats files -> containerd cgroups Metrics, decoded with the generated classes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from containerd_shimkit.api import cgroups_v1_metrics_pb2 as v1pb
from containerd_shimkit.api import cgroups_v2_metrics_pb2 as v2pb
from containerd_shimkit.container.cgroup_stats import (
    MAX_UINT64,
    parse_io_stat,
    parse_kv,
    parse_psi,
    read_uint,
)
from containerd_shimkit.container.cgroups import (
    UNIFIED,
    V1_METRICS_TYPE_URL,
    V2_METRICS_TYPE_URL,
    Cgroup,
    CgroupNotFoundError,
)

from .conftest import FakeTree

HZ = os.sysconf("SC_CLK_TCK")


def put(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).write_text(text)


def test_type_urls_are_the_bare_full_names() -> None:
    # containerd 1.6 resolves the Any by exact name: no type.googleapis.com/ prefix.
    assert v1pb.Metrics.DESCRIPTOR.full_name == V1_METRICS_TYPE_URL
    assert v2pb.Metrics.DESCRIPTOR.full_name == V2_METRICS_TYPE_URL
    assert V1_METRICS_TYPE_URL == "io.containerd.cgroups.v1.Metrics"
    assert V2_METRICS_TYPE_URL == "io.containerd.cgroups.v2.Metrics"


def test_field_numbers_match_containerd() -> None:
    # Spot checks against github.com/containerd/cgroups metrics.proto (the wire contract).
    def number(message: type, name: str) -> int:
        return int(message.DESCRIPTOR.fields_by_name[name].number)  # type: ignore[attr-defined]

    assert [number(v1pb.Metrics, n) for n in ("hugetlb", "pids", "cpu", "memory")] == [1, 2, 3, 4]
    assert number(v1pb.Metrics, "memory_oom_control") == 9
    assert number(v1pb.MemoryStat, "total_inactive_file") == 30
    assert number(v1pb.MemoryStat, "usage") == 33
    assert number(v1pb.MemoryStat, "kernel_tcp") == 36
    assert number(v1pb.CPUUsage, "per_cpu") == 4
    assert number(v1pb.MemoryOomControl, "oom_kill") == 3
    assert [number(v2pb.Metrics, n) for n in ("pids", "cpu", "memory", "io")] == [1, 2, 4, 6]
    assert number(v2pb.Metrics, "memory_events") == 8
    assert number(v2pb.MemoryStat, "usage") == 32
    assert number(v2pb.MemoryStat, "usage_limit") == 33
    assert number(v2pb.MemoryStat, "inactive_file") == 13
    assert number(v2pb.CPUStat, "throttled_usec") == 6
    assert number(v2pb.MemoryEvents, "oom_kill") == 5


def test_parsers() -> None:
    assert parse_kv("a 1\nb -1\nbad\nc x\n\nd 5 6\n") == {"a": 1, "b": 0}
    assert parse_psi(
        "some avg10=1.50 avg60=0.00 avg300=0.25 total=123\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"
    ) == {
        "some": {"avg10": 1.5, "avg60": 0.0, "avg300": 0.25, "total": 123},
        "full": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 7},
    }
    assert parse_io_stat("8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0\nnoise\n") == [
        (8, 0, {"rbytes": 10, "wbytes": 20, "rios": 1, "wios": 2, "dbytes": 0})
    ]


def test_read_uint(tmp_path: Path) -> None:
    (tmp_path / "n").write_text("42\n")
    (tmp_path / "m").write_text("max\n")
    (tmp_path / "bad").write_text("x\n")
    assert read_uint(tmp_path / "n") == 42
    assert read_uint(tmp_path / "m") == MAX_UINT64
    assert read_uint(tmp_path / "m", max_value=0) == 0
    assert read_uint(tmp_path / "bad") is None
    assert read_uint(tmp_path / "missing") is None


def test_v1_metrics(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    p = cg.paths
    put(p["pids"], {"pids.current": "3\n", "pids.max": "max\n"})
    put(
        p["cpuacct"],
        {
            "cpuacct.usage": "123456789\n",
            "cpuacct.stat": f"user {2 * HZ}\nsystem {HZ}\n",
            "cpuacct.usage_percpu": "100000000 23456789 \n",
        },
    )
    put(p["cpu"], {"cpu.stat": "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n"})
    put(
        p["memory"],
        {
            "memory.stat": (
                "cache 4096\nrss 8192\nrss_huge 0\nmapped_file 1\npgpgin 5\npgfault 6\n"
                "inactive_file 512\nhierarchical_memory_limit 33554432\n"
                "hierarchical_memsw_limit 67108864\ntotal_cache 4096\ntotal_rss 8192\n"
                "total_inactive_file 1024\ntotal_pgpgin 9\ntotal_unevictable 2\n"
            ),
            "memory.usage_in_bytes": "16384\n",
            "memory.max_usage_in_bytes": "20000\n",
            "memory.limit_in_bytes": "33554432\n",
            "memory.failcnt": "7\n",
            "memory.memsw.usage_in_bytes": "16385\n",
            "memory.memsw.limit_in_bytes": "67108864\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 1\noom_kill 2\n",
        },
    )
    url, data = cg.stats()
    assert url == V1_METRICS_TYPE_URL
    m = v1pb.Metrics.FromString(data)
    assert (m.pids.current, m.pids.limit) == (3, 0)
    assert m.cpu.usage.total == 123456789
    assert m.cpu.usage.user == 2_000_000_000
    assert m.cpu.usage.kernel == 1_000_000_000
    assert list(m.cpu.usage.per_cpu) == [100000000, 23456789]
    assert (m.cpu.throttling.periods, m.cpu.throttling.throttled_periods) == (10, 4)
    assert m.cpu.throttling.throttled_time == 5000
    mem = m.memory
    assert (mem.cache, mem.rss, mem.mapped_file, mem.pg_pg_in, mem.pg_fault) == (
        4096,
        8192,
        1,
        5,
        6,
    )
    assert mem.inactive_file == 512
    assert mem.hierarchical_memory_limit == 33554432
    assert mem.hierarchical_swap_limit == 67108864
    assert (mem.total_cache, mem.total_rss, mem.total_pg_pg_in) == (4096, 8192, 9)
    assert mem.total_unevictable == 2
    assert mem.usage.usage == 16384
    assert (mem.usage.max, mem.usage.limit, mem.usage.failcnt) == (20000, 33554432, 7)
    assert (mem.swap.usage, mem.swap.limit) == (16385, 67108864)
    assert mem.HasField("kernel")  # present but zero without kmem files
    assert m.memory_oom_control.under_oom == 1
    assert m.memory_oom_control.oom_kill == 2
    assert cg.oom_kill_count() == 2
    # What CRI computes from this (v1): working set = usage - total_inactive_file.
    assert mem.usage.usage - mem.total_inactive_file == 15360


def test_v1_blkio_and_hugetlb(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "cg", "v1")
    (tree.root / "hugetlb").mkdir()
    (tree.root / "hugetlb" / "cgroup.procs").write_text("")
    cg = Cgroup.for_container("/c", "c", systemd=False, root=tree.root)
    tree.populate(cg)
    put(
        cg.paths["hugetlb"],
        {
            "hugetlb.2MB.usage_in_bytes": "2097152\n",
            "hugetlb.2MB.max_usage_in_bytes": "4194304\n",
            "hugetlb.2MB.failcnt": "1\n",
            "hugetlb.2MB.limit_in_bytes": "0\n",
            "hugetlb.2MB.rsvd.usage_in_bytes": "0\n",
        },
    )
    put(
        cg.paths["blkio"],
        {
            "blkio.throttle.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 0\nTotal 4096\n",
            "blkio.throttle.io_serviced_recursive": "8:0 Read 1\nTotal 1\n",
        },
    )
    m = v1pb.Metrics.FromString(cg.stats()[1])
    assert [(h.pagesize, h.usage, h.max, h.failcnt) for h in m.hugetlb] == [
        ("2MB", 2097152, 4194304, 1)
    ]
    assert [(e.op, e.major, e.minor, e.value) for e in m.blkio.io_service_bytes_recursive] == [
        ("Read", 8, 0, 4096),
        ("Write", 8, 0, 0),
    ]
    assert len(m.blkio.io_serviced_recursive) == 1


def test_hybrid_reports_v1(hybrid_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=hybrid_tree.root)
    hybrid_tree.populate(cg)
    assert cg.stats()[0] == V1_METRICS_TYPE_URL


def test_v2_metrics(v2_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v2_tree.root)
    v2_tree.populate(cg)
    put(
        cg.paths[UNIFIED],
        {
            "pids.current": "4\n",
            "pids.max": "max\n",
            "cpu.stat": (
                "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 7\n"
                "nr_throttled 2\nthrottled_usec 900\nnr_bursts 1\nburst_usec 3\n"
            ),
            "cpu.pressure": "some avg10=0.50 avg60=0.10 avg300=0.00 total=777\n",
            "memory.stat": (
                "anon 1000\nfile 2000\nkernel_stack 16384\nslab 30\nsock 0\nshmem 5\n"
                "inactive_file 1500\nactive_file 500\npgfault 42\npgmajfault 1\n"
                "workingset_refault_anon 9\n"
            ),
            "memory.current": "4096000\n",
            "memory.max": "67108864\n",
            "memory.peak": "5000000\n",
            "memory.swap.current": "0\n",
            "memory.swap.max": "max\n",
            "memory.events": "low 0\nhigh 1\nmax 5\noom 2\noom_kill 1\n",
            "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
        },
    )
    url, data = cg.stats()
    assert url == V2_METRICS_TYPE_URL
    m = v2pb.Metrics.FromString(data)
    assert (m.pids.current, m.pids.limit) == (4, MAX_UINT64)
    cpu = m.cpu
    assert (cpu.usage_usec, cpu.user_usec, cpu.system_usec) == (5000, 3000, 2000)
    assert (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec) == (7, 2, 900)
    assert (cpu.nr_bursts, cpu.burst_usec) == (1, 3)
    assert cpu.psi.some.avg10 == 0.5
    assert cpu.psi.some.total == 777
    mem = m.memory
    assert (mem.anon, mem.file, mem.kernel_stack, mem.slab, mem.shmem) == (1000, 2000, 16384, 30, 5)
    assert (mem.inactive_file, mem.active_file, mem.pgfault, mem.pgmajfault) == (1500, 500, 42, 1)
    assert (mem.usage, mem.usage_limit, mem.max_usage) == (4096000, 67108864, 5000000)
    assert (mem.swap_usage, mem.swap_limit) == (0, MAX_UINT64)
    assert not mem.HasField("psi")  # no memory.pressure in this fake tree
    ev = m.memory_events
    assert (ev.low, ev.high, ev.max, ev.oom, ev.oom_kill) == (0, 1, 5, 2, 1)
    assert [(e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios) for e in m.io.usage] == [
        (8, 0, 4096, 8192, 1, 2)
    ]
    assert [(h.pagesize, h.max) for h in m.hugetlb] == [("2MB", MAX_UINT64)]
    assert cg.oom_kill_count() == 1
    # What CRI computes from this (v2): working set = usage - inactive_file; cpu ns = usec * 1000.
    assert mem.usage - mem.inactive_file == 4094500
    assert cpu.usage_usec * 1000 == 5_000_000


def test_v2_metrics_without_controllers(v2_tree: FakeTree) -> None:
    # A cgroup with no memory/pids controller enabled still answers, with zeros (containerd).
    cg = Cgroup.for_container("/bare", "bare", systemd=False, root=v2_tree.root)
    cg.create()
    m = v2pb.Metrics.FromString(cg.stats()[1])
    assert m.HasField("pids")
    assert m.HasField("cpu")
    assert m.HasField("memory")
    assert m.memory.usage == 0
    assert not m.HasField("memory_events")
    assert cg.oom_kill_count() == 0


def test_stats_of_missing_cgroup(v1_tree: FakeTree, v2_tree: FakeTree) -> None:
    for tree in (v1_tree, v2_tree):
        cg = Cgroup.for_container("/gone", "gone", systemd=False, root=tree.root)
        with pytest.raises(CgroupNotFoundError, match="cgroup does not exist"):
            cg.stats()
        with pytest.raises(FileNotFoundError):
            cg.stats()


def test_import_stays_light() -> None:
    # The module is imported in forked children before exec: no protobuf, no asyncio.
    code = (
        "import sys; import containerd_shimkit.container.cgroups\n"
        "heavy = [m for m in sys.modules if m == 'asyncio' or m.startswith('google.protobuf')"
        " or m.endswith('_pb2')]\n"
        "assert not heavy, heavy\n"
    )
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[3] / "packages" / "containerd-shimkit" / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
