#!/usr/bin/env python3
"""Throughput under load: tasks/s of our wasm shim vs runc, the way runwasi's stress-test does it.

Runs ``--count`` short tasks per runtime, ``--parallel`` at a time, all in **one** shim daemon
per runtime (one pod group: every container carries the same
``io.kubernetes.cri.sandbox-id``, which both our shim and runc's v2 shim group by), and
reports tasks/s = tasks ÷ (first Create → last completion), plus each task's latency. A
long-running keep-alive task per group (runwasi's "pause" task) keeps the daemon up between
tasks. Two modes:

- ``containerd``: a private containerd; per task, through containerd's gRPC API:
  Snapshots.Mounts → Tasks.Create (no stdio) → Tasks.Start → Tasks.Wait (exit status 0) →
  Tasks.Delete. The containers are made in an untimed setup with ``ctr container create``.
  wasm: ``localhost/hello:test /demo.wasm echo hello``; runc: ``localhost/busybox:test
  /bin/true``.
- ``direct``: no containerd. The shim binary is started as containerd starts it (``start``
  in a bundle, ``TTRPC_ADDRESS`` pointing at a stand-in events server that counts what it
  is sent), and the Task API is called over ttrpc: Create (a bundle with a plain rootfs
  directory, no mounts) → Start → Wait → Delete. This is the shim's own cost, without
  containerd's (which in 1.6 includes running the shim binary's ``delete`` action after
  every task).

The runtimes take turns in chunks (runc, wasm, wasm, runc, …) so that drifting machine load
favours neither. Everything made is removed; leaks (containerd's report, or the same checks
in direct mode) are printed and make the exit status 1.

    python benchmarks/stress.py [--count 1000] [--parallel 4] [--chunks 4]
                                [--mode containerd|direct|both] [--runtimes runc,wasm]
                                [--bytecode as-is|none|compiled] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import empty_pb2

from benchmarks.common import (
    BUSYBOX_IMAGE,
    BYTECODE_MODES,
    HELLO_IMAGE,
    NAMESPACE,
    RUNC_SHIM_BINARY,
    SANDBOX_ANNOTATION,
    SHIM_BINARY,
    VENV_BIN,
    WASM_RUNTIME,
    Ctr,
    bytecode_env,
    bytecode_state,
    descendants_of,
    finish,
    machine_info,
    other_containerds,
    parse_log,
    print_table,
    processes,
    shim_daemons,
    spares,
    start_containerd,
    summarize,
    templates,
    write_json,
)
from containerd_shimkit.api import events_ttrpc_pb2, shim_pb2
from containerd_shimkit.cli.wire import field_bytes as _field
from containerd_shimkit.cli.wire import iter_fields
from containerd_shimkit.ttrpc import Client, RequestContext, Server, Service
from tests.fixtures.wasm.build import build_all
from tests.support.containerd import (
    LeakTracker,
    PrivateContainerd,
    cgroup_hierarchies,
    process_alive,
)

#: The baseline first: it leads the first round of chunks and the table.
RUNTIMES = ("runc", "wasm")
MODES = ("containerd", "direct")
#: Issue 6's target: wasm tasks/s at least this many times runc's.
TARGET_RATIO = 3.0
#: Each timed task's command, and the keep-alive task's (runwasi's "pause" task).
TASK_ARGS = {"wasm": ["/demo.wasm", "echo", "hello"], "runc": ["/bin/true"]}
KEEPALIVE_ARGS = {"wasm": ["/demo.wasm", "sleep", "3600"], "runc": ["sleep", "3600"]}
IMAGES = {"wasm": HELLO_IMAGE, "runc": BUSYBOX_IMAGE}
RUNTIME_NAMES = {"wasm": WASM_RUNTIME, "runc": "io.containerd.runc.v2"}
#: Generous: a task takes well under a second; this only stops a hung run.
CALL_TIMEOUT = 120.0
#: ``ctr container create`` processes at once during setup (ctr is mostly waiting).
SETUP_WORKERS = 8


# --------------------------------------------------------------------------- the timed loop


@dataclass
class Chunk:
    """A run of consecutive tasks of one runtime, timed as a whole."""

    runtime: str
    index: int  #: the runtime's chunk number, 0-based
    ids: list[str]
    seconds: float = 0.0  #: first Create → last completion
    latencies_ms: list[float] = field(default_factory=list)
    #: CPU time spent during the chunk, ms, by who spent it (containerd mode only).
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def tasks_per_s(self) -> float:
        return len(self.ids) / self.seconds if self.seconds else 0.0


def split(items: Sequence[str], parts: int) -> list[list[str]]:
    """``items`` in ``parts`` consecutive slices whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return [p for p in out if p]


def schedule(ids: Mapping[str, Sequence[str]], chunks: int) -> list[Chunk]:
    """Every runtime's ids in ``chunks`` chunks, ordered A B, B A, A B…: the runtimes take
    turns and each goes first as often as second, so a drift in load favours neither."""
    parts = {runtime: split(list(rids), chunks) for runtime, rids in ids.items()}
    order = list(ids)
    out: list[Chunk] = []
    for i in range(chunks):
        for runtime in order if i % 2 == 0 else order[::-1]:
            if i < len(parts[runtime]):
                out.append(Chunk(runtime, i, parts[runtime][i]))
    return out


TaskFn = Callable[[str], Awaitable[None]]


async def run_chunk(chunk: Chunk, task: TaskFn, parallel: int) -> None:
    """Run ``task`` for every id of the chunk, ``parallel`` at a time, and time it.

    ``parallel`` workers take the next id as soon as their previous task is done, so
    exactly ``parallel`` tasks are in flight until the chunk runs out. (runwasi's semaphore
    covers only Create and Start, so more tasks may be waiting or being deleted at once;
    here ``--parallel`` is the number of whole tasks in flight.) The first failure cancels
    the rest and propagates.
    """
    pending: Iterator[str] = iter(chunk.ids)
    starts: list[float] = []
    ends: list[float] = []

    async def worker() -> None:
        for cid in pending:  # one shared iterator: each id is taken exactly once
            begin = time.perf_counter()
            starts.append(begin)
            await task(cid)
            end = time.perf_counter()
            ends.append(end)
            chunk.latencies_ms.append((end - begin) * 1000)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(parallel, len(chunk.ids))):
            group.create_task(worker())
    chunk.seconds = max(ends) - min(starts)


async def run_schedule(
    chunks: Sequence[Chunk],
    tasks: Mapping[str, TaskFn],
    parallel: int,
    mode: str,
    meter: CpuMeter | None = None,
) -> None:
    """Run the chunks in order, printing one progress line per chunk."""
    for n, chunk in enumerate(chunks, 1):
        before = meter.sample(chunk.runtime) if meter else {}
        await run_chunk(chunk, tasks[chunk.runtime], parallel)
        if meter:
            after = meter.sample(chunk.runtime)
            chunk.cpu_ms = CpuMeter.per_task_ms(before, after, len(chunk.ids))
        print(
            f"  {mode} {chunk.runtime} chunk {n}/{len(chunks)}: {len(chunk.ids)} tasks in "
            f"{chunk.seconds:.1f} s ({chunk.tasks_per_s:.1f} tasks/s)",
            flush=True,
        )


class TaskFailed(RuntimeError):
    """A timed task did not exit 0."""


# --------------------------------------------------------------------------- results


@dataclass
class ModeResult:
    """What one mode measured, plus its checks."""

    mode: str
    setup_s: float
    chunks: list[Chunk]
    checks: dict[str, Any] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)
    teardown_s: float = 0.0
    loadavg: dict[str, list[str]] = field(default_factory=dict)

    def runtimes(self) -> list[str]:
        return list(dict.fromkeys(c.runtime for c in self.chunks))

    def of(self, runtime: str) -> list[Chunk]:
        return [c for c in self.chunks if c.runtime == runtime]

    def tasks(self, runtime: str) -> int:
        return sum(len(c.ids) for c in self.of(runtime))

    def seconds(self, runtime: str) -> float:
        return sum(c.seconds for c in self.of(runtime))

    def tasks_per_s(self, runtime: str) -> float:
        """All the runtime's tasks over the sum of its chunks' times."""
        return self.tasks(runtime) / self.seconds(runtime)

    def latencies(self, runtime: str) -> list[float]:
        return [ms for c in self.of(runtime) for ms in c.latencies_ms]

    def cpu_ms_per_task(self, runtime: str) -> dict[str, float]:
        """CPU ms per task by who spent it, over all the runtime's chunks."""
        chunks = [c for c in self.of(runtime) if c.cpu_ms]
        tasks = sum(len(c.ids) for c in chunks)
        keys = chunks[0].cpu_ms if chunks else {}
        return {k: round(sum(c.cpu_ms[k] * len(c.ids) for c in chunks) / tasks, 1) for k in keys}

    def ratio(self) -> float | None:
        """wasm tasks/s ÷ runc tasks/s."""
        if {"wasm", "runc"} <= set(self.runtimes()):
            return self.tasks_per_s("wasm") / self.tasks_per_s("runc")
        return None

    def paired_ratio(self) -> float | None:
        """Median over chunk rounds of (wasm chunk tasks/s ÷ the same round's runc chunk)."""
        if self.ratio() is None:
            return None
        pairs = zip(self.of("wasm"), self.of("runc"), strict=False)
        return summarize([w.tasks_per_s / r.tasks_per_s for w, r in pairs]).median

    def as_json(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for runtime in self.runtimes():
            results[runtime] = {
                "tasks": self.tasks(runtime),
                "seconds": round(self.seconds(runtime), 3),
                "tasks_per_s": round(self.tasks_per_s(runtime), 2),
                "latency_ms": summarize(self.latencies(runtime)).rounded(),
                "cpu_ms_per_task": self.cpu_ms_per_task(runtime),
                "chunks": [
                    {
                        "index": c.index,
                        "tasks": len(c.ids),
                        "seconds": round(c.seconds, 3),
                        "tasks_per_s": round(c.tasks_per_s, 2),
                    }
                    for c in self.of(runtime)
                ],
            }
        ratio, paired = self.ratio(), self.paired_ratio()
        return {
            "setup_s": round(self.setup_s, 1),
            "teardown_s": round(self.teardown_s, 1),
            "chunk_order": [f"{c.runtime}#{c.index}" for c in self.chunks],
            "results": results,
            "ratio_wasm_to_runc": None if ratio is None else round(ratio, 3),
            "paired_ratio_median": None if paired is None else round(paired, 3),
            "checks": self.checks,
            "loadavg": self.loadavg,
            "leftovers": self.leftovers,
            "samples_ms": {r: [round(ms, 2) for ms in self.latencies(r)] for r in self.runtimes()},
        }


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


PROBLEM_LEVELS = ("warn", "warning", "error", "fatal", "panic")


def log_problems(text: str, top: int = 8) -> dict[str, int]:
    """Warning and error lines of a containerd or shim log, counted by level and message.

    containerd 1.6 logs some on every task ("cleaning up after shim disconnected", as it runs
    the shim's ``delete`` action); anything else deserves a look.
    """
    counts = Counter(
        f"{ln.fields['level']}: {' '.join(_VARYING.sub('', ln.msg).split())}"
        for ln in parse_log(text)
        if ln.fields.get("level") in PROBLEM_LEVELS
    )
    return dict(counts.most_common(top))


#: What differs between otherwise equal messages (runc's ``delete`` prints its own log
#: lines, which containerd quotes in a "cleanup warnings" message).
_VARYING = re.compile(r'time="[^"]*"|pid=\d+|\\n')


# --------------------------------------------------------------------------- protobuf by hand
# containerd's Snapshots and Tasks services are not generated here (only the shim side is),
# and the few messages a task needs are flat: encode them by hand, field numbers from
# containerd's api/services/{snapshots,tasks}/v1 (unchanged since 1.0).


def _int_field(data: bytes, number: int) -> int:
    """A varint field's value (proto3 leaves out zeros, so absent means 0)."""
    return next((v for n, _, v in iter_fields(data) if n == number and isinstance(v, int)), 0)


def _identity(data: bytes) -> bytes:
    return data


# --------------------------------------------------------------------------- shim processes

BINARIES = {"wasm": SHIM_BINARY, "runc": RUNC_SHIM_BINARY}


@dataclass(frozen=True)
class ShimProcesses:
    """One runtime's shim processes for one containerd address, by role."""

    daemons: list[int]  #: one per pod group
    templates: list[int]  #: ours only: 0 or 1 per containerd


def shim_processes(address: Path, runtime: str) -> ShimProcesses:
    """The runtime's shim daemons (:func:`common.shim_daemons`) and our shim's template
    naming ``-address <address>``."""
    procs = processes()
    daemons = [p.pid for p in shim_daemons(procs, address, BINARIES[runtime])]
    ours = [p.pid for p in templates(address, procs)] if runtime == "wasm" else []
    return ShimProcesses(daemons, ours)


def stop_templates(address: Path, timeout: float = 10.0) -> int:
    """SIGTERM our shim's template for ``address``, as containerd's exit would end it, and
    wait for it and its spare (which follows it) to be gone.

    In direct mode the benchmark stands in for containerd, and the template (which watches
    the parent of the ``start`` action that spawned it, i.e. this process) would otherwise
    stay until the benchmark exits. Returns how many templates were stopped.
    """
    pids = shim_processes(address, "wasm").templates
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    waited = pids + [p.pid for p in spares(address)]
    deadline = time.monotonic() + timeout
    while alive := [pid for pid in waited if process_alive(pid)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"template or spare {alive} did not exit on SIGTERM")
        time.sleep(0.05)
    return len(pids)


def wait_daemons_gone(address: Path, runtimes: Sequence[str], timeout: float = 30.0) -> None:
    """Wait until the runtimes' daemons for ``address`` have exited (after Shutdown).

    Not the template: it lives as long as containerd (or until it idles out).
    """
    deadline = time.monotonic() + timeout
    while left := {r: p for r in runtimes if (p := shim_processes(address, r).daemons)}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"shim daemons did not exit: {left}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- CPU accounting

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(own user+system ticks, ticks of its children it has reaped) of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return utime + stime, cutime + cstime


def tree_ticks(root: int) -> int:
    """Ticks of ``root`` and its live descendants, with what each has reaped."""
    procs = processes()
    total = 0
    for pid in [root, *(p.pid for p in descendants_of(procs, root))]:
        with contextlib.suppress(OSError):
            total += sum(cpu_ticks(pid))
    return total


class CpuMeter:
    """Where a chunk's CPU time goes: containerd itself; the processes containerd ran and
    reaped (the shims' ``start``/``delete`` actions); the runtime's shim daemon with its
    children (our zygote and container inits; runc's shim with the runc binary and
    containers). The rest of the machine (the benchmark, other load) is not counted."""

    def __init__(self, containerd: int, daemons: Mapping[str, int]) -> None:
        self.containerd = containerd
        self.daemons = daemons

    def sample(self, runtime: str) -> dict[str, int]:
        own, reaped = cpu_ticks(self.containerd)
        return {
            "containerd": own,
            "shim actions (start/delete)": reaped,
            "shim daemon + containers": tree_ticks(self.daemons[runtime]),
        }

    @staticmethod
    def per_task_ms(
        before: Mapping[str, int], after: Mapping[str, int], tasks: int
    ) -> dict[str, float]:
        return {k: (after[k] - before[k]) * TICK_MS / tasks for k in before}


# --------------------------------------------------------------------------- mode: containerd

MOUNTS = "/containerd.services.snapshots.v1.Snapshots/Mounts"
CREATE = "/containerd.services.tasks.v1.Tasks/Create"
START = "/containerd.services.tasks.v1.Tasks/Start"
WAIT = "/containerd.services.tasks.v1.Tasks/Wait"
DELETE = "/containerd.services.tasks.v1.Tasks/Delete"


class ContainerdTasks:
    """One task's life through containerd's gRPC API, as ``ctr run`` drives it."""

    def __init__(self, address: Path, snapshotter: str = "overlayfs") -> None:
        self._channel = grpc.aio.insecure_channel(f"unix://{address}")
        self._metadata = (("containerd-namespace", NAMESPACE),)
        self._snapshotter = snapshotter
        self._calls = {
            method: self._channel.unary_unary(
                method, request_serializer=_identity, response_deserializer=_identity
            )
            for method in (MOUNTS, CREATE, START, WAIT, DELETE)
        }

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request: bytes) -> bytes:
        reply: bytes = await self._calls[method](
            request, metadata=self._metadata, timeout=CALL_TIMEOUT
        )
        return reply

    async def run(self, cid: str) -> None:
        """Mounts → Create (no stdio) → Start → Wait → Delete; fail unless it exited 0."""
        mounts = await self._call(MOUNTS, _field(1, self._snapshotter) + _field(2, cid))
        # MountsResponse.mounts (1) are CreateTaskRequest.rootfs (3): the same Mount bytes.
        rootfs = b"".join(
            _field(3, v) for n, _, v in iter_fields(mounts) if n == 1 and isinstance(v, bytes)
        )
        await self._call(CREATE, _field(1, cid) + rootfs)
        await self._call(START, _field(1, cid))
        status = _int_field(await self._call(WAIT, _field(1, cid)), 1)
        await self._call(DELETE, _field(1, cid))
        if status != 0:
            raise TaskFailed(f"task {cid} exited with status {status}")


@dataclass
class Group:
    """One runtime's pod group under containerd: its keep-alive task and its containers."""

    runtime: str
    pod: str
    ids: list[str]


def create_group(ctr: Ctr, runtime: str, count: int) -> Group:
    """Start the keep-alive task and create ``count`` containers, all in one pod group."""
    pod = ctr.new_id(f"{runtime}-pod")
    common = ["--annotation", f"{SANDBOX_ANNOTATION}={pod}", "--runtime", RUNTIME_NAMES[runtime]]
    ctr("run", "-d", *common, IMAGES[runtime], pod, *KEEPALIVE_ARGS[runtime])
    ids = [ctr.new_id(runtime) for _ in range(count)]

    def create(cid: str) -> None:
        ctr("container", "create", *common, IMAGES[runtime], cid, *TASK_ARGS[runtime])

    # Each ctr mostly waits on containerd: several at once keep the untimed setup short.
    with ThreadPoolExecutor(SETUP_WORKERS) as pool:
        list(pool.map(create, ids))
    ctr.wait_running([pod])
    return Group(runtime, pod, ids)


def remove_groups(ctr: Ctr, groups: Sequence[Group], batch: int = 200) -> None:
    """Remove the containers in batches (their tasks are gone: one ``ctr`` per 200 rather
    than three per container), then the keep-alive tasks, and wait for the daemons to exit.
    After an error, whatever this could not remove is left to ``Ctr.remove_all``."""
    for group in groups:
        for i in range(0, len(group.ids), batch):
            ctr("container", "rm", *group.ids[i : i + batch], check=False)
    ctr.remove([g.pod for g in groups])
    with contextlib.suppress(RuntimeError):  # reported by finish() as leftovers
        wait_daemons_gone(ctr.ctd.address, [g.runtime for g in groups])


def check_daemons(ctd: PrivateContainerd, groups: Sequence[Group]) -> dict[str, Any]:
    """One daemon per runtime, and one wasm daemon ever started for the pod (from the log)."""
    found = {g.runtime: shim_processes(ctd.address, g.runtime) for g in groups}
    for runtime, shims in found.items():
        if len(shims.daemons) != 1:
            raise RuntimeError(f"{runtime}: shim daemons {shims.daemons}, expected one")
    out: dict[str, Any] = {
        "daemons_after_run": {r: len(s.daemons) for r, s in found.items()},
        "templates_after_run": {r: len(s.templates) for r, s in found.items()},
    }
    for group in groups:
        if group.runtime == "wasm":
            serving = [
                ln
                for ln in parse_log(ctd.log_text())
                if ln.msg == "shim serving" and ln.fields.get("pod") == group.pod
            ]
            out["wasm_daemons_started_for_pod"] = len(serving)
            if len(serving) != 1:
                raise RuntimeError(f"wasm pod group served by {len(serving)} daemons over the run")
    return out


def run_containerd_mode(
    runtimes: Sequence[str], count: int, parallel: int, chunks: int, env: Mapping[str, str],
    scratch: Path,
) -> tuple[ModeResult, dict[str, Any]]:  # fmt: skip
    """The containerd mode, start to finish; also returns the machine description."""
    ctd = start_containerd(scratch, log_level="info", env=env)
    ctr = Ctr(ctd)
    groups: list[Group] = []
    result = ModeResult("containerd", 0.0, [], loadavg={"start": loadavg()})
    try:
        machine = machine_info(ctd)
        began = time.perf_counter()
        groups = [create_group(ctr, runtime, count) for runtime in runtimes]
        result.setup_s = time.perf_counter() - began
        print(f"containerd: setup {result.setup_s:.1f} s ({count} containers per runtime)")
        result.chunks = schedule({g.runtime: g.ids for g in groups}, chunks)
        try:
            meter = CpuMeter(
                ctd.pid or 0,
                {g.runtime: shim_processes(ctd.address, g.runtime).daemons[0] for g in groups},
            )
            asyncio.run(_run_containerd_chunks(ctd.address, result.chunks, parallel, meter))
        except BaseException:
            print(f"containerd's log, last lines:\n{ctd.log_tail(60)}", file=sys.stderr)
            raise
        result.loadavg["end"] = loadavg()
        result.checks = check_daemons(ctd, groups)
        result.checks["containerd_log"] = log_problems(ctd.log_text())
        machine["other_containerd_daemons_end"] = other_containerds(ctd)
    finally:
        began = time.perf_counter()
        remove_groups(ctr, groups)
        result.teardown_s = time.perf_counter() - began
        ctr.remove_all()  # whatever an error left (nothing, normally)
        result.leftovers = finish(ctd)
    return result, machine


async def _run_containerd_chunks(
    address: Path, chunks: Sequence[Chunk], parallel: int, meter: CpuMeter
) -> None:
    api = ContainerdTasks(address)
    try:
        await run_schedule(chunks, {r: api.run for r in RUNTIMES}, parallel, "containerd", meter)
    finally:
        await api.close()


# --------------------------------------------------------------------------- mode: direct

TASK_SERVICE = "containerd.task.v2.Task"
#: containerd 1.6's default spec for ``ctr`` (``oci.WithDefaultSpec``), as written to a
#: bundle's config.json; only args, annotations and cgroupsPath vary.
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
DEFAULT_MOUNTS = [
    ("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
    ("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    ("/dev/pts", "devpts", "devpts",
     ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
    ("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    ("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
    ("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
    ("/run", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
]  # fmt: skip
#: (major, minor) of the character devices the default spec allows; None = any minor.
DEFAULT_DEVICES = [(1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None), (5, 2)]
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def oci_spec(args: Sequence[str], namespace: str, cid: str, pod: str) -> dict[str, Any]:
    """The config.json containerd 1.6 writes for ``ctr container create IMAGE ID ARGS``."""
    devices: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for major, minor in DEFAULT_DEVICES:
        rule: dict[str, Any] = {"allow": True, "type": "c", "major": major, "access": "rwm"}
        if minor is not None:
            rule["minor"] = minor
        devices.append(rule)
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [0]},
            "args": list(args),
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {k: DEFAULT_CAPS for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": d, "type": t, "source": s, "options": o}
            for d, t, s, o in DEFAULT_MOUNTS
        ],
        "annotations": {SANDBOX_ANNOTATION: pod},
        "linux": {
            "resources": {"devices": devices, "cpu": {"shares": 1024}},
            "cgroupsPath": f"/{namespace}/{cid}",
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }


def _link(src: Path, dst: Path) -> None:
    """Hard-link (a thousand rootfs directories cost no space), copying across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class RootfsSource:
    """Files the plain rootfs directories are made of, copied once into the scratch dir."""

    def __init__(self, scratch: Path) -> None:
        fixtures = build_all()
        self.dir = scratch / "files"
        self.dir.mkdir()
        self.demo_wasm = self.dir / "demo.wasm"
        shutil.copy2(fixtures.demo_wasm, self.demo_wasm)
        self.busybox = self.dir / "busybox"
        shutil.copy2(_static_busybox(), self.busybox)

    def populate(self, runtime: str, rootfs: Path) -> None:
        """wasm: ``/demo.wasm``; runc: ``/bin/busybox`` with ``true`` and ``sleep`` links."""
        rootfs.mkdir()
        if runtime == "wasm":
            _link(self.demo_wasm, rootfs / "demo.wasm")
            return
        (rootfs / "bin").mkdir()
        _link(self.busybox, rootfs / "bin" / "busybox")
        for applet in ("true", "sleep"):
            (rootfs / "bin" / applet).symlink_to("busybox")


def _static_busybox() -> Path:
    """The static busybox the test images are built from (``busybox-static``)."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).is_file():
            return Path(candidate).resolve()
    raise RuntimeError("busybox not found; apt-get install busybox-static")


class EventCounter:
    """A stand-in for containerd's events service: accepts every event and counts topics."""

    def __init__(self) -> None:
        self.topics: Counter[str] = Counter()

    async def forward(
        self, request: events_ttrpc_pb2.ForwardRequest, ctx: RequestContext
    ) -> empty_pb2.Empty:
        self.topics[request.envelope.topic] += 1
        return empty_pb2.Empty()


@dataclass
class DirectShim:
    """One shim daemon started by hand, its keep-alive task, events and task bundles."""

    runtime: str
    binary: Path
    namespace: str
    fake_address: Path  #: the ``-address``; nothing listens there (no containerd)
    bundles: Path  #: ``<scratch>/bundles/<namespace>``
    pod: str
    ids: list[str]
    events: EventCounter = field(default_factory=EventCounter)
    server: Server | None = None
    client: Client | None = None

    @property
    def events_socket(self) -> Path:
        return self.bundles.parent.parent / f"events-{self.runtime}.sock"

    @property
    def log(self) -> Path:
        """The daemon's log: it writes to ``log`` in the bundle it was started in."""
        return self.bundles / self.pod / "log"

    def prepare(self, files: RootfsSource) -> None:
        """Write the keep-alive bundle and every task's bundle (untimed)."""
        self._bundle(files, self.pod, KEEPALIVE_ARGS[self.runtime])
        for cid in self.ids:
            self._bundle(files, cid, TASK_ARGS[self.runtime])

    def _bundle(self, files: RootfsSource, cid: str, args: Sequence[str]) -> None:
        bundle = self.bundles / cid
        bundle.mkdir(parents=True)
        spec = oci_spec(args, self.namespace, cid, self.pod)
        (bundle / "config.json").write_text(json.dumps(spec))
        # A plain file: both shims write their log to "log" in their start directory
        # (containerd makes it a FIFO it copies into its own log).
        (bundle / "log").touch()
        files.populate(self.runtime, bundle / "rootfs")

    async def start(self, env: Mapping[str, str]) -> None:
        """Serve events, run the binary's ``start`` as containerd 1.6 does, and connect."""
        self.server = Server([Service.from_descriptor(_EVENTS, self.events)])
        await self.server.start_unix(self.events_socket)
        containerd = shutil.which("containerd", path=env["PATH"]) or "/usr/bin/containerd"
        argv = [
            str(self.binary), "-namespace", self.namespace, "-address", str(self.fake_address),
            "-publish-binary", containerd,
            "-id", self.pod, "start",
        ]  # fmt: skip
        # containerd 1.6 adds exactly these two to its own environment (shim-protocol.md §3.2).
        shim_env = {**env, "TTRPC_ADDRESS": str(self.events_socket), "GOMAXPROCS": "2"}
        proc = await asyncio.to_thread(
            subprocess.run, argv, cwd=self.bundles / self.pod, env=shim_env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}{proc.stderr}"
            )
        self.client = await Client.connect(proc.stdout.strip())
        await self.create_and_start(self.pod)

    async def call(self, method: str, request: Any, response_type: type[Any]) -> Any:
        assert self.client is not None
        return await self.client.call(
            TASK_SERVICE, method, request, response_type, timeout=CALL_TIMEOUT
        )

    async def create_and_start(self, cid: str) -> None:
        bundle = str(self.bundles / cid)
        await self.call("Create", shim_pb2.CreateTaskRequest(id=cid, bundle=bundle),
                        shim_pb2.CreateTaskResponse)  # fmt: skip
        await self.call("Start", shim_pb2.StartRequest(id=cid), shim_pb2.StartResponse)

    async def run(self, cid: str) -> None:
        """Create (no rootfs mounts, no stdio) → Start → Wait → Delete; fail unless 0."""
        await self.create_and_start(cid)
        waited = await self.call("Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse)
        await self.call("Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse)
        if waited.exit_status != 0:
            raise TaskFailed(f"{self.runtime} task {cid} exited with status {waited.exit_status}")

    async def stop(self) -> None:
        """Kill and delete the keep-alive task, Shutdown the daemon, stop serving events."""
        try:
            if self.client is not None and not self.client.closed:
                await self.call("Kill", shim_pb2.KillRequest(id=self.pod, signal=signal.SIGKILL),
                                empty_pb2.Empty)  # fmt: skip
                await self.call("Wait", shim_pb2.WaitRequest(id=self.pod), shim_pb2.WaitResponse)
                await self.call("Delete", shim_pb2.DeleteRequest(id=self.pod),
                                shim_pb2.DeleteResponse)  # fmt: skip
                # The daemon exits once Shutdown finds no container left; it may close the
                # connection before or after answering.
                with contextlib.suppress(Exception):
                    await self.call("Shutdown", shim_pb2.ShutdownRequest(id=self.pod),
                                    empty_pb2.Empty)  # fmt: skip
        finally:
            if self.client is not None:
                await self.client.close()
            await asyncio.to_thread(self.wait_exited)
            if self.server is not None:
                await self.server.shutdown()

    def daemons(self) -> list[int]:
        return shim_processes(self.fake_address, self.runtime).daemons

    def wait_exited(self, timeout: float = 15.0) -> None:
        """Wait for the daemon to exit after Shutdown; SIGKILL it (and say so) if it does not."""
        deadline = time.monotonic() + timeout
        while pids := self.daemons():
            if time.monotonic() > deadline:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                raise RuntimeError(f"{self.runtime} shim daemon(s) {pids} did not exit")
            time.sleep(0.05)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


_EVENTS = events_ttrpc_pb2.DESCRIPTOR.services_by_name["Events"]
#: Events each task (the keep-alive one included) must produce, one of each.
TASK_TOPICS = ("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")


def binaries(runtimes: Sequence[str], path: str) -> dict[str, Path]:
    """The shim binary of each runtime (ours from the venv, runc's from containerd's
    ``path``, as containerd mode's shims find it)."""
    out = {}
    for runtime in runtimes:
        name = BINARIES[runtime]
        found = VENV_BIN / name if runtime == "wasm" else shutil.which(name, path=path)
        if not found or not Path(found).exists():
            raise RuntimeError(f"{name} not found")
        out[runtime] = Path(found)
    return out


def run_direct_mode(
    runtimes: Sequence[str], count: int, parallel: int, chunks: int, env: Mapping[str, str],
    scratch: Path,
) -> ModeResult:  # fmt: skip
    """The direct mode, start to finish, with the same leak checks containerd's stop does."""
    namespace = f"stress-{secrets.token_hex(4)}"
    fake_address = scratch / "c.sock"
    bundles = scratch / "bundles" / namespace
    # The leak tracker of the tests' private containerd, pointed at our fake address and
    # scratch dir: shim processes, mounts, shim sockets, runc state and cgroups.
    tracker = LeakTracker(fake_address, scratch, scratch / "no-log")
    tracker.namespaces.add(namespace)
    tracker.allowed_cgroup_parents.add(namespace)
    tracker.snapshot()
    shims: list[DirectShim] = []
    result = ModeResult("direct", 0.0, [], loadavg={"start": loadavg()})
    try:
        began = time.perf_counter()
        files = RootfsSource(scratch)
        for runtime, binary in binaries(runtimes, env["PATH"]).items():
            pod = f"{runtime}-pod-{secrets.token_hex(4)}"
            ids = [f"{runtime}-{secrets.token_hex(4)}" for _ in range(count)]
            tracker.add_tokens([pod, *ids])
            shim = DirectShim(runtime, binary, namespace, fake_address, bundles, pod, ids)
            shim.prepare(files)
            shims.append(shim)
        asyncio.run(_run_direct(shims, result, began, parallel, chunks, env))
    finally:
        result.leftovers = _direct_leftovers(tracker, scratch / "bundles", namespace)
    return result


async def _run_direct(
    shims: Sequence[DirectShim], result: ModeResult, began: float, parallel: int, chunks: int,
    env: Mapping[str, str],
) -> None:  # fmt: skip
    started: list[DirectShim] = []
    try:
        for shim in shims:
            started.append(shim)
            await shim.start(env)
        result.setup_s = time.perf_counter() - began
        print(f"direct: setup {result.setup_s:.1f} s ({len(shims[0].ids)} bundles per runtime)")
        result.chunks = schedule({s.runtime: s.ids for s in shims}, chunks)
        try:
            await run_schedule(result.chunks, {s.runtime: s.run for s in shims}, parallel, "direct")
        except BaseException:
            for shim in shims:
                print(f"{shim.runtime} shim log ({shim.log}), last lines:\n{shim.log_tail()}",
                      file=sys.stderr)  # fmt: skip
            raise
        result.loadavg["end"] = loadavg()
        result.checks["daemons_after_run"] = {s.runtime: len(s.daemons()) for s in shims}
        for shim in shims:
            if len(shim.daemons()) != 1:
                raise RuntimeError(f"{shim.runtime}: expected one shim daemon, {shim.daemons()}")
    finally:
        teardown = time.perf_counter()
        for shim in started:
            await shim.stop()
        if started:
            address = started[0].fake_address
            result.checks["templates_stopped"] = await asyncio.to_thread(stop_templates, address)
        result.teardown_s = time.perf_counter() - teardown
    result.checks["events"] = {s.runtime: _check_events(s) for s in shims}
    result.checks["shim_logs"] = {s.runtime: log_problems(s.log_text()) for s in shims}


def _check_events(shim: DirectShim) -> dict[str, Any]:
    """The events the shim published, against one of each topic per task (keep-alive too)."""
    expected = len(shim.ids) + 1
    got = {topic: shim.events.topics.get(topic, 0) for topic in TASK_TOPICS}
    other = {t: n for t, n in shim.events.topics.items() if t not in TASK_TOPICS}
    missing = {t: expected - n for t, n in got.items() if n != expected}
    if missing:
        print(f"EVENTS: {shim.runtime} shim published {got}, expected {expected} of each",
              file=sys.stderr)  # fmt: skip
    return {"expected_each": expected, "received": got, "other": other, "ok": not missing}


def _direct_leftovers(tracker: LeakTracker, bundles: Path, namespace: str) -> list[str]:
    """What the shims left behind (reported, then cleaned up), and the namespace's dirs."""
    found = [str(item) for item in tracker.find(bundles)]
    if found:
        print("LEFTOVERS (cleaned up now):", *found, sep="\n  ", file=sys.stderr)
        tracker.cleanup(bundles)
    # Parents that runtimes create and never remove: the namespace's cgroup and runc root.
    for hierarchy in cgroup_hierarchies():
        with contextlib.suppress(OSError):
            (hierarchy / namespace).rmdir()
    with contextlib.suppress(OSError):
        (Path("/run/containerd/runc") / namespace).rmdir()
    return found


# --------------------------------------------------------------------------- reporting


def machine_without_containerd() -> dict[str, Any]:
    """``machine_info``'s fields when no containerd of ours runs (direct mode alone)."""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        "",
    )  # fmt: skip
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    runc = subprocess.run(["runc", "--version"], capture_output=True, text=True, check=False)
    daemons = [p for p in processes().values() if p.argv and Path(p.argv[0]).name == "containerd"]
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "containerd": "not used",
        "runc": runc.stdout.splitlines()[0] if runc.stdout else "",
        "loadavg": loadavg(),
        "other_containerd_daemons": len(daemons),
    }


def print_results(results: Sequence[ModeResult], parallel: int) -> None:
    rows = []
    for result in results:
        ratio, paired = result.ratio(), result.paired_ratio()
        for runtime in result.runtimes():
            latency = summarize(result.latencies(runtime))
            is_wasm = runtime == "wasm" and ratio is not None
            rows.append(
                (
                    f"{result.mode} {runtime}",
                    result.tasks(runtime),
                    parallel,
                    f"{result.seconds(runtime):.1f}",
                    f"{result.tasks_per_s(runtime):.1f}",
                    latency.median,
                    latency.p90,
                    f"{ratio:.2f}" if is_wasm and ratio is not None else "",
                    f"{paired:.2f}" if is_wasm and paired is not None else "",
                    f"≥ {TARGET_RATIO}" if is_wasm else "",
                )
            )
    print_table(
        ["case", "tasks", "parallel", "seconds", "tasks/s", "median ms", "p90 ms",
         "× runc", "paired ×", "target"],
        rows,
    )  # fmt: skip
    cpu_rows = [
        (f"{result.mode} {runtime}", *cpu.values(), sum(cpu.values()))
        for result in results
        for runtime in result.runtimes()
        if (cpu := result.cpu_ms_per_task(runtime))
    ]
    if cpu_rows:
        print(
            f"\nCPU ms per task, by who spent it (/proc/<pid>/stat); with {os.cpu_count()} CPUs, "
            f"tasks/s ≤ {os.cpu_count()} × 1000 / total"
        )
        keys = next(c.cpu_ms for r in results for c in r.chunks if c.cpu_ms)
        print_table(["case", *keys, "total"], cpu_rows)
    for result in results:
        print(f"\n{result.mode}: setup {result.setup_s:.1f} s (untimed), "
              f"teardown {result.teardown_s:.1f} s, load average {result.loadavg}")  # fmt: skip
        for name, value in result.checks.items():
            print(f"  {name}: {json.dumps(value, ensure_ascii=False)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="tasks per runtime (1000)")
    parser.add_argument("--parallel", type=int, default=4, help="tasks in flight (4)")
    parser.add_argument(
        "--chunks", type=int, default=4, help="chunks per runtime, run in turns (4)"
    )
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="runc,wasm")
    parser.add_argument(
        "--bytecode",
        choices=BYTECODE_MODES,
        default="as-is",
        help="the project's .pyc files for the shims: as-is (the checkout's __pycache__), "
        "none, or compiled (both in a private PYTHONPYCACHEPREFIX)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    runtimes = [r for r in args.runtimes.split(",") if r]
    if not runtimes or any(r not in RUNTIMES for r in runtimes):
        parser.error("--runtimes: a comma-separated subset of runc,wasm")
    if args.count < 1 or args.parallel < 1 or not 1 <= args.chunks <= args.count:
        parser.error("--count and --parallel must be ≥ 1, --chunks between 1 and --count")
    modes = MODES if args.mode == "both" else (args.mode,)

    scratch = Path(tempfile.mkdtemp(prefix="stress-bench-"))
    results: list[ModeResult] = []
    machine: dict[str, Any] = {}
    try:
        env = bytecode_env(args.bytecode, scratch)
        for mode in modes:
            began = time.perf_counter()
            work = scratch / mode
            work.mkdir()
            if mode == "containerd":
                result, machine = run_containerd_mode(
                    runtimes, args.count, args.parallel, args.chunks, env, work
                )
            else:
                machine = machine or machine_without_containerd()
                # The shims get what the private containerd of containerd mode would pass
                # on (its PATH, with the same containerd and runc binaries) and bytecode's.
                ctd_env = PrivateContainerd(extra_path=[VENV_BIN]).environment()
                shim_env = {**ctd_env, **env}
                result = run_direct_mode(
                    runtimes, args.count, args.parallel, args.chunks, shim_env, work
                )
            result.checks["wall_s"] = round(time.perf_counter() - began, 1)
            results.append(result)
        state = bytecode_state(env)  # before the private pycache goes
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\nstress: {args.count} tasks per runtime, {args.parallel} in flight, "
          f"{args.chunks} chunks per runtime in turns, bytecode={args.bytecode}; "
          f"containerd {machine.get('containerd')}, {machine.get('cpus')} CPUs")  # fmt: skip
    print_results(results, args.parallel)
    print(f"bytecode: {state}")
    leftovers = [f"{r.mode}: {item}" for r in results for item in r.leftovers]
    events_ok = all(e["ok"] for r in results for e in r.checks.get("events", {}).values())
    if leftovers:
        print("LEFTOVERS:", *leftovers, sep="\n  ")
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "stress",
                "count": args.count,
                "parallel": args.parallel,
                "chunks": args.chunks,
                "bytecode": args.bytecode,
                "bytecode_state": state,
                "machine": machine,
                "target_ratio_wasm_to_runc": TARGET_RATIO,
                "modes": {r.mode: r.as_json() for r in results},
                "leftovers": leftovers,
            },
        )
    return 1 if leftovers or not events_ok else 0


if __name__ == "__main__":
    sys.exit(main())
