"""The Kubernetes path: pods driven through containerd's CRI API, the way kubelet does.

Every pod runs with the runtime handler ``wasm`` (``runtime_type = io.containerd.wasmtime.v1``,
the shim found on containerd's PATH as the venv's ``containerd-shim-wasmtime-v1``), so the
pod's pause container (``localhost/pause:test``, a static native binary) runs through this
shim too, as does every container of the pod: wasm ones (``localhost/hello:test``, the demo
module as ``/demo.wasm``; ``localhost/hello-artifact:test``, the CNCF artifact form) and
native ones (``localhost/busybox:test``). One shim daemon serves the whole pod.

Each test gets its own private containerd with CRI (``cri_containerd`` fixture, configured by
indirect parametrization) and checks, after StopPodSandbox and RemovePodSandbox, that nothing
of the pod is left: no shim process, mount, cgroup, shim socket or pod netns. The fixture's
leak report at teardown must be empty as well.

containerd hands a non-runc runtime its CRI ``options`` table as ``runtimeoptions.v1.Options``:
1.7 and 2.x put the whole table, as TOML, in ``config_body``; 1.6 decodes the table into the
message's own fields (``TypeUrl``, ``ConfigPath``) and drops every other key, so it sends an
empty message unless ``ConfigPath`` names a file (see ``test_runtime_options_*``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest

from tests.fixtures.wasm.build import Fixtures, build_all
from tests.support.containerd import (
    CGROUP_ROOT,
    CRI_NAMESPACE,
    SHIM_SOCKET_DIR,
    RuntimeHandler,
    cgroup_hierarchies,
    mount_points,
    process_alive,
    process_parents,
    shim_socket_name,
)
from tests.support.cri import (
    container_config,
    cri_log_messages,
    kubelet_cgroup_parent,
    parse_cri_log,
)
from tests.support.plugin import CriEnv, Pod, requires_root

pytestmark = [pytest.mark.containerd, pytest.mark.root, pytest.mark.cri, requires_root]

RUNTIME = "io.containerd.wasmtime.v1"
HANDLER = "wasm"
SHIM_BINARY = "containerd-shim-wasmtime-v1"
VENV_BIN = Path(sys.executable).parent
HELLO = "localhost/hello:test"
ARTIFACT = "localhost/hello-artifact:test"
BUSYBOX = "localhost/busybox:test"
MISMATCH = "mismatched image rootfs and manifest layers"

#: A file the ConfigPath variant of the runtime options points at (written by the test).
OPTIONS_FILE = Path(f"/run/cri-wasm-options-{os.getpid()}.toml")


def _handler(**options: Any) -> RuntimeHandler:
    return RuntimeHandler(RUNTIME, options=dict(options))


def _param(**options: Any) -> dict[str, Any]:
    """A ``cri_containerd`` param: the ``wasm`` handler with these options."""
    return {"handlers": {HANDLER: _handler(**options)}, "extra_path": [VENV_BIN]}


CGROUPFS = _param(SystemdCgroup=False)
SYSTEMD = _param(SystemdCgroup=True)
ONE_CGROUPFS = pytest.mark.parametrize(
    "cri_containerd", [pytest.param(CGROUPFS, id="cgroupfs")], indirect=True
)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def fx() -> Fixtures:
    return build_all()


def _import_images(env: CriEnv, fx: Fixtures, *keys: str) -> None:
    """``ctr images import --all-platforms`` into ``k8s.io`` (the wasm images' index entries
    say wasip1/wasm, which ctr would otherwise filter out).

    containerd < 1.6.25 / 1.7.7 refuses to unpack wasm-layer images ("mismatched image rootfs
    and manifest layers"): those are imported with ``--no-unpack``. CRI still creates
    containers from them (with an empty rootfs); the shim reads the module from containerd's
    content store.
    """
    for key in ("pause", *keys):
        path = str(fx.images[key].path)
        args = ("images", "import", "--all-platforms")
        proc = env.containerd.ctr(*args, path, namespace=CRI_NAMESPACE)
        if proc.returncode != 0 and MISMATCH in proc.stderr:
            proc = env.containerd.ctr(*args, "--no-unpack", path, namespace=CRI_NAMESPACE)
        assert proc.returncode == 0, f"ctr images import {path}: {proc.stderr}"


def _info(message: Any) -> dict[str, Any]:
    """The JSON ``info`` of a verbose PodSandboxStatus or ContainerStatus response."""
    return dict(json.loads(message.info["info"]))


def sandbox_pid(env: CriEnv, pod: Pod) -> int:
    return int(_info(env.client.pod_sandbox_status(pod.id, verbose=True))["pid"])


def container_pid(env: CriEnv, cid: str) -> int:
    req = env.api.pb.ContainerStatusRequest(container_id=cid, verbose=True)
    return int(_info(env.client.runtime.ContainerStatus(req, timeout=30))["pid"])


def ns_inode(pid: int, kind: str) -> int:
    """The inode of ``/proc/<pid>/ns/<kind>`` (equal inodes: the same namespace)."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def oom_score_adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in (f"-{name}", f"--{name}") and i + 1 < len(argv):
            return argv[i + 1]
        for prefix in (f"-{name}=", f"--{name}="):
            if arg.startswith(prefix):
                return arg[len(prefix) :]
    return None


def shim_daemons(env: CriEnv) -> dict[int, list[str]]:
    """Our shim daemons of this containerd: pid → argv.

    A daemon's argv names the containerd ``-address`` and our binary. The zygote and the wasm
    container inits are forks of the daemon (same argv): they are told apart by their parent,
    which is a shim process too; ``start``/``delete`` invocations end with their action.
    """
    shims = {pid: argv for pid, argv in env.containerd.shim_processes()}
    parents = process_parents()
    return {
        pid: argv
        for pid, argv in shims.items()
        if any(Path(a).name == SHIM_BINARY for a in argv[:2])
        and argv[-1] not in ("start", "delete")
        and parents.get(pid) not in shims
        and process_alive(pid)
    }


def pod_daemons(env: CriEnv, pod: Pod) -> list[int]:
    """The shim daemons whose ``-id`` is the pod's sandbox id."""
    return sorted(pid for pid, argv in shim_daemons(env).items() if _flag(argv, "id") == pod.id)


def wait_for(
    check: Callable[[], Any], what: str, timeout: float = 20.0, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def log_text(env: CriEnv, cid: str) -> str:
    path = Path(env.client.container_status(cid).log_path)
    return path.read_text() if path.exists() else ""


def wait_log(env: CriEnv, cid: str, pattern: str, timeout: float = 20.0) -> list[str]:
    """Wait until a full stdout message of ``cid``'s CRI log matches ``pattern``."""

    def found() -> list[str]:
        messages = cri_log_messages(log_text(env, cid), "stdout")
        return messages if any(re.search(pattern, m) for m in messages) else []

    try:
        return list(wait_for(found, f"{pattern!r} in the log of {cid}", timeout))
    except pytest.fail.Exception:
        print(shim_log(env))
        raise


def shim_log(env: CriEnv, lines: int = 80) -> str:
    """The shim's lines of containerd's log (they carry ``pod=<sandbox id>``), and
    containerd's own about shims."""
    text = env.containerd.log_text().splitlines()
    ours = [ln for ln in text if " pod=" in ln or "shim" in ln]
    return "\n".join(ours[-lines:])


def start(
    env: CriEnv,
    pod: Pod,
    name: str,
    image: str,
    command: list[str],
    *,
    oom_score_adj: int | None = None,
    runtime_default_seccomp: bool = False,
) -> str:
    """CreateContainer + StartContainer, as kubelet would (optionally with the
    ``oomScoreAdj`` kubelet computes from the QoS class, and ``seccompProfile:
    RuntimeDefault``)."""
    config = container_config(env.api, name, image, command=command, host_network=pod.host_network)
    if oom_score_adj is not None:
        config.linux.resources.oom_score_adj = oom_score_adj
    if runtime_default_seccomp:
        profile = config.linux.security_context.seccomp
        profile.profile_type = env.api.pb.SecurityProfile.RuntimeDefault
    cid = env.client.create_container(pod.id, config, pod.config)
    try:
        env.client.start_container(cid)
    except grpc.RpcError:
        print(shim_log(env))
        raise
    return cid


def run_to_exit(env: CriEnv, pod: Pod, name: str, image: str, command: list[str], **kw: Any) -> Any:
    cid = start(env, pod, name, image, command, **kw)
    return env.client.wait_container_exit(cid)


def container_cgroups(cid: str) -> list[Path]:
    """Every cgroup dir of container ``cid`` (cgroupfs ``…/<id>``, systemd ``…-<id>.scope``)."""
    found: list[Path] = []
    for hierarchy in cgroup_hierarchies():
        for pattern in (f"**/{cid}", f"**/*-{cid}.scope"):
            found += [p for p in hierarchy.glob(pattern) if p.is_dir()]
    return found


def teardown_pod(env: CriEnv, pod: Pod, cids: list[str]) -> None:
    """StopPodSandbox, then RemovePodSandbox, checking each time that nothing of the pod is
    left: no shim daemon, zygote or container process, mount, cgroup, shim socket or netns.

    StopPodSandbox alone must already release all of it: containerd deletes every task of
    the pod there, and the daemon exits once it holds no container. RemovePodSandbox then only
    drops containerd's records.
    """
    spec = _info(env.client.pod_sandbox_status(pod.id, verbose=True)).get("runtimeSpec", {})
    netns_paths = [
        ns.get("path", "")
        for ns in spec.get("linux", {}).get("namespaces", [])
        if ns.get("type") == "network"
    ]
    pids = [sandbox_pid(env, pod), *pod_daemons(env, pod)]
    ids = [pod.id, *cids]
    ctd = env.containerd
    sock = SHIM_SOCKET_DIR / shim_socket_name(str(ctd.address), CRI_NAMESPACE, pod.id)

    def problems() -> list[str]:
        found = [f"shim daemon {pid}" for pid in pod_daemons(env, pod)]
        found += [f"process {pid}" for pid in pids if process_alive(pid)]
        found += [
            f"shim process {pid}: {' '.join(argv)}"
            for pid, argv in ctd.shim_processes()
            if any(i in argv for i in ids)
        ]
        found += [f"mount {mp}" for mp, _ in mount_points() if any(i in mp for i in ids)]
        found += [f"cgroup {p}" for i in ids for p in container_cgroups(i)]
        found += [f"socket {sock}"] if sock.exists() else []
        found += [f"netns {p}" for p in netns_paths if p and Path(p).exists()]
        return found

    def check(after: str) -> None:
        deadline = time.monotonic() + 10.0
        while (left := problems()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], f"left after {after}: {left}\n{shim_log(env)}"

    env.client.stop_pod_sandbox(pod.id)
    check("StopPodSandbox")
    env.remove_pod(pod)  # StopPodSandbox again (a no-op), then RemovePodSandbox
    check("RemovePodSandbox")
    if not env.pods:  # containerd's own report covers every pod it ran
        assert ctd.leftovers(wait=5.0) == []
        if env.network is not None:
            assert env.network.leftovers() == []


# --------------------------------------------------------------------------- pods


@ONE_CGROUPFS
def test_pod_network_wasm_and_native_share_the_pod(cri_containerd: CriEnv, fx: Fixtures) -> None:
    """A bridge-network pod: pause, a wasm container and a busybox sidecar, one shim daemon,
    one network (and IPC, UTS) namespace; the wasm stdout lands in its CRI log file."""
    env, client = cri_containerd, cri_containerd.client
    _import_images(env, fx, "hello", "busybox")
    pod = env.run_pod("wasm-net", handler=HANDLER, host_network=False)
    assert env.network is not None
    ip = client.pod_sandbox_status(pod.id).status.network.ip

    # The pause container itself runs through our shim.
    info = json.loads(
        env.containerd.ctr("containers", "info", pod.id, namespace=CRI_NAMESPACE, check=True).stdout
    )
    assert info["Runtime"]["Name"] == RUNTIME
    (daemon,) = pod_daemons(env, pod)
    pause = sandbox_pid(env, pod)
    assert process_parents()[pause] == daemon

    # BestEffort pods' containers get oomScoreAdj 1000 from kubelet.
    wasm = start(env, pod, "ticker", HELLO, ["/demo.wasm", "daemon"], oom_score_adj=1000)
    sidecar = start(
        env, pod, "sidecar", BUSYBOX,
        ["/bin/sh", "-c", "echo shared-by-native > /dev/shm/pod-file; hostname; "
                          "cat /etc/hostname; ip -4 -o addr show eth0; "
                          "grep -c . /etc/hosts /etc/resolv.conf; exec sleep 600"],
        oom_score_adj=1000,
    )  # fmt: skip
    messages = wait_log(env, wasm, r"^daemon: tick 2$")
    assert messages[:2] == ["daemon: tick 1", "daemon: tick 2"]
    records = parse_cri_log(log_text(env, wasm))
    assert {r.stream for r in records} == {"stdout"}
    assert all(not r.partial for r in records)
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", r.timestamp)
               for r in records)  # fmt: skip

    out = wait_log(env, sidecar, r"/etc/resolv.conf")
    assert out[0] == out[1] == "wasm-net", out  # UTS: the pod's hostname, also /etc/hostname
    assert f"inet {ip}/" in out[2], out
    assert re.fullmatch(r"/etc/hosts:[1-9]\d*", out[3]), out
    # The pod's IPC namespace comes with its /dev/shm: a wasm guest reads the sidecar's file.
    reader = run_to_exit(env, pod, "reader", HELLO, ["/demo.wasm", "cat", "/dev/shm/pod-file"])
    assert reader.exit_code == 0, f"{Path(reader.log_path).read_text()}\n{shim_log(env)}"
    assert cri_log_messages(Path(reader.log_path).read_text(), "stdout") == ["shared-by-native"]

    # One daemon for the pod; it is the parent of every container's init.
    assert pod_daemons(env, pod) == [daemon]
    pids = {
        "pause": pause,
        "wasm": container_pid(env, wasm),
        "sidecar": container_pid(env, sidecar),
    }
    parents = process_parents()
    assert {name: parents[pid] for name, pid in pids.items()} == dict.fromkeys(pids, daemon)
    for kind in ("net", "ipc", "uts"):
        inodes = {name: ns_inode(pid, kind) for name, pid in pids.items()}
        assert len(set(inodes.values())) == 1, (kind, inodes)
    assert ns_inode(pause, "net") != ns_inode(os.getpid(), "net")
    # Each container still has its own pid and mount namespaces.
    assert len({ns_inode(pid, "pid") for pid in pids.values()}) == 3
    assert len({ns_inode(pid, "mnt") for pid in pids.values()}) == 3
    # oomScoreAdj: the containers' from kubelet, the pause's as CRI restricted it.
    pause_spec = _info(client.pod_sandbox_status(pod.id, verbose=True))["runtimeSpec"]
    expected = {"pause": pause_spec["process"]["oomScoreAdj"], "wasm": 1000, "sidecar": 1000}
    assert {n: oom_score_adj(pid) for n, pid in pids.items()} == expected

    teardown_pod(env, pod, [wasm, sidecar, reader.id])


@ONE_CGROUPFS
def test_host_network_pod(cri_containerd: CriEnv, fx: Fixtures) -> None:
    """A host-network pod: every container is in the node's network namespace, /sys is
    read-only, and one shim daemon serves the pod."""
    env, client = cri_containerd, cri_containerd.client
    _import_images(env, fx, "hello", "busybox")
    pod = env.run_pod("wasm-host", handler=HANDLER, host_network=True)
    wasm = start(env, pod, "ticker", HELLO, ["/demo.wasm", "daemon"])
    sidecar = start(
        env, pod, "sidecar", BUSYBOX,
        ["/bin/sh", "-c", "awk '$2 == \"/sys\" {print $4}' /proc/mounts; "
                          "grep -c . /proc/net/dev; exec sleep 600"],
    )  # fmt: skip
    wait_log(env, wasm, r"^daemon: tick 1$")
    out = wait_log(env, sidecar, r"^\d+$")
    assert out[0].split(",")[0] == "ro", out

    host = ns_inode(os.getpid(), "net")
    pids = [sandbox_pid(env, pod), container_pid(env, wasm), container_pid(env, sidecar)]
    assert [ns_inode(pid, "net") for pid in pids] == [host] * 3
    assert len({ns_inode(pid, "ipc") for pid in pids}) == 1
    assert ns_inode(pids[0], "ipc") != ns_inode(os.getpid(), "ipc")
    (daemon,) = pod_daemons(env, pod)
    parents = process_parents()
    assert [parents[pid] for pid in pids] == [daemon] * 3
    assert client.container_status(wasm).state == client.pb.CONTAINER_RUNNING

    teardown_pod(env, pod, [wasm, sidecar])


@ONE_CGROUPFS
def test_one_shim_daemon_per_pod(cri_containerd: CriEnv, fx: Fixtures) -> None:
    """Two pods with two containers each: exactly two daemons, each the parent of its own
    pod's processes only."""
    env = cri_containerd
    _import_images(env, fx, "hello", "busybox")
    pods = [env.run_pod(f"pod-{n}", handler=HANDLER) for n in ("a", "b")]
    cids = {
        pod.id: [
            start(env, pod, "wasm", HELLO, ["/demo.wasm", "sleep", "600"]),
            start(env, pod, "native", BUSYBOX, ["/bin/sleep", "600"]),
        ]
        for pod in pods
    }
    daemons = shim_daemons(env)
    assert len(daemons) == 2, daemons
    parents = process_parents()
    for pod in pods:
        (daemon,) = pod_daemons(env, pod)
        pids = [sandbox_pid(env, pod), *(container_pid(env, c) for c in cids[pod.id])]
        assert [parents[p] for p in pids] == [daemon] * 3
    for pod in pods:
        teardown_pod(env, pod, cids[pod.id])
    assert shim_daemons(env) == {}


# --------------------------------------------------------------------------- exit, logs


@ONE_CGROUPFS
def test_exit_code_and_reason(cri_containerd: CriEnv, fx: Fixtures) -> None:
    env = cri_containerd
    _import_images(env, fx, "hello", "busybox")
    pod = env.run_pod("exits", handler=HANDLER)
    failed = run_to_exit(env, pod, "fails", HELLO, ["/demo.wasm", "exit", "3"])
    assert (failed.exit_code, failed.reason) == (3, "Error")
    ok = run_to_exit(env, pod, "echo", HELLO, ["/demo.wasm", "echo", "bye"])
    assert (ok.exit_code, ok.reason) == (0, "Completed")
    assert cri_log_messages(Path(ok.log_path).read_text(), "stdout") == ["bye"]
    native = run_to_exit(env, pod, "native", BUSYBOX, ["/bin/sh", "-c", "exit 5"])
    assert (native.exit_code, native.reason) == (5, "Error")
    teardown_pod(env, pod, [failed.id, ok.id, native.id])


@ONE_CGROUPFS
def test_wasm_stdout_and_stderr_in_cri_log(cri_containerd: CriEnv, fx: Fixtures) -> None:
    env = cri_containerd
    _import_images(env, fx, "hello")
    pod = env.run_pod("logs", handler=HANDLER)
    out = run_to_exit(env, pod, "out", HELLO, ["/demo.wasm", "echo", "to", "stdout"])
    err = run_to_exit(env, pod, "err", HELLO, ["/demo.wasm", "stderr", "to", "stderr"])
    assert Path(out.log_path).parent == pod.log_directory
    out_log, err_log = Path(out.log_path).read_text(), Path(err.log_path).read_text()
    assert [(r.stream, r.partial, r.content) for r in parse_cri_log(out_log)] == [
        ("stdout", False, "to stdout")
    ]
    assert [(r.stream, r.content) for r in parse_cri_log(err_log)] == [("stderr", "to stderr")]
    teardown_pod(env, pod, [out.id, err.id])


@ONE_CGROUPFS
def test_artifact_image_runs_through_cri(cri_containerd: CriEnv, fx: Fixtures) -> None:
    """The CNCF wasm artifact: the module is the image's only layer, no rootfs file and no
    entrypoint, so the command names it (any name not in the rootfs selects the layer)."""
    env = cri_containerd
    _import_images(env, fx, "hello-artifact")
    pod = env.run_pod("artifact", handler=HANDLER)
    status = run_to_exit(
        env, pod, "artifact", ARTIFACT, ["hello-artifact.wasm", "echo", "from", "the", "layer"]
    )
    log = Path(status.log_path).read_text()
    assert status.exit_code == 0, f"{log}\n{shim_log(env)}"
    assert cri_log_messages(log, "stdout") == ["from the layer"]
    teardown_pod(env, pod, [status.id])


@ONE_CGROUPFS
def test_runtime_default_seccomp(cri_containerd: CriEnv, fx: Fixtures) -> None:
    """``seccompProfile: RuntimeDefault`` (containerd's default profile) for a wasm and a
    native container: both run, and the native one is filtered (Seccomp: 2)."""
    env = cri_containerd
    _import_images(env, fx, "hello", "busybox")
    pod = env.run_pod("seccomp", handler=HANDLER)
    status = "/proc/self/status"
    wasm = start(env, pod, "wasm", HELLO, ["/demo.wasm", "daemon"], runtime_default_seccomp=True)

    def wasm_pids() -> list[int]:  # every hierarchy lists it (cgroup v1)
        return sorted(
            {
                int(pid)
                for cgroup in container_cgroups(wasm)
                for pid in (cgroup / "cgroup.procs").read_text().split()
            }
        )

    # A wasm guest has no /proc (its kernel filesystems are detached before it runs, see
    # tests/faults/test_guest_escape.py): read the running init's status from the host.
    (init,) = wait_for(wasm_pids, "the wasm container's process")
    wasm_status = Path(f"/proc/{init}/status").read_text().splitlines()
    native = run_to_exit(
        env, pod, "native", BUSYBOX, ["/bin/sh", "-c", f"grep '^Seccomp:' {status}"],
        runtime_default_seccomp=True,
    )  # fmt: skip
    assert native.exit_code == 0, shim_log(env)
    assert "Seccomp:\t2" in wasm_status, wasm_status
    assert cri_log_messages(Path(native.log_path).read_text(), "stdout") == ["Seccomp:\t2"]
    teardown_pod(env, pod, [wasm, native.id])


# --------------------------------------------------------------------------- stats, cgroups


def _pod_parent(uid: str, systemd: bool) -> str:
    """The cgroup parent kubelet sends: cgroupfs ``/kubepods/besteffort/pod<uid>``; systemd
    the *expanded* slice path (kubelet's ``CgroupName.ToSystemd``), of which containerd uses
    the base name for the containers' ``slice:cri-containerd:<id>`` and the whole path for
    PodSandboxStats."""
    if not systemd:
        return kubelet_cgroup_parent(uid)
    name = kubelet_cgroup_parent(uid, systemd=True)
    parts = name.removesuffix(".slice").split("-")
    return "".join(f"/{'-'.join(parts[: i + 1])}.slice" for i in range(len(parts)))


def _leaf(parent: str, cid: str, systemd: bool) -> str:
    return f"{parent}/cri-containerd-{cid}.scope" if systemd else f"{parent}/{cid}"


@pytest.mark.parametrize(
    ("cri_containerd", "systemd"),
    [(CGROUPFS, False), (SYSTEMD, True)],
    indirect=["cri_containerd"],
    ids=["cgroupfs", "systemd"],
)
def test_stats_under_both_cgroup_drivers(
    cri_containerd: CriEnv, fx: Fixtures, systemd: bool
) -> None:
    env, client = cri_containerd, cri_containerd.client
    _import_images(env, fx, "hello", "busybox")
    uid = f"{os.urandom(4).hex()}-{os.urandom(2).hex()}"
    parent = _pod_parent(uid, systemd)
    pod = env.run_pod("stats", handler=HANDLER, uid=uid, cgroup_parent=parent)
    wasm = start(env, pod, "hash", HELLO, ["/demo.wasm", "daemon"])
    native = start(env, pod, "native", BUSYBOX, ["/bin/sh", "-c", "echo up; exec sleep 600"])
    wait_log(env, wasm, r"^daemon: tick 1$")
    wait_log(env, native, r"^up$")

    # Where the cgroups are: kubelet's pod cgroup, one leaf per container (and the pause).
    for cid in (pod.id, wasm, native):
        leaf = _leaf(parent, cid, systemd)
        for controller in ("memory", "cpu,cpuacct", "pids"):
            hierarchy = CGROUP_ROOT / controller
            if hierarchy.exists():
                assert (hierarchy / leaf.lstrip("/")).is_dir(), (controller, leaf)
        pid = container_pid(env, cid) if cid != pod.id else sandbox_pid(env, pod)
        own = Path(f"/proc/{pid}/cgroup").read_text()
        assert f":memory:{leaf}\n" in own, own

    def nonzero(stats: Any) -> bool:
        cpu, memory = stats.cpu.usage_core_nano_seconds, stats.memory.working_set_bytes
        return bool(cpu.value > 0 and memory.value > 0)

    def nonzero_stats(cid: str) -> Any:
        stats = client.container_stats(cid)
        return stats if nonzero(stats) else None

    for cid in (wasm, native):
        stats = wait_for(functools.partial(nonzero_stats, cid), f"non-zero stats of {cid}")
        assert stats.attributes.id == cid
        assert stats.memory.usage_bytes.value > 0
    listed = {s.attributes.id: s for s in client.list_container_stats()}
    assert {wasm, native} <= set(listed)

    if client.api.has_pod_sandbox_stats:
        pod_stats = client.pod_sandbox_stats(pod.id)
        assert pod_stats.attributes.id == pod.id
        linux = pod_stats.linux
        assert linux.cpu.usage_core_nano_seconds.value > 0, pod_stats
        assert linux.memory.working_set_bytes.value > 0, pod_stats
        assert {c.attributes.id for c in linux.containers} == {wasm, native}
        assert all(nonzero(c) for c in linux.containers), linux.containers
    teardown_pod(env, pod, [wasm, native])
    # Only kubelet's (empty) pod levels may stay: kubelet owns and removes them.
    for hierarchy in cgroup_hierarchies():
        pod_dir = hierarchy / parent.lstrip("/")
        if pod_dir.exists():
            assert [p for p in pod_dir.iterdir() if p.is_dir()] == [], pod_dir


# --------------------------------------------------------------------------- runtime options


def _warnings_naming(env: CriEnv, word: str) -> list[str]:
    return [
        line
        for line in env.containerd.log_text().splitlines()
        if word in line and re.search(r"level=warn", line)
    ]


@pytest.mark.parametrize(
    "cri_containerd",
    [pytest.param(_param(SystemdCgroup=True, Bogus=1), id="SystemdCgroup+Bogus")],
    indirect=True,
)
def test_runtime_options_config_body_unknown_key_is_logged(
    cri_containerd: CriEnv, fx: Fixtures
) -> None:
    """The handler's options table reaches the shim as TOML ``config_body`` (1.7, 2.x): the
    unknown key is named in a warning. containerd 1.6 sends an empty ``runtimeoptions.v1.Options``
    (it keeps only ``TypeUrl``/``ConfigPath``): the shim says so instead of staying silent."""
    env = cri_containerd
    _import_images(env, fx, "hello")
    uid = os.urandom(4).hex()
    parent = _pod_parent(uid, systemd=True)
    pod = env.run_pod("options", handler=HANDLER, uid=uid, cgroup_parent=parent)
    status = run_to_exit(env, pod, "echo", HELLO, ["/demo.wasm", "echo", "ok"])
    assert status.exit_code == 0, shim_log(env)
    if env.containerd.major == 1 and env.containerd.binaries.minor == 6:
        warnings = _warnings_naming(env, "runtimeoptions.v1.Options")
        print("\n".join(warnings))
        assert warnings, shim_log(env)
        assert any("ConfigPath" in w for w in warnings), warnings
    else:
        warnings = _warnings_naming(env, "Bogus")
        print("\n".join(warnings))
        assert warnings, shim_log(env)
        assert not any("SystemdCgroup" in w.split("known:")[0] for w in warnings), warnings
    # Either way the systemd driver is in effect (1.6: from the cgroupsPath's form).
    pid = sandbox_pid(env, pod)
    assert f"{parent}/cri-containerd-{pod.id}.scope" in Path(f"/proc/{pid}/cgroup").read_text()
    teardown_pod(env, pod, [status.id])


@pytest.fixture
def options_file() -> Iterator[Path]:
    OPTIONS_FILE.write_text("SystemdCgroup = false\nBogus = 1\n")
    yield OPTIONS_FILE
    OPTIONS_FILE.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "cri_containerd",
    [
        pytest.param(
            _param(TypeUrl="io.containerd.wasmtime.v1.Options", ConfigPath=str(OPTIONS_FILE)),
            id="ConfigPath",
        )
    ],
    indirect=True,
)
def test_runtime_options_config_path_unknown_key_is_logged(
    options_file: Path, cri_containerd: CriEnv, fx: Fixtures
) -> None:
    """``ConfigPath`` works on every version (1.6 included): the shim reads the file."""
    env = cri_containerd
    _import_images(env, fx, "hello")
    pod = env.run_pod("options-file", handler=HANDLER)
    status = run_to_exit(env, pod, "echo", HELLO, ["/demo.wasm", "echo", "ok"])
    assert status.exit_code == 0, shim_log(env)
    warnings = _warnings_naming(env, "Bogus")
    print("\n".join(warnings))
    assert warnings, shim_log(env)
    teardown_pod(env, pod, [status.id])
