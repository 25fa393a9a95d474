"""Wasm (and native) containers of ``containerd-shim-wasmtime-v1`` under a real containerd.

Everything goes through ``ctr`` against one private containerd for the module (its own
root, state and socket; see :mod:`tests.support.containerd`), with the runtime
``io.containerd.wasmtime.v1`` found on containerd's PATH (the venv's ``bin``). The images
are built by the project: ``localhost/hello:test`` (``/demo.wasm``, from ``demo.c``),
``localhost/busybox:test`` (native) and, built here, ``localhost/wasm-modules:test`` with
several modules as files (WAT text, a custom entrypoint, a trap, garbage bytes…).

Two things ``ctr`` 1.6 cannot do are done through containerd's own gRPC API (a few
hand-encoded messages, see :class:`ContainerdApi`): creating a task *without* starting it
(``ctr run`` and ``ctr task start`` always do both), and changing a container's args between
two tasks, so that a second task of the *same* container (same rootfs snapshot) can read
back what the first one wrote.

After every test nothing of its containers may be left: no shim, zygote or container
process (their argv names this containerd's ``-address``; native processes are found by
their cgroup), no mount under the containerd's dirs, no cgroup ``*/default/<id>``, no shim
socket, bundle, container or snapshot record; at module end the containerd's own leak
report (``stop_leftovers``) must be empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest

from containerd_shim_wasm import oci_tar_builder as otb
from containerd_shimkit.api import types_pb2
from containerd_shimkit.cli.wire import field_bytes as _field
from containerd_shimkit.cli.wire import iter_fields
from tests.fixtures.wasm.build import Fixtures, build_all
from tests.support.containerd import (
    FIFO_DIR,
    SHIM_SOCKET_DIR,
    ContainerdBinaries,
    PrivateContainerd,
    is_shim_spare,
    is_shim_template,
    mount_points,
    read_cmdline,
    shim_socket_name,
)

pytestmark = [pytest.mark.containerd, pytest.mark.root]

if os.geteuid() != 0:
    pytest.skip("a private containerd and containers need root", allow_module_level=True)

RUNTIME = "io.containerd.wasmtime.v1"
NAMESPACE = "default"
HELLO = "localhost/hello:test"
BUSYBOX = "localhost/busybox:test"
MODULES = "localhost/wasm-modules:test"
#: Set in containerd's (and so the shim's) environment; a guest must never see it.
SHIM_SECRET = "SHIM_SECRET"
#: Garbage that is neither wasm, WAT, ELF nor ``#!`` (not valid UTF-8 either).
NOT_WASM = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"
CGROUP_ROOT = Path("/sys/fs/cgroup")
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


# --------------------------------------------------------------------------- containerd gRPC


class ContainerdApi:
    """The handful of containerd gRPC calls ``ctr`` 1.6 does not offer on their own.

    containerd's API protos are not vendored here, and these are a few flat messages, so
    they are encoded by hand (field numbers from containerd's ``api/services``).
    """

    def __init__(self, address: Path, namespace: str = NAMESPACE) -> None:
        self._channel = grpc.insecure_channel(f"unix://{address}")
        self._metadata = (("containerd-namespace", namespace),)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: bytes, timeout: float = 60.0) -> bytes:
        call = self._channel.unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        response: bytes = call(request, metadata=self._metadata, timeout=timeout)
        return response

    def snapshot_mounts(self, key: str, snapshotter: str = "overlayfs") -> list[Any]:
        """``Snapshots.Mounts``: how to mount the container's rootfs snapshot."""
        reply = self._call(
            "/containerd.services.snapshots.v1.Snapshots/Mounts",
            _field(1, snapshotter) + _field(2, key),
        )
        return [
            types_pb2.Mount.FromString(v)
            for n, _, v in iter_fields(reply)
            if n == 1 and isinstance(v, bytes)
        ]

    def create_task(self, container_id: str, rootfs: list[Any]) -> int:
        """``Tasks.Create`` (what ``ctr`` does before Start), without stdio; the task's pid."""
        request = _field(1, container_id)
        for mount in rootfs:
            request += _field(3, mount.SerializeToString())
        reply = self._call("/containerd.services.tasks.v1.Tasks/Create", request)
        return next(int(v) for n, _, v in iter_fields(reply) if n == 2 and isinstance(v, int))

    def delete_task(self, container_id: str) -> int:
        """``Tasks.Delete``; the exit status containerd reports."""
        reply = self._call("/containerd.services.tasks.v1.Tasks/Delete", _field(1, container_id))
        return next((int(v) for n, _, v in iter_fields(reply) if n == 3 and isinstance(v, int)), 0)

    def update_spec(self, container_id: str, spec: dict[str, Any]) -> None:
        """``Containers.Update`` of the spec only (field mask ``spec``)."""
        any_spec = _field(1, SPEC_TYPE_URL) + _field(2, json.dumps(spec).encode())
        container = _field(1, container_id) + _field(5, any_spec)
        request = _field(1, container) + _field(2, _field(1, "spec"))
        self._call("/containerd.services.containers.v1.Containers/Update", request)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    """The module's containerd, images and helpers."""

    ctd: PrivateContainerd
    fx: Fixtures
    api: ContainerdApi
    #: Container ids used by the running test (checked for leftovers after it).
    ids: list[str] = field(default_factory=list)

    def new_id(self, prefix: str) -> str:
        cid = f"{prefix}-{secrets.token_hex(3)}"
        self.ids.append(cid)
        return cid

    def ctr(
        self, *args: str, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.ctd.ctr(*args, input=input, timeout=timeout)

    def run(
        self,
        image: str,
        cid: str,
        *cmd: str,
        opts: tuple[str, ...] = (),
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """``ctr run --rm --runtime io.containerd.wasmtime.v1 [opts] IMAGE ID CMD…``."""
        return self.ctr(
            "run", "--rm", "--runtime", RUNTIME, *opts, image, cid, *cmd,
            input=input, timeout=timeout,
        )  # fmt: skip

    def run_detached(
        self, image: str, cid: str, *cmd: str, opts: Sequence[str] = (), timeout: float = 60.0
    ) -> None:
        """``ctr run -d [opts]``: the task keeps running; the caller kills and deletes it."""
        result = self.ctr("run", "-d", "--runtime", RUNTIME, *opts, image, cid, *cmd,
                          timeout=timeout)  # fmt: skip
        assert result.returncode == 0, f"{result.stderr}\n{self.log(cid)}"

    def popen_run(
        self, image: str, cid: str, *cmd: str, opts: Sequence[str] = ()
    ) -> subprocess.Popen[str]:
        """``ctr run --rm [opts] …`` in the background (stdout and stderr piped), e.g. to
        kill it meanwhile."""
        args = ("run", "--rm", "--runtime", RUNTIME, *opts, image, cid, *cmd)
        self.ctd.tracker.add_tokens(args)
        argv = [str(self.ctd.binaries.ctr), "-a", str(self.ctd.address), "-n", NAMESPACE, *args]
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.ctd.environment(),
        )

    def task_status(self, cid: str) -> str | None:
        """The STATUS column of ``ctr task ls`` for ``cid`` (None when it has no task)."""
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            words = line.split()
            if words and words[0] == cid:
                return words[-1]
        return None

    def wait_status(self, cid: str, status: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while (current := self.task_status(cid)) != status:
            if time.monotonic() > deadline:
                pytest.fail(f"task {cid} is {current}, not {status}:\n{self.log(cid)}")
            time.sleep(0.05)

    def kill_and_remove(self, cid: str) -> None:
        """SIGKILL a detached container's task, wait for it, delete task and container."""
        self.ctr("task", "kill", "--signal", "SIGKILL", cid)
        self.wait_status(cid, "STOPPED")
        self.ctr("task", "delete", cid)
        self.ctr("containers", "delete", cid)

    def log(self, cid: str) -> str:
        """The shim's and the container's lines of containerd's log for ``cid``."""
        marks = (f"instance={cid}", f"pod={cid}", f"id={cid}")
        lines = [ln for ln in self.ctd.log_text().splitlines() if any(m in ln for m in marks)]
        return "\n".join(lines[-60:])


def _modules_image(fx: Fixtures, out: Path) -> Path:
    """``localhost/wasm-modules:test``: several modules as files, plus ``/tmp``."""
    modules = [
        otb.Module("demo.wasm", fx.demo_wasm.read_bytes()),
        otb.Module("hello.wat", fx.wat["hello"].read_bytes()),
        otb.Module("custom.wasm", fx.wasm["custom_entrypoint"].read_bytes()),
        otb.Module("exit42.wasm", fx.wasm["exit_code"].read_bytes()),
        otb.Module("unreachable.wasm", fx.wasm["unreachable"].read_bytes()),
        otb.Module("notwasm.wasm", NOT_WASM),
        otb.Module("broken.wat", b"(module (func $f (unknown_instr)))\n"),
    ]
    image = otb.file_image(MODULES, modules, files=[otb.TarEntry.directory("tmp", 0o1777)])
    return image.write(out / "wasm-modules.tar")


def hello_busybox_and_modules(fx: Fixtures, out: Path) -> list[Path]:
    """The archives of :data:`HELLO`, :data:`BUSYBOX` and :data:`MODULES` (built in ``out``)."""
    return [fx.images["hello"].path, fx.images["busybox"].path, _modules_image(fx, out)]


E = TypeVar("E", bound=Env)


@contextlib.contextmanager
def private_containerd_env(
    binaries: ContainerdBinaries,
    tmp: Path,
    images: Callable[[Fixtures, Path], Iterable[Path]],
    *,
    env_type: type[E],
    extra_path: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[E]:
    """A module's private containerd (its log in ``tmp``, the venv's ``bin`` last on its PATH
    after ``extra_path``, ``env`` added to its environment) with the archives ``images(fx,
    tmp)`` imported, as an ``env_type``. containerd is stopped on exit; what it left is in
    the env's ``ctd.stop_leftovers``, for the caller to check."""
    fx = build_all()
    with PrivateContainerd(
        binaries,
        extra_path=[*extra_path, Path(sys.executable).parent],
        env=env,
        log_path=tmp / "containerd.log",
    ) as ctd:
        for archive in images(fx, tmp):
            ctd.ctr("images", "import", "--all-platforms", str(archive), check=True)
        started = env_type(ctd, fx, ContainerdApi(ctd.address))
        try:
            yield started
        finally:
            started.api.close()


@pytest.fixture(scope="module")
def env(
    containerd_binaries: ContainerdBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    with private_containerd_env(
        containerd_binaries,
        tmp_path_factory.mktemp("wasm-containers"),
        hello_busybox_and_modules,
        env_type=Env,
        env={SHIM_SECRET: "leaked-from-the-shim"},
    ) as started:
        yield started
    assert started.ctd.stop_leftovers == [], started.ctd.stop_leftovers


def _cgroup_dirs(cid: str) -> list[Path]:
    """``/sys/fs/cgroup/*/default/<id>`` (v1 and hybrid) and ``…/default/<id>`` (v2)."""
    found = list(CGROUP_ROOT.glob(f"*/{NAMESPACE}/{cid}"))
    found += [p for p in [CGROUP_ROOT / NAMESPACE / cid] if p.exists()]
    return found


def _parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _processes_in_cgroup_of(cid: str) -> list[int]:
    """Processes whose cgroup path (any hierarchy) is ``/default/<id>`` or below."""
    pids = []
    suffix = f"/{NAMESPACE}/{cid}"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            path = line.split(":", 2)[-1]
            if path.endswith(suffix) or f"{suffix}/" in path:
                pids.append(int(entry))
                break
    return pids


def leftovers_of(env: Env, cid: str) -> list[str]:
    """What is left of container ``cid`` (and of any shim of this containerd)."""
    ctd = env.ctd
    found = [
        f"shim/container process {pid}: {' '.join(argv)}" for pid, argv in ctd.shim_processes()
    ]
    found += [f"process {pid} in the cgroup of {cid}" for pid in _processes_in_cgroup_of(cid)]
    found += [f"mount {mp} ({fs})" for mp, fs in mount_points() if mp.startswith(f"{ctd.base}/")]
    found += [f"cgroup {p}" for p in _cgroup_dirs(cid)]
    sock = SHIM_SOCKET_DIR / shim_socket_name(str(ctd.address), NAMESPACE, cid)
    found += [f"shim socket {sock}"] if sock.exists() else []
    bundle = ctd.state / "io.containerd.runtime.v2.task" / NAMESPACE / cid
    found += [f"bundle {bundle}"] if bundle.exists() else []
    return found


@pytest.fixture(autouse=True)
def no_leftovers(env: Env) -> Iterator[None]:
    """After each test: nothing of its containers is left (polled: shims exit async)."""
    env.ids.clear()
    yield
    assert_nothing_left(env)


def assert_nothing_left(env: Env, records: bool = True) -> None:
    """Nothing of ``env.ids`` is left: no process, mount, cgroup, socket or bundle (polled
    for 10 s: shims exit asynchronously), no container or snapshot record (``records``),
    nothing the containerd's own leak tracker finds."""
    deadline = time.monotonic() + 10.0
    while True:
        problems = [p for cid in env.ids for p in leftovers_of(env, cid)]
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if records:
        known = env.ctr("containers", "ls", "-q").stdout.split()
        known += env.ctr("snapshots", "ls").stdout.split()
        problems += [f"containerd still has {cid}" for cid in env.ids if cid in known]
    problems += env.ctd.leftovers()
    logs = "\n".join(env.log(cid) for cid in env.ids)
    assert not problems, "left behind:\n  " + "\n  ".join(problems) + f"\n{logs}"


def _run_ok(env: Env, image: str, cid: str, *cmd: str, **kw: Any) -> str:
    result = env.run(image, cid, *cmd, **kw)
    assert result.returncode == 0, f"{result.stderr}\n{env.log(cid)}"
    return result.stdout


# --------------------------------------------------------------------------- wasm basics


def test_hello_world(env: Env) -> None:
    """The image's own entrypoint and Cmd: ``/demo.wasm echo hello world``."""
    cid = env.new_id("hello")
    assert _run_ok(env, HELLO, cid) == "hello world\n"


def test_containers_of_a_pod_compile_the_module_once(env: Env) -> None:
    """The pod's zygote compiles /demo.wasm for the first container; the next ones (and a
    different module) reuse or add to that, and still behave as before."""
    pod = env.new_id("pod")
    keeper = env.new_id("keeper")
    in_pod = ("--annotation", f"io.kubernetes.cri.sandbox-id={pod}")
    result = env.ctr(
        "run", "-d", "--runtime", RUNTIME, *in_pod, HELLO, keeper, "/demo.wasm", "daemon"
    )
    assert result.returncode == 0, result.stderr
    try:
        env.wait_status(keeper, "RUNNING")
        for _ in range(2):
            cid = env.new_id("again")
            assert _run_ok(env, HELLO, cid, "/demo.wasm", "echo", "hi", opts=in_pod) == "hi\n"
        cid = env.new_id("other")
        assert env.run(MODULES, cid, "/exit42.wasm", opts=in_pod).returncode == 42
    finally:
        env.kill_and_remove(keeper)
    # Compiled, or loaded from the node's cache where an earlier pod stored it.
    compiled = [
        ln
        for ln in env.ctd.log_text().splitlines()
        if f"pod={pod}" in ln and "the module for this pod" in ln
    ]
    assert len(compiled) == 2, "\n".join(compiled)  # demo.wasm once, exit42.wasm once


def _templates(ctd: PrivateContainerd) -> list[int]:
    return [
        pid
        for pid, argv in ctd.shim_processes(include_templates=True)
        if is_shim_template(argv) and not is_shim_spare(argv)
    ]


def test_new_pods_get_their_daemon_from_the_template(env: Env) -> None:
    """After the first pod, a template (one per containerd) forks each new pod's daemon,
    with the daemon's own command line; it goes when containerd does (the fixture checks)."""
    _run_ok(env, HELLO, env.new_id("first"), "/demo.wasm", "echo", "x")
    deadline = time.monotonic() + 20
    while not _templates(env.ctd):
        assert time.monotonic() < deadline, "no template started"
        time.sleep(0.1)
    (template,) = _templates(env.ctd)
    cid = env.new_id("forked")
    env.run_detached(HELLO, cid, "/demo.wasm", "daemon")
    try:
        env.wait_status(cid, "RUNNING")
        daemons = [
            pid
            for pid, argv in env.ctd.shim_processes()
            if _parent_of(pid) == template and "-id" in argv and argv[argv.index("-id") + 1] == cid
        ]
        assert len(daemons) == 1, env.ctd.shim_processes(include_templates=True)
        assert _templates(env.ctd) == [template]
    finally:
        env.kill_and_remove(cid)


def test_a_new_pod_gets_the_templates_spare_daemon(env: Env) -> None:
    """The template keeps one daemon (with its zygote) forked ahead of need; a new pod's
    start hands it over. It takes the pod's identity: its command line and its zygote's,
    and the pod id on the zygote's log lines in containerd's log."""
    spares = _first_pod_then_spares(env)
    (template,) = _templates(env.ctd)
    spare = next(pid for pid in spares if _parent_of(pid) == template)
    cid = env.new_id("to-spare")
    env.run_detached(HELLO, cid, "/demo.wasm", "daemon")
    try:
        env.wait_status(cid, "RUNNING")
        argv = read_cmdline(spare)
        assert argv[argv.index("-id") + 1] == cid, argv  # the spare is the pod's daemon now
        # Its zygote; the container's init (forked by the zygote, reaped by the daemon)
        # shows the container's own args instead (test_container_process_has_its_own_title).
        children = [pid for pid, _ in env.ctd.shim_processes() if _parent_of(pid) == spare]
        assert len(children) == 1, children
        assert read_cmdline(children[0]) == argv
        (init,) = [pid for pid in _processes_in_cgroup_of(cid) if _parent_of(pid) == spare]
        assert read_cmdline(init)[:2] == ["/demo.wasm", "daemon"]
        from_zygote = [
            ln for ln in env.ctd.log_text().splitlines() if "the module for this pod" in ln
        ]
        assert any(f"pod={cid}" in ln for ln in from_zygote), "\n".join(from_zygote)
    finally:
        env.kill_and_remove(cid)


def test_a_dead_spare_is_replaced_and_new_pods_still_start(env: Env) -> None:
    spares = _first_pod_then_spares(env)
    for pid in spares:  # the spare and its zygote
        os.kill(pid, signal.SIGKILL)
    assert _run_ok(env, HELLO, env.new_id("after"), "/demo.wasm", "echo", "y") == "y\n"
    deadline = time.monotonic() + 20
    while not (replacements := _spares(env.ctd)) or set(replacements) & set(spares):
        assert time.monotonic() < deadline, "the dead spare was not replaced"
        time.sleep(0.05)


def test_a_spare_whose_zygote_died_serves_with_a_new_zygote(env: Env) -> None:
    spares = _first_pod_then_spares(env)
    (template,) = _templates(env.ctd)
    spare = next(pid for pid in spares if _parent_of(pid) == template)
    (zygote,) = [pid for pid in spares if _parent_of(pid) == spare]
    os.kill(zygote, signal.SIGKILL)
    cid = env.new_id("new-zygote")
    result = env.run(HELLO, cid, "/demo.wasm", "echo", "x")
    assert result.returncode == 0, f"{result.stderr}\n{env.log(cid)}"
    assert result.stdout.strip() == "x"
    assert "the zygote died; started a new one" in env.log(cid)


def _first_pod_then_spares(env: Env) -> list[int]:
    """Run a first pod (which spawns the template), then wait for the template's spare:
    the pids of the spare daemon and its zygote."""
    _run_ok(env, HELLO, env.new_id("first"), "/demo.wasm", "echo", "x")
    deadline = time.monotonic() + 20
    while not (spares := _spares(env.ctd)):
        assert time.monotonic() < deadline, env.ctd.shim_processes(include_templates=True)
        time.sleep(0.05)
    return spares


def _spares(ctd: PrivateContainerd) -> list[int]:
    return [pid for pid, argv in ctd.shim_processes(include_templates=True) if is_shim_spare(argv)]


def test_shim_template_off_execs_every_daemon(
    containerd_binaries: ContainerdBinaries, tmp_path: Path
) -> None:
    fx = build_all()
    with PrivateContainerd(
        containerd_binaries,
        extra_path=[Path(sys.executable).parent],
        env={"SHIM_TEMPLATE": "off"},
        log_path=tmp_path / "containerd.log",
    ) as ctd:
        ctd.ctr("images", "import", "--all-platforms", str(fx.images["hello"].path), check=True)
        for n in range(2):
            result = ctd.ctr(
                "run", "--rm", "--runtime", RUNTIME, HELLO, f"off-{n}", "/demo.wasm", "echo", "x"
            )
            assert (result.returncode, result.stdout) == (0, "x\n"), result.stderr
        time.sleep(0.5)  # a template would be importing by now
        assert _templates(ctd) == []
    assert ctd.stop_leftovers == [], ctd.stop_leftovers


def test_args_include_argv0(env: Env) -> None:
    cid = env.new_id("args")
    out = _run_ok(env, HELLO, cid, "/demo.wasm", "args", "two words", "", "x=y")
    assert out.splitlines() == [
        "argc=5",
        "argv[0]=/demo.wasm",
        "argv[1]=args",
        "argv[2]=two words",
        "argv[3]=",
        "argv[4]=x=y",
    ]


def test_env_comes_only_from_the_spec(env: Env) -> None:
    cid = env.new_id("env")
    out = _run_ok(env, HELLO, cid, "/demo.wasm", "env", opts=("--env", "FOO=bar"))
    lines = out.splitlines()
    # Exactly the spec's env: the image's PATH and the --env; nothing of the shim's
    # environment (SHIM_SECRET, TTRPC_ADDRESS, the test's HOME...).
    assert sorted(lines) == sorted([otb.DEFAULT_PATH_ENV, "FOO=bar"]), lines
    assert not any(line.startswith(f"{SHIM_SECRET}=") for line in lines)


def test_shim_environment_is_not_readable_through_proc(env: Env) -> None:
    """The init is a fork of the shim: the guest must not read the shim's environment
    through /proc/self/environ. A wasm container has no /proc at all (its kernel
    filesystems are detached before the guest runs, see tests/faults/test_guest_escape.py)."""
    cid = env.new_id("environ")
    result = env.run(HELLO, cid, "/demo.wasm", "cat", "/proc/self/environ")
    out = result.stdout
    assert SHIM_SECRET not in out and "TTRPC_ADDRESS" not in out, out.replace("\0", " ")
    assert result.returncode == 1 and "No such file or directory" in result.stderr, result


def test_stdin_is_relayed_until_eof(env: Env) -> None:
    cid = env.new_id("stdin")
    text = "first line\nsecond line\n" + "x" * 200_000 + "\n"
    assert _run_ok(env, HELLO, cid, "/demo.wasm", "stdin", input=text, timeout=60) == text


def test_stderr_reaches_ctr(env: Env) -> None:
    cid = env.new_id("stderr")
    result = env.run(HELLO, cid, "/demo.wasm", "stderr", "to", "stderr")
    assert result.returncode == 0, env.log(cid)
    assert result.stdout == ""
    assert "to stderr\n" in result.stderr


@pytest.mark.parametrize(
    ("image", "cmd"),
    [(HELLO, ("/demo.wasm", "exit", "42")), (MODULES, ("/exit42.wasm",))],
    ids=["demo-exit", "wat-proc-exit"],
)
def test_exit_code_propagates(env: Env, image: str, cmd: tuple[str, ...]) -> None:
    cid = env.new_id("exit")
    result = env.run(image, cid, *cmd)
    assert result.returncode == 42, f"{result.stderr}\n{env.log(cid)}"


def test_trap_exits_137(env: Env) -> None:
    cid = env.new_id("trap")
    result = env.run(MODULES, cid, "/unreachable.wasm")
    assert result.returncode == 137, f"{result.stderr}\n{env.log(cid)}"
    assert result.stdout == ""


def test_custom_entrypoint(env: Env) -> None:
    """``/custom.wasm#foo``: the module exports ``foo`` and no ``_start``."""
    cid = env.new_id("custom")
    assert _run_ok(env, MODULES, cid, "/custom.wasm#foo") == "hello world\n"


def test_missing_export_exits_137(env: Env) -> None:
    """``/custom.wasm`` alone means ``_start``, which it does not export."""
    cid = env.new_id("noexport")
    result = env.run(MODULES, cid, "/custom.wasm")
    assert result.returncode == 137, result.stderr
    assert "does not export a function '_start'" in env.log(cid)


def test_wat_entrypoint(env: Env) -> None:
    cid = env.new_id("wat")
    assert _run_ok(env, MODULES, cid, "/hello.wat") == "hello world\n"


def test_default_devices_exist(env: Env) -> None:
    cid = env.new_id("devices")
    result = env.run(HELLO, cid, "/demo.wasm", "devices")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_missing_working_directory_is_created(env: Env) -> None:
    """Like runc, a ``process.cwd`` the image lacks is created (in the container)."""
    cid = env.new_id("cwd")
    out = _run_ok(env, BUSYBOX, cid, "/bin/pwd", opts=("--cwd", "/work/sub"))
    assert out == "/work/sub\n"
    cid = env.new_id("cwd-wasm")
    assert "work" in _run_ok(env, HELLO, cid, "/demo.wasm", "ls", "/", opts=("--cwd", "/work"))


def test_terminal_is_refused(env: Env) -> None:
    """``ctr run -t`` (ctr needs a terminal of its own for that): Create fails with why."""
    cid = env.new_id("tty")
    args = ("run", "--rm", "-t", "--runtime", RUNTIME, HELLO, cid, "/demo.wasm", "echo", "x")
    env.ctd.tracker.add_tokens(args)
    argv = [str(env.ctd.binaries.ctr), "-a", str(env.ctd.address), "-n", NAMESPACE, *args]
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(
            argv, stdin=terminal, stdout=terminal, stderr=subprocess.PIPE, text=True,
            env=env.ctd.environment(), timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode != 0
    assert "terminal (tty) is not supported" in proc.stderr, proc.stderr


def test_guest_sees_the_container_rootfs(env: Env) -> None:
    """The preopened ``/`` is the container's rootfs, not the host's."""
    cid = env.new_id("ls")
    names = _run_ok(env, MODULES, cid, "/demo.wasm", "ls", "/").split()
    assert {"demo.wasm", "hello.wat", "tmp"} <= set(names)
    assert "etc" not in names and "usr" not in names  # host dirs the image lacks


# --------------------------------------------------------------------------- not wasm


@pytest.mark.parametrize(
    ("arg0", "why"),
    [
        ("/notwasm.wasm", "/notwasm.wasm is not a wasm module: bad magic number"),
        ("/broken.wat", "/broken.wat is neither a wasm binary nor valid WAT: /broken.wat:1:"),
        ("/missing.wasm", "'/missing.wasm' not found in the container"),
    ],
    ids=["garbage", "bad-wat", "missing"],
)
def test_not_wasm_fails_create_naming_the_file(env: Env, arg0: str, why: str) -> None:
    cid = env.new_id("notwasm")
    result = env.run(MODULES, cid, arg0)
    assert result.returncode != 0
    assert "failed to create shim task" in result.stderr, result.stderr
    assert why in result.stderr, result.stderr
    assert env.task_status(cid) is None


@pytest.mark.parametrize("image", [HELLO, BUSYBOX], ids=["wasm", "native"])
def test_start_failure_is_reported_by_start(env: Env, image: str, tmp_path: Path) -> None:
    """A seccomp profile libseccomp refuses fails Start with the reason (the init applies
    seccomp at Start), instead of a silent exit status 1."""
    cid = env.new_id("badseccomp")
    profile = tmp_path / "seccomp.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_BOGUS"}))
    cmd = ("/demo.wasm", "echo", "hi") if image == HELLO else ("/bin/echo", "hi")
    opts = ("--seccomp", "--seccomp-profile", str(profile))
    result = env.run(image, cid, *cmd, opts=opts)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "SCMP_ACT_BOGUS" in result.stderr, f"{result.stderr}\n{env.log(cid)}"


# --------------------------------------------------------------------------- files


def test_guest_writes_stay_in_the_container(env: Env) -> None:
    """A file the guest writes lands in the container's own snapshot (upper dir): not on
    the host, not in the image; a second task of the same container reads it back; it goes
    away with the container."""
    cid = env.new_id("write")
    name = f"/tmp/{cid}"
    assert not Path(name).exists()
    created = env.ctr("containers", "create", "--runtime", RUNTIME, MODULES, cid,
                      "/demo.wasm", "write", name, "hello")  # fmt: skip
    assert created.returncode == 0, created.stderr
    container_deleted = False
    try:
        options = [o for m in env.api.snapshot_mounts(cid) for o in m.options]
        upper = Path(next(o.split("=", 1)[1] for o in options if o.startswith("upperdir=")))
        lowers = [
            Path(d)
            for o in options
            if o.startswith("lowerdir=")
            for d in o.split("=", 1)[1].split(":")
        ]
        assert lowers, options

        first = env.ctr("task", "start", cid)
        assert first.returncode == 0, f"{first.stderr}\n{env.log(cid)}"
        assert env.task_status(cid) is None  # `ctr task start` deletes the task it waited for
        assert (upper / name.lstrip("/")).read_text() == "hello\n"
        assert not Path(name).exists(), "the guest wrote to the host's /tmp"
        assert not any((lower / name.lstrip("/")).exists() for lower in lowers)

        # Same container, same snapshot, new args: read it back.
        info = json.loads(env.ctr("containers", "info", cid).stdout)
        spec = info["Spec"]
        spec["process"]["args"] = ["/demo.wasm", "cat", name]
        env.api.update_spec(cid, spec)
        second = env.ctr("task", "start", cid)
        assert second.returncode == 0, f"{second.stderr}\n{env.log(cid)}"
        assert second.stdout == "hello\n"

        assert env.ctr("containers", "delete", cid).returncode == 0
        container_deleted = True
        deadline = time.monotonic() + 10  # containerd's GC removes the snapshot lazily
        while upper.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not upper.exists()
    finally:
        if not container_deleted:
            env.ctr("task", "delete", "--force", cid)
            env.ctr("containers", "delete", cid)


# --------------------------------------------------------------------------- kill


def _kill_running(env: Env, cmd: tuple[str, ...], signal_name: str, all_: bool = False) -> int:
    """Run ``cmd`` with ``ctr run --rm`` in the background, wait until the guest runs,
    ``ctr task kill`` it; the exit status ``ctr run`` reports."""
    cid = env.new_id(f"kill-{signal_name.lower()}")
    proc = env.popen_run(HELLO, cid, *cmd)
    try:
        env.wait_status(cid, "RUNNING")
        if cmd[1] == "daemon":
            assert proc.stdout is not None
            assert proc.stdout.readline() == "daemon: tick 1\n"
        else:
            time.sleep(0.3)  # the guest is in its loop
        extra = ("--all",) if all_ else ()
        kill = env.ctr("task", "kill", "--signal", signal_name, *extra, cid)
        assert kill.returncode == 0, kill.stderr
        started = time.monotonic()
        proc.wait(timeout=20)
        assert time.monotonic() - started < 5, "the container took long to stop"
    finally:
        if proc.poll() is None:
            env.ctr("task", "kill", "--signal", "SIGKILL", cid)
            proc.wait(timeout=20)
        proc.communicate()
    return proc.returncode


@pytest.mark.parametrize("workload", ["daemon", "spin"])
def test_sigterm_stops_the_guest_with_143(env: Env, workload: str) -> None:
    """Unlike runwasi, SIGTERM stops a wasm guest (in a host call or spinning)."""
    assert _kill_running(env, ("/demo.wasm", workload), "SIGTERM") == 143


@pytest.mark.parametrize("workload", ["daemon", "spin"])
def test_sigkill_gives_137(env: Env, workload: str) -> None:
    assert _kill_running(env, ("/demo.wasm", workload), "SIGKILL") == 137


def test_kill_all_with_sigint(env: Env) -> None:
    assert _kill_running(env, ("/demo.wasm", "daemon"), "SIGINT", all_=True) == 130


def test_detached_kill_then_delete_reports_exit_status(env: Env) -> None:
    cid = env.new_id("detached")
    env.run_detached(HELLO, cid, "/demo.wasm", "daemon")
    try:
        env.wait_status(cid, "RUNNING")
        assert env.ctr("task", "kill", cid).returncode == 0  # SIGTERM by default
        env.wait_status(cid, "STOPPED")
        deleted = env.ctr("task", "delete", cid)
        assert deleted.returncode == 0
        assert "exit code 143" in deleted.stderr, deleted.stderr
    finally:
        env.ctr("task", "delete", "--force", cid)
        env.ctr("containers", "delete", cid)


@pytest.mark.parametrize(
    ("image", "cmd"),
    [(HELLO, ("/demo.wasm", "daemon")), (BUSYBOX, ("/bin/sh", "-c", "sleep 600 & sleep 600"))],
    ids=["wasm", "native"],
)
def test_killed_shim_daemon_is_cleaned_up(env: Env, image: str, cmd: tuple[str, ...]) -> None:
    """SIGKILL the shim daemon under a running container: containerd runs the shim's
    ``delete`` action, which kills what is left in the cgroup, removes it, unmounts the
    rootfs and unlinks the dead daemon's socket (the fixture checks all of that)."""
    cid = env.new_id("crash")
    proc = env.popen_run(image, cid, *cmd)
    try:
        env.wait_status(cid, "RUNNING")
        time.sleep(0.3)  # the native sleeps are forked
        assert _processes_in_cgroup_of(cid)
        shims = {pid for pid, _ in env.ctd.shim_processes()}
        daemons = [pid for pid in shims if _parent_of(pid) not in shims]
        assert len(daemons) == 1, (shims, daemons)
        os.kill(daemons[0], signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode != 0
    # ctr's own fifo dir: on this error path ctr does not remove it (with runc neither).
    for fifo_dir in FIFO_DIR.glob("*"):
        if any(f.name.startswith(f"{cid}-") for f in fifo_dir.iterdir()):
            shutil.rmtree(fifo_dir)


def test_pause_freezes_the_guest_and_resume_thaws_it(env: Env) -> None:
    cid = env.new_id("pause")
    proc = env.popen_run(HELLO, cid, "/demo.wasm", "daemon")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "daemon: tick 1\n"
        assert env.ctr("task", "pause", cid).returncode == 0
        ready, _, _ = select.select([proc.stdout], [], [], 2.5)
        assert not ready, "the guest kept running while paused"
        assert env.ctr("task", "resume", cid).returncode == 0
        assert proc.stdout.readline().startswith("daemon: tick ")
        assert env.ctr("task", "kill", "--signal", "SIGKILL", cid).returncode == 0
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            env.ctr("task", "resume", cid)
            env.ctr("task", "kill", "--signal", "SIGKILL", cid)
            proc.wait(timeout=20)
        proc.communicate()
    assert proc.returncode == 137


def test_paused_task_is_reported_paused(env: Env) -> None:
    cid = env.new_id("paused")
    env.run_detached(HELLO, cid, "/demo.wasm", "daemon")
    try:
        env.wait_status(cid, "RUNNING")
        assert env.ctr("task", "pause", cid).returncode == 0
        status = env.task_status(cid)
        assert env.ctr("task", "resume", cid).returncode == 0
        assert status == "PAUSED"
    finally:
        env.ctr("task", "resume", cid)
        env.kill_and_remove(cid)


# --------------------------------------------------------------------------- create/delete


def test_delete_after_create_without_start(env: Env) -> None:
    """``ctr`` 1.6 always starts what it creates, so Create and Delete go through
    containerd's Tasks API directly: the init process waits for Start, the guest never runs,
    and Delete removes the process, the cgroup, the rootfs mount and the shim."""
    cid = env.new_id("created")
    marker = f"/tmp/{cid}"
    created = env.ctr("containers", "create", "--runtime", RUNTIME, MODULES, cid,
                      "/demo.wasm", "write", marker, "ran")  # fmt: skip
    assert created.returncode == 0, created.stderr
    try:
        mounts = env.api.snapshot_mounts(cid)
        upper = Path(next(o.split("=", 1)[1] for m in mounts for o in m.options
                          if o.startswith("upperdir=")))  # fmt: skip
        pid = env.api.create_task(cid, mounts)
        assert pid > 0
        assert env.task_status(cid) == "CREATED"
        assert Path(f"/proc/{pid}").exists()
        assert _cgroup_dirs(cid), "no cgroup for the created container"
        rootfs = env.ctd.state / "io.containerd.runtime.v2.task" / NAMESPACE / cid / "rootfs"
        assert any(mp == str(rootfs) for mp, _ in mount_points())
        time.sleep(0.3)
        assert not (upper / marker.lstrip("/")).exists(), "the guest ran before Start"

        env.api.delete_task(cid)
        assert env.task_status(cid) is None
        assert not (upper / marker.lstrip("/")).exists(), "the guest ran at Delete"
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}/status").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}/status").exists(), "the init process survived Delete"
        assert not _cgroup_dirs(cid)
        assert not any(mp == str(rootfs) for mp, _ in mount_points())
    finally:
        if env.task_status(cid) is not None:
            env.ctr("task", "delete", "--force", cid)
        env.ctr("containers", "delete", cid)


# --------------------------------------------------------------------------- resources


def test_memory_limit_stops_a_guest_allocating_past_it(env: Env) -> None:
    limit_mib = 32
    cid = env.new_id("memlimit")
    result = env.run(
        HELLO, cid, "/demo.wasm", "alloc", "1024", opts=("--memory-limit", str(limit_mib << 20))
    )
    # Either the engine's store limit makes malloc fail (demo exits 12 = ENOMEM) or the
    # cgroup's OOM killer stops the process (SIGKILL: 137); never "done".
    assert result.returncode in (12, 137), f"{result.stdout}{result.stderr}\n{env.log(cid)}"
    assert "alloc: done" not in result.stdout
    reached = [int(n) for n in re.findall(r"(?:allocated|after) (\d+) MiB", result.stdout)]
    assert all(n < limit_mib for n in reached), result.stdout


def test_memory_limit_allows_allocations_below_it(env: Env) -> None:
    cid = env.new_id("memok")
    out = _run_ok(
        env, HELLO, cid, "/demo.wasm", "alloc", "8", opts=("--memory-limit", str(128 << 20))
    )
    assert out.splitlines()[-1] == "alloc: done 8 MiB"


def _metric_rows(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        words = line.split(None, 1)
        if len(words) == 2:
            rows[words[0]] = words[1].strip()
    return rows


def test_task_metrics_show_memory_and_cpu(env: Env) -> None:
    cid = env.new_id("metrics")
    env.run_detached(HELLO, cid, "/demo.wasm", "daemon")
    try:
        env.wait_status(cid, "RUNNING")
        time.sleep(0.5)
        result = env.ctr("task", "metrics", cid)
        assert result.returncode == 0, result.stderr
        rows = _metric_rows(result.stdout)

        def nonzero(prefixes: tuple[str, ...]) -> list[str]:
            return [
                k for k, v in rows.items() if k.startswith(prefixes) and v.isdigit() and int(v) > 0
            ]

        # cgroup v1: memory.usage_in_bytes, cpuacct.usage; v2: memory.usage, cpu.usage_usec.
        assert nonzero(("memory.usage",)), result.stdout
        assert nonzero(("cpuacct.usage", "cpu.usage_usec")), result.stdout
        assert nonzero(("pids.current",)), result.stdout
    finally:
        env.kill_and_remove(cid)


# --------------------------------------------------------------------------- native


def test_native_busybox_has_its_own_pid_uts_namespace_and_cgroup(env: Env) -> None:
    """A native container through the same runtime: pid 1, its own UTS namespace (ctr 1.6
    sets no hostname, so it keeps the host's name, as with runc) and cgroup
    ``/default/<id>``."""
    cid = env.new_id("busybox")
    host_uts = os.readlink("/proc/self/ns/uts")
    host_pidns = os.readlink("/proc/self/ns/pid")
    script = (
        "echo $$; hostname; readlink /proc/self/ns/uts; readlink /proc/self/ns/pid; "
        "cat /proc/self/cgroup"
    )
    out = _run_ok(env, BUSYBOX, cid, "/bin/sh", "-c", script).splitlines()
    assert out[0] == "1"
    assert out[1] == socket.gethostname()
    assert out[2] != host_uts and out[2].startswith("uts:[")
    assert out[3] != host_pidns and out[3].startswith("pid:[")
    cgroups = [line.split(":", 2)[2] for line in out[4:]]
    assert cgroups and all(path == f"/{NAMESPACE}/{cid}" for path in cgroups), out[4:]


def test_native_hostname_change_stays_in_the_container(env: Env) -> None:
    cid = env.new_id("uts")
    host_uts = os.readlink("/proc/self/ns/uts")
    before = socket.gethostname()
    # Guarded: only ever set a hostname in a UTS namespace other than the host's.
    script = f'[ "$(readlink /proc/self/ns/uts)" != "{host_uts}" ] && hostname inside && hostname'
    out = _run_ok(env, BUSYBOX, cid, "/bin/sh", "-c", script, opts=("--cap-add", "CAP_SYS_ADMIN"))
    assert out == "inside\n"
    assert socket.gethostname() == before


def test_native_sigterm_and_exit_code(env: Env) -> None:
    cid = env.new_id("native-exit")
    result = env.run(BUSYBOX, cid, "/bin/sh", "-c", "echo out; echo err >&2; exit 7")
    assert (result.returncode, result.stdout) == (7, "out\n")
    assert "err" in result.stderr
