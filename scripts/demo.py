#!/usr/bin/env python3
"""The main job: a private containerd runs a wasm container through our wasmtime shim.

Builds the demo wasm image (C compiled for wasm32-wasi, packed by ``oci-tar-builder``),
starts a private containerd (own root, state and socket) with ``containerd-shim-wasmtime-v1``
on its PATH, imports the image and runs it with
``ctr run --rm --runtime io.containerd.wasmtime.v1``, printing the program's output.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.wasm.build import build_all  # noqa: E402
from tests.support.containerd import PrivateContainerd  # noqa: E402

RUNTIME = "io.containerd.wasmtime.v1"


def main() -> int:
    image = build_all().images["hello"]
    shim_dir = Path(sys.executable).parent  # where containerd-shim-wasmtime-v1 is installed
    args = sys.argv[1:] or ["/demo.wasm", "echo", "hello from WebAssembly in a container"]
    with PrivateContainerd(extra_path=[shim_dir]) as ctd:
        print(f"containerd {ctd.version} running privately at {ctd.address}")
        imported = ctd.ctr("images", "import", "--all-platforms", str(image.path), timeout=60)
        if imported.returncode:
            sys.stderr.write(imported.stderr)
            return imported.returncode
        print(f"$ ctr run --rm --runtime {RUNTIME} {image.name} demo {' '.join(args)}")
        result = ctd.ctr("run", "--rm", "--runtime", RUNTIME, image.name, "demo", *args, timeout=60)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
    if ctd.stop_leftovers:
        print("left behind:", *ctd.stop_leftovers, sep="\n  ")
        return 1
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
