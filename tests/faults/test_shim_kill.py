"""SIGKILL of the shim's own processes (pod daemon, zygote, template, spare) under load.

What containerd's runc shim gives is the bar: when the shim daemon dies, containerd cleans
up after it (the shim's ``delete`` action), reports the task gone or stopped, and the
container can be deleted; nothing is left. Our shim has more processes to lose than runc's:
a lost zygote must not take running containers with it, nor stop the pod from starting new
ones; a lost template or spare must not stop new pods from starting.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.containerd import process_alive

from .conftest import HELLO, MODULES, FaultEnv, record, zombie_children

pytestmark = [pytest.mark.containerd, pytest.mark.root]

DAEMON_CMD = ("/demo.wasm", "daemon")


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _wait_task_ended(env: FaultEnv, cid: str, timeout: float = 30.0) -> str | None:
    """Wait until ``cid``'s task is STOPPED or gone; that status (None: gone)."""
    deadline = time.monotonic() + timeout
    while (status := env.task_status(cid)) not in (None, "STOPPED"):
        if time.monotonic() > deadline:
            pytest.fail(f"task {cid} still {status} {timeout}s after its shim died")
        time.sleep(0.1)
    return status


def test_killed_daemon_task_ends_and_everything_is_removed(faults: FaultEnv) -> None:
    """SIGKILL the pod's daemon under a detached running container: the container's
    process dies with it, containerd shows the task STOPPED (exit 137) or gone, the task and
    the container can be deleted, and the fixture finds no process, cgroup, mount, socket or
    bundle left. Then a new container of the same group (same socket path) runs."""
    group = faults.new_id("grp-dk")
    cid = faults.new_id("dk")
    faults.run_detached(HELLO, cid, *DAEMON_CMD, opts=faults.group_opts(group))
    faults.wait_status(cid, "RUNNING")
    init = faults.task_pid(cid)
    assert init is not None
    daemon = faults.daemon_of(cid)
    os.kill(daemon, signal.SIGKILL)

    status = _wait_task_ended(faults, cid)
    assert _wait_dead(init), f"container init {init} survived its daemon's death"
    if status == "STOPPED":
        code = faults.delete_task(cid)
        assert code == 137, f"exit code {code} after SIGKILL of the shim"
    else:
        faults.remove_ctr_fifos(cid)
    assert faults.task_status(cid) is None
    removed = faults.ctr("containers", "delete", cid)
    assert removed.returncode == 0, removed.stderr

    again = faults.new_id("dk-after")
    result = faults.run(HELLO, again, "/demo.wasm", "echo", "hi", opts=faults.group_opts(group))
    assert (result.returncode, result.stdout) == (0, "hi\n"), (
        f"{result.stderr}\n{faults.log(again)}"
    )
    record("survived")


def test_killed_zygote_keeps_containers_and_the_pod_usable(faults: FaultEnv) -> None:
    """SIGKILL the pod's zygote while a container runs: that container keeps running and
    stops with 143 on SIGTERM; a new container in the same pod (the daemon stays up for the
    running one) still starts and exits 0: the daemon gets a new zygote."""
    group = faults.new_id("grp-zk")
    keeper = faults.new_id("zk-keeper")
    faults.run_detached(HELLO, keeper, *DAEMON_CMD, opts=faults.group_opts(group))
    newcomer_result = None
    newcomer = faults.new_id("zk-new")
    try:
        faults.wait_status(keeper, "RUNNING")
        init = faults.task_pid(keeper)
        assert init is not None
        daemon = faults.daemon_of(keeper)
        zygote = faults.zygote_of(daemon)
        os.kill(zygote, signal.SIGKILL)
        assert _wait_dead(zygote)
        time.sleep(0.5)  # let the daemon notice
        assert process_alive(daemon), "the daemon died with its zygote"
        assert process_alive(init), "the running container died with the zygote"
        assert faults.task_status(keeper) == "RUNNING"

        newcomer_result = faults.run(
            MODULES, newcomer, "/hello.wat", opts=faults.group_opts(group), timeout=30
        )
        assert process_alive(daemon), "the daemon died"
        deadline = time.monotonic() + 5
        while zombie_children(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not zombie_children(daemon), "the daemon did not reap its dead zygote"
        killed = faults.ctr("task", "kill", keeper)  # SIGTERM
        assert killed.returncode == 0, killed.stderr
        faults.wait_status(keeper, "STOPPED")
        assert faults.delete_task(keeper) == 143
    finally:
        faults.ctr("task", "kill", "--signal", "SIGKILL", keeper)
        faults.ctr("task", "delete", "--force", keeper)
        faults.ctr("containers", "delete", keeper)
        if newcomer_result is None or newcomer_result.returncode != 0:
            faults.ctr("task", "delete", "--force", newcomer)
            faults.ctr("containers", "delete", newcomer)
    assert newcomer_result.returncode == 0, (
        f"a new container of the pod failed after its zygote died:\n"
        f"{newcomer_result.stderr}\n{faults.log(newcomer)}"
    )
    record("survived")


@pytest.mark.parametrize("victim", ["template", "spare"])
def test_killed_template_or_spare_new_pods_still_start(faults: FaultEnv, victim: str) -> None:
    """SIGKILL the template (its spare goes with it) or only the spare: new pods still get
    a daemon (exec'd, a fresh template, or a new spare) and their containers run."""
    first = faults.new_id(f"{victim}-first")
    result = faults.run(HELLO, first, "/demo.wasm", "echo", "x")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 20
    pids = faults.shim_pids()
    while not (pids.templates if victim == "template" else pids.spares):
        assert time.monotonic() < deadline, f"no {victim} came up: {pids}"
        time.sleep(0.1)
        pids = faults.shim_pids()
    victims = pids.templates if victim == "template" else pids.spares
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    for pid in victims:
        assert _wait_dead(pid)
    for i in range(3):
        cid = faults.new_id(f"{victim}-after{i}")
        result = faults.run(HELLO, cid, "/demo.wasm", "echo", "hi")
        assert (result.returncode, result.stdout) == (0, "hi\n"), (
            f"{result.stderr}\n{faults.log(cid)}"
        )
    record("survived")
