"""A storm of short-lived wasm containers in one pod, 8 ``ctr run --rm`` at a time.

Without a long-lived container in the pod, its daemon may be shutting down (its last
container just went) while the next container's ``start`` finds or binds the pod's socket:
every one of 100 must still run and exit 0 (the runc shim gets this right), and once
all are gone no daemon, socket or anything else of the pod is left. With a long-lived
container the daemon stays up through the storm, and must come out of it holding as many
file descriptors as before (RSS is reported, not asserted). And a daemon SIGKILLed in the
middle of a storm costs at most the runs in flight.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import pytest

from containerd_shimkit.task.service import RESERVATION_SECONDS
from tests.support.containerd import SHIM_SOCKET_DIR, process_alive, shim_socket_name

from .conftest import HELLO, NAMESPACE, FaultEnv, fd_count, note, record, rss_kib

pytestmark = [pytest.mark.containerd, pytest.mark.root]

RUNS = 100
#: Runs of the storm next to a long-lived container (the daemon never shuts down there).
KEEPER_RUNS = 60
IN_FLIGHT = 8
#: Bound on the whole storm (each run has its own 60 s timeout too).
STORM_TIMEOUT = 100.0


def _storm(env: FaultEnv, group: str, prefix: str, runs: int = RUNS) -> list[str]:
    """``runs`` containers of ``group``, ``IN_FLIGHT`` at a time; one line per failure."""
    ids = [env.new_id(f"{prefix}{i}") for i in range(runs)]
    started = time.monotonic()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures = [pool.submit(_run_one, env, group, cid) for cid in ids]
        done, pending = wait(futures, timeout=STORM_TIMEOUT, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
    failures = [r for f in done if (r := f.result()) is not None]
    failures += [f"{len(pending)} runs not done after {STORM_TIMEOUT}s"] if pending else []
    elapsed = time.monotonic() - started
    record("storm_failures", len(failures))
    note(
        f"storm {prefix}: {runs} runs, {IN_FLIGHT} in flight, "
        f"{len(failures)} failed, {elapsed:.1f}s"
    )
    _clean_failed(env, failures)
    return failures


def _run_one(env: FaultEnv, group: str, cid: str) -> str | None:
    """``ctr run --rm`` one quick container of ``group``; None, or what went wrong."""
    try:
        result = env.run(
            HELLO, cid, "/demo.wasm", "echo", cid, opts=env.group_opts(group), timeout=60
        )
    except subprocess.TimeoutExpired:
        return f"{cid}: ctr run did not return in 60s"
    if (result.returncode, result.stdout) == (0, f"{cid}\n"):
        return None
    return f"{cid}: exit {result.returncode}, stdout {result.stdout!r}: {result.stderr.strip()}"


def _clean_failed(env: FaultEnv, failures: list[str]) -> None:
    """Failed runs may leave their container record (``ctr run --rm`` removes it only on
    success) and ctr's fifo dir (ctr leaves it on its error paths, with runc too)."""
    for failure in failures:
        cid = failure.split(":", 1)[0]
        if cid in env.ids:
            env.ctr("task", "delete", "--force", cid)
            env.ctr("containers", "delete", cid)
            env.remove_ctr_fifos(cid)


def _assert_pod_gone(env: FaultEnv, group: str) -> None:
    """The pod's daemon goes once its last container is gone, and its socket with it."""
    sock = SHIM_SOCKET_DIR / shim_socket_name(str(env.ctd.address), NAMESPACE, group)
    # Longer than a start's reservation (RESERVATION_SECONDS): a Shutdown deferred for one
    # is carried out when it lapses, and the daemon must then be gone.
    deadline = time.monotonic() + RESERVATION_SECONDS + 5
    while (env.shim_pids().daemons or sock.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not env.shim_pids().daemons, f"daemons left: {env.shim_pids()}"
    assert not sock.exists(), f"the pod's socket {sock} is left"


def test_storm_without_a_long_lived_container(faults: FaultEnv) -> None:
    group = faults.new_id("storm-grp")
    failures = _storm(faults, group, "st")
    assert not failures, f"{len(failures)} of {RUNS} runs failed:\n" + "\n".join(failures[:10])
    _assert_pod_gone(faults, group)
    record("survived")


def test_storm_survives_its_daemon_being_killed(faults: FaultEnv) -> None:
    """SIGKILL the pod's daemon in the middle of a storm (no long-lived container): the
    runs in flight may fail (as with runc), every run started after the daemon is dead
    gets a new daemon and exits 0, and nothing of the pod is left afterwards."""
    runs, kill_after = 40, 10
    group = faults.new_id("stormk-grp")
    ids = [faults.new_id(f"stk{i}") for i in range(runs)]

    def timed(cid: str) -> tuple[float, str | None]:
        return time.monotonic(), _run_one(faults, group, cid)

    victims: list[int] = []
    dead_at = float("inf")
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures = [pool.submit(timed, cid) for cid in ids]
        deadline = time.monotonic() + STORM_TIMEOUT
        while time.monotonic() < deadline and not victims:
            if sum(f.done() for f in futures) >= kill_after:
                victims = faults.shim_pids().daemons
            time.sleep(0.005)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        while any(process_alive(pid) for pid in victims) and time.monotonic() < deadline:
            time.sleep(0.01)
        dead_at = time.monotonic()
        done, pending = wait(futures, timeout=max(1.0, deadline - time.monotonic()))
    results = [f.result() for f in done]
    failures = [r for _, r in results if r is not None]
    late = [r for t, r in results if r is not None and t > dead_at]
    after = sum(1 for t, _ in results if t > dead_at)
    _clean_failed(faults, failures)
    note(
        f"storm with a daemon kill: {runs} runs, {len(failures) - len(late)} in flight failed, "
        f"{after} started after the kill, {len(late)} of them failed"
    )
    record("storm_failures", len(late) + len(pending))
    assert victims, "no daemon of the pod found to kill"
    assert not pending, f"{len(pending)} runs not done after {STORM_TIMEOUT}s"
    assert after > 0, "every run started before the daemon died: nothing was tested"
    assert not late, f"{len(late)} runs started after the kill failed:\n" + "\n".join(late[:10])
    _assert_pod_gone(faults, group)
    record("survived")


def test_storm_with_a_long_lived_container(faults: FaultEnv) -> None:
    group = faults.new_id("storm2-grp")
    keeper = faults.new_id("storm2-keeper")
    try:
        faults.run_detached(HELLO, keeper, "/demo.wasm", "daemon", opts=faults.group_opts(group))
        faults.wait_status(keeper, "RUNNING")
        daemon = faults.daemon_of(keeper)
        zygote = faults.zygote_of(daemon)
        warm = faults.new_id("storm2-warm")  # whatever a first container sets up for good
        result = faults.run(HELLO, warm, "/demo.wasm", "echo", "x", opts=faults.group_opts(group))
        assert result.returncode == 0, result.stderr
        time.sleep(0.2)
        fds_before = {daemon: fd_count(daemon), zygote: fd_count(zygote)}
        rss_before = {daemon: rss_kib(daemon), zygote: rss_kib(zygote)}

        failures = _storm(faults, group, "st2-", runs=KEEPER_RUNS)
        assert not failures, f"{len(failures)} of {KEEPER_RUNS} runs failed:\n" + "\n".join(
            failures[:10]
        )
        assert faults.daemon_of(keeper) == daemon, "the pod got another daemon"
        assert faults.task_status(keeper) == "RUNNING"

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            fds_after = {pid: fd_count(pid) for pid in fds_before}
            if fds_after == fds_before:
                break
            time.sleep(0.1)
        rss_after = {pid: rss_kib(pid) for pid in rss_before}
        note(
            f"storm2 daemon: fds {fds_before[daemon]} -> {fds_after[daemon]}, "
            f"RSS {rss_before[daemon]} -> {rss_after[daemon]} KiB; zygote: fds "
            f"{fds_before[zygote]} -> {fds_after[zygote]}, "
            f"RSS {rss_before[zygote]} -> {rss_after[zygote]} KiB"
        )
        assert fds_after == fds_before, f"fd counts before {fds_before}, after {fds_after}"
    finally:
        faults.kill_and_remove(keeper)
    record("survived")
