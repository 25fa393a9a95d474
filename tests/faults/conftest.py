"""Fault injection: what the shim does when its processes, containerd or its clients misbehave.

The module-scoped ``faults`` fixture is one private containerd with the wasmtime runtime on
its PATH and three images: ``localhost/hello:test`` (``/demo.wasm``: ``daemon`` runs until
killed, ``echo`` exits 0 at once), ``localhost/busybox:test`` (native) and
``localhost/wasm-modules:test`` (modules as files, among them ``/hello.wat`` which exits 0,
``/exit42.wasm`` and the garbage ``/notwasm.wasm``), built by
``tests/integration/test_wasm_containers.py``, whose :class:`Env` it extends.

After every test that uses it, nothing of the test's ids may be left (polled for 10 s: shims
exit asynchronously): no process, mount, cgroup, shim socket, bundle (with its state file),
container or snapshot record; and the long-lived shim processes that were there before the
test and still are (the template, a daemon kept up by a module-level container) must hold
as many file descriptors as before it.

Tests add to :data:`COUNTS` (see :func:`record`); the totals are printed at the end of the
session: ``faults: N survived, M bad inputs, K storm failures, L leaks``, followed by the
lines tests gave :func:`note` (measurements).

``FAULTS_SHIM_DIR=<dir>`` puts another build's ``containerd-shim-wasmtime-v1`` first on
containerd's PATH, e.g. an older commit's, to check that a test fails on the bug it targets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.containerd import (
    FIFO_DIR,
    ContainerdBinaries,
    PrivateContainerd,
    descendants,
    is_shim_spare,
    is_shim_template,
    process_alive,
    process_parents,
)

if os.geteuid() != 0:  # the imports below skip a whole module when not root
    pytest.skip("a private containerd and containers need root", allow_module_level=True)

from tests.integration.test_wasm_containers import (
    BUSYBOX,
    HELLO,
    MODULES,
    NAMESPACE,
    ContainerdApi,
    Env,
    hello_busybox_and_modules,
    leftovers_of,
    private_containerd_env,
)

__all__ = [
    "BUSYBOX",
    "COUNTS",
    "GROUP_ANNOTATION",
    "HELLO",
    "MODULES",
    "NAMESPACE",
    "NOTES",
    "FaultEnv",
    "ShimPids",
    "classify_shims",
    "fd_count",
    "note",
    "record",
    "rss_kib",
    "zombie_children",
]

#: The annotation the shim groups containers by (one daemon per value).
GROUP_ANNOTATION = "io.kubernetes.cri.sandbox-id"

#: Session totals, printed by :func:`pytest_terminal_summary`.
COUNTS: dict[str, int] = {"survived": 0, "bad_inputs": 0, "storm_failures": 0, "leaks": 0}


#: Measurements tests want shown (printed after the counters).
NOTES: list[str] = []


def note(text: str) -> None:
    """Print ``text`` in the session's terminal summary (numbers worth reporting)."""
    NOTES.append(text)


def record(kind: str, n: int = 1) -> None:
    """Add ``n`` to the session counter ``kind`` (a key of :data:`COUNTS`)."""
    if kind not in COUNTS:
        raise KeyError(f"unknown fault counter {kind!r}: one of {sorted(COUNTS)}")
    COUNTS[kind] += n


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    c = COUNTS
    terminalreporter.write_line(
        f"faults: {c['survived']} survived, {c['bad_inputs']} bad inputs, "
        f"{c['storm_failures']} storm failures, {c['leaks']} leaks"
    )
    for text in NOTES:
        terminalreporter.write_line(f"faults: {text}")


# --------------------------------------------------------------------------- processes


def _pidns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def fd_count(pid: int) -> int:
    """How many file descriptors ``pid`` holds (-1 when it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def zombie_children(pid: int) -> list[int]:
    """Children of ``pid`` that exited and were not reaped."""
    return [
        child
        for child, parent in process_parents().items()
        if parent == pid and not process_alive(child)
    ]


def rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class ShimPids:
    """This containerd's shim processes, by role."""

    #: The template (one per containerd at most).
    templates: list[int] = field(default_factory=list)
    #: The template's spare daemon and the spare's zygote.
    spares: list[int] = field(default_factory=list)
    #: Pods' daemons (not start/delete actions, not forked from another pod's shim).
    daemons: list[int] = field(default_factory=list)
    #: daemon pid → its zygote's pid (a child in the daemon's own pid namespace).
    zygotes: dict[int, int] = field(default_factory=dict)
    #: Container inits (children of a daemon in another pid namespace).
    inits: list[int] = field(default_factory=list)

    def long_lived(self) -> list[int]:
        """The processes whose fd count should not grow: templates and daemons."""
        return [*self.templates, *self.daemons]


def classify_shims(ctd: PrivateContainerd) -> ShimPids:
    found = dict(ctd.shim_processes(include_templates=True))
    parents = process_parents()
    out = ShimPids()
    pod_shims = {
        pid
        for pid, argv in found.items()
        if not is_shim_template(argv) and argv[-1:] not in (["start"], ["delete"])
    }
    for pid, argv in found.items():
        if is_shim_spare(argv):
            out.spares.append(pid)
        elif is_shim_template(argv):
            out.templates.append(pid)
        elif pid in pod_shims and parents.get(pid) not in pod_shims:
            out.daemons.append(pid)
    for pid in pod_shims:
        parent = parents.get(pid, 0)
        if parent in out.daemons:
            if _pidns(pid) == _pidns(parent):
                out.zygotes[parent] = pid
            else:
                out.inits.append(pid)
    for lst in (out.templates, out.spares, out.daemons, out.inits):
        lst.sort()
    return out


# --------------------------------------------------------------------------- the env


@dataclass
class FaultEnv(Env):
    """:class:`Env` plus what fault tests need: groups, shim pids, containerd restarts."""

    def group_opts(self, group: str) -> tuple[str, ...]:
        """``ctr run`` options that put a container in the pod/group ``group``."""
        return ("--annotation", f"{GROUP_ANNOTATION}={group}")

    def remove_ctr_fifos(self, cid: str) -> None:
        """Remove ``ctr``'s stdio fifo dir of ``cid``: when containerd deletes a task itself
        (after its shim died) no ``ctr`` ever closes that task's IO (with runc neither)."""
        for fifo_dir in FIFO_DIR.glob("*"):
            with contextlib.suppress(OSError):
                if any(f.name.startswith(f"{cid}-") for f in fifo_dir.iterdir()):
                    shutil.rmtree(fifo_dir)

    def delete_task(self, cid: str) -> int:
        """Delete ``cid``'s task through containerd's API; the exit status it reports.
        (``ctr task delete`` does not print it on every version.) ``ctr``'s fifo dir of a
        detached task, which only ``ctr task delete`` removes, is removed here."""
        status = self.api.delete_task(cid)
        self.remove_ctr_fifos(cid)
        return status

    def shim_pids(self) -> ShimPids:
        """This containerd's template, spare, daemons, zygotes and container inits."""
        return classify_shims(self.ctd)

    def task_pid(self, cid: str) -> int | None:
        """The PID column of ``ctr task ls`` for ``cid``."""
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            words = line.split()
            if len(words) >= 2 and words[0] == cid and words[1].isdigit():
                return int(words[1])
        return None

    def daemon_of(self, cid: str) -> int:
        """The shim daemon serving running container ``cid`` (its init's parent)."""
        pid = self.task_pid(cid)
        assert pid, f"{cid} has no running task"
        daemon = process_parents().get(pid, 0)
        assert daemon in self.shim_pids().daemons, (pid, daemon, self.shim_pids())
        return daemon

    def zygote_of(self, daemon: int) -> int:
        zygote = self.shim_pids().zygotes.get(daemon)
        assert zygote, f"daemon {daemon} has no zygote: {self.shim_pids()}"
        return zygote

    # ------------------------------------------------------------- containerd

    def stop_containerd(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop containerd with ``sig`` (its shims keep running), leaving it restartable."""
        self.ctd.stop_keeping_state(sig, timeout)

    def start_containerd(self, timeout: float = 30.0) -> None:
        """Start containerd again on the same config, root and state (after
        :meth:`stop_containerd`); the leak tracker keeps its first snapshot."""
        self.ctd.start_again(timeout)
        self._reconnect_api()

    def restart_containerd(self, sig: int = signal.SIGTERM) -> None:
        self.ctd.restart(sig)
        self._reconnect_api()

    def _reconnect_api(self) -> None:
        # A fresh channel: the old one may sit in reconnect backoff.
        self.api.close()
        self.api = ContainerdApi(self.ctd.address)


def _shim_dirs() -> list[Path]:
    """``$FAULTS_SHIM_DIR``: a directory with another build's ``containerd-shim-wasmtime-v1``
    to run the suite against (e.g. an older commit, to see a test fail on its bug)."""
    value = os.environ.get("FAULTS_SHIM_DIR", "").strip()
    return [Path(value)] if value else []


@pytest.fixture(scope="module")
def faults(
    containerd_binaries: ContainerdBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultEnv]:
    """One private containerd for a module's fault tests, with the test images imported."""
    with private_containerd_env(
        containerd_binaries,
        tmp_path_factory.mktemp("faults"),
        hello_busybox_and_modules,
        env_type=FaultEnv,
        extra_path=_shim_dirs(),
    ) as env:
        yield env
    ctd = env.ctd
    if ctd.stop_leftovers:
        record("leaks", len(ctd.stop_leftovers))
    assert ctd.stop_leftovers == [], ctd.stop_leftovers


def _fd_counts(env: FaultEnv) -> dict[int, int]:
    return {pid: fd_count(pid) for pid in env.shim_pids().long_lived()}


def _problems(env: FaultEnv, before_fds: dict[int, int]) -> list[str]:
    # Deduplicated: leftovers_of lists this containerd's shim processes for every id.
    found = list(dict.fromkeys(p for cid in env.ids for p in leftovers_of(env, cid)))
    for pid, count in before_fds.items():
        now = fd_count(pid)
        if now not in (-1, count) and process_alive(pid):
            found.append(f"shim process {pid} holds {now} fds, {count} before the test")
    return found


def _clean_up(env: FaultEnv) -> None:
    """Remove what a test left: its tasks and containers, then (LeakTracker.cleanup) every
    shim process, mount, socket, fifo dir and cgroup of this containerd's ids."""
    for cid in env.ids:
        env.ctr("task", "kill", "--signal", "SIGKILL", "--all", cid)
        env.ctr("task", "delete", "--force", cid)
        env.ctr("containers", "delete", cid)
    daemons = env.shim_pids().daemons
    env.ctd.tracker.cleanup(env.ctd._bundles, [*daemons, *descendants(daemons)])


@pytest.fixture(autouse=True)
def fault_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that uses ``faults``: nothing of its ids is left (polled for 10 s)."""
    if "faults" not in request.fixturenames:
        yield
        return
    env: FaultEnv = request.getfixturevalue("faults")
    env.ids.clear()
    if not env.ctd.running:  # a test that failed while containerd was down
        env.start_containerd()
    before_fds = _fd_counts(env)
    yield
    if not env.ctd.running:
        env.start_containerd()
    deadline = time.monotonic() + 10.0
    while (problems := _problems(env, before_fds)) and time.monotonic() < deadline:
        time.sleep(0.1)
    records = env.ctr("containers", "ls", "-q").stdout.split()
    records += env.ctr("snapshots", "ls").stdout.split()
    problems += [f"containerd still has {cid}" for cid in env.ids if cid in records]
    problems += env.ctd.leftovers()
    problems = list(dict.fromkeys(problems))
    if problems:
        record("leaks", len(problems))
        # Clean up, so that one test's leak does not fail the next ones too.
        logs = "\n".join(env.log(cid) for cid in env.ids)
        _clean_up(env)
    else:
        logs = ""
    assert not problems, "left behind:\n  " + "\n  ".join(problems) + f"\n{logs}"
