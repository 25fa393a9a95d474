#!/usr/bin/env python3
"""Memory of idle containers in one pod group: our wasm shim vs runc.

Starts its own private containerd and, for each runtime and each count N (default 1 and 20),
starts N idle containers in ONE group (all with the annotation
``io.kubernetes.cri.sandbox-id=<pod>``, which both our shim and runc's v2 shim group by):

- wasm: ``ctr run -d --runtime io.containerd.wasmtime.v1 localhost/hello:test <id>
  /demo.wasm sleep 3600``;
- runc: ``ctr run -d localhost/busybox:test <id> sleep 3600``.

After they are all RUNNING and have settled, it walks ``/proc`` from the group's shim
daemon (the shim process whose argv names our containerd's address): for the wasm shim its
children are the zygote (same pid namespace, no container cgroup) and the container inits
(cgroup ``…/default/<id>``); for runc the daemon's descendants are the container processes.
It reads RSS and PSS (``/proc/<pid>/smaps_rollup``) and VmHWM of each, takes the median of
``--samples`` readings, and reports totals and the marginal PSS of one more container,
``(PSS(N_max) − PSS(N_min)) / (N_max − N_min)``. Everything is removed afterwards.

    python benchmarks/memory.py [--counts 1,20] [--settle 2] [--samples 3]
                                [--bytecode as-is|none|compiled] [--json out.json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
    ZERO_MEMORY,
    Ctr,
    Memory,
    Proc,
    bytecode_env,
    bytecode_state,
    children_of,
    container_id_of,
    descendants_of,
    finish,
    machine_info,
    memory_of,
    print_table,
    processes,
    runc_shims,
    spares,
    start_containerd,
    sum_memory,
    templates,
    wasm_daemons,
    write_json,
)

RUNTIMES = ("wasm", "runc")
#: Issue 6's targets, kB.
TARGETS_KB = {"daemon_rss": 20 * 1024, "daemon_pss": 12 * 1024, "marginal_pss": 3 * 1024}


@dataclass(frozen=True)
class Group:
    """The processes of one pod group and their memory."""

    runtime: str
    containers: int
    daemon_pid: int
    daemon: Memory
    zygote: Memory  #: zero for runc (no zygote)
    per_container: dict[str, Memory]  #: container id → its processes' memory, summed

    @property
    def container_total(self) -> Memory:
        return sum_memory(self.per_container.values())

    @property
    def total(self) -> Memory:
        return self.daemon + self.zygote + self.container_total

    def as_json(self) -> dict[str, Any]:
        n = len(self.per_container)
        mean = {
            k: round(v / n) for k, v in asdict(self.container_total).items()
        } if n else {}  # fmt: skip
        return {
            "containers": self.containers,
            "daemon_pid": self.daemon_pid,
            "daemon_kb": asdict(self.daemon),
            "zygote_kb": asdict(self.zygote) if self.runtime == "wasm" else None,
            "daemon_plus_zygote_kb": asdict(self.daemon + self.zygote),
            "container_mean_kb": mean,
            "containers_total_kb": asdict(self.container_total),
            "total_kb": asdict(self.total),
            "per_container_kb": {cid: asdict(m) for cid, m in sorted(self.per_container.items())},
        }


def measure_group(ctr: Ctr, runtime: str, ids: Sequence[str]) -> Group:
    """Read the memory of the group's daemon, zygote and container processes once."""
    procs = processes()
    address = ctr.ctd.address
    daemons = wasm_daemons(address, procs) if runtime == "wasm" else runc_shims(address, procs)
    if len(daemons) != 1:
        raise RuntimeError(f"{runtime}: expected one shim daemon for the group, found {daemons}")
    daemon = daemons[0]
    zygotes: list[Proc] = []
    members: dict[str, list[Proc]] = {}
    if runtime == "wasm":
        for child in children_of(procs, daemon.pid):
            cid = container_id_of(child)
            if cid is None and child.pidns == daemon.pidns:
                zygotes.append(child)
            elif cid is not None:
                members.setdefault(cid, []).extend([child, *descendants_of(procs, child.pid)])
        if len(zygotes) != 1:
            raise RuntimeError(f"expected one zygote under daemon {daemon.pid}, found {zygotes}")
    else:
        for proc in descendants_of(procs, daemon.pid):
            cid = container_id_of(proc)
            if cid is not None:
                members.setdefault(cid, []).append(proc)
    if sorted(members) != sorted(ids):
        raise RuntimeError(f"{runtime}: containers found {sorted(members)}, expected {sorted(ids)}")
    return Group(
        runtime=runtime,
        containers=len(ids),
        daemon_pid=daemon.pid,
        daemon=memory_of(daemon.pid),
        zygote=memory_of(zygotes[0].pid) if zygotes else ZERO_MEMORY,
        per_container={
            cid: sum_memory(memory_of(p.pid) for p in group) for cid, group in members.items()
        },
    )


def spare_memory(ctr: Ctr, timeout: float = 10.0) -> Memory | None:
    """The template's spare daemon and its zygote, summed (None if none comes up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := spares(ctr.ctd.address):
            return sum_memory(memory_of(p.pid) for p in found)
        time.sleep(0.1)
    return None


def ensure_template(ctr: Ctr, timeout: float = 30.0) -> Proc:
    """Run one wasm container so that a template starts (as on a node that already ran a
    pod), and wait for it: the measured daemons are then forked from it, as in production."""
    cid = ctr.new_id("warmup")
    ctr("run", "--rm", "--runtime", WASM_RUNTIME, HELLO_IMAGE, cid, "/demo.wasm", "echo", "x")
    deadline = time.monotonic() + timeout
    while not (found := templates(ctr.ctd.address)):
        if time.monotonic() > deadline:
            raise RuntimeError("no template started")
        time.sleep(0.1)
    ctr.wait_no_shims()
    return found[0]


def run_group(ctr: Ctr, runtime: str, count: int, settle: float, samples: int) -> Group:
    """Start ``count`` idle containers in one group, measure, remove them."""
    pod = ctr.new_id(f"{runtime}-pod")
    ids = [pod] + [ctr.new_id(f"{runtime}-c") for _ in range(count - 1)]
    try:
        for cid in ids:
            if runtime == "wasm":
                ctr(
                    "run", "-d", "--annotation", f"{SANDBOX_ANNOTATION}={pod}",
                    "--runtime", WASM_RUNTIME, HELLO_IMAGE, cid, "/demo.wasm", "sleep", "3600",
                )  # fmt: skip
            else:
                ctr(
                    "run", "-d", "--annotation", f"{SANDBOX_ANNOTATION}={pod}",
                    BUSYBOX_IMAGE, cid, "sleep", "3600",
                )  # fmt: skip
        ctr.wait_running(ids)
        time.sleep(settle)
        readings = []
        for i in range(samples):
            if i:
                time.sleep(1.0)
            readings.append(measure_group(ctr, runtime, ids))
        # The reading whose total PSS is the median one (the shim may still be settling).
        by_pss = sorted(readings, key=lambda g: g.total.pss)
        return by_pss[len(by_pss) // 2]
    finally:
        ctr.remove(ids)
        ctr.wait_no_shims()


def mib(kb: float) -> float:
    return kb / 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--counts", default="1,20", help="container counts per group, comma-separated (1,20)"
    )
    parser.add_argument("--settle", type=float, default=2.0, help="seconds idle before reading")
    parser.add_argument("--samples", type=int, default=3, help="readings 1 s apart (median)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="wasm,runc")
    parser.add_argument("--bytecode", choices=BYTECODE_MODES, default="as-is")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    counts = sorted({int(c) for c in args.counts.split(",")})
    runtimes = [r for r in args.runtimes.split(",") if r]
    if any(r not in RUNTIMES for r in runtimes) or not counts or counts[0] < 1:
        parser.error("bad --runtimes or --counts")

    scratch = Path(tempfile.mkdtemp(prefix="mem-bench-"))
    groups: dict[tuple[str, int], Group] = {}
    try:
        env = bytecode_env(args.bytecode, scratch)
        ctd = start_containerd(scratch, log_level="info", env=env)
        ctr = Ctr(ctd)
        try:
            machine = machine_info(ctd)
            template = ensure_template(ctr) if "wasm" in runtimes else None
            for runtime in runtimes:
                for count in counts:
                    groups[runtime, count] = run_group(
                        ctr, runtime, count, args.settle, args.samples
                    )
            # Looked up again: a template can be replaced while the groups run.
            current = templates(ctd.address) if template else []
            template_kb = memory_of(current[0].pid) if current else None
            spare_kb = spare_memory(ctr) if template else None
            state = bytecode_state(env)  # before the private pycache goes
        finally:
            ctr.remove_all()
            leftovers = finish(ctd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows = []
    for (runtime, count), g in groups.items():
        n = len(g.per_container)
        rows.append(
            (
                f"{runtime} ×{count}",
                mib(g.daemon.rss),
                mib(g.daemon.pss),
                mib(g.zygote.rss) if runtime == "wasm" else "-",
                mib(g.zygote.pss) if runtime == "wasm" else "-",
                mib(g.container_total.rss / n),
                mib(g.container_total.pss / n),
                mib(g.total.rss),
                mib(g.total.pss),
            )
        )
    print(f"idle containers in one pod group; MiB; bytecode={args.bytecode}; "
          f"containerd {machine['containerd']}, {machine['cpus']} CPUs")  # fmt: skip
    print_table(
        [
            "group", "daemon RSS", "daemon PSS", "zygote RSS", "zygote PSS",
            "ctr RSS (mean)", "ctr PSS (mean)", "total RSS", "total PSS",
        ],
        rows,
    )  # fmt: skip

    marginal: dict[str, dict[str, float]] = {}
    if len(counts) >= 2:
        lo, hi = counts[0], counts[-1]
        print(f"\nper extra container: (total({hi}) − total({lo})) / {hi - lo}")
        mrows = []
        for runtime in runtimes:
            a, b = groups[runtime, lo], groups[runtime, hi]
            marginal[runtime] = {
                "pss_kb": round((b.total.pss - a.total.pss) / (hi - lo), 1),
                "rss_kb": round((b.total.rss - a.total.rss) / (hi - lo), 1),
                "private_kb": round((b.total.private - a.total.private) / (hi - lo), 1),
            }
            mrows.append(
                (
                    runtime,
                    mib(marginal[runtime]["pss_kb"]),
                    mib(marginal[runtime]["rss_kb"]),
                    mib(marginal[runtime]["private_kb"]),
                    "≤ 3.0" if runtime == "wasm" else "",
                )
            )
        print_table(
            ["runtime", "marginal PSS MiB", "marginal RSS MiB", "marginal private MiB", "target"],
            mrows,
        )
    if "wasm" in runtimes:
        g1 = groups["wasm", counts[0]]
        shim = g1.daemon + g1.zygote
        print(
            f"\nwasm, {counts[0]} container(s): daemon RSS {mib(g1.daemon.rss):.1f} MiB "
            f"(target ≤ 20), PSS {mib(g1.daemon.pss):.1f} MiB (target ≤ 12); "
            f"daemon+zygote RSS {mib(shim.rss):.1f}, PSS {mib(shim.pss):.1f}, "
            f"peak RSS (VmHWM, runwasi's metric) {mib(shim.hwm):.1f} MiB; "
            f"threads: daemon {g1.daemon.threads}, zygote {g1.zygote.threads}, "
            f"container {statistics.median(m.threads for m in g1.per_container.values()):.0f}"
        )
    if template_kb is not None:
        print(
            f"template (one per node, forks each new pod's daemon; its pages are shared with "
            f"them): RSS {mib(template_kb.rss):.1f} MiB, PSS {mib(template_kb.pss):.1f} MiB"
        )
    if template_kb is not None and spare_kb is None:
        print("spare: none came up within 10 s")
    if spare_kb is not None:
        print(
            f"spare (one per node: a daemon and its zygote forked ahead of the next new pod): "
            f"RSS {mib(spare_kb.rss):.1f} MiB, PSS {mib(spare_kb.pss):.1f} MiB, "
            f"private {mib(spare_kb.private):.1f} MiB (what it adds to the node)"
        )
    print(f"bytecode: {state}")
    if leftovers:
        print(f"LEFTOVERS: {leftovers}")
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "memory",
                "counts": counts,
                "settle_s": args.settle,
                "samples": args.samples,
                "bytecode": args.bytecode,
                "bytecode_state": state,
                "machine": machine,
                "groups": {f"{r}x{c}": g.as_json() for (r, c), g in groups.items()},
                "marginal_per_container": marginal,
                "template_kb": asdict(template_kb) if template_kb else None,
                "spare_kb": asdict(spare_kb) if spare_kb else None,
                "targets_kb": TARGETS_KB,
                "leftovers": leftovers,
            },
        )
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
