"""deploy/install.sh for real: pip into a virtualenv, the PATH link, the config edit, and a
containerd of the selected version (``$CONTAINERD_VERSION``) that loads the edited config and
runs a pod through the installed shim.

The installation from ``packages/`` (a source tree, as ``--from`` accepts it) happens once per
module into a private prefix and bin dir; nothing outside the test's temporary directories
(and the private containerd's) is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from containerd_shim_wasm import oci_tar_builder as otb
from tests.fixtures.wasm.build import ToolchainError, build_all
from tests.support.containerd import (
    ConfigPaths,
    ContainerdBinaries,
    CriConfig,
    PrivateContainerd,
    generate_config,
    render_toml,
)
from tests.support.cri import CriClient, cri_log_messages, load_cri_api, pod_config
from tests.support.plugin import requires_root

pytestmark = [pytest.mark.root, pytest.mark.slow, requires_root, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO / "deploy" / "install.sh"
SHIM = "containerd-shim-wasmtime-v1"
RUNTIME_TYPE = "io.containerd.wasmtime.v1"
#: What a Debian node has; the test venv's interpreter elsewhere.
NODE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
DISTS = ("containerd-shimkit", "containerd-shim-wasm", "containerd-shim-wasmtime")


def install_sh(
    *args: str, env: Mapping[str, str] | None = None, check: bool = True, timeout: float = 400
) -> subprocess.CompletedProcess[str]:
    # No systemd here, and none is wanted: INSTALL_SYSTEMD_DIR points nowhere; and uninstall
    # must not remove this machine's cache of compiled modules.
    full_env = {
        **os.environ,
        "INSTALL_SYSTEMD_DIR": "/nonexistent/systemd",
        "SHIM_COMPILE_CACHE": "/nonexistent/compiled",
        **(env or {}),
    }
    proc = subprocess.run(
        ["sh", str(INSTALL_SH), *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(
            f"install.sh {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        )
    return proc


def config_dump(binary: Path, config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [str(binary), "--config", str(config), "config", "dump"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return tomllib.loads(out)


def runtimes_of(dump: Mapping[str, Any]) -> dict[str, Any]:
    for plugin in ("io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"):
        runtimes = dump.get("plugins", {}).get(plugin, {}).get("containerd", {}).get("runtimes")
        if runtimes is not None:
            return dict(runtimes)
    raise AssertionError("no CRI runtimes in the dump")


@dataclass(frozen=True)
class Installed:
    prefix: Path
    bin_dir: Path
    config: Path
    original: str
    binaries: ContainerdBinaries
    stderr: str

    @property
    def venv(self) -> Path:
        return self.prefix / "venv"

    @property
    def link(self) -> Path:
        return self.bin_dir / SHIM

    def args(self, *more: str) -> list[str]:
        return [
            "--prefix", str(self.prefix), "--bin-dir", str(self.bin_dir),
            "--config", str(self.config), "--python", NODE_PYTHON,
            f"--containerd={self.binaries.containerd}", *more,
        ]  # fmt: skip


@pytest.fixture(scope="module")
def installed(
    containerd_binaries: ContainerdBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """install.sh --from packages/ into a private prefix, against the default config."""
    tmp = tmp_path_factory.mktemp("deploy")
    config = tmp / "etc" / "containerd" / "config.toml"
    config.parent.mkdir(parents=True)
    original = subprocess.run(
        [str(containerd_binaries.containerd), "config", "default"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    config.write_text(original)
    state = Installed(tmp / "opt", tmp / "bin", config, original, containerd_binaries, "")
    proc = install_sh(*state.args("--from", str(REPO / "packages")))
    try:
        yield Installed(**{**state.__dict__, "stderr": proc.stderr})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- install


@pytest.mark.containerd
def test_installed_shim_runs_through_the_link(installed: Installed) -> None:
    assert "building wheels from" in installed.stderr
    assert installed.link.is_symlink()
    assert Path(os.readlink(installed.link)) == installed.venv / "bin" / SHIM
    proc = subprocess.run(
        [str(installed.link), "-v"], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"Runtime: {SHIM}" in proc.stdout
    assert re.search(r"Version: \d+\.\d+\.\d+", proc.stdout)
    # The venv belongs to the node's python and holds the three distributions (not editable).
    base = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    node = subprocess.run(
        [NODE_PYTHON, "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert base == node
    python = str(installed.venv / "bin" / "python")
    for dist in DISTS:
        module = dist.replace("-", "_")
        code = f"import {module}; print({module}.__file__)"
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.startswith(str(installed.venv)), out
    # The source tree was built from a copy, not in place.
    assert not any((REPO / "packages").glob("*/build"))


@pytest.mark.containerd
def test_containerd_accepts_the_edited_config(installed: Installed) -> None:
    text = installed.config.read_text()
    assert text.startswith(installed.original)
    assert len(re.findall(r"(?m)^\[plugins\..*\.containerd\.runtimes\.wasmtime\]$", text)) == 1
    runtimes = runtimes_of(config_dump(installed.binaries.containerd, installed.config))
    assert runtimes["wasmtime"]["runtime_type"] == RUNTIME_TYPE
    assert runtimes["wasmtime"]["options"]["SystemdCgroup"] is False
    assert runtimes["runc"]["runtime_type"] == "io.containerd.runc.v2"


@pytest.mark.containerd
def test_second_run_changes_nothing(installed: Installed) -> None:
    before = installed.config.read_text()
    backups = sorted(installed.config.parent.glob("config.toml.bak.*"))
    proc = install_sh(*installed.args("--from", str(REPO / "packages")))
    assert "reusing the virtualenv" in proc.stderr
    assert "already points to" in proc.stderr
    assert "handler 'wasmtime' is already in" in proc.stderr
    assert installed.config.read_text() == before
    assert sorted(installed.config.parent.glob("config.toml.bak.*")) == backups
    subprocess.run([str(installed.link), "-v"], check=True, capture_output=True, timeout=60)


# --------------------------------------------------------------------------- containerd


class InstalledConfigContainerd(PrivateContainerd):
    """A private containerd whose generated config first goes through install.sh."""

    def __init__(self, *args: Any, work: Path, drop_runtimes: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.work = work
        self.drop_runtimes = drop_runtimes
        self.install_stderr = ""

    def config_text(self) -> str:
        paths = ConfigPaths(self.root, self.state, self.address, self.opt_dir, self.cni_conf_dir)
        doc = generate_config(
            self.binaries.major, self.binaries.minor, paths, cri=self.cri,
            log_level=self.log_level,
            runc_binary=str(self.binaries.runc) if self.binaries.runc else None,
            extra=self.extra_config,
        )  # fmt: skip
        if self.drop_runtimes:
            # Like a node config that relies on containerd's built-in runc.
            plugins = doc["plugins"]
            assert isinstance(plugins, dict)
            for plugin in ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"):
                plugins.get(plugin, {}).get("containerd", {}).pop("runtimes", None)
        path = self.work / "containerd-config.toml"
        path.write_text(render_toml(doc))
        proc = install_sh(
            "--skip-venv", "--prefix", str(self.work / "opt"), "--config", str(path),
            "--python", NODE_PYTHON, f"--containerd={self.binaries.containerd}",
        )  # fmt: skip
        self.install_stderr = proc.stderr
        return path.read_text()


def cri_runtimes(client: CriClient) -> dict[str, Any]:
    config = json.loads(client.status(verbose=True).info["config"])
    return dict(config["containerd"]["runtimes"])


@pytest.mark.containerd
@pytest.mark.cri
def test_containerd_with_the_edited_config_runs_a_pod_through_the_installed_shim(
    installed: Installed, tmp_path: Path
) -> None:
    try:
        fx = build_all()
    except ToolchainError as exc:
        pytest.skip(str(exc))
    ctd = InstalledConfigContainerd(
        installed.binaries, cri=CriConfig(), extra_path=[installed.bin_dir], work=tmp_path,
        log_path=tmp_path / "containerd.log",
    )  # fmt: skip
    api = load_cri_api()
    with ctd:
        assert "adding handler 'wasmtime'" in ctd.install_stderr
        client = CriClient(ctd.address, api)
        try:
            runtimes = cri_runtimes(client)
            assert runtimes["wasmtime"]["runtimeType"] == RUNTIME_TYPE
            assert runtimes["wasmtime"]["options"]["SystemdCgroup"] is False
            # The image form deploy/README.md recommends: the module as a file, and the node's
            # platform in the config and index, so that a plain import (or pull) matches.
            hello = otb.file_image(
                "localhost/hello-linux:deploy", [otb.Module.from_path(fx.demo_wasm)],
                os_name="linux", arch=otb.host_arch(),
            )  # fmt: skip
            ctd.import_image(hello.write(tmp_path / "hello-linux.tar"), namespace="k8s.io")
            ctd.import_image(fx.images["pause"].path, namespace="k8s.io")
            logs = tmp_path / "pods"
            logs.mkdir()
            config = pod_config(api, "deploy-pod", log_directory=logs, host_network=True)
            pod_id = client.run_pod_sandbox(config, "wasmtime")
            # The sandbox (pause) runs in a daemon started from our link.
            shims = [argv for _, argv in ctd.shim_processes()]
            assert any(str(installed.link) in argv for argv in shims), shims
            pb = api.pb
            cid = client.create_container(
                pod_id,
                pb.ContainerConfig(
                    metadata=pb.ContainerMetadata(name="hello", attempt=0),
                    image=pb.ImageSpec(image="localhost/hello-linux:deploy"),
                    args=["echo", "hello from the installed shim"],
                    log_path="hello_0.log",
                    linux=pb.LinuxContainerConfig(
                        security_context=pb.LinuxContainerSecurityContext(
                            namespace_options=pb.NamespaceOption(
                                network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD
                            )
                        )
                    ),
                ),
                config,
            )
            client.start_container(cid)
            status = client.wait_container_exit(cid)
            log = Path(status.log_path).read_text()
            assert status.exit_code == 0, log + ctd.log_tail()
            assert cri_log_messages(log, "stdout") == ["hello from the installed shim"]
            client.remove_container(cid)
            client.stop_pod_sandbox(pod_id)
            client.remove_pod_sandbox(pod_id)
            assert ctd.leftovers(wait=5.0) == []
        finally:
            client.remove_all()
            client.close()
    assert ctd.stop_leftovers == []


@pytest.mark.containerd
@pytest.mark.cri
def test_builtin_runc_survives_for_a_running_containerd(
    containerd_binaries: ContainerdBinaries, tmp_path: Path
) -> None:
    """A config without runtimes (containerd's built-in runc): CRI still has runc."""
    ctd = InstalledConfigContainerd(
        containerd_binaries, cri=CriConfig(), work=tmp_path, drop_runtimes=True,
        log_path=tmp_path / "containerd.log",
    )  # fmt: skip
    with ctd:
        if containerd_binaries.major < 2:
            assert "restating containerd's default handler 'runc'" in ctd.install_stderr
        client = CriClient(ctd.address, load_cri_api())
        try:
            runtimes = cri_runtimes(client)
            assert runtimes["runc"]["runtimeType"] == "io.containerd.runc.v2"
            assert runtimes["wasmtime"]["runtimeType"] == RUNTIME_TYPE
            conditions = {c.type: c.status for c in client.status().status.conditions}
            assert conditions["RuntimeReady"] is True
        finally:
            client.close()
    assert ctd.stop_leftovers == []


# --------------------------------------------------------------------------- image layout


@pytest.fixture
def big_tmp(tmp_path: Path) -> Iterator[Path]:
    """A tmp dir removed right after the test (wheels and a venv: ~100 MB)."""
    yield tmp_path
    for child in tmp_path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)


def test_wheel_dir_offline_without_ensurepip(big_tmp: Path) -> None:
    """The installer image's layout: wheels of everything plus pip, no index, no ensurepip."""
    tmp_path = big_tmp
    wheels = tmp_path / "wheels"
    src = tmp_path / "src"
    for dist in DISTS:  # as the Dockerfile: build from a clean copy
        shutil.copytree(
            REPO / "packages" / dist, src / dist,
            ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
        )  # fmt: skip
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--quiet", "--wheel-dir", str(wheels), *(str(src / d) for d in DISTS)],
        check=True, capture_output=True, timeout=400,
    )  # fmt: skip
    subprocess.run(
        [*pip, "download", "--quiet", "--no-deps", "--dest", str(wheels), "pip"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert {p.name.split("-")[0] for p in wheels.glob("*.whl")} >= {
        "containerd_shimkit", "containerd_shim_wasm", "containerd_shim_wasmtime", "wasmtime",
        "protobuf", "pip",
    }  # fmt: skip
    # A node python whose ensurepip is missing (Debian/Ubuntu without python3-venv).
    blocker = tmp_path / "blocker" / "ensurepip"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no ensurepip on this node')\n")
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{blocker.parent}" exec "{NODE_PYTHON}" "$@"\n')
    python.chmod(0o755)

    prefix, bin_dir = tmp_path / "opt", tmp_path / "bin"
    args = [
        "--from", str(wheels), "--offline", "--skip-config", "--python", str(python),
        "--prefix", str(prefix), "--bin-dir", str(bin_dir),
    ]  # fmt: skip
    # Without network: any index use would fail (PIP_INDEX_URL points nowhere).
    env = {
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
    }
    proc = install_sh(*args, env=env)
    assert (prefix / "venv" / "bin" / "pip").exists()  # bootstrapped from the pip wheel
    out = subprocess.run([str(bin_dir / SHIM), "-v"], capture_output=True, text=True, check=True)
    assert f"Runtime: {SHIM}" in out.stdout, proc.stderr

    # A foreign binary of the same name: refused, then replaced with --force.
    (bin_dir / SHIM).unlink()
    (bin_dir / SHIM).write_text("#!/bin/sh\necho other\n")
    proc = install_sh(*args, env=env, check=False)
    assert proc.returncode == 1
    assert "exists (not a link); pass --force to replace it" in proc.stderr
    install_sh(*args, "--force", env=env)
    assert (bin_dir / SHIM).is_symlink()

    install_sh(*args, "--uninstall")
    assert not (bin_dir / SHIM).exists()
    assert not prefix.exists()
