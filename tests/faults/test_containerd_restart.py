"""containerd goes away (SIGTERM or SIGKILL) and comes back while wasm containers run.

As with runc's shim: the shims outlive containerd; after the restart containerd reconnects
to them (the bundle's ``address``), a container still running is RUNNING and can be killed
and deleted, and a container that exited during the outage is, on containerd 1.6, STOPPED
with the exit status it had (here 0 for a guest that returned, 137 for one SIGKILLed from
the host), however its exit event fared while nobody listened; containerd 1.7 and 2.x
delete such a task themselves when they reload it (runc's too), so there it may be gone.
Nothing is left afterwards.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.containerd import process_alive

from .conftest import HELLO, FaultEnv, record

pytestmark = [pytest.mark.containerd, pytest.mark.root]


def _wait_dead(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs after {timeout}s"
        time.sleep(0.05)


def _status_after_restart(env: FaultEnv, cid: str, want: str, timeout: float = 15.0) -> str:
    """Poll ``ctr task ls`` until ``cid`` is ``want`` or gone; that status (``"None"``)."""
    deadline = time.monotonic() + timeout
    while (status := env.task_status(cid)) not in (want, None) and time.monotonic() < deadline:
        time.sleep(0.1)
    return str(status)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_containers_survive_a_containerd_restart(faults: FaultEnv, sig: signal.Signals) -> None:
    running = faults.new_id("rs-running")
    returns = faults.new_id("rs-returns")
    killed = faults.new_id("rs-killed")
    group = faults.new_id("rs-grp")
    # ``returns`` and ``killed`` share a pod; ``running`` has its own daemon.
    try:
        faults.run_detached(HELLO, running, "/demo.wasm", "daemon")
        in_group = faults.group_opts(group)
        faults.run_detached(HELLO, returns, "/demo.wasm", "sleep", "3", opts=in_group)
        faults.run_detached(HELLO, killed, "/demo.wasm", "daemon", opts=in_group)
        for cid in (running, returns, killed):
            faults.wait_status(cid, "RUNNING")
        pids = {cid: faults.task_pid(cid) for cid in (running, returns, killed)}
        assert all(pids.values()), pids
        daemons = {faults.daemon_of(cid) for cid in (running, returns, killed)}

        faults.stop_containerd(sig)
        os.kill(pids[killed] or 0, signal.SIGKILL)
        _wait_dead(pids[killed] or 0, 10)
        _wait_dead(pids[returns] or 0, 15)  # the guest's 3 s sleep ends during the outage
        assert process_alive(pids[running] or 0), "a container died with containerd"
        assert all(process_alive(d) for d in daemons), "a shim daemon died with containerd"
        faults.start_containerd()

        assert _status_after_restart(faults, running, "RUNNING") == "RUNNING"
        for cid, code in ((returns, 0), (killed, 137)):
            status = _status_after_restart(faults, cid, "STOPPED")
            if status == "None" and (faults.ctd.major, faults.ctd.binaries.minor) >= (1, 7):
                # containerd 1.7+ deletes a task that exited while it was down itself, as
                # "a leaked shim process" (with runc too); ctr's fifo dir stays behind.
                faults.remove_ctr_fifos(cid)
                continue
            assert status == "STOPPED", f"{cid}: {status} after the restart\n{faults.log(cid)}"
            assert faults.delete_task(cid) == code, cid

        kill = faults.ctr("task", "kill", running)  # SIGTERM
        assert kill.returncode == 0, f"{kill.stderr}\n{faults.log(running)}"
        faults.wait_status(running, "STOPPED")
        assert faults.delete_task(running) == 143
        for cid in (running, returns, killed):
            assert faults.task_status(cid) is None
            removed = faults.ctr("containers", "delete", cid)
            assert removed.returncode == 0, removed.stderr
    finally:
        if not faults.ctd.running:
            faults.start_containerd()
        for cid in (running, returns, killed):
            faults.ctr("task", "kill", "--signal", "SIGKILL", cid)
            faults.ctr("task", "delete", "--force", cid)
            faults.ctr("containers", "delete", cid)
    record("survived")


def test_new_containers_run_after_a_containerd_restart(faults: FaultEnv) -> None:
    """After containerd restarted (its template went with it), a new pod and a new
    container in a pod whose daemon survived the restart both run."""
    group = faults.new_id("rs2-grp")
    keeper = faults.new_id("rs2-keeper")
    try:
        faults.run_detached(HELLO, keeper, "/demo.wasm", "daemon", opts=faults.group_opts(group))
        faults.wait_status(keeper, "RUNNING")
        faults.restart_containerd(signal.SIGKILL)
        assert _status_after_restart(faults, keeper, "RUNNING") == "RUNNING"
        for opts in (faults.group_opts(group), ()):
            cid = faults.new_id("rs2-new")
            result = faults.run(HELLO, cid, "/demo.wasm", "echo", "hi", opts=opts)
            assert (result.returncode, result.stdout) == (0, "hi\n"), (
                f"{result.stderr}\n{faults.log(cid)}"
            )
    finally:
        faults.kill_and_remove(keeper)
    record("survived")
