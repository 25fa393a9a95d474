"""Helpers for the deploy/ tests: running install.sh config-only, and the containerd binaries.

install.sh runs with ``--skip-venv`` here (no pip), a private ``--prefix`` and
``INSTALL_SYSTEMD_DIR`` pointing at a directory that does not exist, so that the machine's own
systemd never matters; the virtualenv part is tested in
``tests/integration/test_deploy_installer.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.containerd import load_fetch_module

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
INSTALL_SH = DEPLOY / "install.sh"
HELPER = DEPLOY / "lib" / "containerd_config.py"
SERIES = ("1.6", "1.7", "2.1")
RUNTIME_TYPE = "io.containerd.wasmtime.v1"
CRI_V2 = "io.containerd.grpc.v1.cri"
CRI_V3 = "io.containerd.cri.v1.runtime"


def load_deploy_module(name: str) -> ModuleType:
    """Import ``deploy/lib/<name>.py`` (deploy/lib is not a package)."""
    return _load(name)


@functools.cache
def _load(name: str) -> ModuleType:
    path = DEPLOY / "lib" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"deploy_lib_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def containerd_binary(series: str) -> Path | None:
    """The cached (never fetched here) containerd of ``series``, or None."""
    if series == "1.6":
        path = Path("/usr/bin/containerd")
    else:
        path = Path(load_fetch_module().cache_root()) / series / "bin" / "containerd"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require_containerd(series: str) -> Path:
    binary = containerd_binary(series)
    if binary is None:
        pytest.skip(f"containerd {series} is not available (scripts/fetch_containerd.py {series})")
    return binary


@functools.cache
def default_config(series: str) -> str:
    """``containerd config default`` of that series (what many nodes' config.toml is)."""
    binary = require_containerd(series)
    return subprocess.run(
        [str(binary), "config", "default"], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def config_dump(binary: Path, config: Path) -> dict[str, Any]:
    """``containerd --config FILE config dump``, parsed."""
    out = subprocess.run(
        [str(binary), "--config", str(config), "config", "dump"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return tomllib.loads(out)


def dump_runtimes(dump: Mapping[str, Any]) -> dict[str, Any]:
    for plugin in (CRI_V3, CRI_V2):
        runtimes = dump.get("plugins", {}).get(plugin, {}).get("containerd", {}).get("runtimes")
        if runtimes is not None:
            return dict(runtimes)
    raise AssertionError("no CRI runtimes in the dump")


def handler_table(doc: Mapping[str, Any], schema: int, name: str = "wasmtime") -> Any:
    plugin = {1: "cri", 2: CRI_V2, 3: CRI_V3}[schema]
    return doc["plugins"][plugin]["containerd"]["runtimes"][name]


@dataclass
class Installer:
    """Runs deploy/install.sh config-only against files under ``tmp``."""

    tmp: Path

    @property
    def prefix(self) -> Path:
        return self.tmp / "prefix"

    @property
    def no_systemd(self) -> Path:
        return self.tmp / "no-systemd"

    def run(
        self,
        *args: str,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        skip_venv: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        argv = ["sh", str(INSTALL_SH), "--python", sys.executable, "--prefix", str(self.prefix)]
        if skip_venv:
            argv.append("--skip-venv")
        full_env = {
            **os.environ,
            "INSTALL_SYSTEMD_DIR": str(self.no_systemd),
            # Never the node's real cache of compiled modules (uninstall removes it).
            "SHIM_COMPILE_CACHE": str(self.tmp / "compiled"),
            **(env or {}),
        }
        proc = subprocess.run(
            [*argv, *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"install.sh {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
            )
        return proc


@pytest.fixture
def installer(tmp_path: Path) -> Installer:
    return Installer(tmp_path)
