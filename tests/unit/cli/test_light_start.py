"""start and delete run for every container: they must not import heavy modules."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("asyncio", "google.protobuf", "wasmtime", "grpc")


def test_start_and_delete_paths_import_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import containerd_shimkit.cli.start, containerd_shimkit.cli.bootstrap\n"
        "import containerd_shimkit.cli.delete, containerd_shimkit.cli.main\n"
        "import containerd_shim_wasm.cleanup\n"
        "import containerd_shim_wasmtime.__main__\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"heavy modules on the start path: {result.stdout}"
