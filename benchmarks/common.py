"""Shared helpers of the benchmarks that run containers under a private containerd.

The benchmark scripts add the repository root to ``sys.path`` and import this module as
``benchmarks.common``; it reuses the test support code (``tests.support.containerd``) for the
private containerd and ``tests.fixtures.wasm.build`` for the images.

What is here:

- :func:`summarize` / :class:`Summary`: median, p90, min… of a list of samples;
- :func:`bytecode_env` / :func:`bytecode_state`: run the shims with or without compiled
  bytecode of the project's (editable) packages, without touching the checkout;
- :func:`start_containerd` and :class:`Ctr`: a private containerd with the images imported,
  and ``ctr`` invocations (checked, or timed as a whole subprocess);
- :func:`processes`, :func:`memory_of`, :func:`wasm_daemons`…: walking ``/proc``;
- :func:`parse_log`: containerd's (and the shims') log lines as timestamped records;
- :func:`machine_info`, :func:`print_table`, :func:`write_json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # imported as a plain module (e.g. by mypy or a REPL)
    sys.path.insert(0, str(REPO))

from tests.fixtures.wasm.build import build_all  # noqa: E402
from tests.support.containerd import (  # noqa: E402
    PrivateContainerd,
    is_shim_spare,
    is_shim_template,
)

#: The shim's console script lives next to the venv's interpreter.
VENV_BIN = Path(sys.executable).parent
SHIM_BINARY = "containerd-shim-wasmtime-v1"
RUNC_SHIM_BINARY = "containerd-shim-runc-v2"
WASM_RUNTIME = "io.containerd.wasmtime.v1"
HELLO_IMAGE = "localhost/hello:test"
BUSYBOX_IMAGE = "localhost/busybox:test"
#: Both our shim and runc's v2 shim put containers with the same value in one daemon.
SANDBOX_ANNOTATION = "io.kubernetes.cri.sandbox-id"
NAMESPACE = "default"
PACKAGE_SOURCES = sorted((REPO / "packages").glob("*/src"))
BYTECODE_MODES = ("as-is", "none", "compiled")


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Summary:
    """Order statistics of one series of samples (milliseconds, kB…)."""

    n: int
    median: float
    p90: float
    min: float
    max: float
    mean: float
    stdev: float

    def rounded(self, digits: int = 2) -> dict[str, float | int]:
        return {
            k: (round(v, digits) if isinstance(v, float) else v) for k, v in asdict(self).items()
        }


def summarize(samples: Sequence[float]) -> Summary:
    """Median, p90 (``statistics.quantiles``, exclusive method), min, max, mean, stdev."""
    if not samples:
        raise ValueError("no samples")
    values = list(samples)
    p90 = statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]
    return Summary(
        n=len(values),
        median=statistics.median(values),
        p90=p90,
        min=min(values),
        max=max(values),
        mean=statistics.fmean(values),
        stdev=statistics.stdev(values) if len(values) >= 2 else 0.0,
    )


# --------------------------------------------------------------------------- bytecode


def _stdlib_and_site_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    dirs = {Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return sorted(dirs)


def _mirror_pycs(prefix: Path) -> int:
    """Link every ``__pycache__/*.cpython-XY.pyc`` of the stdlib and site-packages into
    ``prefix`` at the place ``PYTHONPYCACHEPREFIX=prefix`` looks for it."""
    tag = sys.implementation.cache_tag
    count = 0
    for root in _stdlib_and_site_dirs():
        for cache in root.rglob("__pycache__"):
            if any(_is_under(cache, src) for src in PACKAGE_SOURCES):
                continue
            target = prefix / str(cache.parent).lstrip("/")
            for pyc in cache.glob(f"*.{tag}.pyc"):
                target.mkdir(parents=True, exist_ok=True)
                dest = target / pyc.name
                if dest.exists():  # the same directory reached twice (overlapping roots)
                    continue
                try:
                    os.link(pyc, dest)
                except OSError:
                    shutil.copy2(pyc, dest)
                count += 1
    return count


def _is_under(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def bytecode_env(mode: str, scratch: Path) -> dict[str, str]:
    """Environment for containerd (inherited by the shims) for one bytecode ``mode``.

    ``as-is``: nothing changes; the shims use whatever ``__pycache__`` the checkout has.
    ``none``: the project's packages have no bytecode, so every shim process compiles their
    source at import (a fresh editable install run with ``PYTHONDONTWRITEBYTECODE=1``); the
    stdlib and site-packages keep theirs. ``compiled``: the project's packages are compiled
    too (what ``python -m compileall packages/*/src`` gives). Both use a private
    ``PYTHONPYCACHEPREFIX`` under ``scratch`` so the checkout is left alone.
    """
    if mode not in BYTECODE_MODES:
        raise ValueError(f"unknown bytecode mode {mode!r}")
    if mode == "as-is":
        return {}
    prefix = scratch / "pycache"
    prefix.mkdir(parents=True, exist_ok=True)
    _mirror_pycs(prefix)
    env = {"PYTHONPYCACHEPREFIX": str(prefix), "PYTHONDONTWRITEBYTECODE": "1"}
    if mode == "compiled":
        compile_env = {**os.environ, "PYTHONPYCACHEPREFIX": str(prefix)}
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", *map(str, PACKAGE_SOURCES)],
            env=compile_env,
            check=True,
        )
    return env


def _cache_path(source: Path, prefix: str | None) -> Path:
    name = f"{source.stem}.{sys.implementation.cache_tag}.pyc"
    if prefix:
        return Path(prefix) / str(source.parent).lstrip("/") / name
    return source.parent / "__pycache__" / name


def _pyc_valid(source: Path, pyc: Path) -> bool:
    """Whether ``pyc`` is a timestamp-based .pyc that matches ``source`` (as import checks)."""
    try:
        header = pyc.read_bytes()[:16]
        st = source.stat()
    except OSError:
        return False
    if len(header) < 16 or int.from_bytes(header[4:8], "little") != 0:
        return False
    mtime = int.from_bytes(header[8:12], "little")
    size = int.from_bytes(header[12:16], "little")
    return mtime == int(st.st_mtime) & 0xFFFFFFFF and size == st.st_size & 0xFFFFFFFF


def bytecode_state(env: Mapping[str, str]) -> dict[str, Any]:
    """How many of the project's modules a shim started with ``env`` finds a valid .pyc for."""
    prefix = env.get("PYTHONPYCACHEPREFIX", os.environ.get("PYTHONPYCACHEPREFIX"))
    sources = [p for src in PACKAGE_SOURCES for p in src.rglob("*.py")]
    valid = sum(_pyc_valid(p, _cache_path(p, prefix)) for p in sources)
    dont_write = env.get("PYTHONDONTWRITEBYTECODE", os.environ.get("PYTHONDONTWRITEBYTECODE"))
    return {
        "project_modules": len(sources),
        "with_valid_pyc": valid,
        "PYTHONDONTWRITEBYTECODE": dont_write or "",
        "PYTHONPYCACHEPREFIX": "private" if prefix else "",
    }


# --------------------------------------------------------------------------- containerd, ctr


def start_containerd(
    scratch: Path,
    *,
    log_level: str = "info",
    env: Mapping[str, str] | None = None,
    images: Iterable[str] = ("hello", "busybox"),
) -> PrivateContainerd:
    """A started private containerd whose shims find ``containerd-shim-wasmtime-v1``, with
    the project's test images imported. Its log is kept at ``scratch/containerd.log``."""
    fixtures = build_all()
    ctd = PrivateContainerd(
        extra_path=[VENV_BIN],
        log_level=log_level,
        log_path=scratch / "containerd.log",
        env=dict(env or {}),
    )
    ctd.start()
    try:
        for name in images:
            # The wasm images' index entry says wasip1/wasm, which ctr otherwise filters out.
            ctd.ctr(
                "images", "import", "--all-platforms", str(fixtures.images[name].path), check=True
            )
    except BaseException:
        ctd.stop()
        raise
    return ctd


@dataclass(frozen=True)
class Timed:
    """One ``ctr`` invocation timed as a whole subprocess."""

    ms: float
    start_wall: float  #: ``time.time()`` just before the spawn (to line up with log lines)
    end_wall: float
    stdout: str


class Ctr:
    """``ctr`` against one private containerd; remembers every container id it made."""

    def __init__(self, ctd: PrivateContainerd) -> None:
        self.ctd = ctd
        self.env = ctd.environment()
        self.ids: list[str] = []

    def new_id(self, prefix: str) -> str:
        cid = f"{prefix}-{secrets.token_hex(4)}"
        self.ids.append(cid)
        return cid

    def argv(self, *args: str) -> list[str]:
        # Lets the leak tracker attribute what these ids leave behind.
        self.ctd.tracker.add_tokens(args)
        return [str(self.ctd.binaries.ctr), "-a", str(self.ctd.address), "-n", NAMESPACE, *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 60.0) -> str:
        proc = subprocess.run(
            self.argv(*args), capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"ctr {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def timed(self, *args: str, expect_stdout: str | None = None, timeout: float = 60.0) -> Timed:
        """Run ``ctr ARGS`` and time it wall-clock, spawn to exit; fail loudly on errors."""
        argv = self.argv(*args)
        start_wall = time.time()
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout)
        ms = (time.perf_counter() - start) * 1000
        end_wall = time.time()
        if proc.returncode != 0 or (expect_stdout is not None and proc.stdout != expect_stdout):
            raise RuntimeError(
                f"ctr {' '.join(args)} exited {proc.returncode}, stdout {proc.stdout!r}:\n"
                f"{proc.stderr}"
            )
        return Timed(ms, start_wall, end_wall, proc.stdout)

    def task_status(self) -> dict[str, str]:
        """Container id → task status (``ctr task ls``)."""
        out: dict[str, str] = {}
        for line in self("task", "ls").splitlines()[1:]:
            words = line.split()
            if len(words) >= 3:
                out[words[0]] = words[-1]
        return out

    def wait_running(self, ids: Sequence[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.task_status()
            if all(status.get(cid) == "RUNNING" for cid in ids):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"tasks not running after {timeout}s: {status}")
            time.sleep(0.1)

    def remove(self, ids: Iterable[str]) -> None:
        """Kill (SIGKILL), delete the task of, and remove each container; best effort."""
        ids = list(ids)
        for cid in ids:
            self("task", "kill", "-s", "SIGKILL", cid, check=False)
        for cid in ids:
            self("task", "rm", "-f", cid, check=False)
            self("container", "rm", cid, check=False)

    def remove_all(self) -> None:
        """Remove every container of the namespace (the benchmark's own containerd)."""
        self.remove(self("container", "ls", "-q", check=False).split())

    def wait_no_shims(self, timeout: float = 15.0) -> None:
        """Wait until no shim process names this containerd (daemons exit after Shutdown)."""
        deadline = time.monotonic() + timeout
        while self.ctd.shim_processes():
            if time.monotonic() > deadline:
                raise RuntimeError(f"shims still running: {self.ctd.shim_processes()}")
            time.sleep(0.05)


def finish(ctd: PrivateContainerd) -> list[str]:
    """Stop containerd; return (and print) what it left behind, which should be nothing."""
    leftovers = ctd.stop()
    if leftovers:
        print("LEFTOVERS (cleaned up now):", *leftovers, sep="\n  ", file=sys.stderr)
    return leftovers


# --------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    argv: tuple[str, ...]
    pidns: str  #: ``/proc/<pid>/ns/pid`` link target, e.g. ``pid:[4026531836]``
    cgroup: str  #: the first cgroup path in ``/proc/<pid>/cgroup``


def _read_proc(pid: int) -> Proc | None:
    base = Path(f"/proc/{pid}")
    try:
        stat = (base / "stat").read_text()
        argv = tuple(
            a.decode(errors="replace") for a in (base / "cmdline").read_bytes().split(b"\0") if a
        )
        pidns = os.readlink(base / "ns" / "pid")
        cgroup_lines = (base / "cgroup").read_text().splitlines()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    cgroup = cgroup_lines[0].split(":", 2)[-1] if cgroup_lines else ""
    return Proc(pid, int(fields[1]), argv, pidns, cgroup)


def processes() -> dict[int, Proc]:
    """Every live (non-zombie) process, by pid."""
    out: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := _read_proc(int(entry))) is not None:
            out[proc.pid] = proc
    return out


def names_address(argv: Sequence[str], address: Path) -> bool:
    """Whether a shim's argv carries ``-address <address>``."""
    return any(
        a in ("-address", "--address") and i + 1 < len(argv) and argv[i + 1] == str(address)
        for i, a in enumerate(argv)
    ) or any(a in (f"-address={address}", f"--address={address}") for a in argv)


def _is_action(argv: Sequence[str]) -> bool:
    return bool(argv) and argv[-1] in ("start", "delete")


def is_template(proc: Proc) -> bool:
    """Our shim's template: forks new pods' daemons (``containerd_shimkit.cli.template``)."""
    return is_shim_template(proc.argv) and not is_shim_spare(proc.argv)


def is_spare(proc: Proc) -> bool:
    """The template's spare daemon (or the spare's zygote), waiting for the next new pod."""
    return is_shim_spare(proc.argv)


def _shim_of(proc: Proc, binary: str) -> bool:
    return any(Path(a).name == binary for a in proc.argv[:2])


def shim_daemons(procs: Mapping[int, Proc], address: Path, binary: str) -> list[Proc]:
    """The long-running shim daemons of ``binary`` for this containerd: processes that name
    the address, are not a ``start``/``delete`` action nor the template, and whose parent is
    not such a shim (which leaves out our shim's zygote and container inits, forked from the
    daemon; a daemon forked by the template has the template as its parent)."""

    def is_shim(p: Proc) -> bool:
        return (
            _shim_of(p, binary)
            and names_address(p.argv, address)
            and not is_shim_template(p.argv)  # the template, its spare or the spare's zygote
        )

    return sorted(
        (
            p
            for p in procs.values()
            if is_shim(p)
            and not _is_action(p.argv)
            and not (p.ppid in procs and is_shim(procs[p.ppid]))
        ),
        key=lambda p: p.pid,
    )


def templates(address: Path, procs: Mapping[int, Proc] | None = None) -> list[Proc]:
    """Our shim's template for this containerd (one at most; its spare is not one)."""
    found = procs if procs is not None else processes()
    return [p for p in found.values() if is_template(p) and names_address(p.argv, address)]


def spares(address: Path, procs: Mapping[int, Proc] | None = None) -> list[Proc]:
    """The template's spare daemon and the spare's zygote, for this containerd."""
    found = procs if procs is not None else processes()
    return [p for p in found.values() if is_spare(p) and names_address(p.argv, address)]


def wasm_daemons(address: Path, procs: Mapping[int, Proc] | None = None) -> list[Proc]:
    return shim_daemons(procs if procs is not None else processes(), address, SHIM_BINARY)


def runc_shims(address: Path, procs: Mapping[int, Proc] | None = None) -> list[Proc]:
    return shim_daemons(procs if procs is not None else processes(), address, RUNC_SHIM_BINARY)


def children_of(procs: Mapping[int, Proc], pid: int) -> list[Proc]:
    return sorted((p for p in procs.values() if p.ppid == pid), key=lambda p: p.pid)


def descendants_of(procs: Mapping[int, Proc], pid: int) -> list[Proc]:
    out: list[Proc] = []
    todo = [pid]
    while todo:
        for child in children_of(procs, todo.pop()):
            out.append(child)
            todo.append(child.pid)
    return out


def container_id_of(proc: Proc) -> str | None:
    """The container id from the cgroup path ``…/default/<id>`` (cgroupfs driver)."""
    parts = proc.cgroup.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == NAMESPACE:
        return parts[-1]
    return None


@dataclass(frozen=True)
class Memory:
    """Memory of one process, kB (from ``smaps_rollup`` and ``status``)."""

    rss: int
    pss: int
    pss_anon: int
    pss_file: int
    private: int  #: Private_Clean + Private_Dirty (what killing it alone would free)
    hwm: int  #: VmHWM, peak RSS (what runwasi's memory benchmark sums)
    threads: int

    def __add__(self, other: Memory) -> Memory:
        return Memory(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


ZERO_MEMORY = Memory(0, 0, 0, 0, 0, 0, 0)


def _kv_kb(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        words = rest.split()
        if sep and words and words[0].isdigit():
            out[key.strip()] = int(words[0])
    return out


def memory_of(pid: int) -> Memory:
    base = Path(f"/proc/{pid}")
    rollup = _kv_kb((base / "smaps_rollup").read_text())
    status = _kv_kb((base / "status").read_text())
    return Memory(
        rss=rollup.get("Rss", 0),
        pss=rollup.get("Pss", 0),
        pss_anon=rollup.get("Pss_Anon", 0),
        pss_file=rollup.get("Pss_File", 0),
        private=rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0),
        hwm=status.get("VmHWM", 0),
        threads=status.get("Threads", 0),
    )


def sum_memory(items: Iterable[Memory]) -> Memory:
    total = ZERO_MEMORY
    for m in items:
        total = total + m
    return total


# --------------------------------------------------------------------------- logs

_LOG_FIELD = re.compile(r'(\w[\w.-]*)=("(?:[^"\\]|\\.)*"|\S+)')


@dataclass(frozen=True)
class LogLine:
    time: float  #: seconds since the epoch
    msg: str
    fields: dict[str, str] = field(default_factory=dict)


def _parse_time(text: str) -> float:
    # 2026-11-23T21:48:50.443557854Z: fromisoformat takes at most microseconds.
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if m is None:
        raise ValueError(text)
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}").timestamp()


def parse_log(text: str) -> Iterator[LogLine]:
    """The logfmt lines (``time=… level=… msg=… k=v``) of containerd's log, shims' included."""
    for line in text.splitlines():
        fields: dict[str, str] = {}
        for key, value in _LOG_FIELD.findall(line):
            if value.startswith('"'):
                value = value[1:-1].replace('\\"', '"')
            fields.setdefault(key, value)
        if "time" not in fields or "msg" not in fields:
            continue
        try:
            when = _parse_time(fields.pop("time"))
        except ValueError:
            continue
        yield LogLine(when, fields.pop("msg"), fields)


# --------------------------------------------------------------------------- reporting


def _first_line(path: str, key: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return ""


def _version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0].strip() if out else ""


def other_containerds(own: PrivateContainerd) -> int:
    """containerd daemons on the machine other than ours (other users of the 2 cores)."""
    return sum(
        1
        for p in processes().values()
        if p.argv and Path(p.argv[0]).name == "containerd" and p.pid != own.pid
    )


def machine_info(ctd: PrivateContainerd) -> dict[str, Any]:
    mem_total = _first_line("/proc/meminfo", "MemTotal")
    return {
        "cpu": _first_line("/proc/cpuinfo", "model name"),
        "cpus": os.cpu_count(),
        "memory": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "containerd": ctd.version,
        "runc": _version(["runc", "--version"]),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "other_containerd_daemons": other_containerds(ctd),
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain text table; the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
