"""Real containers (root): namespaces, rootfs, devices, security and the sync channel."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cgroup_helpers import MakeCgroup
from ctrlib_harness import ContainerSetup, Harness, make_spec

from containerd_shimkit.container import (
    ContainerError,
    exec_native,
    mount_rootfs,
    unmount_rootfs,
)
from containerd_shimkit.container.cgroups import Cgroup, parse_proc_cgroup

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mounts)"),
]


def sh(script: str, **process: Any) -> dict[str, Any]:
    return make_spec(["sh", "-c", script], **process)


def test_pid_namespace_makes_the_process_pid_1(harness: Harness) -> None:
    result = harness.run(sh("echo $$; read comm < /proc/1/comm; echo $comm"))
    assert result.stdout.split() == ["1", "sh"], result
    assert result.code == 0


def test_exit_code_is_returned(harness: Harness) -> None:
    assert harness.run(sh("exit 7")).code == 7


def test_hostname_is_set_in_the_new_uts_namespace(harness: Harness) -> None:
    host = socket.gethostname()
    result = harness.run(sh("hostname"))
    assert result.stdout.strip() == "ctrlib-test"
    assert socket.gethostname() == host


def test_writes_land_in_the_overlay_upper_dir(harness: Harness, overlay: dict[str, Path]) -> None:
    result = harness.run(sh("echo hi > /ctrlib-new && cat /ctrlib-new"))
    assert result.stdout == "hi\n", result
    assert (overlay["upper"] / "ctrlib-new").read_text() == "hi\n"
    assert not (overlay["lower"] / "ctrlib-new").exists()


def test_default_devices_and_dev_links(harness: Harness) -> None:
    script = (
        "for d in null zero full random urandom tty; do test -c /dev/$d || echo missing $d; done;"
        "echo gone > /dev/null; cat /dev/null | wc -c; head -c 5 /dev/zero | wc -c;"
        "readlink /dev/ptmx; readlink /dev/fd; readlink /dev/stdin;"
        "test -d /dev/pts && test -d /dev/shm && echo ok"
    )
    result = harness.run(sh(script))
    assert result.stdout.split() == ["0", "5", "pts/ptmx", "/proc/self/fd", "/proc/self/fd/0", "ok"]


def test_spec_devices_are_created(harness: Harness) -> None:
    spec = sh("ls -ln /dev/ctrlib-null | cut -c1-10")
    spec["linux"]["devices"] = [
        {"path": "/dev/ctrlib-null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640}
    ]
    assert harness.run(spec).stdout.strip() == "crw-r-----"


def test_masked_paths_hide_files_and_directories(harness: Harness) -> None:
    spec = sh("cat /etc/secret; echo; ls /sys/firmware | wc -l; cat /proc/kcore | wc -c")
    spec["linux"]["maskedPaths"] += ["/etc/secret", "/ctrlib-missing"]
    result = harness.run(spec)
    assert result.stdout.split() == ["0", "0"], result


def test_readonly_paths_refuse_writes(harness: Harness) -> None:
    spec = sh("touch /data/x 2>&1; touch /tmp/x && echo tmp-ok; echo 1 > /proc/sys/vm/swappiness")
    spec["linux"]["readonlyPaths"] += ["/data", "/ctrlib-missing"]
    result = harness.run(spec)
    assert "Read-only file system" in result.stdout
    assert "tmp-ok" in result.stdout
    assert "Read-only file system" in result.stderr  # /proc/sys


def test_readonly_root(harness: Harness) -> None:
    spec = sh("touch /x 2>&1; touch /run/x && echo run-ok")
    spec["root"]["readonly"] = True
    result = harness.run(spec)
    assert "Read-only file system" in result.stdout
    assert "run-ok" in result.stdout


def test_rlimits_are_applied(harness: Harness) -> None:
    rlimits = [{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]
    result = harness.run(sh("ulimit -n; ulimit -Hn", rlimits=rlimits))
    assert result.stdout.split() == ["123", "456"], result


def test_user_and_groups_are_switched(harness: Harness) -> None:
    user = {"uid": 1000, "gid": 1001, "additionalGids": [1002, 1003]}
    result = harness.run(sh("id -u; id -g; id -G", user=user))
    uid, gid, *groups = result.stdout.split()
    assert (uid, gid) == ("1000", "1001"), result
    assert {"1002", "1003"} <= set(groups)


def test_capabilities_are_dropped(harness: Harness) -> None:
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NOT_A_CAPABILITY"]
    capabilities = {k: caps for k in ("bounding", "effective", "permitted")}
    result = harness.run(sh("grep -E '^Cap(Eff|Bnd)' /proc/self/status", capabilities=capabilities))
    assert result.stdout.split() == ["CapEff:", "0000000000000021", "CapBnd:", "0000000000000021"]


def test_non_root_user_keeps_ambient_capabilities(harness: Harness) -> None:
    caps = ["CAP_NET_BIND_SERVICE"]
    sets = ("bounding", "effective", "permitted", "inheritable", "ambient")
    user = {"uid": 1000, "gid": 1000}
    spec = sh("grep CapEff /proc/self/status", capabilities=dict.fromkeys(sets, caps), user=user)
    assert harness.run(spec).stdout.split() == ["CapEff:", "0000000000000400"]


@pytest.mark.parametrize("nnp", [True, False])
def test_no_new_privs(harness: Harness, nnp: bool) -> None:
    result = harness.run(sh("grep NoNewPrivs /proc/self/status", noNewPrivileges=nnp))
    assert result.stdout.split() == ["NoNewPrivs:", "1" if nnp else "0"]


def _native_archs() -> list[str]:
    return {
        "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    }.get(platform.machine(), [])


@pytest.mark.parametrize("nnp", [True, False])
def test_seccomp_errno_rule_blocks_mkdir(harness: Harness, nnp: bool) -> None:
    spec = sh("mkdir /tmp/d; echo rc=$?; touch /tmp/f && echo touch-ok", noNewPrivileges=nnp)
    spec["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": _native_archs(),
        "syscalls": [
            {"names": ["mkdir", "mkdirat", "ctrlib_unknown"], "action": "SCMP_ACT_ERRNO",
             "errnoRet": 1},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
        ],
    }  # fmt: skip
    result = harness.run(spec)
    assert "Operation not permitted" in result.stderr, result
    assert result.stdout.split() == ["rc=1", "touch-ok"]


def test_invalid_seccomp_profile_fails_start(harness: Harness) -> None:
    spec = sh("true")
    spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_BOGUS"}
    container = harness.create(spec)
    assert container.recv() == {"ready": True}
    reply = container.start()
    assert reply is not None and "SCMP_ACT_BOGUS" in reply["error"]
    assert container.wait() == 1


def test_joins_an_existing_network_namespace(harness: Harness) -> None:
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        for _ in range(200):  # until unshare(1) has exec'd sleep in the new namespace
            if os.readlink(path) != os.readlink("/proc/self/ns/net"):
                break
            os.sched_yield()
        spec = sh("readlink /proc/self/ns/net")
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = path
        result = harness.run(spec)
        assert result.stdout.strip() == f"net:[{os.stat(path).st_ino}]", result
    finally:
        holder.kill()
        holder.wait()


def test_host_network_binds_sys_read_only(harness: Harness) -> None:
    spec = sh("ls /sys/class/net | wc -l; touch /sys/x 2>&1")
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    result = harness.run(spec)
    count, *rest = result.stdout.split("\n", 1)
    assert int(count) == len(os.listdir("/sys/class/net"))
    assert "Read-only file system" in rest[0]


def test_sysctl_and_oom_score_adj(harness: Harness) -> None:
    spec = sh("cat /proc/sys/net/ipv4/ip_forward /proc/self/oom_score_adj", oomScoreAdj=100)
    spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    assert harness.run(spec).stdout.split() == ["1", "100"]


def test_negative_oom_score_adj_is_not_fatal(harness: Harness) -> None:
    assert harness.run(sh("true", oomScoreAdj=-500)).code == 0


def test_stdio_fds_reach_the_process(harness: Harness) -> None:
    result = harness.run(sh("cat; echo to-stderr >&2"), stdin=b"hello-stdin\n")
    assert result.stdout == "hello-stdin\n"
    assert result.stderr == "to-stderr\n"


def test_cwd_and_env(harness: Harness) -> None:
    spec = sh("pwd; echo $CTRLIB", cwd="/etc", env=["PATH=/bin", "CTRLIB=yes"])
    assert harness.run(spec).stdout.split() == ["/etc", "yes"]


class FailingPrepare:
    def prepare(self, setup: ContainerSetup) -> None:
        raise RuntimeError("ctrlib prepare failed")

    def run(self, setup: ContainerSetup) -> int:
        raise AssertionError("not reached")


def test_prepare_error_is_reported_and_init_exits(harness: Harness) -> None:
    container = harness.create(sh("true"), FailingPrepare())
    assert container.recv() == {"error": "ctrlib prepare failed"}
    assert container.wait() == 1


class RaisingRun:
    def prepare(self, setup: ContainerSetup) -> None:
        pass

    def run(self, setup: ContainerSetup) -> int:
        raise RuntimeError("trap")


def test_workload_exception_exits_137(harness: Harness) -> None:
    container = harness.create(sh("true"), RaisingRun())
    assert container.recv() == {"ready": True}
    assert container.start() == {"started": True}
    assert container.wait() == 137


def test_delete_before_start_exits_zero(harness: Harness) -> None:
    container = harness.create(sh("echo should-not-run"))
    assert container.recv() == {"ready": True}
    container.channel.close()
    assert container.wait() == 0
    assert container.stdout.read_text() == ""


def test_missing_executable_is_a_workload_error(harness: Harness) -> None:
    container = harness.create(make_spec(["ctrlib-no-such-binary"]))
    assert container.recv() == {"ready": True}
    assert container.start() == {"started": True}
    assert container.wait() == 137


def test_namespace_path_error_raises_container_error(harness: Harness) -> None:
    spec = sh("true")
    spec["linux"]["namespaces"][-1]["path"] = "/nonexistent/ctrlib-netns"
    with pytest.raises(ContainerError, match="network namespace /nonexistent/ctrlib-netns"):
        harness.create(spec)


def test_user_namespace_is_refused(harness: Harness) -> None:
    spec = sh("true")
    spec["linux"]["namespaces"].append({"type": "user"})
    with pytest.raises(ContainerError, match="user namespaces"):
        harness.create(spec)


class MarkerCgroup:
    """Stands in for a cgroup: the pid the helper moves in is written to a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def open_procs(self) -> list[int]:
        return [os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)]


class UnwritableCgroup:
    """A cgroup whose membership file refuses the write (as a cpuset without cpus does)."""

    def open_procs(self) -> list[int]:
        return [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)]


def _children() -> set[int]:
    """Our child processes, zombies included (the test process is the subreaper)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == os.getpid():
                children.add(int(entry.name))
    return children


def test_the_helper_moves_the_init_into_the_cgroup(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "ctrlib-cgroup-joined"
    container = harness.create(sh("true"), cgroup=MarkerCgroup(marker))
    assert container.recv() == {"ready": True}
    assert marker.read_text() == str(container.pid)
    assert container.start() == {"started": True}
    assert container.result().code == 0


def test_a_failed_cgroup_join_fails_create_and_leaves_no_process(harness: Harness) -> None:
    before = _children()
    with pytest.raises(ContainerError, match="joining the cgroup"):
        harness.create(sh("true"), cgroup=UnwritableCgroup())
    assert _children() == before


class ReportCgroup:
    """Workload: ``prepare`` writes the init's /proc/self/cgroup to stdout; ``run`` execs."""

    def prepare(self, setup: ContainerSetup) -> None:
        with open("/proc/self/cgroup", "rb") as f:
            os.write(1, f.read())

    def run(self, setup: ContainerSetup) -> int:
        exec_native(setup)


def _own_paths(proc_cgroup: str, cg: Cgroup) -> set[str]:
    own = parse_proc_cgroup(proc_cgroup)
    return {own[key] for key in cg.paths}


@pytest.mark.skipif(not Path("/sys/fs/cgroup").is_dir(), reason="no cgroupfs at /sys/fs/cgroup")
def test_the_workload_prepares_inside_the_cgroup(harness: Harness, make_cgroup: MakeCgroup) -> None:
    cg = make_cgroup()
    name = next(iter(cg.paths.values())).name
    result = harness.run(sh("true"), workload=ReportCgroup(), cgroup=cg)
    assert result.code == 0, result
    paths = _own_paths(result.stdout, cg)
    assert paths and all(path.endswith(f"/{name}") for path in paths), result.stdout


@pytest.mark.skipif(not Path("/sys/fs/cgroup").is_dir(), reason="no cgroupfs at /sys/fs/cgroup")
def test_a_new_cgroup_namespace_is_rooted_at_the_container_cgroup(
    harness: Harness, make_cgroup: MakeCgroup
) -> None:
    cg = make_cgroup()
    spec = sh("cat /proc/self/cgroup")
    spec["linux"]["namespaces"].append({"type": "cgroup"})
    result = harness.run(spec, cgroup=cg)
    assert result.code == 0, result
    assert _own_paths(result.stdout, cg) == {"/"}, result.stdout


def _mounts_under(directory: Path) -> list[str]:
    """Host mount table lines whose mount point is below ``directory``.

    Scoped to the test's own directory: other processes on the machine (a containerd, another
    test run) may mount and unmount elsewhere while the test runs.
    """
    prefix = str(directory.resolve())
    return [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4] == prefix or line.split()[4].startswith(prefix + "/")
    ]


def test_nothing_leaks_into_the_host_mount_table(harness: Harness) -> None:
    before = _mounts_under(harness.bundle.parent)
    harness.run(sh("true"))
    assert _mounts_under(harness.bundle.parent) == before


def _mount_points() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def test_bind_rootfs_is_read_only_and_fully_unmounted(tmp_path: Path, busybox_lower: Path) -> None:
    target = tmp_path / "ctrlib-bind-rootfs"
    mounts = [("bind", str(busybox_lower), ["rbind", "ro"])] * 2  # stacked twice
    mount_rootfs(mounts, target)
    try:
        assert str(target) in _mount_points()
        assert (target / "bin" / "busybox").exists()
        with pytest.raises(OSError, match="Read-only file system"):
            (target / "x").touch()
    finally:
        unmount_rootfs(target)
    assert str(target) not in _mount_points()
    unmount_rootfs(target)  # idempotent


def _child_pid(pid: int) -> int:
    for _ in range(2000):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        os.sched_yield()
    raise AssertionError(f"{pid} has no child")


def test_joins_an_existing_pid_namespace(harness: Harness) -> None:
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "60"])
    try:
        init = _child_pid(holder.pid)  # pid 1 of the new namespace
        spec = sh("echo $$; read comm < /proc/1/comm; echo $comm")
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "pid":
                ns["path"] = f"/proc/{init}/ns/pid"
        result = harness.run(spec)
        pid, comm = result.stdout.split()
        assert pid != "1" and comm == "sleep", result
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("propagation", ["private", "rslave", "rshared", "runbindable"])
def test_rootfs_propagation(harness: Harness, propagation: str) -> None:
    before = _mounts_under(harness.bundle.parent)
    spec = sh("echo ok")
    spec["linux"]["rootfsPropagation"] = propagation
    assert harness.run(spec).stdout == "ok\n"
    assert _mounts_under(harness.bundle.parent) == before
