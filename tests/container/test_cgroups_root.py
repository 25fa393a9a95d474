"""Cgroup support against the host's real cgroupfs (root only).

Every cgroup is named ``cgtest-<random>`` and removed by the fixture even when a test fails:
its processes are SIGKILLed, then the directories are deleted in every hierarchy.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroup_helpers import MakeCgroup, wait_empty

from containerd_shimkit.api import cgroups_v1_metrics_pb2 as v1pb
from containerd_shimkit.api import cgroups_v2_metrics_pb2 as v2pb
from containerd_shimkit.container.cgroups import (
    UNIFIED,
    V1_METRICS_TYPE_URL,
    V2_METRICS_TYPE_URL,
    Cgroup,
    CgroupNotFoundError,
    detect_layout,
)

ROOT = Path("/sys/fs/cgroup")
MiB = 1024 * 1024

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates cgroups in /sys/fs/cgroup"),
    pytest.mark.skipif(not ROOT.is_dir(), reason="no cgroupfs at /sys/fs/cgroup"),
]


@contextlib.contextmanager
def spawn(cg: Cgroup, code: str, *, ready: bool = True) -> Iterator[subprocess.Popen[str]]:
    """A Python child that joins the cgroup between fork and exec (as a shim's init does).

    With ``ready`` the child's first line must be "ready". The child is killed and reaped on exit.
    """
    with subprocess.Popen(
        [sys.executable, "-c", code],
        preexec_fn=cg.join_self,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            if ready:
                assert child.stdout.readline().strip() == "ready"
            yield child
        finally:
            child.kill()
            child.wait()


def first_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    return child.stdout.readline().strip()


READY_SLEEP = "print('ready', flush=True); import time; time.sleep(60)"


def metrics(cg: Cgroup) -> v1pb.Metrics | v2pb.Metrics:
    url, data = cg.stats()
    if detect_layout(ROOT).mode == "v2":
        assert url == V2_METRICS_TYPE_URL
        return v2pb.Metrics.FromString(data)
    assert url == V1_METRICS_TYPE_URL
    return v1pb.Metrics.FromString(data)


def read(path: Path) -> str:
    return path.read_text().strip()


BUSY = """
import sys, time
data = b"x" * (16 << 20)          # touched pages: charged to the memory cgroup
end = time.process_time() + 0.3
while time.process_time() < end:  # burn some CPU
    pass
print("ready", flush=True)
time.sleep(60)
"""


def test_create_limits_join_and_stats(make_cgroup: MakeCgroup) -> None:
    cg = make_cgroup(
        {"memory": {"limit": 128 * MiB}, "pids": {"limit": 16}, "cpu": {"shares": 512}}
    )
    for path in cg.paths.values():
        assert path.is_dir()
    if detect_layout(ROOT).mode == "v2":
        leaf = cg.paths[UNIFIED]
        assert read(leaf / "memory.max") == str(128 * MiB)
        assert read(leaf / "pids.max") == "16"
        assert read(leaf / "cpu.weight") == "20"
    else:
        assert read(cg.paths["memory"] / "memory.limit_in_bytes") == str(128 * MiB)
        assert read(cg.paths["pids"] / "pids.max") == "16"
        assert read(cg.paths["cpu"] / "cpu.shares") == "512"

    with spawn(cg, BUSY) as child:
        assert cg.pids() == [child.pid]
        m = metrics(cg)
        if isinstance(m, v1pb.Metrics):
            assert m.cpu.usage.total > 100_000_000  # ns: at least most of the 0.3 s burned
            assert m.cpu.usage.user + m.cpu.usage.kernel > 0
            assert len(m.cpu.usage.per_cpu) >= 1
            assert m.memory.usage.usage > 16 * MiB
            assert m.memory.usage.limit == 128 * MiB
            assert m.memory.total_rss + m.memory.total_cache > 0
            assert m.memory.hierarchical_memory_limit == 128 * MiB
        else:
            assert m.cpu.usage_usec > 100_000
            assert m.memory.usage > 16 * MiB
            assert m.memory.usage_limit == 128 * MiB
            assert m.memory.anon > 0
        assert (m.pids.current, m.pids.limit) == (1, 16)


def test_membership_in_proc(make_cgroup: MakeCgroup) -> None:
    cg = make_cgroup()
    with spawn(cg, READY_SLEEP) as child:
        lines = (Path("/proc") / str(child.pid) / "cgroup").read_text().splitlines()
    by_controller: dict[str, str] = {}
    for line in lines:
        _, controllers, cgroup = line.split(":", 2)
        for c in controllers.split(",") if controllers else [UNIFIED]:
            by_controller[c] = cgroup
    layout = detect_layout(ROOT)
    for key, path in cg.paths.items():
        mount = layout.unified if key == UNIFIED else layout.v1[key]
        assert mount is not None
        assert by_controller[key] == "/" + str(path.relative_to(mount))


def test_pids_limit_is_enforced(make_cgroup: MakeCgroup) -> None:
    cg = make_cgroup({"pids": {"limit": 3}})
    code = """
import os, time
made = 0
for _ in range(6):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    made += 1
print(made, flush=True)
time.sleep(30)
"""
    with spawn(cg, code, ready=False) as child:
        assert first_line(child) == "2"  # the child itself + 2 forks = 3
        cg.kill_all(signal.SIGKILL)
    wait_empty(cg)


def test_kill_all_kills_every_process(make_cgroup: MakeCgroup) -> None:
    cg = make_cgroup()
    code = """
import subprocess
procs = [subprocess.Popen(["sleep", "100"]) for _ in range(3)]
print("ready", flush=True)
for p in procs:
    p.wait()
"""
    with spawn(cg, code) as child:
        assert len(cg.pids()) == 4
        cg.kill_all(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    wait_empty(cg)


def test_kill_all_sigterm_and_freeze_thaw(make_cgroup: MakeCgroup) -> None:
    cg = make_cgroup()
    with spawn(cg, READY_SLEEP) as child:
        cg.freeze()
        if "freezer" in cg.paths:
            assert read(cg.paths["freezer"] / "freezer.state") == "FROZEN"
        else:
            assert "frozen 1" in (cg.paths[UNIFIED] / "cgroup.events").read_text()
        cg.thaw()
        if "freezer" in cg.paths:
            assert read(cg.paths["freezer"] / "freezer.state") == "THAWED"
        cg.kill_all(signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM


def test_oom_shows_in_stats(make_cgroup: MakeCgroup) -> None:
    # memory+swap == memory: no swap, so going over the limit must OOM-kill.
    cg = make_cgroup({"memory": {"limit": 32 * MiB, "swap": 32 * MiB}})
    assert cg.oom_kill_count() == 0
    code = "data = b'x' * (100 << 20); print('survived', flush=True)"
    with spawn(cg, code, ready=False) as child:
        assert child.wait(timeout=30) == -signal.SIGKILL, first_line(child)
    assert cg.oom_kill_count() >= 1
    m = metrics(cg)
    if isinstance(m, v1pb.Metrics):
        assert m.memory_oom_control.oom_kill >= 1
        # (failcnt stays 0 on some kernels when memsw is limited too: not asserted)
        assert m.memory.usage.max >= 30 * MiB
    else:
        assert m.memory_events.oom_kill >= 1
        assert m.memory_events.max > 0


def test_update_changes_limits(make_cgroup: MakeCgroup) -> None:
    cg = make_cgroup({"pids": {"limit": 10}, "memory": {"limit": 64 * MiB}})
    cg.update({"pids": {"limit": 20}, "memory": {"limit": 96 * MiB}, "cpu": {"quota": 50000}})
    if detect_layout(ROOT).mode == "v2":
        assert read(cg.paths[UNIFIED] / "pids.max") == "20"
        assert read(cg.paths[UNIFIED] / "memory.max") == str(96 * MiB)
        assert read(cg.paths[UNIFIED] / "cpu.max").startswith("50000 ")
    else:
        assert read(cg.paths["pids"] / "pids.max") == "20"
        assert read(cg.paths["memory"] / "memory.limit_in_bytes") == str(96 * MiB)
        assert read(cg.paths["cpu"] / "cpu.cfs_quota_us") == "50000"


def test_delete_removes_every_dir_and_state_rebuilds(make_cgroup: MakeCgroup) -> None:
    name = f"cgtest-{uuid.uuid4().hex[:12]}"
    cg = make_cgroup(path=f"/{name}/ctr", name="ctr")
    assert all(p.is_dir() for p in cg.paths.values())
    with spawn(cg, READY_SLEEP) as child:
        cg.kill_all(signal.SIGKILL)
        child.wait(timeout=10)
    wait_empty(cg)
    # A separate process (shim delete) only has the saved state.
    again = Cgroup.from_state(json.loads(json.dumps(cg.to_state())))
    again.delete()
    assert not any(p.exists() for p in cg.paths.values())
    assert all(p.parent.is_dir() for p in cg.paths.values())  # parents are left, as runc
    again.delete()  # idempotent
    with pytest.raises(CgroupNotFoundError):
        again.stats()
