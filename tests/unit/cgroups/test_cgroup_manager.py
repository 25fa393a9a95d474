"""Cgroup lifecycle on fake cgroupfs trees: create, update, join, pids, freeze, kill, delete."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from containerd_shimkit.container import cgroups
from containerd_shimkit.container.cgroups import (
    UNIFIED,
    Cgroup,
    CgroupError,
    CgroupNotFoundError,
)

from .conftest import FakeTree, _fake_rmdir

MiB = 1024 * 1024


def read(path: Path) -> str:
    return path.read_text().strip()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every write through the cgroup module from now on, as (file name, value), in order;
    the writes still happen."""
    recorded: list[tuple[str, str]] = []
    real = cgroups._write_file

    def spy(path: Path, value: str) -> None:
        recorded.append((path.name, value))
        real(path, value)

    monkeypatch.setattr(cgroups, "_write_file", spy)
    return recorded


# --- create / update ---------------------------------------------------------------------------


def test_v1_create_applies_resources(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/default/c1", "c1", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    cg.create(
        {
            "memory": {"limit": 32 * MiB, "reservation": 16 * MiB},
            "cpu": {"shares": 256, "quota": 20000, "period": 100000, "cpus": "1"},
            "pids": {"limit": 5},
        }
    )
    p = cg.paths
    assert read(p["memory"] / "memory.limit_in_bytes") == str(32 * MiB)
    assert read(p["memory"] / "memory.soft_limit_in_bytes") == str(16 * MiB)
    assert read(p["cpu"] / "cpu.shares") == "256"
    assert read(p["cpu"] / "cpu.cfs_quota_us") == "20000"
    assert read(p["cpu"] / "cpu.cfs_period_us") == "100000"
    assert read(p["pids"] / "pids.max") == "5"
    assert read(p["cpuset"] / "cpuset.cpus") == "1"
    # cpuset.mems was empty in the new dir: inherited from the nearest ancestor (runc).
    assert read(p["cpuset"] / "cpuset.mems") == "0"


def test_v1_create_makes_missing_dirs_and_inherits_cpuset(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/a/b", "b", systemd=False, root=v1_tree.root)
    cg.create(None)
    for path in cg.paths.values():
        assert path.is_dir()
    # Fake mkdir makes no control files, so there is nothing to inherit into: no error either.
    assert not (cg.paths["cpuset"] / "cpuset.cpus").exists()


def test_v1_blkio_weight_falls_back_to_bfq(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    cg.create({"blockIO": {"weight": 700}})
    assert read(cg.paths["blkio"] / "blkio.bfq.weight") == "700"


def test_v1_update_orders_swap_by_current_limit(
    v1_tree: FakeTree, writes: list[tuple[str, str]]
) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    mem = cg.paths["memory"]
    (mem / "memory.limit_in_bytes").write_text(str(64 * MiB))
    cg.update({"memory": {"limit": 128 * MiB, "swap": 256 * MiB}})
    assert [name for name, _ in writes] == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]


def test_v1_missing_controller_file_names_file_and_value(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    (cg.paths["pids"] / "pids.max").unlink()
    with pytest.raises(CgroupError) as info:
        cg.update({"pids": {"limit": 9}})
    message = str(info.value)
    assert "pids.max" in message
    assert "'9'" in message
    assert info.value.errno == errno.ENOENT


def test_v1_unmounted_controller_is_an_error(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    with pytest.raises(CgroupError, match="hugetlb cgroup controller is not available"):
        cg.update({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]})


def _kernel_like_mkdir(tree: FakeTree, monkeypatch: pytest.MonkeyPatch, cg: Cgroup) -> None:
    """Make ``cg``'s directories appear with their control files when created, as on
    cgroupfs (a fake tree cannot do that by itself)."""
    real_make = type(cg)._make

    def make(self: Cgroup, path: Path) -> None:
        if not path.is_dir():
            keys = {k: p for k, p in self.paths.items() if p == path}
            tree.populate(type(self)(self.mode, keys, self.root))
        real_make(self, path)

    monkeypatch.setattr(type(cg), "_make", make)


def test_create_reports_whether_it_made_the_cgroup(
    v1_tree: FakeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    cg = Cgroup.for_container("/new", "c", systemd=False, root=v1_tree.root)
    _kernel_like_mkdir(v1_tree, monkeypatch, cg)
    assert cg.create(None) is True
    assert Cgroup.for_container("/new", "c", systemd=False, root=v1_tree.root).create() is False


def test_create_failure_removes_what_it_made(
    v1_tree: FakeTree, fake_rmdir: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    _kernel_like_mkdir(v1_tree, monkeypatch, cg)
    with pytest.raises(CgroupError, match=r"cpu\.rt_runtime_us|hugetlb|not available"):
        cg.create({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]})
    assert not any(p.exists() for p in cg.paths.values())
    assert (v1_tree.root / "memory").is_dir()


def test_create_failure_leaves_an_existing_cgroup_in_place(
    v1_tree: FakeTree, fake_rmdir: None
) -> None:
    # ``ctr run --cgroup /shared``: the cgroup was there before, maybe with processes in it.
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    (cg.paths["memory"] / "memory.limit_in_bytes").unlink()
    with pytest.raises(CgroupError, match=r"memory\.limit_in_bytes"):
        cg.create({"memory": {"limit": MiB}})
    assert all(p.is_dir() for p in cg.paths.values())


def test_einval_period_is_retried_after_quota(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    calls: list[tuple[str, str]] = []
    real = cgroups._write_file
    failed = False

    def flaky(path: Path, value: str) -> None:
        nonlocal failed
        calls.append((path.name, value))
        if path.name == "cpu.cfs_period_us" and not failed:
            failed = True
            raise CgroupError(errno.EINVAL, "cannot write: Invalid argument")
        real(path, value)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cgroups, "_write_file", flaky)
        cg.update({"cpu": {"quota": 10000, "period": 20000}})
    assert calls == [
        ("cpu.cfs_period_us", "20000"),
        ("cpu.cfs_quota_us", "10000"),
        ("cpu.cfs_period_us", "20000"),
    ]


def test_update_on_missing_cgroup(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/gone", "gone", systemd=False, root=v1_tree.root)
    with pytest.raises(CgroupNotFoundError):
        cg.update({"pids": {"limit": 1}})


def test_v2_create_enables_controllers_and_writes(v2_tree: FakeTree) -> None:
    parent = v2_tree.root / "k8s.io"
    parent.mkdir()
    (parent / "cgroup.subtree_control").write_text("")
    cg = Cgroup.for_container("/k8s.io/abc", "abc", systemd=False, root=v2_tree.root)
    v2_tree.populate(cg)
    cg.create(
        {
            "memory": {"limit": 64 * MiB, "swap": 64 * MiB},
            "cpu": {"shares": 2048, "quota": 150000, "period": 100000},
            "pids": {"limit": -1},
        }
    )
    # runc CreateCgroupPath: every ancestor's subtree_control gets the root's controllers.
    enabled = "+cpuset +cpu +io +memory +hugetlb +pids +rdma +misc"
    assert read(v2_tree.root / "cgroup.subtree_control") == enabled
    assert read(parent / "cgroup.subtree_control") == enabled
    leaf = cg.paths[UNIFIED]
    assert read(leaf / "cgroup.subtree_control") == ""  # the leaf itself is not touched
    assert read(leaf / "memory.max") == str(64 * MiB)
    assert read(leaf / "memory.swap.max") == "0"
    assert read(leaf / "cpu.weight") == "79"
    assert read(leaf / "cpu.max") == "150000 100000"
    assert read(leaf / "pids.max") == "max"


def test_v2_missing_file_hints_at_controller(v2_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/x", "x", systemd=False, root=v2_tree.root)
    v2_tree.populate(cg)
    (cg.paths[UNIFIED] / "memory.max").unlink()
    with pytest.raises(CgroupError, match=r"memory\.max.*controller enabled"):
        cg.update({"memory": {"limit": MiB}})


def test_v2_io_weight_fallback_and_optional_swap(v2_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/x", "x", systemd=False, root=v2_tree.root)
    v2_tree.populate(cg)
    (cg.paths[UNIFIED] / "memory.swap.max").unlink()  # no swap accounting
    cg.update({"blockIO": {"weight": 1000}, "memory": {"limit": -1}})
    assert read(cg.paths[UNIFIED] / "io.weight") == "10000"
    assert read(cg.paths[UNIFIED] / "memory.max") == "max"


# --- processes ---------------------------------------------------------------------------------


def test_add_join_and_pids(hybrid_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=hybrid_tree.root)
    hybrid_tree.populate(cg)
    cg.add(4242)
    for path in set(cg.paths.values()):
        assert read(path / "cgroup.procs") == "4242"
    cg.join_self()
    assert read(cg.paths["memory"] / "cgroup.procs") == "0"
    assert read(cg.paths[UNIFIED] / "cgroup.procs") == "0"
    (cg.paths["pids"] / "cgroup.procs").write_text("10\n11\n")
    (cg.paths["pids"] / "sub").mkdir()
    (cg.paths["pids"] / "sub" / "cgroup.procs").write_text("12\n10\n")
    assert sorted(cg.pids()) == [10, 11, 12]


def _procs_holding(root: Path, pid: int) -> list[Path]:
    return [p for p in root.rglob("cgroup.procs") if p.read_text().strip() == str(pid)]


@pytest.mark.usefixtures("own_cgroup")
def test_prime_attach_writes_our_pid_into_our_own_cgroup_once(hybrid_tree: FakeTree) -> None:
    (hybrid_tree.root / "memory" / "process_api" / "abc").mkdir(parents=True)
    (hybrid_tree.root / "memory" / "process_api" / "abc" / "cgroup.procs").write_text("")
    assert cgroups.prime_attach(hybrid_tree.root) is True
    [written] = _procs_holding(hybrid_tree.root, os.getpid())
    hierarchy = written.relative_to(hybrid_tree.root).parts[0]
    own = {"memory": "process_api/abc", "systemd": ""}.get(hierarchy, "")
    assert written.parent == hybrid_tree.root / hierarchy / own


@pytest.mark.usefixtures("own_cgroup")
def test_prime_attach_on_v2_uses_our_cgroup2(v2_tree: FakeTree) -> None:
    scope = v2_tree.root / "user.slice" / "session-1.scope"
    scope.mkdir(parents=True)
    (scope / "cgroup.procs").write_text("")
    assert cgroups.prime_attach(v2_tree.root) is True
    assert _procs_holding(v2_tree.root, os.getpid()) == [scope / "cgroup.procs"]


@pytest.mark.usefixtures("own_cgroup")
def test_prime_attach_failure_is_reported_not_raised(v2_tree: FakeTree) -> None:
    # Our own cgroup2 directory is missing: the write fails, nothing else is touched.
    assert cgroups.prime_attach(v2_tree.root) is False
    assert _procs_holding(v2_tree.root, os.getpid()) == []


def test_open_procs_opens_every_hierarchy_for_writing(hybrid_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=hybrid_tree.root)
    hybrid_tree.populate(cg)
    fds = cg.open_procs()
    try:
        assert len(fds) == len(set(cg.paths.values()))
        for fd in fds:
            os.write(fd, b"4242")
    finally:
        for fd in fds:
            os.close(fd)
    for path in set(cg.paths.values()):
        assert read(path / "cgroup.procs") == "4242"


def test_open_procs_of_missing_cgroup_names_the_file_and_leaks_nothing(
    hybrid_tree: FakeTree,
) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=hybrid_tree.root)
    hybrid_tree.populate(cg)
    (cg.paths["pids"] / "cgroup.procs").unlink()
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(CgroupError, match=r"cannot open .*pids/c/cgroup.procs"):
        cg.open_procs()
    assert len(os.listdir("/proc/self/fd")) == before


def test_pids_of_missing_cgroup(v2_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/none", "none", systemd=False, root=v2_tree.root)
    with pytest.raises(CgroupNotFoundError, match="cgroup does not exist"):
        cg.pids()


def test_v1_freeze_thaw(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    cg.freeze()
    assert read(cg.paths["freezer"] / "freezer.state") == "FROZEN"
    cg.thaw()
    assert read(cg.paths["freezer"] / "freezer.state") == "THAWED"


def test_v1_freeze_stuck_thaws_and_times_out(v1_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    state = cg.paths["freezer"] / "freezer.state"
    real = cgroups._write_file

    def stuck(path: Path, value: str) -> None:
        real(path, "FREEZING" if value == "FROZEN" else value)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cgroups, "_write_file", stuck)
        with pytest.raises(CgroupError, match="timed out") as info:
            cg.freeze()
    assert info.value.errno == errno.ETIMEDOUT
    assert read(state) == "THAWED"


def test_v2_freeze_waits_for_events(v2_tree: FakeTree) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v2_tree.root)
    v2_tree.populate(cg)
    leaf = cg.paths[UNIFIED]
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    cg.freeze()
    assert read(leaf / "cgroup.freeze") == "1"
    with pytest.raises(CgroupError, match="frozen 0"):
        cg.thaw()  # the fake kernel never reports thawed
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    cg.thaw()
    assert read(leaf / "cgroup.freeze") == "0"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_kill_all_signals_every_listed_process(
    v1_tree: FakeTree, sleeper: subprocess.Popen[bytes], writes: list[tuple[str, str]]
) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    # A pid that no longer exists is skipped silently.
    (cg.paths["pids"] / "cgroup.procs").write_text(f"{sleeper.pid}\n999999999\n")
    cg.kill_all(signal.SIGTERM)
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    states = [value for name, value in writes if name == "freezer.state"]
    assert states == ["FROZEN", "THAWED"]  # frozen while signalling, thawed after


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_kill_all_on_an_empty_cgroup_neither_freezes_nor_thaws(
    hybrid_tree: FakeTree, signum: int, writes: list[tuple[str, str]]
) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=hybrid_tree.root)
    hybrid_tree.populate(cg)
    cg.kill_all(signum)
    # SIGKILL still goes through the hybrid host's cgroup.kill (cheap and atomic).
    assert writes == ([("cgroup.kill", "1")] if signum == signal.SIGKILL else [])


def test_kill_all_v2_sigkill_uses_cgroup_kill(
    v2_tree: FakeTree, sleeper: subprocess.Popen[bytes]
) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v2_tree.root)
    v2_tree.populate(cg)
    leaf = cg.paths[UNIFIED]
    (leaf / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    cg.kill_all(signal.SIGKILL)
    assert read(leaf / "cgroup.kill") == "1"
    assert sleeper.poll() is None  # the fake cgroup.kill kills nobody; no manual sweep on v2


def test_kill_all_without_freezer_still_signals(
    v2_tree: FakeTree, sleeper: subprocess.Popen[bytes]
) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v2_tree.root)
    v2_tree.populate(cg)
    leaf = cg.paths[UNIFIED]
    (leaf / "cgroup.freeze").unlink()
    (leaf / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    cg.kill_all(signal.SIGTERM)
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


# --- delete ------------------------------------------------------------------------------------


def test_delete_removes_leaves_only_and_is_idempotent(
    hybrid_tree: FakeTree, fake_rmdir: None
) -> None:
    cg = Cgroup.for_container("/default/c", "c", systemd=False, root=hybrid_tree.root)
    hybrid_tree.populate(cg)
    (cg.paths["memory"] / "nested" / "deeper").mkdir(parents=True)
    (cg.paths["memory"] / "nested" / "cgroup.procs").write_text("")
    (cg.paths["memory"] / "nested" / "deeper" / "cgroup.procs").write_text("")
    cg.delete()
    for path in cg.paths.values():
        assert not path.exists()
        assert path.parent.is_dir()  # /default is shared with other containers
    cg.delete()


def test_delete_retries_while_busy(v1_tree: FakeTree, monkeypatch: pytest.MonkeyPatch) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)
    busy = {"left": 2}

    def rmdir(path: Path) -> None:
        if path == cg.paths["memory"] and busy["left"]:
            busy["left"] -= 1
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        _fake_rmdir(path)

    monkeypatch.setattr(cgroups, "_rmdir", rmdir)
    cg.delete()
    assert not cg.paths["memory"].exists()
    assert busy["left"] == 0


def test_delete_gives_up_naming_the_dir(v1_tree: FakeTree, monkeypatch: pytest.MonkeyPatch) -> None:
    cg = Cgroup.for_container("/c", "c", systemd=False, root=v1_tree.root)
    v1_tree.populate(cg)

    def rmdir(path: Path) -> None:
        if path == cg.paths["pids"]:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        _fake_rmdir(path)

    monkeypatch.setattr(cgroups, "_rmdir", rmdir)
    started = time.monotonic()
    with pytest.raises(CgroupError, match="pids/c") as info:
        cg.delete()
    assert info.value.errno == errno.EBUSY
    assert time.monotonic() - started < 5
    assert not cg.paths["memory"].exists()  # the other hierarchies were still cleaned


def test_from_state_delete(hybrid_tree: FakeTree, fake_rmdir: None) -> None:
    cg = Cgroup.for_container("/default/c", "c", systemd=False, root=hybrid_tree.root)
    hybrid_tree.populate(cg)
    Cgroup.from_state(cg.to_state()).delete()
    assert not any(p.exists() for p in cg.paths.values())


def test_delete_refuses_non_cgroup_dirs(tmp_path: Path) -> None:
    # A corrupt state file pointing at an ordinary tree must not empty it out.
    victim = tmp_path / "data"
    (victim / "empty-subdir").mkdir(parents=True)
    state = {"version": 1, "mode": "v2", "root": str(tmp_path), "paths": {UNIFIED: str(victim)}}
    with pytest.raises(CgroupError, match="not a cgroup") as info:
        Cgroup.from_state(state).delete()
    assert info.value.errno == errno.ENOTDIR
    assert (victim / "empty-subdir").is_dir()
