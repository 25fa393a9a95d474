"""Fake cgroupfs trees in tmp_path: v1, hybrid (v1 + unified) and pure v2 layouts.

Real cgroupfs creates control files when a directory is made; a fake tree cannot, so tests call
``FakeTree.populate(cgroup)`` to give each of the cgroup's directories the files the kernel
would. Writes never create files (as on cgroupfs), which is how missing-controller errors show.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from containerd_shimkit.container import cgroups
from containerd_shimkit.container.cgroups import UNIFIED, Cgroup

V1_FILES: dict[str, dict[str, str]] = {
    "cpu": {
        "cpu.shares": "1024\n",
        "cpu.cfs_period_us": "100000\n",
        "cpu.cfs_quota_us": "-1\n",
        "cpu.cfs_burst_us": "0\n",
        "cpu.rt_period_us": "1000000\n",
        "cpu.rt_runtime_us": "0\n",
        "cpu.idle": "0\n",
        "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
    },
    "cpuacct": {
        "cpuacct.usage": "0\n",
        "cpuacct.stat": "user 0\nsystem 0\n",
        "cpuacct.usage_percpu": "0 0 \n",
    },
    "cpuset": {"cpuset.cpus": "\n", "cpuset.mems": "\n"},
    "memory": {
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.soft_limit_in_bytes": "9223372036854771712\n",
        "memory.memsw.limit_in_bytes": "9223372036854771712\n",
        "memory.swappiness": "60\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        "memory.stat": "cache 0\nrss 0\n",
        "memory.usage_in_bytes": "0\n",
        "memory.max_usage_in_bytes": "0\n",
        "memory.failcnt": "0\n",
    },
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    "freezer": {"freezer.state": "THAWED\n"},
    "blkio": {
        "blkio.bfq.weight": "100\n",
        "blkio.throttle.read_bps_device": "",
        "blkio.throttle.write_iops_device": "",
    },
    "devices": {},
    "systemd": {},
}

V2_FILES: dict[str, str] = {
    "cgroup.subtree_control": "",
    "cgroup.freeze": "0\n",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.kill": "",
    "memory.max": "max\n",
    "memory.low": "0\n",
    "memory.swap.max": "max\n",
    "cpu.weight": "100\n",
    "cpu.max": "max 100000\n",
    "cpu.max.burst": "0\n",
    "cpu.idle": "0\n",
    "cpuset.cpus": "\n",
    "cpuset.mems": "\n",
    "pids.max": "max\n",
    "io.weight": "default 100\n",
    "io.max": "",
    "hugetlb.2MB.max": "max\n",
}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class FakeTree:
    """A cgroupfs root in tmp_path plus the helpers the tests need."""

    def __init__(self, root: Path, mode: str) -> None:
        self.root = root
        self.mode = mode
        if mode == "v2":
            write(root / "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
            write(root / "cgroup.procs", "1\n")
            write(root / "cgroup.subtree_control", "")
        else:
            for name in V1_FILES:
                d = root / name
                write(d / "cgroup.procs", "1\n")
                if name == "cpuset":
                    write(d / "cpuset.cpus", "0-3\n")
                    write(d / "cpuset.mems", "0\n")
            if mode == "hybrid":
                write(root / UNIFIED / "cgroup.controllers", "hugetlb\n")
                write(root / UNIFIED / "cgroup.procs", "1\n")

    def populate(self, cg: Cgroup) -> None:
        """Create the cgroup's directories with the control files the kernel would provide."""
        for key, path in cg.paths.items():
            path.mkdir(parents=True, exist_ok=True)
            write(path / "cgroup.procs", "")
            if key == UNIFIED:
                for name, text in (V2_FILES if self.mode == "v2" else {}).items():
                    write(path / name, text)
                write(path / "cgroup.kill", "")
                write(path / "cgroup.freeze", "0\n")
                write(path / "cgroup.events", "populated 0\nfrozen 0\n")
            else:
                name = "systemd" if key == "name=systemd" else key
                for file, text in V1_FILES.get(name, {}).items():
                    write(path / file, text)


@pytest.fixture(autouse=True)
def _fresh_detection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Layout detection is cached per root; tmp roots are unique, but clear to be safe. The real
    # mount table never lists tmp_path, so detection falls back to scanning the fake tree.
    cgroups.detect_layout.cache_clear()
    monkeypatch.setattr(cgroups, "_RMDIR_DELAYS", (0.001, 0.001, 0.001))
    monkeypatch.setattr(cgroups, "FREEZE_TIMEOUT", 0.2)
    yield
    cgroups.detect_layout.cache_clear()


def _fake_rmdir(path: Path) -> None:
    # cgroupfs rmdir succeeds while control files exist; on tmpfs remove them first.
    for entry in os.scandir(path):
        if entry.is_file():
            os.unlink(entry.path)
    os.rmdir(path)


@pytest.fixture
def fake_rmdir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "_rmdir", _fake_rmdir)


@pytest.fixture
def own_cgroup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fake /proc/self/cgroup: memory in /process_api/abc, everything else at / (as here);
    cgroup2 at /user.slice/session-1.scope."""
    text = (
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n"
        "3:cpuset:/\n6:freezer:/\n7:blkio:/\n5:devices:/\n0::/user.slice/session-1.scope\n"
    )
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    monkeypatch.setattr(cgroups, "PROC_SELF_CGROUP", path)
    return path


@pytest.fixture
def v1_tree(tmp_path: Path) -> FakeTree:
    return FakeTree(tmp_path / "cg-v1", "v1")


@pytest.fixture
def hybrid_tree(tmp_path: Path) -> FakeTree:
    return FakeTree(tmp_path / "cg-hybrid", "hybrid")


@pytest.fixture
def v2_tree(tmp_path: Path) -> FakeTree:
    return FakeTree(tmp_path / "cg-v2", "v2")
