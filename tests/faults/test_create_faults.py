"""Faults around Create and Delete: cancelled Creates, shared and vanished cgroups, bundles and
ids made by hand, Shutdown(now), stdin of failed Creates.

Each test asserts what containerd's runc shim does in the same situation (or better) and,
through the ``faults`` fixture, that nothing of the test's containers is left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from containerd_shimkit.api import shim_pb2
from containerd_shimkit.container.cgroups import Cgroup
from containerd_shimkit.errors import Code
from containerd_shimkit.ttrpc.client import Client
from containerd_shimkit.ttrpc.errors import TtrpcError
from tests.integration.test_wasm_containers import _cgroup_dirs
from tests.support.containerd import SHIM_SOCKET_DIR, shim_socket_name

from .conftest import HELLO, MODULES, NAMESPACE, FaultEnv, fd_count, record

pytestmark = [pytest.mark.containerd, pytest.mark.root]

TASK_V2 = "containerd.task.v2.Task"


def _group(faults: FaultEnv, prefix: str) -> tuple[str, tuple[str, ...]]:
    group = f"{prefix}-{secrets.token_hex(3)}"
    return group, faults.group_opts(group)


def _remove(faults: FaultEnv, cid: str) -> None:
    """Whatever state a cancelled ``ctr task start`` left ``cid`` in: gone."""
    faults.ctr("task", "kill", "--signal", "SIGKILL", cid)
    deadline = time.monotonic() + 10
    while faults.task_status(cid) not in (None, "STOPPED") and time.monotonic() < deadline:
        time.sleep(0.05)
    faults.ctr("task", "delete", "--force", cid)
    while faults.ctr("containers", "delete", cid).returncode != 0:
        # containerd may still be finishing the cancelled Create (a task to delete first).
        assert time.monotonic() < deadline, f"cannot remove {cid}"
        faults.ctr("task", "delete", "--force", cid)
        time.sleep(0.1)
    faults.remove_ctr_fifos(cid)


@pytest.fixture
def long_lived(faults: FaultEnv) -> Iterator[tuple[str, tuple[str, ...]]]:
    """A running wasm container in a new group; yields (its id, the group's ctr options)."""
    _, opts = _group(faults, "pod")
    cid = faults.new_id("long")
    faults.run_detached(HELLO, cid, "/demo.wasm", "daemon", opts=opts)
    faults.wait_status(cid, "RUNNING")
    yield cid, opts
    faults.kill_and_remove(cid)


def test_cancelled_creates_never_break_the_pod(
    faults: FaultEnv, long_lived: tuple[str, tuple[str, ...]]
) -> None:
    # The caller's deadline reaches the shim as the ttrpc timeout (containerd 2.x forwards
    # it); a Create cancelled while the zygote forks must not leave its reply for the next
    # Create of the pod (which then failed forever, or got another container's pid).
    running, opts = long_lived
    failures = []
    for timeout_ms in (10, 20, 30, 40, 60, 80, 100, 150, 200):
        # The container record first, without a deadline: only the task's Create (and
        # Start) run under it, so what the deadline cuts short is the shim's Create.
        cancelled = faults.new_id(f"cancel{timeout_ms}")
        created = faults.ctr(
            "containers", "create", "--runtime", "io.containerd.wasmtime.v1", *opts,
            HELLO, cancelled, "/demo.wasm", "echo", "cancelled",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        faults.ctr("--timeout", f"{timeout_ms}ms", "task", "start", "--null-io", cancelled)
        _remove(faults, cancelled)
        ordinary = faults.new_id("after")
        result = faults.run(HELLO, ordinary, "/demo.wasm", "echo", "ok", opts=opts)
        record("bad_inputs")
        if result.returncode != 0 or result.stdout.strip() != "ok":
            failures.append(f"after a {timeout_ms} ms Create: {result.stderr.strip()}")
    assert not failures, "\n".join(failures) + "\n" + faults.log(running)
    assert faults.task_status(running) == "RUNNING"
    record("survived")


def _host_sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)


def test_a_shared_cgroup_keeps_its_other_processes(faults: FaultEnv) -> None:
    # ctr run --cgroup /shared where a host process already lives: neither a failed Create
    # of a second container nor the Delete of the first may kill it (or each other), and
    # the cgroup, which the shim did not create, stays (runc: the same).
    path = f"/shared-{secrets.token_hex(3)}"
    shared = Cgroup.for_container(path, "shared", systemd=False)
    assert shared.create() is True
    sleeper = _host_sleeper()
    first, second = faults.new_id("shared1"), faults.new_id("shared2")
    try:
        shared.add(sleeper.pid)
        opts = ("--cgroup", path)
        faults.run_detached(HELLO, first, "/demo.wasm", "daemon", opts=opts)
        faults.wait_status(first, "RUNNING")
        bad = faults.run(MODULES, second, "/notwasm.wasm", opts=opts)
        assert bad.returncode != 0
        assert faults.task_status(first) == "RUNNING", faults.log(second)
        assert sleeper.poll() is None, "a failed Create killed a process of the shared cgroup"
        faults.kill_and_remove(first)
        assert sleeper.poll() is None, "Delete killed a process of the shared cgroup"
        assert sleeper.pid in shared.pids()
        assert all(p.is_dir() for p in shared.paths.values()), "the shared cgroup was removed"
        record("survived", 2)
    finally:
        sleeper.kill()
        sleeper.wait()
        shared.delete()


def test_delete_succeeds_when_the_cgroup_is_already_gone(faults: FaultEnv) -> None:
    # Someone removed the cgroup of an exited container; Delete used to fail on every retry
    # and leak the rootfs mount, the bundle and the daemon. runc: succeeds.
    cid = faults.new_id("nocgroup")
    faults.run_detached(HELLO, cid, "/demo.wasm", "echo", "bye")
    faults.wait_status(cid, "STOPPED")
    dirs = _cgroup_dirs(cid)
    assert dirs
    for cg in dirs:
        cg.rmdir()
    result = faults.ctr("task", "delete", cid)
    assert result.returncode == 0, result.stderr + faults.log(cid)
    faults.remove_ctr_fifos(cid)
    faults.ctr("containers", "delete", cid)
    record("survived")


def _daemon_socket(faults: FaultEnv, group: str) -> Path:
    return SHIM_SOCKET_DIR / shim_socket_name(str(faults.ctd.address), NAMESPACE, group)


async def _call(path: Path, method: str, request: object, response_type: type) -> object:
    client = await Client.connect(path)
    try:
        return await client.call(TASK_V2, method, request, response_type, timeout=10)  # type: ignore[arg-type]
    finally:
        await client.close()


BAD_CREATES = [
    ("", "long-ok", "bundle"),
    ("relative/bundle", "rel-ok", "bundle"),
    ("{bundle}/../{name}", "dots-ok", "bundle"),
    ("{tmp}/does-not-exist", "missing-ok", "bundle"),
    ("{bundle}", "", "id"),
    ("{bundle}", "../../x", "id"),
    ("{bundle}", "x" * 5000, "id"),
]


def test_hand_made_creates_with_bad_bundles_and_ids_are_refused(
    faults: FaultEnv, long_lived: tuple[str, tuple[str, ...]], tmp_path: Path
) -> None:
    # An empty bundle used to resolve to the daemon's cwd, the pod's first container's
    # bundle: that Create ran from the first container's config and deleted its state.
    running, opts = long_lived
    group = opts[1].split("=", 1)[1]
    bundle = faults.ctd.state / "io.containerd.runtime.v2.task" / NAMESPACE / running
    state_before = sorted(p.name for p in bundle.iterdir())
    socket = _daemon_socket(faults, group)
    for bad_bundle, bad_id, what in BAD_CREATES:
        request = shim_pb2.CreateTaskRequest(
            id=bad_id, bundle=bad_bundle.format(bundle=bundle, name=bundle.name, tmp=tmp_path)
        )
        with pytest.raises(TtrpcError) as info:
            asyncio.run(_call(socket, "Create", request, shim_pb2.CreateTaskResponse))
        assert info.value.code == Code.INVALID_ARGUMENT, (bad_bundle, bad_id, info.value)
        assert what in str(info.value)
        record("bad_inputs")
    assert sorted(p.name for p in bundle.iterdir()) == state_before
    assert faults.task_status(running) == "RUNNING"
    record("survived")


def test_shutdown_now_never_kills_running_containers(
    faults: FaultEnv, long_lived: tuple[str, tuple[str, ...]]
) -> None:
    running, opts = long_lived
    group = opts[1].split("=", 1)[1]
    daemon = faults.daemon_of(running)
    asyncio.run(
        _call(
            _daemon_socket(faults, group),
            "Shutdown",
            shim_pb2.ShutdownRequest(id=running, now=True),
            empty_pb2.Empty,
        )
    )
    time.sleep(0.5)  # the old daemon exited 50 ms after a Shutdown(now)
    assert faults.task_status(running) == "RUNNING"
    assert faults.daemon_of(running) == daemon
    record("survived")


def test_failed_creates_with_stdin_leak_no_descriptor(
    faults: FaultEnv, long_lived: tuple[str, tuple[str, ...]]
) -> None:
    running, opts = long_lived
    daemon = faults.daemon_of(running)
    before = fd_count(daemon)
    for n in range(4):
        cid = faults.new_id(f"stdin{n}")
        result = faults.run(MODULES, cid, "/notwasm.wasm", opts=opts, input="some input\n")
        assert result.returncode != 0
        record("bad_inputs")
    assert fd_count(daemon) == before, os.listdir(f"/proc/{daemon}/fd")


def test_state_file_of_a_shared_cgroup_container_names_it_not_owned(
    faults: FaultEnv,
) -> None:
    # What the delete action reads after a daemon crash: it must not empty a shared cgroup.
    path = f"/shared-{secrets.token_hex(3)}"
    shared = Cgroup.for_container(path, "shared", systemd=False)
    shared.create()
    cid = faults.new_id("stateshared")
    try:
        faults.run_detached(HELLO, cid, "/demo.wasm", "daemon", opts=("--cgroup", path))
        bundle = faults.ctd.state / "io.containerd.runtime.v2.task" / NAMESPACE / cid
        state = json.loads((bundle / "wasm-shim-state.json").read_text())
        assert state["cgroup_owned"] is False
        init = faults.task_pid(cid)
        assert init is not None and init in shared.pids()
        os.kill(faults.daemon_of(cid), signal.SIGKILL)  # containerd runs the delete action
        deadline = time.monotonic() + 30
        while faults.task_status(cid) not in (None, "STOPPED"):
            assert time.monotonic() < deadline, "the task outlived its shim"
            time.sleep(0.1)
        if faults.task_status(cid) == "STOPPED":
            faults.delete_task(cid)
        faults.remove_ctr_fifos(cid)
        faults.ctr("containers", "delete", cid)
        while init in shared.pids():  # killed by the delete action (or with its daemon)
            assert time.monotonic() < deadline, "the container's init survived"
            time.sleep(0.1)
        assert all(p.is_dir() for p in shared.paths.values())
        record("survived")
    finally:
        shared.delete()
