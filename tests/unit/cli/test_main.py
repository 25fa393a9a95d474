"""The shim binary's actions: -v, -info, delete, usage errors (run as real subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from containerd_shimkit.api import shim_pb2, types_pb2
from tests.shims.host_shim import install


def shim(tmp_path: Path) -> Path:
    return install(tmp_path)


def run(tmp_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(shim(tmp_path)), *args],
        capture_output=True,
        cwd=cwd or tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


def test_version_prints_name_version_revision(tmp_path: Path) -> None:
    result = run(tmp_path, "-v")
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "Runtime: containerd-shim-pyhost-v1" in text
    assert "Version: 0.0.0-test" in text and "Revision: <none>" in text


def test_info_writes_runtime_info(tmp_path: Path) -> None:
    result = run(tmp_path, "-info")
    assert result.returncode == 0
    info = types_pb2.RuntimeInfo.FromString(result.stdout)
    assert info.name == "containerd-shim-pyhost-v1" and info.version.version == "0.0.0-test"


def test_delete_prints_a_delete_response_even_with_nothing_to_clean(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    result = run(
        tmp_path, "-namespace", "n", "-id", "c1", "-bundle", str(bundle), "delete", cwd=bundle
    )
    assert result.returncode == 0, result.stderr
    response = shim_pb2.DeleteResponse.FromString(result.stdout)
    assert response.exit_status == 137 and response.exited_at.seconds > 0


def test_usage_errors(tmp_path: Path) -> None:
    bad_flag = run(tmp_path, "-nope")
    assert bad_flag.returncode == 2
    assert b"flag provided but not defined: -nope" in bad_flag.stderr
    bad_action = run(tmp_path, "-namespace", "n", "-id", "x", "frobnicate")
    assert bad_action.returncode == 2 and b"unknown action" in bad_action.stderr


def test_start_without_id_fails_with_a_message(tmp_path: Path) -> None:
    result = run(tmp_path, "-namespace", "n", "start")
    assert result.returncode == 1
    assert b"start needs -id and -namespace" in result.stderr
    assert result.stdout == b""


def test_interpreter_is_real(tmp_path: Path) -> None:
    first_line = shim(tmp_path).read_text().splitlines()[0]
    assert first_line == f"#!{sys.executable}"
