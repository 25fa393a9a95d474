"""Test harness for real containers: a default spec, an exec workload, and a Harness that
plays the daemon (the test process, a child subreaper) and forks a short-lived zygote per
container that calls spawn_init, so that the container never holds the daemon's end of the
sync channel (as in the real process model)."""

from __future__ import annotations

import copy
import json
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from containerd_shimkit.container import (
    ContainerError,
    ContainerSetup,
    Workload,
    channel_pair,
    exec_native,
    recv_message,
    resolve_rootfs,
    send_message,
    spawn_init,
)

BUSYBOX = Path("/bin/busybox")

DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

# containerd's default Linux spec (oci/spec.go populateDefaultUnixSpec) plus CRI's cgroup mount.
DEFAULT_SPEC: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {
        "args": ["sh"],
        "env": ["PATH=/bin:/usr/bin", "HOME=/root"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "noNewPrivileges": True,
        "capabilities": {k: DEFAULT_CAPS for k in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    },
    "root": {"path": "rootfs"},
    "hostname": "ctrlib-test",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ],
    "linux": {
        "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
            "/proc/scsi",
        ],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
}  # fmt: skip


def make_spec(args: list[str], **process: Any) -> dict[str, Any]:
    """A deep copy of the default spec running ``args``, with ``process`` fields replaced."""
    spec = copy.deepcopy(DEFAULT_SPEC)
    spec["process"]["args"] = args
    spec["process"].update(process)
    return spec


class ExecWorkload:
    """Runs ``process.args`` natively, like the shim does for non-wasm containers."""

    def prepare(self, setup: ContainerSetup) -> None:
        pass

    def run(self, setup: ContainerSetup) -> int:
        exec_native(setup)


def spawn_via_zygote(
    setup: ContainerSetup, workload: Workload, daemon_end: socket.socket, init_end: socket.socket
) -> int:
    """Call spawn_init in a forked child that holds only the init's end of the channel."""
    read_fd, write_fd = os.pipe()
    zygote = os.fork()
    if zygote == 0:
        try:
            os.close(read_fd)
            daemon_end.close()
            reply: dict[str, Any]
            try:
                reply = {"pid": spawn_init(setup, workload, init_end.fileno())}
            except ContainerError as exc:
                reply = {"error": str(exc)}
            os.write(write_fd, json.dumps(reply).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        # One read, not until EOF: the container inherits the pipe's write end from the
        # zygote and keeps it open. The reply is far below PIPE_BUF, so it is atomic.
        reply = json.loads(os.read(read_fd, 65536) or b"{}")
    finally:
        os.close(read_fd)
        os.waitpid(zygote, 0)
    if "error" in reply:
        raise ContainerError(reply["error"])
    return int(reply["pid"])


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@dataclass
class Container:
    """A spawned container, seen from the daemon's side of the sync channel."""

    pid: int
    channel: Any  # socket.socket, the daemon's end
    stdout: Path
    stderr: Path
    exit_code: int | None = None

    def recv(self) -> dict[str, Any] | None:
        readable, _, _ = select.select([self.channel], [], [], 20)
        assert readable, "no message from the container init in 20 s"
        return recv_message(self.channel.fileno())

    def start(self) -> dict[str, Any] | None:
        send_message(self.channel.fileno(), {"start": True})
        return self.recv()

    def wait(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while self.exit_code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                self.exit_code = -9
                pytest.fail(f"container {self.pid} did not exit in {timeout}s")
            time.sleep(0.005)
        self.channel.close()
        return self.exit_code

    def result(self) -> Result:
        code = self.wait()
        return Result(code, self.stdout.read_text(), self.stderr.read_text())


@dataclass
class Harness:
    """Plays the daemon and the zygote: spawns containers on the test's overlay rootfs."""

    bundle: Path
    containers: list[Container] = field(default_factory=list)

    @property
    def rootfs(self) -> Path:
        return resolve_rootfs(self.bundle, DEFAULT_SPEC)

    def create(
        self,
        spec: dict[str, Any],
        workload: Workload | None = None,
        *,
        stdin: bytes | None = None,
        cgroup: Any = None,
    ) -> Container:
        n = len(self.containers)
        out, err = self.bundle / f"stdout-{n}", self.bundle / f"stderr-{n}"
        fds = [os.open(p, os.O_WRONLY | os.O_CREAT, 0o644) for p in (out, err)]
        stdin_fd = None
        if stdin is not None:
            path = self.bundle / f"stdin-{n}"
            path.write_bytes(stdin)
            stdin_fd = os.open(path, os.O_RDONLY)
            fds.append(stdin_fd)
        daemon_end, init_end = channel_pair()
        setup = ContainerSetup(
            id=f"ctrlib-{n}",
            bundle=self.bundle,
            spec=spec,
            rootfs=resolve_rootfs(self.bundle, spec),
            cgroup=cgroup,
            stdin=stdin_fd,
            stdout=fds[0],
            stderr=fds[1],
        )
        try:
            pid = spawn_via_zygote(setup, workload or ExecWorkload(), daemon_end, init_end)
        except BaseException:
            daemon_end.close()
            raise
        finally:
            init_end.close()
            for fd in fds:
                os.close(fd)
        container = Container(pid, daemon_end, out, err)
        self.containers.append(container)
        return container

    def run(self, spec: dict[str, Any], **kwargs: Any) -> Result:
        container = self.create(spec, **kwargs)
        message = container.recv()
        assert message == {"ready": True}, (message, container.result())
        reply = container.start()
        assert reply == {"started": True}, (reply, container.result())
        return container.result()

    def cleanup(self) -> None:
        for c in self.containers:
            if c.exit_code is None:
                try:
                    os.kill(c.pid, signal.SIGKILL)
                    os.waitpid(c.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
                c.channel.close()
