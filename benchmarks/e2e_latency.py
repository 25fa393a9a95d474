#!/usr/bin/env python3
"""End-to-end ``ctr run --rm`` latency: runc vs our wasm shim, cold and warm.

Starts its own private containerd, imports the project's test images and times, as whole
``ctr`` subprocesses (wall clock, like runwasi's benchmark), in rounds of A B C:

- ``runc``: ``ctr run --rm localhost/busybox:test <id> /bin/true``;
- ``wasm cold``: ``ctr run --rm --runtime io.containerd.wasmtime.v1 localhost/hello:test <id>
  /demo.wasm echo hello`` (its own group, so a new shim daemon each time);
- ``wasm warm``: the same with ``--annotation io.kubernetes.cri.sandbox-id=<pod>``, the group
  of a long-running ``/demo.wasm sleep 3600`` container started first (``ctr run -d``), as a
  pod's app container is started next to its sandbox: the daemon and its zygote already run.

Between runs it waits until the previous run's shim has exited (so no run pays for the
teardown of the one before), checks that the warm runs reused the pod's one daemon, and
reads the timestamps the shims and containerd log to split each run into phases. Prints
tables and, with ``--json``, writes everything.

    python benchmarks/e2e_latency.py [--runs 20] [--warmup 2] [--bytecode as-is|none|compiled]
                                     [--log-level info|debug] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    BUSYBOX_IMAGE,
    BYTECODE_MODES,
    HELLO_IMAGE,
    SANDBOX_ANNOTATION,
    WASM_RUNTIME,
    Ctr,
    LogLine,
    Proc,
    Timed,
    bytecode_env,
    bytecode_state,
    finish,
    machine_info,
    other_containerds,
    parse_log,
    print_table,
    processes,
    runc_shims,
    start_containerd,
    summarize,
    wasm_daemons,
    write_json,
)
from tests.support.containerd import PrivateContainerd

CASES = ("runc", "wasm cold", "wasm warm")
#: Issue 6's targets (ratio of medians to runc's).
TARGETS = {"wasm cold": 1.2, "wasm warm": 0.6}


# --------------------------------------------------------------------------- phases

Matcher = Callable[[LogLine, str, str], bool]


def _msg(msg: str, key: str, who: str = "cid") -> Matcher:
    def match(line: LogLine, cid: str, group: str) -> bool:
        return line.msg == msg and line.fields.get(key) == (cid if who == "cid" else group)

    return match


def _create_received(line: LogLine, cid: str, group: str) -> bool:
    # Only attributable to this container when the group is the container's own (cold).
    return (
        group == cid
        and line.fields.get("pod") == cid
        and line.msg.startswith("stream ")
        and line.msg.endswith("Task/Create")
    )


#: Log events of one run, in the order they happen. ``debug`` ones need ``--log-level debug``
#: (containerd then also passes ``-debug`` to the shims).
MARKERS: list[tuple[str, Matcher]] = [
    ("snapshot prepared", _msg("prepare snapshot", "key")),  # containerd, debug
    ("daemon: asyncio imported", _msg("Using selector: EpollSelector", "pod")),  # debug
    ("shim serving", _msg("shim serving", "pod")),
    ("Create received", _create_received),  # debug
    ("container created", _msg("container created", "instance")),
    ("container started", _msg("container started", "instance")),
    ("container exited", _msg("container exited", "instance")),
    ("container deleted", _msg("container deleted", "instance")),
    ("shim disconnected", _msg("shim disconnected", "id")),  # containerd
    ("snapshot removed", _msg("remove snapshot", "key")),  # containerd, debug
]


def phases_of(
    lines: Sequence[LogLine], run: Timed, cid: str, group: str
) -> list[tuple[str, float]]:
    """``(phase, ms)`` from the spawn of ``ctr`` to its exit, split at the logged events."""
    points: list[tuple[str, float]] = [("ctr spawned", run.start_wall)]
    window = [ln for ln in lines if run.start_wall - 1 <= ln.time <= run.end_wall + 1]
    for name, match in MARKERS:
        when = next((ln.time for ln in window if match(ln, cid, group)), None)
        if when is not None:
            points.append((name, when))
    points.append(("ctr exited", run.end_wall))
    return [(f"{a} → {b}", (tb - ta) * 1000) for (a, ta), (b, tb) in itertools.pairwise(points)]


def phase_table(per_run: Sequence[Sequence[tuple[str, float]]]) -> list[tuple[str, float, float]]:
    """``(phase, median ms, p90 ms)`` of the phases every run has, in order."""
    if not per_run:
        return []
    names = [n for n, _ in per_run[0]]
    common = [n for n in names if all(n in dict(r) for r in per_run)]
    out = []
    for name in common:
        s = summarize([dict(r)[name] for r in per_run])
        out.append((name, s.median, s.p90))
    return out


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Run:
    case: str
    cid: str
    group: str
    timed: Timed


class E2E:
    def __init__(self, ctd: PrivateContainerd) -> None:
        self.ctd = ctd
        self.ctr = Ctr(ctd)
        self.pod = ""
        self.pod_daemon: Proc | None = None
        self.runs: list[Run] = []

    def start_pod(self) -> None:
        """The long-running group container whose daemon the warm runs reuse."""
        self.pod = self.ctr.new_id("pod")
        self.ctr(
            "run", "-d", "--annotation", f"{SANDBOX_ANNOTATION}={self.pod}",
            "--runtime", WASM_RUNTIME, HELLO_IMAGE, self.pod, "/demo.wasm", "sleep", "3600",
        )  # fmt: skip
        self.ctr.wait_running([self.pod])
        daemons = wasm_daemons(self.ctd.address)
        if len(daemons) != 1:
            raise RuntimeError(f"expected one wasm shim daemon, found {daemons}")
        self.pod_daemon = daemons[0]

    def settle(self, timeout: float = 15.0) -> None:
        """Wait until only the pod's daemon is left (the last run's shim has exited)."""
        deadline = time.monotonic() + timeout
        while True:
            procs = processes()
            wasm = wasm_daemons(self.ctd.address, procs)
            runc = runc_shims(self.ctd.address, procs)
            if not runc and [d.pid for d in wasm] == [self._pod_pid()]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"shims did not exit: wasm {wasm}, runc {runc}")
            time.sleep(0.01)

    def _pod_pid(self) -> int:
        assert self.pod_daemon is not None
        return self.pod_daemon.pid

    def run(self, case: str) -> Run:
        if case == "runc":
            cid = self.ctr.new_id("runc")
            group = cid
            timed = self.ctr.timed("run", "--rm", BUSYBOX_IMAGE, cid, "/bin/true", expect_stdout="")
        elif case == "wasm cold":
            cid = self.ctr.new_id("cold")
            group = cid
            timed = self.ctr.timed(
                "run", "--rm", "--runtime", WASM_RUNTIME, HELLO_IMAGE, cid,
                "/demo.wasm", "echo", "hello",
                expect_stdout="hello\n",
            )  # fmt: skip
        else:
            cid = self.ctr.new_id("warm")
            group = self.pod
            timed = self.ctr.timed(
                "run", "--rm", "--annotation", f"{SANDBOX_ANNOTATION}={self.pod}",
                "--runtime", WASM_RUNTIME, HELLO_IMAGE, cid, "/demo.wasm", "echo", "hello",
                expect_stdout="hello\n",
            )  # fmt: skip
            daemons = [d.pid for d in wasm_daemons(self.ctd.address)]
            if daemons != [self._pod_pid()]:
                raise RuntimeError(f"warm run {cid}: wasm daemons {daemons}, expected the pod's")
        run = Run(case, cid, group, timed)
        self.settle()
        return run

    def verify_daemons(self, lines: Sequence[LogLine]) -> dict[str, Any]:
        """From the log: each cold run had its own new daemon; the pod group had exactly one."""
        serving = [ln for ln in lines if ln.msg == "shim serving"]
        pods = [ln.fields.get("pod", "") for ln in serving]
        cold = [r for r in self.runs if r.case == "wasm cold"]
        cold_new = sum(1 for r in cold if r.cid in pods)
        pod_daemons = pods.count(self.pod)
        if pod_daemons != 1 or cold_new != len(cold):
            raise RuntimeError(
                f"daemon check failed: pod group served by {pod_daemons} daemons, "
                f"{cold_new}/{len(cold)} cold runs had their own daemon"
            )
        return {
            "pod_group_daemons_started": pod_daemons,
            "cold_runs_with_new_daemon": f"{cold_new}/{len(cold)}",
            "pod_daemon_pid": self._pod_pid(),
        }


def _of(runs: Sequence[Run], case: str) -> list[Run]:
    return [r for r in runs if r.case == case]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per case (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument(
        "--bytecode",
        choices=BYTECODE_MODES,
        default="as-is",
        help="the project's .pyc files for the shims: as-is (the checkout's __pycache__), "
        "none, or compiled (both in a private PYTHONPYCACHEPREFIX)",
    )
    parser.add_argument(
        "--log-level",
        choices=("info", "debug"),
        default="info",
        help="containerd's log level; debug also passes -debug to the shims and splits the "
        "phases finer, at some cost (default info)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="e2e-bench-"))
    try:
        env = bytecode_env(args.bytecode, scratch)
        ctd = start_containerd(scratch, log_level=args.log_level, env=env)
        bench = E2E(ctd)
        leftovers: list[str] = []
        try:
            machine = machine_info(ctd)
            bench.start_pod()
            for _ in range(args.warmup):
                for case in CASES:
                    bench.run(case)
            for _ in range(args.runs):
                for case in CASES:
                    bench.runs.append(bench.run(case))
            machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
            machine["other_containerd_daemons_end"] = other_containerds(ctd)
            lines = list(parse_log(ctd.log_text()))
            verified = bench.verify_daemons(lines)
            state = bytecode_state(env)  # before the private pycache goes
        finally:
            bench.ctr.remove_all()
            leftovers = finish(ctd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    results: dict[str, Any] = {}
    phases: dict[str, list[tuple[str, float, float]]] = {}
    for case in CASES:
        runs = [r for r in bench.runs if r.case == case]
        results[case] = summarize([r.timed.ms for r in runs]).rounded()
        phases[case] = phase_table([phases_of(lines, r.timed, r.cid, r.group) for r in runs])
    runc_median = float(results["runc"]["median"])
    runc_ms = [r.timed.ms for r in bench.runs if r.case == "runc"]
    for case in CASES:
        results[case]["ratio_to_runc"] = round(float(results[case]["median"]) / runc_median, 2)
        # Each round's run over the same round's runc run: less sensitive to drifting load.
        paired = [r.timed.ms / a for r, a in zip(_of(bench.runs, case), runc_ms, strict=True)]
        results[case]["paired_ratio_median"] = round(summarize(paired).median, 2)

    print(f"ctr run --rm, {args.runs} runs each (A B C rounds), bytecode={args.bytecode}, "
          f"log level {args.log_level}; containerd {machine['containerd']}, "
          f"{machine['cpus']} CPUs")  # fmt: skip
    print_table(
        ["case", "median ms", "p90 ms", "min ms", "× runc", "paired ×", "target"],
        [
            (
                case,
                float(results[case]["median"]),
                float(results[case]["p90"]),
                float(results[case]["min"]),
                f"{results[case]['ratio_to_runc']:.2f}",
                f"{results[case]['paired_ratio_median']:.2f}",
                f"≤ {TARGETS[case]}" if case in TARGETS else "",
            )
            for case in CASES
        ],
    )
    for case in CASES:
        if phases[case]:
            print(
                f"\nphases of {case} (median of {args.runs}; from containerd's and the shim's log)"
            )
            print_table(["phase", "median ms", "p90 ms"], phases[case])
    print(f"\ndaemons: {verified}")
    print(f"bytecode: {state}")
    if leftovers:
        print(f"LEFTOVERS: {leftovers}")
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "e2e_latency",
                "command": "ctr run --rm",
                "runs": args.runs,
                "warmup_rounds": args.warmup,
                "bytecode": args.bytecode,
                "bytecode_state": state,
                "log_level": args.log_level,
                "machine": machine,
                "results_ms": results,
                "ratios": {
                    "cold/runc": results["wasm cold"]["ratio_to_runc"],
                    "warm/runc": results["wasm warm"]["ratio_to_runc"],
                },
                "targets": {"cold/runc": TARGETS["wasm cold"], "warm/runc": TARGETS["wasm warm"]},
                "phases_ms": {
                    case: [
                        {"phase": n, "median": round(m, 2), "p90": round(p, 2)} for n, m, p in rows
                    ]
                    for case, rows in phases.items()
                },
                "daemons": verified,
                "samples_ms": {
                    case: [round(r.timed.ms, 2) for r in bench.runs if r.case == case]
                    for case in CASES
                },
                "leftovers": leftovers,
            },
        )
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
