#!/usr/bin/env python3
"""End-to-end ``ctr run --rm`` of the three ways to ship a module, against runc, on one containerd.

In rounds (alternating, N each), timed as whole ``ctr`` subprocesses:

- ``runc``: ``localhost/busybox:test /bin/true``;
- ``form a``: the module as a file in a normal layer (``localhost/hello:test``), compiled in
  the container at every run;
- ``form b, first run``: the module as a wasm layer (``localhost/hello-oci:test``) with its
  compiled blob removed from the content store first, so the shim compiles and stores it;
- ``form b, cached``: the same image right after, starting from the precompiled blob.

containerd 1.6.20 cannot unpack wasm-layer images, so this runs on containerd 1.7 unless
``CONTAINERD_VERSION`` says otherwise (``1.7``, ``sid``).

    python benchmarks/oci_e2e.py [--runs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("CONTAINERD_VERSION", "1.7")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    BUSYBOX_IMAGE,
    HELLO_IMAGE,
    WASM_RUNTIME,
    Ctr,
    finish,
    print_table,
    start_containerd,
    summarize,
)

OCI_IMAGE = "localhost/hello-oci:test"
COMPILED = re.compile(r"runwasi\.io/precompiled/\w+/[0-9a-f]{16}=(sha256:[0-9a-f]{64})")


def compiled_blobs(ctr: Ctr) -> set[str]:
    """Digests of the precompiled blobs the layers point at."""
    return set(COMPILED.findall(ctr("content", "ls")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="oci-bench-"))
    ctd = start_containerd(scratch, images=("hello", "hello-oci", "busybox"))
    samples: dict[str, list[float]] = {
        "runc": [], "form a": [], "form b, first run": [], "form b, cached": []
    }  # fmt: skip
    try:
        ctr = Ctr(ctd)
        wasm = ("run", "--rm", "--runtime", WASM_RUNTIME)
        for _ in range(args.runs):
            samples["runc"].append(
                ctr.timed("run", "--rm", BUSYBOX_IMAGE, ctr.new_id("runc"), "/bin/true").ms
            )
            ctr.wait_no_shims()
            samples["form a"].append(
                ctr.timed(*wasm, HELLO_IMAGE, ctr.new_id("a"), "/demo.wasm", "echo", "hello",
                          expect_stdout="hello\n").ms
            )  # fmt: skip
            ctr.wait_no_shims()
            for digest in compiled_blobs(ctr):
                ctr("content", "rm", digest)
            samples["form b, first run"].append(
                ctr.timed(*wasm, OCI_IMAGE, ctr.new_id("b1"), expect_stdout="hello world\n").ms
            )
            ctr.wait_no_shims()
            if not compiled_blobs(ctr):
                raise RuntimeError("the first run stored no precompiled blob")
            samples["form b, cached"].append(
                ctr.timed(*wasm, OCI_IMAGE, ctr.new_id("b2"), expect_stdout="hello world\n").ms
            )
            ctr.wait_no_shims()
        version = ctd.version
    finally:
        leftovers = finish(ctd)
        shutil.rmtree(scratch, ignore_errors=True)
    runc = summarize(samples["runc"]).median
    rows, results = [], {}
    for name, values in samples.items():
        summary = summarize(values)
        rows.append([name, f"{summary.median:.1f}", f"{summary.p90:.1f}",
                     f"{summary.median / runc:.2f}"])  # fmt: skip
        results[name] = {**summary.rounded(), "ratio_to_runc": round(summary.median / runc, 3)}
    print(f"containerd {version}, {args.runs} runs each")
    print_table(["case", "median ms", "p90 ms", "× runc"], rows)
    if args.json:
        args.json.write_text(json.dumps({"containerd": version, "results": results}, indent=2))
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
