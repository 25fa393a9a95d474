#!/usr/bin/env python3
"""The whole benchmark suite in one command, with one table of issue 6's targets at the end.

Runs the benchmark scripts one after the other, each as a subprocess of this interpreter
with its output streamed to the terminal, its JSON written to ``<results>/<name>.json`` and
a shared ``--bytecode`` (default ``compiled``: installed packages have .pyc files, so that
is how a node runs the shim). Each script starts its own private containerd (except
``start_latency.py``, which needs none) and exits 1 on a leak. A failing benchmark does not
stop the others.

At the end it prints the targets with the measured value, the baseline, their ratio and
pass/miss, read from the per-benchmark JSON files: cold and warm ``ctr run --rm`` against
runc's; the wasm shim daemon's RSS and PSS (one container) and the marginal PSS of one more
idle container (runc's beside it); tasks/s through containerd against runc's (and without
containerd, for information); the compute kernels through the shim against wasmtime-py
directly. Then the machine and each benchmark's exit status and wall time, and it writes
all of that (with the per-benchmark JSON paths) to ``--json``.

The exit status is 1 if a benchmark failed (non-zero exit, e.g. a leak, or no JSON), not
when a target is missed: a missed target is a finding.

    sudo .venv/bin/python benchmarks/suite.py [--only e2e,memory,stress,compute,start]
                                              [--quick] [--bytecode as-is|none|compiled]
                                              [--results DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BYTECODE_MODES, REPO, print_table, write_json

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    """One script of the suite."""

    name: str
    script: str
    quick: tuple[str, ...]  #: options of a fast smoke run
    bytecode: bool = True  #: whether it takes ``--bytecode``


BENCHMARKS = (
    Benchmark("e2e", "e2e_latency.py", ("--runs", "5", "--warmup", "1")),
    Benchmark("memory", "memory.py", ("--counts", "1,5")),
    Benchmark("stress", "stress.py", ("--count", "100")),
    Benchmark("compute", "compute.py", ("--runs", "2")),
    # No containerd and no bytecode option: it runs the shim binary itself.
    Benchmark("start", "start_latency.py", ("--runs", "10"), bytecode=False),
)
NAMES = tuple(b.name for b in BENCHMARKS)


@dataclass
class Outcome:
    """How one benchmark ran."""

    bench: Benchmark
    argv: list[str]
    json_path: Path
    exit_status: int | None = None  #: None: not run (interrupted before it)
    seconds: float = 0.0
    document: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        if self.exit_status is None:
            return "not run"
        if self.exit_status != 0:
            return f"FAILED (exit {self.exit_status})"
        return "ok" if self.document is not None else "FAILED (no JSON)"

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAILED")

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.bench.name,
            "argv": self.argv,
            "status": self.status,
            "exit_status": self.exit_status,
            "seconds": round(self.seconds, 1),
            "json": str(self.json_path) if self.json_path.exists() else None,
        }


# --------------------------------------------------------------------------- running


def command(bench: Benchmark, args: argparse.Namespace, json_path: Path) -> list[str]:
    argv = [sys.executable, str(HERE / bench.script), "--json", str(json_path)]
    if bench.bytecode:
        argv += ["--bytecode", args.bytecode]
    if args.quick:
        argv += bench.quick
    return argv


def plan(args: argparse.Namespace, results: Path) -> list[Outcome]:
    """The selected benchmarks, in the suite's order, each with its command line."""
    outcomes = []
    for bench in BENCHMARKS:
        if bench.name in args.only:
            path = results / f"{bench.name}.json"
            path.unlink(missing_ok=True)  # a reused --results: no stale figures
            outcomes.append(Outcome(bench, command(bench, args, path), path))
    return outcomes


def run_one(outcome: Outcome) -> None:
    """Run the benchmark with the terminal as its stdout/stderr; read its JSON."""
    print(f"\n===== {outcome.bench.name}: {' '.join(outcome.argv)}", flush=True)
    began = time.monotonic()
    with subprocess.Popen(outcome.argv, cwd=REPO) as proc:
        try:
            outcome.exit_status = proc.wait()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to the benchmark too: let it remove what it made.
            print(f"\ninterrupted: waiting for {outcome.bench.name} to clean up", flush=True)
            outcome.exit_status = proc.wait()
            raise
        finally:
            outcome.seconds = time.monotonic() - began
    outcome.document = read_json(outcome.json_path)
    print(f"===== {outcome.bench.name}: {outcome.status}, {outcome.seconds:.0f} s", flush=True)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def run_all(outcomes: Sequence[Outcome]) -> bool:
    """Run each in turn; False if interrupted (the rest stay "not run")."""
    for outcome in outcomes:
        try:
            run_one(outcome)
        except KeyboardInterrupt:
            outcome.document = read_json(outcome.json_path)
            return False
    return True


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Goal:
    """``value`` (or ``value ÷ baseline`` when ``on_ratio``) ≤ or ≥ ``limit``."""

    limit: float
    on_ratio: bool
    at_most: bool = True
    unit: str = ""

    def text(self) -> str:
        op = "≤" if self.at_most else "≥"
        return f"{op} {self.limit:g}×" if self.on_ratio else f"{op} {self.limit:g} {self.unit}"

    def met(self, value: float, ratio: float | None) -> bool | None:
        x = ratio if self.on_ratio else value
        if x is None:
            return None
        return x <= self.limit if self.at_most else x >= self.limit


@dataclass(frozen=True)
class Row:
    """One line of the summary: a measured value against a baseline and a goal."""

    name: str
    source: str  #: the benchmark it comes from
    unit: str
    value: float | None
    baseline: float | None
    baseline_of: str  #: what the baseline is (runc, direct wasmtime-py…)
    paired: float | None = None  #: the script's median of per-round ratios, if any
    goal: Goal | None = None  #: None: for information only

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def result(self) -> str:
        if self.value is None:
            return "n/a"
        if self.goal is None:
            return "info"
        met = self.goal.met(self.value, self.ratio)
        return "n/a" if met is None else "pass" if met else "MISS"

    def cells(self) -> tuple[str, ...]:
        return (
            self.name,
            _num(self.value),
            "-" if self.baseline is None else f"{self.baseline:.1f} {self.baseline_of}",
            _num(self.ratio, 3),
            _num(self.paired, 3),
            self.goal.text() if self.goal else "(info)",
            self.result,
        )

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "target": self.name,
            "benchmark": self.source,
            "unit": self.unit,
            "value": self.value,
            "baseline": self.baseline,
            "baseline_of": self.baseline_of,
            "ratio": None if ratio is None else round(ratio, 3),
            "paired_ratio": self.paired,
            "goal": self.goal.text() if self.goal else None,
            "result": self.result,
        }


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def dig(document: Mapping[str, Any] | None, *keys: str) -> Any:
    """``document[k1][k2]…``, or None where anything on the way is missing."""
    node: Any = document
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def number(document: Mapping[str, Any] | None, *keys: str, scale: float = 1.0) -> float | None:
    value = dig(document, *keys)
    return float(value) * scale if isinstance(value, int | float) else None


def e2e_rows(doc: Mapping[str, Any] | None) -> list[Row]:
    runc = number(doc, "results_ms", "runc", "median")
    return [
        Row(
            f"e2e {case}, ctr run --rm median",
            "e2e",
            "ms",
            number(doc, "results_ms", f"wasm {case}", "median"),
            runc,
            "runc",
            number(doc, "results_ms", f"wasm {case}", "paired_ratio_median"),
            Goal(limit, on_ratio=True),
        )
        for case, limit in (("cold", 1.2), ("warm", 0.6))
    ]


MIB = 1 / 1024


def memory_rows(doc: Mapping[str, Any] | None) -> list[Row]:
    counts = dig(doc, "counts") or [1]
    one = f"x{counts[0]}"
    rows = [
        Row(
            f"shim daemon {what.upper()}, wasm ×{counts[0]}",
            "memory",
            "MiB",
            number(doc, "groups", f"wasm{one}", "daemon_kb", what, scale=MIB),
            number(doc, "groups", f"runc{one}", "daemon_kb", what, scale=MIB),
            "runc",
            goal=Goal(limit, on_ratio=False, unit="MiB"),
        )
        for what, limit in (("rss", 20.0), ("pss", 12.0))
    ]
    rows.append(
        Row(
            "marginal PSS per idle container",
            "memory",
            "MiB",
            number(doc, "marginal_per_container", "wasm", "pss_kb", scale=MIB),
            number(doc, "marginal_per_container", "runc", "pss_kb", scale=MIB),
            "runc",
            goal=Goal(3.0, on_ratio=False, unit="MiB"),
        )
    )
    return rows


def stress_rows(doc: Mapping[str, Any] | None) -> list[Row]:
    def row(mode: str, label: str, goal: Goal | None) -> Row:
        results = dig(doc, "modes", mode, "results")
        return Row(
            f"stress tasks/s, {label}",
            "stress",
            "tasks/s",
            number(results, "wasm", "tasks_per_s"),
            number(results, "runc", "tasks_per_s"),
            "runc",
            number(doc, "modes", mode, "paired_ratio_median"),
            goal,
        )

    return [
        row("containerd", "through containerd", Goal(3.0, on_ratio=True, at_most=False)),
        row("direct", "direct over ttrpc", None),
    ]


def compute_rows(doc: Mapping[str, Any] | None) -> list[Row]:
    summary = dig(doc, "summary")
    kernels = list(summary) if isinstance(summary, Mapping) else ["sha256", "nbody"]
    return [
        Row(
            f"compute {kernel} kernel, shim",
            "compute",
            "ms",
            number(summary, kernel, "variants", "shim", "kernel_ms", "median"),
            number(summary, kernel, "variants", "direct", "kernel_ms", "median"),
            "direct",
            number(summary, kernel, "ratios", "shim/direct kernel", "paired_median"),
            Goal(1.05, on_ratio=True),
        )
        for kernel in kernels
    ]


def start_rows(doc: Mapping[str, Any] | None) -> list[Row]:
    return [
        Row(
            "shim start action, pod's daemon running",
            "start",
            "ms",
            number(doc, "results", "start (daemon running)", "median_ms"),
            number(doc, "results", "python -c pass", "median_ms"),
            "python",
        )
    ]


ROWS: dict[str, Callable[[Mapping[str, Any] | None], list[Row]]] = {
    "e2e": e2e_rows,
    "memory": memory_rows,
    "stress": stress_rows,
    "compute": compute_rows,
    "start": start_rows,
}


def target_rows(outcomes: Sequence[Outcome]) -> list[Row]:
    return [row for o in outcomes for row in ROWS[o.bench.name](o.document)]


# --------------------------------------------------------------------------- machine


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def machine(outcomes: Sequence[Outcome], load_before: list[str]) -> dict[str, Any]:
    """This machine, with what the benchmarks recorded of it (containerd's version…)."""
    recorded: dict[str, Any] = {}
    for o in outcomes:
        recorded_here = dig(o.document, "machine")
        if not isinstance(recorded_here, Mapping):
            continue
        for key, value in recorded_here.items():
            if value not in ("", None, "not used"):
                recorded.setdefault(key, value)
    return {
        "cpu": recorded.get("cpu", ""),
        "cpus": os.cpu_count(),
        "memory": recorded.get("memory", ""),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "containerd": recorded.get("containerd") or containerd_version(),
        "runc": recorded.get("runc", ""),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def containerd_version() -> str:
    """``containerd --version``'s version word (when no benchmark recorded one)."""
    try:
        out = subprocess.run(
            ["containerd", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = out.split()
    return words[2] if len(words) >= 3 else "unknown"


# --------------------------------------------------------------------------- report


def print_summary(
    rows: Sequence[Row],
    outcomes: Sequence[Outcome],
    info: Mapping[str, Any],
    args: argparse.Namespace,
) -> None:
    mode = "quick" if args.quick else "full"
    print(f"\n===== summary: issue 6's targets ({mode} run, bytecode={args.bytecode})")
    print_table(
        ["target", "value", "baseline", "×", "paired ×", "goal", "result"],
        [row.cells() for row in rows],
    )
    print(
        "\nvalues: ms (e2e, compute kernel, start), MiB (memory), tasks/s (stress); × = value"
        " ÷ baseline (ratio of medians); paired × = the script's median of per-round ratios"
    )
    print(f"machine: {machine_line(info)}")
    print()
    print_table(
        ["benchmark", "status", "seconds", "JSON"],
        [(o.bench.name, o.status, round(o.seconds), shown(o.json_path)) for o in outcomes],
    )


def shown(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it; ``-`` if it does not exist."""
    if not path.exists():
        return "-"
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def machine_line(info: Mapping[str, Any]) -> str:
    parts = [
        " ".join(str(p) for p in (info["cpus"], "CPUs", info["cpu"]) if p),
        str(info["memory"]),
        f"kernel {info['kernel']}",
        f"Python {info['python']}",
        f"containerd {info['containerd']}",
        f"load average {' '.join(info['loadavg_before'])} → {' '.join(info['loadavg_after'])}",
    ]
    return "; ".join(p for p in parts if p)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only",
        default=",".join(NAMES),
        help=f"benchmarks to run, comma-separated (default all: {','.join(NAMES)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller counts for a fast smoke run (e2e 5 runs, memory 1,5 containers, "
        "stress 100 tasks, compute 2 rounds, start 10 runs)",
    )
    parser.add_argument(
        "--bytecode",
        choices=BYTECODE_MODES,
        default="compiled",
        help="passed to every benchmark that takes it (default compiled, as on a node)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="directory of the per-benchmark JSON files "
        "(default benchmarks/results/suite-<UTC timestamp>/)",
    )
    parser.add_argument("--json", type=Path, help="the combined summary (<results>/suite.json)")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    if not only or any(n not in NAMES for n in only):
        parser.error(f"--only: a comma-separated subset of {','.join(NAMES)}")
    args.only = only
    if os.geteuid() != 0:
        parser.error("needs root (containerd, cgroups, mounts): run it with sudo")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    # Absolute: the benchmarks run in the checkout, whatever the current directory.
    results: Path = (
        args.results or HERE / "results" / f"suite-{started.strftime('%Y%m%dT%H%M%SZ')}"
    ).resolve()
    results.mkdir(parents=True, exist_ok=True)
    summary_path: Path = (args.json or results / "suite.json").resolve()
    outcomes = plan(args, results)
    load_before = loadavg()
    began = time.monotonic()
    completed = run_all(outcomes)
    wall = time.monotonic() - began

    rows = target_rows(outcomes)
    info = machine(outcomes, load_before)
    print_summary(rows, outcomes, info, args)
    failed = [o.bench.name for o in outcomes if o.failed]
    write_json(
        summary_path,
        {
            "benchmark": "suite",
            "started": started.isoformat(timespec="seconds"),
            "quick": args.quick,
            "bytecode": args.bytecode,
            "wall_s": round(wall, 1),
            "results_dir": str(results),
            "completed": completed,
            "machine": info,
            "targets": [row.as_json() for row in rows],
            "benchmarks": [o.as_json() for o in outcomes],
            "failed": failed,
        },
    )
    print(f"\nsuite: {wall / 60:.1f} min; JSON: {summary_path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    if not completed:
        not_run = [o.bench.name for o in outcomes if o.exit_status is None]
        print(f"interrupted; not run: {', '.join(not_run) or '-'}")
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
