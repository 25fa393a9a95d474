#!/usr/bin/env python3
"""Latency of the shim's ``start`` and ``delete`` actions next to a bare interpreter.

``start`` and ``delete`` run for every container, so their cost is the floor of every cold
start. Measured: ``python -c pass`` (the interpreter floor), ``start`` when the group's daemon
is already running (the path of a pod's second container), ``start`` that spawns a daemon
(timed until start exits, as containerd waits), and ``delete``. No containerd is needed:
each run gets a scratch bundle. Prints a table and writes JSON.

    python benchmarks/start_latency.py [--runs 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHIM = Path(sys.executable).with_name("containerd-shim-wasmtime-v1")


def timed(argv: list[str], cwd: Path, stdin: bytes = b"") -> tuple[float, bytes]:
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, check=True).stdout
    return (time.perf_counter() - start) * 1000, out


def stop_daemons(containerd_address: str, sockets: list[str]) -> None:
    """Kill the daemons (and zygotes) this benchmark spawned and remove their sockets.

    They are found by the scratch containerd address in their command line.
    """
    needle = containerd_address.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in argv and b"start" not in argv and b"delete" not in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
    for path in sockets:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not SHIM.exists():
        sys.exit(f"{SHIM} not found: run ./scripts/setup.sh")
    scratch = Path(tempfile.mkdtemp(prefix="start-bench-"))
    bundle = scratch / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"process": {"args": ["/x.wasm"]}}))
    flags = [
        "-namespace",
        "bench",
        "-address",
        str(scratch / "c.sock"),
        "-publish-binary",
        "/bin/true",
    ]
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "python -c pass",
            "python -I -S -c pass",
            "start (daemon running)",
            "start (new daemon)",
            "delete",
        )
    }
    sockets: list[str] = []
    try:
        for i in range(args.runs):
            results["python -c pass"].append(timed([sys.executable, "-c", "pass"], bundle)[0])
            results["python -I -S -c pass"].append(
                timed([sys.executable, "-I", "-S", "-c", "pass"], bundle)[0]
            )
            ms, out = timed([str(SHIM), *flags, "-id", f"new{i}", "start"], bundle)
            results["start (new daemon)"].append(ms)
            sockets.append(out.decode().removeprefix("unix://"))
            ms, _ = timed([str(SHIM), *flags, "-id", f"new{i}", "start"], bundle)
            results["start (daemon running)"].append(ms)
            ms, _ = timed(
                [str(SHIM), *flags, "-id", f"new{i}", "-bundle", str(bundle), "delete"], bundle
            )
            results["delete"].append(ms)
    finally:
        stop_daemons(str(scratch / "c.sock"), sockets)
        shutil.rmtree(scratch, ignore_errors=True)
    floor = statistics.median(results["python -c pass"])
    print(f"{'command':28} {'median ms':>10} {'p90 ms':>8} {'× python -c pass':>17}")
    summary = {}
    for name, samples in results.items():
        med = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        summary[name] = {
            "median_ms": round(med, 2),
            "p90_ms": round(p90, 2),
            "ratio": round(med / floor, 2),
        }
        print(f"{name:28} {med:10.1f} {p90:8.1f} {med / floor:17.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "results": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
