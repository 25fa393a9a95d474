"""A wasm container exits while containerd is stopped; its exit event reaches containerd
once containerd is back (issue 12).

containerd's own shims retry an event for ~15 s; ours gave up after ~10 s, so an exit during
a longer restart reached containerd from runc's shim but not from ours (``State`` and
``Wait`` stayed right, but an event subscriber, e.g. the CRI plugin, never heard of the
exit). Here containerd stays down for 12 s after the exit. containerd logs every event a
shim forwards (``msg="event forwarded" … topic=/tasks/exit``, at debug level, the level of
these tests), which is how the test sees the event arrive: an ``events`` subscriber could
only start after containerd is back, racing the shim's retry.

Also checked: the shim's template, which exits with containerd, leaves no file in
containerd's directory (its socket, see ``containerd_shimkit.cli.template``).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.containerd import ContainerdBinaries, PrivateContainerd, process_alive

from .conftest import HELLO, FaultEnv

# After conftest's import, which skips this module when not root.
from tests.integration.test_wasm_containers import leftovers_of, private_containerd_env  # isort: skip

pytestmark = [pytest.mark.containerd, pytest.mark.root, pytest.mark.slow]

#: How long containerd stays down after the container exited: more than the ~10 s after
#: which the shim used to drop the event, less than containerd's shims' ~15 s.
OUTAGE = 12.0
EXIT_FORWARDED = re.compile(r'msg="event forwarded".*topic=/tasks/exit\b')


@pytest.fixture(scope="module")
def env(
    containerd_binaries: ContainerdBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultEnv]:
    """This module's own containerd (it is stopped and started by the test), with the
    hello image; at the end nothing of the module's containers may be left."""
    with private_containerd_env(
        containerd_binaries,
        tmp_path_factory.mktemp("events-restart"),
        lambda fx, _: [fx.images["hello"].path],
        env_type=FaultEnv,
    ) as env:
        try:
            yield env
        finally:
            if not env.ctd.running:  # the test failed while containerd was down
                env.start_containerd()
    assert env.ctd.stop_leftovers == [], env.ctd.stop_leftovers


def _wait(condition: str, check: Callable[[], object], timeout: float, why: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{condition} not after {timeout}s\n{why}"
        time.sleep(0.1)


def _template_files(ctd: PrivateContainerd) -> list[str]:
    """The template's socket (and lock) files in containerd's directory."""
    return sorted(p.name for p in ctd.address.parent.glob("shim-template-*"))


def test_an_exit_during_a_containerd_restart_reaches_containerd(env: FaultEnv) -> None:
    ctd = env.ctd
    cid = env.new_id("exit-in-restart")
    try:
        env.run_detached(HELLO, cid, "/demo.wasm", "daemon")
        env.wait_status(cid, "RUNNING")
        pid = env.task_pid(cid)
        assert pid, f"{cid} has no pid"
        # The first pod spawned the template; wait until it serves (socket file there).
        _wait("the template's socket", lambda: _template_files(ctd), 30.0)

        env.stop_containerd()
        log_offset = len(ctd.log_text())
        # Gone with containerd (its pidfd), and with it every file it had.
        _wait("the template's files removed", lambda: not _template_files(ctd), 10.0,
              str(_template_files(ctd)))  # fmt: skip
        os.kill(pid, signal.SIGKILL)  # the container exits while containerd is down
        _wait(f"container {pid} reaped", lambda: not process_alive(pid), 10.0)
        time.sleep(OUTAGE)
        env.start_containerd()

        def forwarded() -> bool:
            return bool(EXIT_FORWARDED.search(ctd.log_text()[log_offset:]))

        if (ctd.major, ctd.binaries.minor) < (1, 7):
            # containerd 1.7+ no longer logs forwarded events (nor does it keep a task that
            # exited while it was down: on reload it deletes it as a leaked shim's, as it
            # does runc's), so the forwarding is observable, and checked, on 1.6.
            _wait("the exit event forwarded to containerd", forwarded, 20.0, env.log(cid))
        else:
            _wait("the task ended", lambda: env.task_status(cid) in (None, "STOPPED"), 20.0)
        status = env.task_status(cid)
        if status is None and (ctd.major, ctd.binaries.minor) >= (1, 7):
            # containerd 1.7+ deletes a task that exited while it was down by itself.
            env.remove_ctr_fifos(cid)
        else:
            assert status == "STOPPED", f"{cid}: {status}\n{env.log(cid)}"
            assert env.delete_task(cid) == 137
        removed = env.ctr("containers", "delete", cid)
        assert removed.returncode == 0, removed.stderr
    finally:
        if not ctd.running:
            env.start_containerd()
        env.ctr("task", "kill", "--signal", "SIGKILL", cid)
        env.ctr("task", "delete", "--force", cid)
        env.ctr("containers", "delete", cid)
    deadline = time.monotonic() + 10.0
    while (left := leftovers_of(env, cid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left
