#!/usr/bin/env python3
"""CPU-bound wasm through the shim vs the same module in wasmtime-py directly vs native.

Builds ``benchmarks/compute/compute.c`` (SHA-256 and n-body kernels that time only their
kernel with ``CLOCK_MONOTONIC`` and print ``elapsed_ns=<n> checksum=<hex>``) to wasm32-wasi
with the test fixtures' clang flags and natively, puts the module in the image
``localhost/compute:test`` (the file ``/compute.wasm``), starts its own private containerd
and, after one untimed warm-up round, runs ``--runs`` rounds of every kernel in four
variants (their order rotated each round):

- ``shim``: ``ctr run --rm --runtime io.containerd.wasmtime.v1 localhost/compute:test <id>
  /compute.wasm <kernel> <n>`` (its own shim daemon each time; the next run waits for it
  to exit);
- ``direct``: ``python benchmarks/compute_direct.py compute.wasm <kernel> <n>``, the module
  in wasmtime-py with the default ``Config``, in a fresh interpreter;
- ``direct+epoch``: the same with ``epoch_interruption`` and ``wasm_component_model`` (the
  shim's engine flags until this benchmark showed what the epoch checks cost: the shim now
  runs without them), which isolates the cost of the epoch checks;
- ``native``: the native build.

For each it keeps the guest-reported kernel time and the wall time of the subprocess (and,
for the direct runs, the compile time), checks that every checksum of a kernel is the same,
and reports medians and the ratios shim/direct (kernel: target ≤ 1.05; wall),
direct/native and direct+epoch/direct. The direct and native runs also report the CPU time
of the kernel's thread, which leaves out the waits for a CPU that make the wall-clock
figures noisy on a shared machine (the shim's container is out of reach for that).

    python benchmarks/compute.py [--runs 5] [--sha256 3000] [--nbody 15000000]
                                 [--native-cc clang|gcc] [--bytecode as-is|none|compiled]
                                 [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    BYTECODE_MODES,
    WASM_RUNTIME,
    Ctr,
    bytecode_env,
    bytecode_state,
    finish,
    machine_info,
    other_containerds,
    print_table,
    start_containerd,
    summarize,
    write_json,
)
from containerd_shim_wasm import oci_tar_builder as otb
from tests.fixtures.wasm.build import compile_wasi_c, require_tool, run_tool

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "compute" / "compute.c"
DIRECT_RUNNER = HERE / "compute_direct.py"
IMAGE = "localhost/compute:test"
MODULE_NAME = "compute.wasm"
VARIANTS = ("shim", "direct", "direct+epoch", "native")
#: Issue 6's target: the kernel through the shim vs in wasmtime-py directly.
TARGET_SHIM_OVER_DIRECT = 1.05
#: The ``direct+epoch`` variant's engine (the shim's ``ENGINE_FLAGS`` until this benchmark
#: measured the epoch checks' cost; see ``containerd_shim_wasmtime.engine``).
EPOCH_FLAGS = {"epoch_interruption": True, "wasm_component_model": True}
RUN_TIMEOUT = 300.0
_FIELD = re.compile(r"(\w+)=(\S+)")


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class Artifacts:
    """What :func:`build` produced."""

    wasm: Path
    native: Path
    image: Path  #: OCI archive of :data:`IMAGE`
    native_cc: str  #: the native compiler's ``--version`` line


def build(out_dir: Path, native_cc: str) -> Artifacts:
    """Compile ``compute.c`` to wasm32-wasi (exactly as the fixtures' ``demo.c``: clang
    ``--target=wasm32-wasi -O2 -Wall -Wl,--strip-all``) and natively (``-O2``), and write
    the image archive.

    Raises:
        ToolchainError: a compiler is missing or fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    wasm = out_dir / MODULE_NAME
    compile_wasi_c(SOURCE, wasm)
    native = out_dir / "compute"
    cc = require_tool(native_cc, f"apt-get install {native_cc}")
    run_tool([cc, "-O2", "-Wall", "-o", str(native), str(SOURCE), "-lm"], "needs libc6-dev")
    image = otb.file_image(IMAGE, [otb.Module.from_path(wasm)], cmd=["sha256", "1"])
    archive = image.write(out_dir / "compute.tar")
    return Artifacts(wasm, native, archive, _version_line([cc, "--version"]))


def shim_engine_flags() -> dict[str, Any] | None:
    """The shim's engine flags as the installed package has them now (``None`` if the
    module moved): the JSON records them next to :data:`EPOCH_FLAGS`."""
    try:
        module = importlib.import_module("containerd_shim_wasmtime.engine")
    except ImportError:
        return None
    flags = getattr(module, "ENGINE_FLAGS", None)
    return dict(flags) if flags is not None else None


def _version_line(argv: Sequence[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else ""


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Sample:
    """One run of one kernel in one variant."""

    kernel: str
    variant: str
    round: int  #: 0 for the warm-up round
    kernel_ms: float  #: as the guest measured it (``elapsed_ns``)
    wall_ms: float  #: the subprocess (``ctr``, ``python``, the binary), spawn to exit
    compile_ms: float | None  #: ``wasmtime.Module`` (direct variants only)
    #: CPU time of the kernel's thread (direct: during ``_start``; native: the process's
    #: user + system time); ``None`` for the shim. Waiting for a CPU is not in it.
    cpu_ms: float | None
    checksum: str


def parse_fields(stdout: str) -> dict[str, str]:
    """Every ``key=value`` of the output (the guest's line and the runner's)."""
    return dict(_FIELD.findall(stdout))


class Bench:
    """Runs the variants against one private containerd and checks every checksum."""

    def __init__(self, ctr: Ctr, artifacts: Artifacts) -> None:
        self.ctr = ctr
        self.artifacts = artifacts
        self.checksums: dict[str, str] = {}

    def run(self, kernel: str, size: int, variant: str, round_: int) -> Sample:
        """One timed run; raises if it fails or its checksum differs from the kernel's."""
        guest = [kernel, str(size)]
        cpu_ms: float | None = None
        if variant == "shim":
            stdout, wall_ms = self._shim(guest)
        elif variant == "native":
            stdout, wall_ms, cpu_ms = _timed([str(self.artifacts.native), *guest])
        else:
            runner = [sys.executable, str(DIRECT_RUNNER)]
            runner += ["--flags", json.dumps(EPOCH_FLAGS)] if variant == "direct+epoch" else []
            stdout, wall_ms, _ = _timed([*runner, str(self.artifacts.wasm), *guest])
        fields = parse_fields(stdout)
        if "elapsed_ns" not in fields or "checksum" not in fields:
            raise RuntimeError(f"{variant} {kernel}: unexpected output {stdout!r}")
        self._check(kernel, variant, fields["checksum"])
        return Sample(
            kernel,
            variant,
            round_,
            kernel_ms=int(fields["elapsed_ns"]) / 1e6,
            wall_ms=wall_ms,
            compile_ms=_ms(fields.get("compile_ns")),
            cpu_ms=_ms(fields.get("run_cpu_ns")) if cpu_ms is None else cpu_ms,
            checksum=fields["checksum"],
        )

    def _shim(self, guest: Sequence[str]) -> tuple[str, float]:
        cid = self.ctr.new_id("compute")
        timed = self.ctr.timed(
            "run", "--rm", "--runtime", WASM_RUNTIME, IMAGE, cid, "/" + MODULE_NAME, *guest,
            timeout=RUN_TIMEOUT,
        )  # fmt: skip
        self.ctr.wait_no_shims()  # its teardown must not overlap the next run
        return timed.stdout, timed.ms

    def _check(self, kernel: str, variant: str, checksum: str) -> None:
        expected = self.checksums.setdefault(kernel, checksum)
        if checksum != expected:
            raise RuntimeError(
                f"checksum mismatch for {kernel}: {variant} gave {checksum}, "
                f"earlier runs gave {expected}"
            )


def _ms(ns: str | None) -> float | None:
    """Nanoseconds as printed (``None`` if not printed) to milliseconds."""
    return int(ns) / 1e6 if ns is not None else None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: Sequence[str]) -> tuple[str, float, float]:
    """Run ``argv``; its stdout, wall time and CPU time (user + system), in ms. Fails
    loudly on a non-zero exit."""
    cpu = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    ms = (time.perf_counter() - start) * 1000
    cpu_ms = (_children_cpu() - cpu) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout, ms, cpu_ms


def measure(bench: Bench, sizes: dict[str, int], runs: int) -> list[Sample]:
    """One untimed warm-up round, then ``runs`` rounds; in round ``r`` the variants start
    at ``VARIANTS[r % 4]`` so that none always runs first (after a shim's teardown…)."""
    samples: list[Sample] = []
    for round_ in range(runs + 1):
        order = VARIANTS[round_ % len(VARIANTS) :] + VARIANTS[: round_ % len(VARIANTS)]
        for kernel, size in sizes.items():
            for variant in order:
                sample = bench.run(kernel, size, variant, round_)
                if round_ > 0:
                    samples.append(sample)
    return samples


# --------------------------------------------------------------------------- results


def _series(samples: Sequence[Sample], kernel: str, variant: str, what: str) -> list[float]:
    """The ``what`` field (``kernel_ms``…) of a kernel's variant, in round order."""
    out = [getattr(s, what) for s in samples if s.kernel == kernel and s.variant == variant]
    return [float(v) for v in out if v is not None]


def _median(samples: Sequence[Sample], kernel: str, variant: str, what: str) -> float:
    return summarize(_series(samples, kernel, variant, what)).median


def _min(samples: Sequence[Sample], kernel: str, variant: str, what: str) -> float:
    return min(_series(samples, kernel, variant, what))


def _paired(samples: Sequence[Sample], kernel: str, a: str, b: str, what: str) -> float:
    """Median over rounds of (a ÷ the same round's b): less sensitive to drifting load."""
    pairs = zip(_series(samples, kernel, a, what), _series(samples, kernel, b, what), strict=True)
    return summarize([x / y for x, y in pairs]).median


#: name → (numerator variant, denominator variant, field)
RATIOS: dict[str, tuple[str, str, str]] = {
    "shim/direct kernel": ("shim", "direct", "kernel_ms"),
    "shim/direct wall": ("shim", "direct", "wall_ms"),
    "direct/native kernel": ("direct", "native", "kernel_ms"),
    "direct+epoch/direct kernel": ("direct+epoch", "direct", "kernel_ms"),
    "shim/direct+epoch kernel": ("shim", "direct+epoch", "kernel_ms"),
    "direct+epoch/direct CPU": ("direct+epoch", "direct", "cpu_ms"),
    "direct/native CPU": ("direct", "native", "cpu_ms"),
}


def summary_of(samples: Sequence[Sample], kernel: str) -> dict[str, Any]:
    """Per variant: summaries of kernel, wall (and compile) ms; then the ratios."""
    variants: dict[str, Any] = {}
    for variant in VARIANTS:
        entry = {
            what: summarize(series).rounded()
            for what in ("kernel_ms", "wall_ms", "compile_ms", "cpu_ms")
            if (series := _series(samples, kernel, variant, what))
        }
        variants[variant] = entry
    ratios = {
        name: {
            "of_medians": round(_median(samples, kernel, a, f) / _median(samples, kernel, b, f), 3),
            "paired_median": round(_paired(samples, kernel, a, b, f), 3),
            "of_mins": round(_min(samples, kernel, a, f) / _min(samples, kernel, b, f), 3),
        }
        for name, (a, b, f) in RATIOS.items()
    }
    return {"variants": variants, "ratios": ratios}


TIME_HEADERS = (
    *("variant", "kernel med", "p90", "min", "CPU med"),
    *("wall med", "p90", "wall − kernel", "compile"),
)


def print_report(summaries: dict[str, Any], sizes: dict[str, int], runs: int) -> None:
    """One table of times and one of ratios per kernel."""
    for kernel, summary in summaries.items():
        print(
            f"\n{kernel} {sizes[kernel]}: {runs} runs, ms (kernel: as the guest timed it; CPU: "
            "its thread's CPU time, without waits for a CPU)"
        )
        print_table(
            TIME_HEADERS,
            [_time_row(variant, summary["variants"][variant]) for variant in VARIANTS],
        )
        print()
        print_table(
            ["ratio", "of medians", "paired", "of mins", "target"],
            [
                (
                    name,
                    f"{r['of_medians']:.3f}",
                    f"{r['paired_median']:.3f}",
                    f"{r['of_mins']:.3f}",
                    f"≤ {TARGET_SHIM_OVER_DIRECT}" if name == "shim/direct kernel" else "",
                )
                for name, r in summary["ratios"].items()
            ],
        )


def _time_row(variant: str, v: dict[str, Any]) -> tuple[object, ...]:
    kernel, wall = v["kernel_ms"], v["wall_ms"]
    compile_ = f"{v['compile_ms']['median']:.1f}" if "compile_ms" in v else "-"
    cpu = f"{v['cpu_ms']['median']:.1f}" if "cpu_ms" in v else "-"
    overhead = float(wall["median"]) - float(kernel["median"])
    return (
        variant,
        *(float(kernel[k]) for k in ("median", "p90", "min")),
        cpu,
        *(float(wall[k]) for k in ("median", "p90")),
        overhead,
        compile_,
    )


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(
        "--sha256", type=int, default=3000, help="SHA-256 rounds over 64 KiB; 0 skips (3000)"
    )
    parser.add_argument(
        "--nbody", type=int, default=15_000_000, help="n-body steps; 0 skips (15000000)"
    )
    parser.add_argument(
        "--native-cc",
        choices=("clang", "gcc"),
        default="clang",
        help="compiler of the native build, -O2 (default clang, the wasm build's compiler)",
    )
    parser.add_argument(
        "--bytecode",
        choices=BYTECODE_MODES,
        default="as-is",
        help="the project's .pyc files for the shims (see README); affects the shim's wall "
        "time only (default as-is)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


@dataclass
class Outcome:
    """Everything one benchmark run collected."""

    samples: list[Sample]
    checksums: dict[str, str]
    machine: dict[str, Any]
    bytecode_state: dict[str, Any]
    leftovers: list[str]
    seconds: float


def collect(args: argparse.Namespace, sizes: dict[str, int]) -> Outcome:
    """Build, start containerd, measure, clean up (the leak report is in the outcome)."""
    began = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="compute-bench-"))
    try:
        artifacts = build(scratch / "build", args.native_cc)
        env = bytecode_env(args.bytecode, scratch)
        ctd = start_containerd(scratch, env=env, images=())
        ctr = Ctr(ctd)
        try:
            # The index entry says wasip1/wasm, which ctr otherwise filters out.
            ctr("images", "import", "--all-platforms", str(artifacts.image))
            machine = machine_info(ctd)
            bench = Bench(ctr, artifacts)
            samples = measure(bench, sizes, args.runs)
            machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
            machine["other_containerd_daemons_end"] = other_containerds(ctd)
            state = bytecode_state(env)
        finally:
            ctr.remove_all()
            leftovers = finish(ctd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    machine.update(
        wasmtime_py=metadata.version("wasmtime"),
        wasm_cc=_version_line(["clang", "--version"]),
        native_cc=artifacts.native_cc,
        shim_engine_flags=shim_engine_flags(),
    )
    seconds = time.monotonic() - began
    return Outcome(samples, bench.checksums, machine, state, leftovers, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Build, measure, report; exit 1 if containerd's leak report is not empty."""
    args = _parser().parse_args(argv)
    sizes = {k: n for k, n in (("sha256", args.sha256), ("nbody", args.nbody)) if n > 0}
    if not sizes or args.runs < 1:
        raise SystemExit("nothing to run: give --runs ≥ 1 and a kernel size > 0")
    out = collect(args, sizes)
    summaries = {kernel: summary_of(out.samples, kernel) for kernel in sizes}
    machine = out.machine
    print(
        f"compute: {args.runs} rounds after 1 warm-up, variants rotated; bytecode="
        f"{args.bytecode}; {machine['cpus']} CPUs, load {' '.join(machine['loadavg'])} → "
        f"{' '.join(machine['loadavg_end'])}; wasmtime-py {machine['wasmtime_py']}; native: "
        f"{args.native_cc} -O2; {out.seconds:.0f} s"
    )
    shim_flags = machine["shim_engine_flags"]
    same = "the same" if shim_flags == EPOCH_FLAGS else str(shim_flags)
    print(f"direct+epoch: Config {json.dumps(EPOCH_FLAGS)}; the shim's ENGINE_FLAGS: {same}")
    print_report(summaries, sizes, args.runs)
    if out.leftovers:
        print(f"LEFTOVERS: {out.leftovers}")
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "compute",
                "runs": args.runs,
                "warmup_rounds": 1,
                "sizes": sizes,
                "native_cc": args.native_cc,
                "bytecode": args.bytecode,
                "bytecode_state": out.bytecode_state,
                "seconds": round(out.seconds, 1),
                "machine": machine,
                "epoch_variant_flags": EPOCH_FLAGS,
                "target": {"shim/direct kernel": TARGET_SHIM_OVER_DIRECT},
                "summary": summaries,
                "checksums": out.checksums,
                "samples": [asdict(s) for s in out.samples],
                "leftovers": out.leftovers,
            },
        )
    return 1 if out.leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
