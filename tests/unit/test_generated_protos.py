"""The generated protobuf modules match the .proto files they come from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_are_current() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools generates the modules")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_v3_task_service_uses_the_v2_messages() -> None:
    from containerd_shimkit.api import shim_pb2, shim_v3_pb2

    v2 = shim_pb2.DESCRIPTOR.services_by_name["Task"]
    v3 = shim_v3_pb2.DESCRIPTOR.services_by_name["Task"]
    assert (v2.full_name, v3.full_name) == ("containerd.task.v2.Task", "containerd.task.v3.Task")
    assert [(m.name, m.input_type.full_name, m.output_type.full_name) for m in v2.methods] == [
        (m.name, m.input_type.full_name, m.output_type.full_name) for m in v3.methods
    ]
