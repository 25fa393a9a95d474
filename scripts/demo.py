#!/usr/bin/env python3
"""The main job: a private containerd runs a container through a shim built on the toolkit.

Until the wasm container path is complete this runs the toolkit's demo shim
(``io.containerd.pyhost.v1``, which runs a container's args as a host process) with
``ctr run``; everything between containerd and the process is the real toolkit: ``start``,
the daemon, ttrpc, the Task service, events and ``delete``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.shims.host_shim import RUNTIME, install  # noqa: E402
from tests.support.containerd import PrivateContainerd  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="shim-demo-") as tmp:
        bin_dir, rootfs = Path(tmp, "bin"), Path(tmp, "rootfs")
        bin_dir.mkdir()
        rootfs.mkdir()
        install(bin_dir)
        with PrivateContainerd(extra_path=[bin_dir]) as ctd:
            print(f"containerd {ctd.version} running privately at {ctd.address}")
            command = ["/bin/sh", "-c", "echo hello from a container run by containerd_shimkit"]
            print(f"$ ctr run --rm --runtime {RUNTIME} --rootfs {rootfs} demo {' '.join(command)}")
            result = ctd.ctr(
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--rootfs",
                str(rootfs),
                "demo",
                *command,
                timeout=60,
            )
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
        if ctd.stop_leftovers:
            print("left behind:", *ctd.stop_leftovers, sep="\n  ")
            return 1
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
