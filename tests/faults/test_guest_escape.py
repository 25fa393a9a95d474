"""A wasm guest must not reach its host process (issue #12).

The container init runs the guest in-process with the container's ``/`` preopened; it is a
fork of the pod's zygote and holds what the shim held. Through ``/proc/self/mem`` (read and
write) a guest would read and patch its own host process; ``/proc/<pid>/*`` and ``/sys``
show the rest. The shim detaches every kernel filesystem of a wasm container's mount
namespace before the guest runs (``containerd_shimkit.container.hide_kernel_filesystems``),
including such filesystems the user bind-mounts elsewhere; native containers of the same
runtime keep theirs.

``escape_probe.wasm`` (``tests/fixtures/wasm/escape_probe.c``) opens each path for reading
and for writing and prints one line per path. It is run here through a real containerd and
``ctr``, in an image with symlinks into ``/proc``, with ``/proc`` mounted again, and with the
host's ``/proc`` and ``/sys`` bind-mounted.

Also here: a container process's identity (its command line and ``comm`` are the
container's, not the shim daemon's).

Own module fixture, modelled on ``tests/integration/test_wasm_containers.py``'s ``env``:
one private containerd with ``SHIM_SECRET`` in its environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from containerd_shim_wasm import oci_tar_builder as otb
from tests.fixtures.wasm.build import build_all
from tests.support.containerd import ContainerdBinaries, read_cmdline

if os.geteuid() != 0:
    pytest.skip("a private containerd and containers need root", allow_module_level=True)

from tests.integration.test_wasm_containers import (
    BUSYBOX,
    RUNTIME,
    Env,
    assert_nothing_left,
    private_containerd_env,
)

pytestmark = [pytest.mark.containerd, pytest.mark.root]

PROBE = "localhost/escape-probe:test"
SHIM_SECRET = "SHIM_SECRET"
SECRET_VALUE = "escape-probe-secret-4711"
POD_ANNOTATION = "io.kubernetes.cri.sandbox-id"

#: Paths the probe tries besides its built-in list (see escape_probe.c): symlinks of the
#: image into /proc, a second proc mount, and the host's /proc and /sys bind-mounted.
EXTRA_PATHS = (
    "/procself/mem",
    "/procself/environ",
    "/up/proc/1/environ",
    "/myproc/self/mem",
    "/myproc/1/environ",
    "/hostproc/self/mem",
    "/hostproc/1/environ",
    f"/hostproc/{os.getpid()}/environ",
    "/hostproc/sys/kernel/hostname",
    "/hostsys/kernel",
    "/hostsys/fs/cgroup",
    "/hostsys/kernel/debug",
)
USER_MOUNTS = (
    "--mount", "type=proc,src=proc,dst=/myproc,options=nosuid:noexec:nodev",
    "--mount", "type=bind,src=/proc,dst=/hostproc,options=rbind:ro",
    "--mount", "type=bind,src=/sys,dst=/hostsys,options=rbind:ro",
)  # fmt: skip
#: A file the guest may read: the probe's positive control.
CONTROL = "/probe.wasm"


def _probe_image(out: Path) -> Path:
    fx = build_all()
    modules = [
        otb.Module("probe.wasm", fx.wasm["escape_probe"].read_bytes()),
        otb.Module("demo.wasm", fx.demo_wasm.read_bytes()),
    ]
    files = [
        otb.TarEntry.directory("tmp", 0o1777),
        otb.TarEntry.symlink("procself", "/proc/self"),
        otb.TarEntry.symlink("up", "../../.."),
    ]
    image = otb.file_image(PROBE, modules, files=files, entrypoint=["/probe.wasm"])
    return image.write(out / "escape-probe.tar")


@pytest.fixture(scope="module")
def env(
    containerd_binaries: ContainerdBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    with private_containerd_env(
        containerd_binaries,
        tmp_path_factory.mktemp("guest-escape"),
        lambda fx, tmp: [fx.images["busybox"].path, _probe_image(tmp)],
        env_type=Env,
        env={SHIM_SECRET: SECRET_VALUE, "SHIM_LOG_LEVEL": "debug"},
    ) as started:
        yield started
    assert started.ctd.stop_leftovers == [], started.ctd.stop_leftovers


@pytest.fixture(autouse=True)
def no_leftovers(env: Env) -> Iterator[None]:
    """After each test: nothing of its containers is left."""
    env.ids.clear()
    yield
    assert_nothing_left(env, records=False)


def _pod(group: str) -> tuple[str, ...]:
    return ("--annotation", f"{POD_ANNOTATION}={group}")


def _run_ok(env: Env, image: str, cid: str, *cmd: str, opts: tuple[str, ...] = ()) -> str:
    result = env.run(image, cid, *cmd, opts=opts)
    assert result.returncode == 0, f"{result.stderr}\n{env.log(cid)}"
    return result.stdout


def _probe_results(out: str) -> dict[str, tuple[str, str]]:
    results = {}
    for line in out.splitlines():
        match = re.fullmatch(r"(.+) read=(\S+) write=(\S+)", line)
        if match:
            results[match[1]] = (match[2], match[3])
    return results


def _listings(out: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^list (\S+) entries=(-?\d+)$", out, re.M)}


# --------------------------------------------------------------------------- the sandbox


def test_the_guest_reaches_no_kernel_filesystem(env: Env) -> None:
    cid = env.new_id("escape")
    out = _run_ok(env, PROBE, cid, "/probe.wasm", *EXTRA_PATHS, CONTROL, opts=USER_MOUNTS)
    results = _probe_results(out)
    # Every built-in path (31), every extra one and the control were tried.
    assert len(results) == 31 + len(EXTRA_PATHS) + 1, out
    control = results.pop(CONTROL)
    assert control[0].startswith("ok:") and control[1].startswith("ok:"), control
    reached = {path: rw for path, rw in results.items() if any(r.startswith("ok") for r in rw)}
    assert reached == {}, out
    # Mount points stay, as empty directories of the rootfs.
    assert _listings(out) == {"/proc": 0, "/sys": 0}, out
    assert SECRET_VALUE not in out


def test_the_guest_cannot_list_the_host_proc_bind_mount(env: Env) -> None:
    cid = env.new_id("escape-ls")
    out = _run_ok(env, PROBE, cid, "/demo.wasm", "ls", "/hostproc", opts=USER_MOUNTS)
    assert out == "", out  # an empty directory: the bind mount of the host's /proc is gone


def test_a_native_container_of_the_same_pod_keeps_proc_and_sys(env: Env) -> None:
    group = env.new_id("pod")
    wasm = env.new_id("wasm")
    env.ctr("run", "-d", "--runtime", RUNTIME, *_pod(group), PROBE, wasm, "/demo.wasm", "daemon")
    try:
        env.wait_status(wasm, "RUNNING")
        cid = env.new_id("native")
        out = _run_ok(
            env, BUSYBOX, cid, "sh", "-c",
            "cat /proc/self/status && cat /proc/self/mountinfo && ls /sys",
            opts=_pod(group),
        )  # fmt: skip
        assert re.search(r"^Name:\s+cat$", out, re.M), out
        fstypes = set(re.findall(r" - (\S+) ", out))
        assert {"proc", "sysfs"} <= fstypes, out
        assert re.search(r"^kernel$", out, re.M), out  # ls /sys
    finally:
        env.kill_and_remove(wasm)


# --------------------------------------------------------------------------- identity


def _task_pid(env: Env, cid: str) -> int:
    for line in env.ctr("task", "ls").stdout.splitlines()[1:]:
        words = line.split()
        if len(words) >= 2 and words[0] == cid and words[1].isdigit():
            return int(words[1])
    raise AssertionError(f"{cid} has no task")


def test_a_wasm_container_process_has_its_own_title(env: Env) -> None:
    cid = env.new_id("title")
    env.run_detached(PROBE, cid, "/demo.wasm", "daemon")
    try:
        env.wait_status(cid, "RUNNING")
        pid = _task_pid(env, cid)
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        argv = read_cmdline(pid)
        assert argv == ["/demo.wasm", "daemon"], argv
        assert "-address" not in argv and "-id" not in argv, argv
        assert str(env.ctd.address).encode() not in raw, raw
        assert Path(f"/proc/{pid}/comm").read_text() == "demo.wasm\n"
    finally:
        env.kill_and_remove(cid)


def test_zygote_lines_after_two_containers_carry_the_right_ids(env: Env) -> None:
    """Two containers grouped into one daemon by ``io.containerd.runc.v2.group``: the
    zygote's records of the second container's request (it compiles another module) name
    that container, never the first one; each init's records name its own container and the
    daemon's group as pod (the daemon's own lines' pod), not a container id."""
    group = env.new_id("logpod")
    first, second = env.new_id("first"), env.new_id("second")
    opts = ("--annotation", f"io.containerd.runc.v2.group={group}")
    _run_ok(env, PROBE, first, "/demo.wasm", "echo", "x", opts=opts)
    mark = len(env.ctd.log_text().splitlines())
    _run_ok(env, PROBE, second, "/probe.wasm", opts=opts)
    later = env.ctd.log_text().splitlines()[mark:]
    from_zygote = [ln for ln in later if "the module for this pod" in ln]
    assert from_zygote and all(f"instance={second}" in ln for ln in from_zygote), later
    assert all(f"pod={group}" in ln for ln in from_zygote), from_zygote
    assert not [ln for ln in later if f"instance={first}" in ln], later
    detached = [ln for ln in env.ctd.log_text().splitlines() if "filesystems detached" in ln]
    for cid in (first, second):
        lines = [ln for ln in detached if f"instance={cid}" in ln]
        assert lines and all(f"pod={group}" in ln for ln in lines), detached


CAP_SYS_PTRACE = 19


def _opens_without_cap_sys_ptrace(path: str) -> bool:
    """Whether a root process with every capability but CAP_SYS_PTRACE can open ``path``
    (a forked child of this test; its answer is its exit status)."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            from containerd_shimkit.container import _libc

            effective, permitted, inheritable = _libc.capget()
            keep = ~(1 << CAP_SYS_PTRACE)
            _libc.capset(effective & keep, permitted & keep, inheritable & keep)
            with open(path, "rb") as f:
                f.read(1)
            code = 0
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1), f"the probing child failed ({code})"
    return code == 0


def test_a_running_guest_is_not_dumpable(env: Env) -> None:
    """Another root process without CAP_SYS_PTRACE (a sidecar sharing the pod's pid
    namespace, say) must not open the init's ``/proc/<pid>/mem``: the init is made
    non-dumpable before the guest runs. (Were it dumpable, such a process could: the init
    runs as root with a subset of its capabilities.)"""
    cid = env.new_id("dumpable")
    env.run_detached(PROBE, cid, "/demo.wasm", "daemon")
    try:
        env.wait_status(cid, "RUNNING")
        pid = _task_pid(env, cid)
        assert not _opens_without_cap_sys_ptrace(f"/proc/{pid}/mem")
    finally:
        env.kill_and_remove(cid)
