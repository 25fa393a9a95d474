"""The test images import into a real containerd 1.6, and the native ones run with runc.

Starts a private containerd (own root, state and socket under a temp dir; CRI disabled) for
the module, imports every archive from :func:`tests.fixtures.wasm.build.build_all` with
``ctr -n imgtest images import`` and runs busybox and pause with runc.

Forms b (wasm layers) and c (CNCF artifact) have layers that are not in ``rootfs.diff_ids``:
containerd older than 1.6.25 / 1.7.7 refuses to unpack them ("mismatched image rootfs and
manifest layers"), which is recorded as an expected failure; their blobs still reach the
content store with ``--no-unpack``, which is what the shim reads.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.wasm.build import Fixtures, ImageArchive, build_all

pytestmark = [pytest.mark.containerd, pytest.mark.root]

NAMESPACE = "imgtest"
SHIM_SOCKET_DIR = Path("/run/containerd/s")  # hard-coded in containerd 1.6's shim package
RUNC_ROOT = Path("/run/containerd/runc")  # the runc shim's --root is <this>/<namespace>
MISMATCH = "mismatched image rootfs and manifest layers"


@dataclass
class Containerd:
    """A private containerd and a ``ctr`` bound to it."""

    base: Path
    address: str
    proc: subprocess.Popen[bytes]
    container_ids: list[str]

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "-a", self.address, "-n", NAMESPACE, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} -> exit {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}\ncontainerd log tail:\n{self.log_tail()}"
            )
        return result

    def new_id(self, name: str) -> str:
        """A container id unique to this run, remembered for cleanup."""
        cid = f"{name}-{os.getpid()}-{len(self.container_ids)}"
        self.container_ids.append(cid)
        return cid

    def log_tail(self, lines: int = 30) -> str:
        log = self.base / "containerd.log"
        return (
            "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""
        )


def _config(base: Path, address: str) -> str:
    return f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]
[grpc]
  address = "{address}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
"""


def _start(base: Path) -> Containerd:
    address = str(base / "containerd.sock")
    if len(address) + len(".ttrpc") > 100:  # sun_path is 108 bytes
        pytest.skip(f"temp dir too long for a unix socket: {address}")
    (base / "config.toml").write_text(_config(base, address))
    env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")
    with (base / "containerd.log").open("wb") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(base / "config.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    ctd = Containerd(base, address, proc, [])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"containerd exited with {proc.returncode}:\n{ctd.log_tail()}")
        if ctd.ctr("version", check=False, timeout=5).returncode == 0:
            return ctd
        time.sleep(0.05)
    _stop(ctd)
    raise AssertionError(f"containerd did not answer within 15 s:\n{ctd.log_tail()}")


def _pids_with_arg(arg: bytes) -> list[int]:
    """Processes with ``arg`` as one of their argv entries (our shims: ``-address <sock>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if arg in (entry / "cmdline").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def _mounts_under(base: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # \040 etc.
        if point == str(base) or point.startswith(f"{base}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _shim_socket(address: str, cid: str) -> Path:
    # containerd 1.6 shim.SocketAddress: sha256(filepath.Join(address, namespace, id)).
    return SHIM_SOCKET_DIR / hashlib.sha256(f"{address}/{NAMESPACE}/{cid}".encode()).hexdigest()


def _stop(ctd: Containerd) -> list[str]:
    """Stop everything this containerd started; return what had to be forced (leaks)."""
    leaks: list[str] = []
    if ctd.proc.poll() is None:
        tasks = ctd.ctr("tasks", "ls", "-q", check=False, timeout=10).stdout.split()
        for task in tasks:
            ctd.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=10)
            ctd.ctr("tasks", "rm", "-f", task, check=False, timeout=10)
        for cid in ctd.ctr("containers", "ls", "-q", check=False, timeout=10).stdout.split():
            ctd.ctr("containers", "rm", cid, check=False, timeout=10)
        leaks += [f"task {t} still existed at teardown" for t in tasks]
    # Shims that outlived their tasks, then containerd itself, by pid.
    for pid in _pids_with_arg(ctd.address.encode()):
        if pid != ctd.proc.pid:
            leaks.append(f"shim pid {pid} still running")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if ctd.proc.poll() is None:
        ctd.proc.terminate()
        try:
            ctd.proc.wait(10)
        except subprocess.TimeoutExpired:
            ctd.proc.kill()
            ctd.proc.wait(10)
    for point in _mounts_under(ctd.base):
        leaks.append(f"mount {point}")
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    for cid in ctd.container_ids:
        _shim_socket(ctd.address, cid).unlink(missing_ok=True)
        for cgroup in Path("/sys/fs/cgroup").glob(f"*/{NAMESPACE}/{cid}"):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
    for parent in [*Path("/sys/fs/cgroup").glob(f"*/{NAMESPACE}"), RUNC_ROOT / NAMESPACE]:
        with contextlib.suppress(OSError):  # not empty: someone else uses the namespace
            parent.rmdir()
    shutil.rmtree(ctd.base, ignore_errors=True)
    return leaks


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            pytest.skip(f"{tool} not installed (apt-get install containerd runc)")
    ctd = _start(tmp_path_factory.mktemp("ctd"))
    yield ctd
    leaks = _stop(ctd)
    assert not _pids_with_arg(ctd.address.encode()), "processes of the private containerd remain"
    if leaks:
        pytest.fail("teardown had to clean up: " + "; ".join(leaks))


@pytest.fixture(scope="module")
def fixtures() -> Fixtures:
    return build_all()


def _manifest(image: ImageArchive) -> dict[str, object]:
    with tarfile.open(image.path) as tar:

        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            assert member is not None
            return member.read()

        index = json.loads(read("index.json"))
        digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest: dict[str, object] = json.loads(read(f"blobs/sha256/{digest}"))
        return manifest


def _check_unpacked(ctd: Containerd, name: str) -> None:
    lines = [line.split() for line in ctd.ctr("images", "check").stdout.splitlines()[1:]]
    [row] = [r for r in lines if r and r[0] == name]
    assert "complete" in row and row[-1] == "true", row


# ------------------------------------------------------------------------------------------
# native images: import and run with runc


@pytest.mark.parametrize("key", ["busybox", "pause"])
def test_native_image_imports(containerd: Containerd, fixtures: Fixtures, key: str) -> None:
    image = fixtures.images[key]
    result = containerd.ctr("images", "import", str(image.path))
    assert f"unpacking {image.name}" in result.stdout and "done" in result.stdout
    _check_unpacked(containerd, image.name)


def test_busybox_runs_with_runc(containerd: Containerd, fixtures: Fixtures) -> None:
    image = fixtures.images["busybox"]
    containerd.ctr("images", "import", str(image.path))
    cid = containerd.new_id("echo")
    result = containerd.ctr("run", "--rm", image.name, cid, "/bin/echo", "hi")
    assert result.stdout == "hi\n"
    shell = containerd.new_id("sh")
    script = "ls /bin/sh /bin/hostname /bin/id /bin/ps /bin/mount >/dev/null && id -u && pwd"
    result = containerd.ctr("run", "--rm", image.name, shell, "/bin/sh", "-c", script)
    assert result.stdout == "0\n/\n"


def test_pause_runs_until_sigterm(containerd: Containerd, fixtures: Fixtures) -> None:
    image = fixtures.images["pause"]
    containerd.ctr("images", "import", str(image.path))
    cid = containerd.new_id("pause")
    argv = ["ctr", "-a", containerd.address, "-n", NAMESPACE, "run", "--rm", image.name, cid]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        try:
            deadline = time.monotonic() + 20
            while not _task_running(containerd, cid):
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "pause never reached RUNNING"
                time.sleep(0.05)
            time.sleep(0.2)  # let pause install its signal handlers
            containerd.ctr("tasks", "kill", "-s", "SIGTERM", cid)
            assert run.wait(20) == 0, run.communicate()
        finally:
            if run.poll() is None:
                run.kill()
            run.communicate()


def _task_running(ctd: Containerd, cid: str) -> bool:
    rows = [line.split() for line in ctd.ctr("tasks", "ls").stdout.splitlines()[1:]]
    return any(row[0] == cid and row[-1] == "RUNNING" for row in rows if row)


# ------------------------------------------------------------------------------------------
# wasm images


def test_wasm_file_image_imports(containerd: Containerd, fixtures: Fixtures) -> None:
    """Form a: a plain layer; the index says wasip1/wasm, so ctr needs --all-platforms."""
    image = fixtures.images["hello"]
    result = containerd.ctr("images", "import", str(image.path), check=False)
    assert "image might be filtered out" in result.stderr  # platform wasip1/wasm != linux
    containerd.ctr("images", "import", "--all-platforms", str(image.path))
    _check_unpacked(containerd, image.name)
    # The rootfs holds /demo.wasm: runc finds it and refuses to exec it.
    cid = containerd.new_id("wasm-runc")
    result = containerd.ctr("run", "--rm", image.name, cid, check=False)
    assert result.returncode != 0
    assert "exec /demo.wasm: exec format error" in result.stderr
    containerd.ctr("containers", "rm", cid, check=False)


def test_wasm_file_image_without_index_platform_imports_plainly(
    containerd: Containerd, fixtures: Fixtures, tmp_path: Path
) -> None:
    from containerd_shim_wasm import oci_tar_builder as otb

    module = otb.Module.from_path(fixtures.demo_wasm)
    image = otb.file_image("localhost/hello-noplatform:test", [module], index_platform=False)
    path = image.write(tmp_path / "hello-noplatform.tar")
    containerd.ctr("images", "import", str(path))
    _check_unpacked(containerd, image.reference)


@pytest.mark.parametrize("key", ["hello-oci", "hello-artifact"])
def test_wasm_layer_images_unpack(containerd: Containerd, fixtures: Fixtures, key: str) -> None:
    """Forms b and c: containerd < 1.6.25 / 1.7.7 cannot unpack layers outside diff_ids."""
    image = fixtures.images[key]
    result = containerd.ctr("images", "import", "--all-platforms", str(image.path), check=False)
    if result.returncode != 0 and MISMATCH in result.stderr:
        version = containerd.ctr("version").stdout.split("Server:")[-1].split()[1]
        pytest.xfail(f"containerd {version} refuses to unpack {image.form} images: {MISMATCH}")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("key", ["hello-oci", "hello-artifact"])
def test_wasm_layers_reach_the_content_store(
    containerd: Containerd, fixtures: Fixtures, key: str
) -> None:
    """What the shim reads: with --no-unpack every containerd keeps the raw module layer."""
    image = fixtures.images[key]
    containerd.ctr("images", "import", "--all-platforms", "--no-unpack", str(image.path))
    assert image.name in containerd.ctr("images", "ls", "-q").stdout.split()
    layers = _manifest(image)["layers"]
    assert isinstance(layers, list) and len(layers) == 1
    content = subprocess.run(
        ["ctr", "-a", containerd.address, "-n", NAMESPACE, "content", "get", layers[0]["digest"]],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert content == fixtures.demo_wasm.read_bytes()
    assert not content.startswith(gzip.compress(b"")[:2])  # raw wasm, not a tar+gzip
