"""containerd_shimkit against a real containerd: a test shim that runs host processes.

The shim (``tests/shims/host_shim.py``) is scaffolding: its Instance runs the container's
``args`` on the host. Everything else (start, the daemon, ttrpc, the Task service, events,
delete) is the toolkit as a real shim uses it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.shims.host_shim import BINARY, RUNTIME, install
from tests.support.containerd import PrivateContainerd

pytestmark = [pytest.mark.containerd, pytest.mark.root]

if os.geteuid() != 0:
    pytest.skip("a private containerd needs root", allow_module_level=True)


@pytest.fixture(scope="module")
def ctd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateContainerd]:
    bin_dir = tmp_path_factory.mktemp("bin")
    install(bin_dir)
    with PrivateContainerd(extra_path=[bin_dir]) as ctd:
        yield ctd
    assert ctd.stop_leftovers == []


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rootfs")


def run(
    ctd: PrivateContainerd,
    rootfs: Path,
    id: str,
    *cmd: str,
    extra: tuple[str, ...] = (),
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return ctd.ctr(
        "run",
        *extra,
        "--runtime",
        RUNTIME,
        "--rootfs",
        str(rootfs),
        id,
        *cmd,
        input=input,
        timeout=60,
    )


def shim_daemons(ctd: PrivateContainerd) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(BINARY.encode()) for arg in argv) and str(ctd.address).encode() in argv:
            pids.append(int(entry.name))
    return pids


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_output_and_exit_code_reach_ctr(ctd: PrivateContainerd, rootfs: Path) -> None:
    result = run(
        ctd,
        rootfs,
        "out1",
        "/bin/sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exit 7",
        extra=("--rm",),
    )
    assert result.returncode == 7, result.stderr
    assert result.stdout == "to-stdout\n"
    assert "to-stderr" in result.stderr


def test_stdin_reaches_the_process(ctd: PrivateContainerd, rootfs: Path) -> None:
    result = run(ctd, rootfs, "in1", "/bin/cat", extra=("--rm",), input="piped input\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "piped input\n"


def test_kill_and_events_in_order(ctd: PrivateContainerd, rootfs: Path) -> None:
    events = subprocess.Popen(
        [str(ctd.binaries.ctr), "-a", str(ctd.address), "events"], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.3)
        assert run(ctd, rootfs, "kill1", "/bin/sleep", "60", extra=("-d",)).returncode == 0
        assert ctd.ctr("task", "kill", "kill1").returncode == 0
        assert wait_until(lambda: "STOPPED" in ctd.ctr("task", "ls").stdout)
        tasks = ctd.ctr("task", "ls").stdout
        assert "kill1" in tasks and "STOPPED" in tasks
        assert ctd.ctr("task", "delete", "kill1").returncode == 0
        assert ctd.ctr("container", "delete", "kill1").returncode == 0
        time.sleep(0.5)
    finally:
        events.terminate()
        output, _ = events.communicate(timeout=5)
    topics = [
        word
        for line in output.splitlines()
        if '"kill1"' in line
        for word in line.split()
        if word.startswith("/tasks/")
    ]
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], output
    exit_line = next(line for line in output.splitlines() if "/tasks/exit" in line)
    assert '"exit_status":143' in exit_line


def test_pod_group_shares_one_daemon_which_exits_after_the_last(
    ctd: PrivateContainerd, rootfs: Path
) -> None:
    sandbox = ("--annotation", "io.kubernetes.cri.sandbox-id=pod-a")
    for id in ("grp1", "grp2"):
        assert run(ctd, rootfs, id, "/bin/sleep", "60", extra=("-d", *sandbox)).returncode == 0
    daemons = shim_daemons(ctd)
    assert len(daemons) == 1, daemons
    address = (ctd.state / "io.containerd.runtime.v2.task/default/grp1/address").read_text()
    assert address == (ctd.state / "io.containerd.runtime.v2.task/default/grp2/address").read_text()
    for id in ("grp1", "grp2"):
        ctd.ctr("task", "kill", "-s", "SIGKILL", id)
        assert wait_until(
            lambda id=id: "STOPPED" in ctd.ctr("task", "ls").stdout.split(id, 1)[-1].split("\n")[0]
        )
        assert ctd.ctr("task", "delete", id).returncode == 0
        if id == "grp1":
            assert shim_daemons(ctd) == daemons  # still serving grp2
        ctd.ctr("container", "delete", id)
    assert wait_until(lambda: not shim_daemons(ctd))
    socket_path = address.removeprefix("unix://")
    assert not os.path.exists(socket_path)


def test_missing_command_is_a_create_error_and_leaves_nothing(
    ctd: PrivateContainerd, rootfs: Path
) -> None:
    result = run(ctd, rootfs, "bad1", "/no/such/binary", extra=("--rm",))
    assert result.returncode != 0
    assert "/no/such/binary" in result.stderr
    assert wait_until(lambda: not shim_daemons(ctd))
