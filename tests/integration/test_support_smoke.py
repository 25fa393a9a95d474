"""Smoke tests of tests/support against the selected containerd (``$CONTAINERD_VERSION``).

A private containerd starts, runs a tiny busybox image with runc through ``ctr`` and through
CRI (host-network and bridge-network pods, with a locally built static pause image), and
stops without leaving anything behind. The images are built inline, with nothing but tarfile
and json, so these tests depend on no other test helper.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import ipaddress
import json
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support.containerd import (
    PrivateContainerd,
    RuntimeHandler,
    load_fetch_module,
    process_alive,
    selected_series,
)
from tests.support.cri import cri_log_messages
from tests.support.plugin import ContainerdFactory, CriEnv, requires_root

pytestmark = [pytest.mark.root, pytest.mark.containerd, requires_root]

BUSYBOX = "localhost/busybox:smoke"
PAUSE = "localhost/pause:test"  # CriConfig's default sandbox_image
BUSYBOX_APPLETS = ("sh", "echo", "cat", "sleep", "true", "ip")

PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGTERM, quit);
    signal(SIGINT, quit);
    for (;;) pause();
}
"""


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_archive(
    out: Path,
    name: str,
    files: Mapping[str, bytes],
    symlinks: Mapping[str, str] | None = None,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
) -> Path:
    """Write a one-layer linux/amd64 OCI image archive that ``ctr images import`` accepts."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        dirs = sorted({str(Path(p).parent) for p in [*files, *(symlinks or {})]} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            layer.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o755
            layer.addfile(info, io.BytesIO(data))
        for path, target in (symlinks or {}).items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            layer.addfile(info)
    layer_tar = layer_buf.getvalue()
    layer_gz = gzip.compress(layer_tar, mtime=0)
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_sha256(layer_tar)]},
    }
    if entrypoint:
        config["config"]["Entrypoint"] = entrypoint  # type: ignore[index]
    if cmd:
        config["config"]["Cmd"] = cmd  # type: ignore[index]
    config_b = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _sha256(config_b),
            "size": len(config_b),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _sha256(layer_gz),
                "size": len(layer_gz),
            }
        ],
    }
    manifest_b = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": manifest["mediaType"],
                "digest": _sha256(manifest_b),
                "size": len(manifest_b),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    with tarfile.open(out, "w") as archive:
        blobs = {
            "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
            "index.json": json.dumps(index).encode(),
        }
        for blob in (layer_gz, config_b, manifest_b):
            blobs["blobs/sha256/" + _sha256(blob)[7:]] = blob
        for path, data in blobs.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        pytest.skip("needs a static /bin/busybox (apt-get install busybox-static)")
    links = {f"bin/{a}": "busybox" for a in BUSYBOX_APPLETS}
    out = tmp_path_factory.mktemp("images") / "busybox.tar"
    return oci_archive(out, BUSYBOX, {"bin/busybox": busybox.read_bytes()}, links, cmd=["/bin/sh"])


@pytest.fixture(scope="module")
def pause_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the static pause binary")
    work = tmp_path_factory.mktemp("pause")
    (work / "pause.c").write_text(PAUSE_C)
    subprocess.run(
        [gcc, "-O2", "-static", "-o", str(work / "pause"), str(work / "pause.c")], check=True
    )
    data = (work / "pause").read_bytes()
    return oci_archive(work / "pause.tar", PAUSE, {"pause": data}, entrypoint=["/pause"])


# --------------------------------------------------------------------------- ctr


def test_private_containerd_answers(containerd: PrivateContainerd) -> None:
    out = containerd.ctr("version", check=True).stdout
    server = out.split("Server:", 1)[1]
    assert containerd.version in server
    assert containerd.ttrpc_address.exists()
    assert len(str(containerd.address).encode()) < 100  # unix socket path limit
    series = selected_series()
    if series not in load_fetch_module().CHANNELS:  # "sid"/"trixie" name no series
        assert containerd.series == series


def test_ctr_run_busybox_with_runc(containerd: PrivateContainerd, busybox_tar: Path) -> None:
    containerd.import_image(busybox_tar)
    proc = containerd.ctr(
        "run", "--rm", BUSYBOX, "smoke-run", "/bin/echo", "hello from runc", check=True
    )
    assert proc.stdout == "hello from runc\n"
    assert containerd.stop() == []
    assert not containerd.base.exists()


def test_leftovers_are_reported_then_cleaned(
    containerd_factory: ContainerdFactory, busybox_tar: Path
) -> None:
    ctd = containerd_factory(check_leaks=False)
    ctd.import_image(busybox_tar)
    ctd.ctr("run", "-d", BUSYBOX, "smoke-leak", "/bin/sleep", "600", check=True)
    found = ctd.stop()
    kinds = {line.split()[0] for line in found}
    assert {"process", "mount", "socket", "runc-state", "cgroup"} <= kinds, found
    assert not [f for f in found if f.startswith("NOT CLEANED")]
    assert ctd.leftovers() == []
    pids = {int(f.split()[1]) for f in found if f.startswith("process ")}
    assert pids and not any(process_alive(p) for p in pids)  # zombies may await init


# --------------------------------------------------------------------------- CRI


PROBE = RuntimeHandler(
    "io.containerd.probe.v1",
    options={"SystemdCgroup": True},
    pod_annotations=["probe.*"],
)


@pytest.mark.cri
@pytest.mark.parametrize("cri_containerd", [{"handlers": {"probe": PROBE}}], indirect=True)
def test_cri_config_is_effective(cri_containerd: CriEnv) -> None:
    # CRI's verbose Status echoes the config it parsed: proof that the keys are the right
    # ones for this version's schema (unknown keys would be dropped silently).
    client = cri_containerd.client
    assert client.version().runtime_version == cri_containerd.containerd.version
    config = json.loads(client.status(verbose=True).info["config"])
    assert config["restrictOOMScoreAdj"] is True
    runtimes = config["containerd"]["runtimes"]
    assert runtimes["runc"]["runtimeType"] == "io.containerd.runc.v2"
    assert runtimes["probe"]["runtimeType"] == "io.containerd.probe.v1"
    assert runtimes["probe"]["options"]["SystemdCgroup"] is True
    assert runtimes["probe"]["PodAnnotations"] == ["probe.*"]
    assert config["cni"]["confDir"] == str(cri_containerd.containerd.cni_conf_dir)


@pytest.mark.cri
def test_cri_host_network_pod(cri_containerd: CriEnv, pause_tar: Path, busybox_tar: Path) -> None:
    env, client = cri_containerd, cri_containerd.client
    env.import_image(pause_tar)
    env.import_image(busybox_tar)
    pod = env.run_pod("smoke-host", handler="runc")
    cid = env.create_container(
        pod, "echo", BUSYBOX, command=["/bin/sh", "-c", "echo hello-from-cri; echo err >&2"]
    )
    client.start_container(cid)
    status = client.wait_container_exit(cid)
    assert (status.exit_code, status.reason) == (0, "Completed")
    log = Path(status.log_path).read_text()
    assert Path(status.log_path).parent == pod.log_directory
    assert cri_log_messages(log, "stdout") == ["hello-from-cri"]
    assert cri_log_messages(log, "stderr") == ["err"]
    if client.api.has_pod_sandbox_stats:
        stats = client.pod_sandbox_stats(pod.id)
        assert stats.attributes.id == pod.id
    client.remove_container(cid)
    env.remove_pod(pod)
    assert env.containerd.leftovers(wait=5.0) == []


@pytest.mark.cri
def test_cri_bridge_network_pod(cri_containerd: CriEnv, pause_tar: Path, busybox_tar: Path) -> None:
    env, client = cri_containerd, cri_containerd.client
    env.import_image(pause_tar)
    env.import_image(busybox_tar)
    pod = env.run_pod("smoke-net", handler="runc", host_network=False)
    assert env.network is not None
    ip = client.pod_sandbox_status(pod.id).status.network.ip
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(env.network.subnet)
    cid = env.create_container(
        pod, "addr", BUSYBOX, command=["/bin/sh", "-c", "ip -4 -o addr show eth0"]
    )
    client.start_container(cid)
    status = client.wait_container_exit(cid)
    assert status.exit_code == 0, Path(status.log_path).read_text()
    (line,) = cri_log_messages(Path(status.log_path).read_text(), "stdout")
    assert f"inet {ip}/" in line
    client.remove_container(cid)
    env.remove_pod(pod)
    assert env.network.leftovers() == []  # CRI removed the pod's netns
    assert env.containerd.leftovers(wait=5.0) == []
