"""A private containerd of a selected version, started and torn down by a test.

The version comes from ``$CONTAINERD_VERSION``: ``1.6`` (default; Debian bookworm's
``/usr/bin/containerd``), ``1.7`` (Debian trixie) or ``2.1`` (Debian sid), the latter two
fetched into a cache by ``scripts/fetch_containerd.py``.

Each :class:`PrivateContainerd` gets its own root, state, gRPC socket (``<base>/c.sock``) and
ttrpc socket (``<base>/c.sock.ttrpc``) under ``/run/ctrtest-<random>``; the socket path stays
short because unix socket paths are limited to 108 bytes. containerd still shares a few
machine-wide places with every other containerd, whatever its config says:

- ``/run/containerd/s/`` — shim sockets (the path is compiled into the shim libraries);
- ``/run/containerd/fifo/`` — ctr's stdio fifos;
- ``/run/containerd/runc/<ns>/`` — the runc shim's runc root;
- ``/run/netns/`` — CRI pod network namespaces;
- ``/sys/fs/cgroup/<controller>/<ns>/<id>`` — runc's cgroups (cgroupfs driver).

:meth:`PrivateContainerd.leftovers` compares these with a snapshot taken at start and counts
only entries that carry an id this containerd handled (see :class:`LeakTracker`), so tests
running concurrently on the same machine neither see nor clean up each other's containers.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

REPO = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO / "scripts" / "fetch_containerd.py"
DEFAULT_SERIES = "1.6"

SHIM_SOCKET_DIR = Path("/run/containerd/s")
FIFO_DIR = Path("/run/containerd/fifo")
RUNC_ROOT = Path("/run/containerd/runc")
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CRI_NAMESPACE = "k8s.io"
CRI_PLUGIN_V2 = "io.containerd.grpc.v1.cri"
CRI_RUNTIME_PLUGIN_V3 = "io.containerd.cri.v1.runtime"
CRI_IMAGES_PLUGIN_V3 = "io.containerd.cri.v1.images"

TomlValue = str | int | float | bool | list[Any] | dict[str, Any]


class ContainerdError(RuntimeError):
    """containerd could not be started, or a ``ctr`` command failed."""


# --------------------------------------------------------------------------- binaries


@functools.cache
def load_fetch_module() -> ModuleType:
    """Import ``scripts/fetch_containerd.py`` (``scripts`` is not a package)."""
    spec = importlib.util.spec_from_file_location("fetch_containerd", FETCH_SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {FETCH_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    # Registered before exec: dataclasses look their module up in sys.modules.
    sys.modules.setdefault("fetch_containerd", module)
    spec.loader.exec_module(module)
    return sys.modules["fetch_containerd"]


def selected_series() -> str:
    """The containerd series the tests run against: ``$CONTAINERD_VERSION`` or ``1.6``."""
    return os.environ.get("CONTAINERD_VERSION", "").strip() or DEFAULT_SERIES


@dataclass(frozen=True)
class ContainerdBinaries:
    """Where one containerd version's executables are, and what they report."""

    series: str
    bin_dir: Path
    version: str
    #: A runc that must come first on containerd's PATH (None: the PATH's own runc).
    runc: Path | None = None
    #: Exact Debian package versions, when fetched (from the cache's manifest.json).
    packages: Mapping[str, str] = field(default_factory=dict)

    @property
    def containerd(self) -> Path:
        return self.bin_dir / "containerd"

    @property
    def ctr(self) -> Path:
        return self.bin_dir / "ctr"

    @property
    def major(self) -> int:
        return int(self.series.split(".", 1)[0])

    @property
    def minor(self) -> int:
        return int(self.series.split(".", 2)[1])


def parse_containerd_version(output: str) -> str:
    """``containerd github.com/containerd/containerd 1.6.20~ds1 <rev>`` → ``1.6.20~ds1``."""
    parts = output.split()
    if len(parts) < 3 or not parts[0].endswith("containerd"):
        raise ContainerdError(f"unexpected `containerd --version` output: {output!r}")
    return parts[2].removeprefix("v")


@functools.cache
def resolve_binaries(series: str | None = None) -> ContainerdBinaries:
    """Find (fetching if needed) the binaries of ``series`` (default: :func:`selected_series`)."""
    series = series or selected_series()
    fetch = load_fetch_module()
    vdir = Path(fetch.ensure_containerd(series))
    packages: dict[str, str] = {}
    runc: Path | None = None
    if vdir == Path(fetch.SYSTEM_BIN):
        bin_dir = vdir
    else:
        bin_dir = vdir / "bin"
        manifest = json.loads((vdir / "manifest.json").read_text())
        packages = {"containerd": manifest["containerd"]["version"]}
        if manifest["runc"].get("usable"):
            runc = bin_dir / "runc"
            packages["runc"] = manifest["runc"]["version"]
    out = subprocess.run(
        [str(bin_dir / "containerd"), "--version"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    version = parse_containerd_version(out.stdout)
    real_series = ".".join(version.split(".")[:2])
    if series not in fetch.CHANNELS and real_series != series:
        raise ContainerdError(f"asked for containerd {series}, {bin_dir} has {version}")
    return ContainerdBinaries(real_series, bin_dir, version, runc, packages)


# --------------------------------------------------------------------------- config


@dataclass
class RuntimeHandler:
    """A CRI runtime handler (``…containerd.runtimes.<name>``)."""

    runtime_type: str
    #: The handler's ``options`` table, e.g. ``{"SystemdCgroup": True}`` or, for shims that
    #: take ``runtimeoptions.v1.Options``, ``{"TypeUrl": …, "ConfigPath": …}``.
    options: dict[str, TomlValue] = field(default_factory=dict)
    pod_annotations: list[str] = field(default_factory=list)
    container_annotations: list[str] = field(default_factory=list)
    runtime_path: str | None = None
    #: Any other key of the handler table (e.g. ``sandboxer``, ``snapshotter``).
    extra: dict[str, TomlValue] = field(default_factory=dict)

    def table(self) -> dict[str, TomlValue]:
        """The handler's TOML table (identical in the 1.6/1.7 and 2.x schemas)."""
        t: dict[str, TomlValue] = {"runtime_type": self.runtime_type}
        if self.runtime_path:
            t["runtime_path"] = self.runtime_path
        if self.pod_annotations:
            t["pod_annotations"] = list(self.pod_annotations)
        if self.container_annotations:
            t["container_annotations"] = list(self.container_annotations)
        t.update(self.extra)
        if self.options:
            t["options"] = dict(self.options)
        return t


@dataclass
class CriConfig:
    """What the CRI plugin is configured with; everything else keeps containerd's defaults."""

    #: Runtime handlers by name. A ``runc`` handler is added unless one is given or
    #: ``include_runc`` is False.
    handlers: dict[str, RuntimeHandler] = field(default_factory=dict)
    sandbox_image: str = "localhost/pause:test"
    cni_bin_dir: str = "/usr/lib/cni"
    #: None: ``<base>/cni/net.d`` of the private containerd (empty until a test writes to it).
    cni_conf_dir: str | None = None
    default_runtime_name: str = "runc"
    snapshotter: str = "overlayfs"
    # This machine lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj of -998 gives EPERM in
    # runc's nsexec unless CRI keeps scores at or above containerd's own.
    restrict_oom_score_adj: bool = True
    include_runc: bool = True
    runc_systemd_cgroup: bool = False
    #: Extra keys merged into the CRI runtime plugin table (2.x) or the CRI table (1.x).
    extra: dict[str, TomlValue] = field(default_factory=dict)

    def all_handlers(self, runc_binary: str | None = None) -> dict[str, RuntimeHandler]:
        handlers = dict(self.handlers)
        if self.include_runc and "runc" not in handlers:
            opts: dict[str, TomlValue] = {"SystemdCgroup": self.runc_systemd_cgroup}
            if runc_binary:
                opts["BinaryName"] = runc_binary
            handlers["runc"] = RuntimeHandler("io.containerd.runc.v2", options=opts)
        return handlers


@dataclass(frozen=True)
class ConfigPaths:
    """The per-instance paths a config names."""

    root: Path
    state: Path
    address: Path
    opt: Path
    cni_conf_dir: Path


def generate_config(
    major: int,
    minor: int,
    paths: ConfigPaths,
    *,
    cri: CriConfig | None = None,
    log_level: str = "debug",
    runc_binary: str | None = None,
    extra: Mapping[str, TomlValue] | None = None,
) -> dict[str, TomlValue]:
    """The config document for containerd ``major.minor`` (schema version 2 for 1.x, 3 for 2.x).

    The result is a plain dict; :func:`render_toml` writes it.
    """
    plugins: dict[str, TomlValue] = {
        # The opt plugin creates <path>/bin and <path>/lib and puts them first on the shims'
        # PATH; by default that is /opt/containerd, outside the test's private dirs.
        "io.containerd.internal.v1.opt": {"path": str(paths.opt)},
    }
    if (major, minor) >= (1, 7):
        # NRI listens on /var/run/nri/nri.sock, shared by every containerd (on in 2.x).
        plugins["io.containerd.nri.v1.nri"] = {"disable": True}
    doc: dict[str, TomlValue] = {
        "version": 3 if major >= 2 else 2,
        "root": str(paths.root),
        "state": str(paths.state),
    }
    if cri is None:
        doc["disabled_plugins"] = [CRI_PLUGIN_V2]
    else:
        if major >= 2:
            plugins.update(_cri_plugins_v3(cri, paths, runc_binary))
        else:
            plugins[CRI_PLUGIN_V2] = _cri_plugin_v2(cri, paths, runc_binary, minor)
    # An empty ttrpc address makes containerd serve ttrpc on "<grpc address>.ttrpc".
    doc["grpc"] = {"address": str(paths.address)}
    doc["debug"] = {"level": log_level}
    doc["plugins"] = plugins
    if extra:
        _deep_merge(doc, extra)
    return doc


def _cri_plugin_v2(
    cri: CriConfig, paths: ConfigPaths, runc_binary: str | None, minor: int
) -> dict[str, TomlValue]:
    """``[plugins."io.containerd.grpc.v1.cri"]`` for containerd 1.6 and 1.7."""
    runtimes = {n: h.table() for n, h in cri.all_handlers(runc_binary).items()}
    table: dict[str, TomlValue] = {
        "sandbox_image": cri.sandbox_image,
        "restrict_oom_score_adj": cri.restrict_oom_score_adj,
        # Port 0: each instance's streaming server (exec/attach) gets a free loopback port.
        "stream_server_address": "127.0.0.1",
        "stream_server_port": "0",
        "cni": {
            "bin_dir": cri.cni_bin_dir,
            "conf_dir": cri.cni_conf_dir or str(paths.cni_conf_dir),
            "max_conf_num": 1,
        },
        "containerd": {
            "snapshotter": cri.snapshotter,
            "default_runtime_name": cri.default_runtime_name,
            "runtimes": runtimes,
        },
    }
    if minor >= 7:
        table["enable_cdi"] = False
    _deep_merge(table, cri.extra)
    return table


def _cri_plugins_v3(
    cri: CriConfig, paths: ConfigPaths, runc_binary: str | None
) -> dict[str, TomlValue]:
    """The 2.x split: ``cri.v1.images``, ``cri.v1.runtime`` and the gRPC ``grpc.v1.cri``."""
    runtimes = {n: h.table() for n, h in cri.all_handlers(runc_binary).items()}
    runtime: dict[str, TomlValue] = {
        "restrict_oom_score_adj": cri.restrict_oom_score_adj,
        "enable_cdi": False,
        "cni": {
            "bin_dirs": [cri.cni_bin_dir],
            "conf_dir": cri.cni_conf_dir or str(paths.cni_conf_dir),
            "max_conf_num": 1,
        },
        "containerd": {
            "default_runtime_name": cri.default_runtime_name,
            "runtimes": runtimes,
        },
    }
    _deep_merge(runtime, cri.extra)
    return {
        CRI_IMAGES_PLUGIN_V3: {
            "snapshotter": cri.snapshotter,
            "pinned_images": {"sandbox": cri.sandbox_image},
        },
        CRI_RUNTIME_PLUGIN_V3: runtime,
        CRI_PLUGIN_V2: {"stream_server_address": "127.0.0.1", "stream_server_port": "0"},
    }


def _deep_merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value)
        else:
            dst[key] = value


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    # bool before int: bool is an int subclass.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def render_toml(doc: Mapping[str, Any]) -> str:
    """Write a config dict as TOML (scalars and arrays first, then nested tables)."""
    lines: list[str] = []

    def emit(table: Mapping[str, Any], path: list[str]) -> None:
        scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
        subtables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        if path and (scalars or not subtables):
            lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in scalars:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in subtables:
            emit(v, [*path, k])

    emit(doc, [])
    return "\n".join(lines).lstrip("\n") + "\n"


# --------------------------------------------------------------------------- /proc, mounts


def _unescape_mountinfo(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """``(mount point, fs type)`` for each line of ``/proc/<pid>/mountinfo``."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        fstype = right.split()[0] if right else ""
        out.append((_unescape_mountinfo(fields[4]), fstype))
    return out


def mount_points() -> list[tuple[str, str]]:
    """The mounts of this process's mount namespace."""
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def _is_under(path: str, parent: Path) -> bool:
    p = str(parent).rstrip("/")
    return path == p or path.startswith(p + "/")


_MNT_DETACH = 2


def unmount(path: str) -> None:
    """Lazily unmount ``path`` (``umount2(MNT_DETACH)``); errors are raised as OSError."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount2({path}): {os.strerror(err)}")


def read_cmdline(pid: int) -> list[str]:
    """argv of ``pid`` ([] when it is gone or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_shim_template(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a shim's template (``<shim> -address A … template <pid>``): the
    pre-warmed process that forks new daemons (``containerd_shimkit.cli.template``), or its
    spare daemon (and the spare's zygote) waiting to be handed a pod: they live as long as
    the template."""
    return "template" in argv and "-id" not in argv


def is_shim_spare(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a template's spare daemon (or its zygote) not yet handed a pod
    (``<shim> -address A … template spare``)."""
    return is_shim_template(argv) and "spare" in argv


def process_parents() -> dict[int, int]:
    """pid → ppid for every process visible in /proc."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The comm field may contain spaces and parentheses: split after the last ")".
        rest = stat.rsplit(")", 1)[1].split()
        out[int(entry)] = int(rest[1])
    return out


def descendants(roots: Iterable[int], parents: Mapping[int, int] | None = None) -> set[int]:
    """All descendants of ``roots`` (not including them)."""
    parents = parents if parents is not None else process_parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def argv_names_address(argv: Sequence[str], address: str) -> bool:
    """Whether a shim's argv carries ``-address <address>`` (Go flag syntax, any form)."""
    for i, arg in enumerate(argv):
        name, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name != "address":
            continue
        if eq and value == address:
            return True
        if not eq and i + 1 < len(argv) and argv[i + 1] == address:
            return True
    return False


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a zombie holds no resources but its pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- cgroups


def cgroup_hierarchies() -> list[Path]:
    """The mounted cgroup hierarchies (v1 controllers and the v2 ``unified``), deduplicated."""
    out: dict[str, Path] = {}
    for mp, fstype in mount_points():
        if fstype in ("cgroup", "cgroup2") and _is_under(mp, CGROUP_ROOT):
            out.setdefault(os.path.realpath(mp), Path(mp))
    return sorted(out.values())


def _cgroup_dirs(hierarchy: Path, depth: int) -> Iterator[Path]:
    if depth == 0:
        return
    try:
        entries = list(os.scandir(hierarchy))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield Path(entry.path)
            yield from _cgroup_dirs(Path(entry.path), depth - 1)


def _tracked_cgroup_dirs(hierarchy: Path, top_names: set[str]) -> Iterator[Path]:
    """Cgroup dirs under the top-level dirs a container runtime may create.

    Those are the containerd namespaces (cgroupfs driver: ``<ns>/<id>``) and systemd-style
    slices (``*.slice``, ``kubepods*``). Nothing else is ever looked at or touched: the machine
    itself creates cgroups concurrently (e.g. one per command under ``process_api``).
    """
    for top in _cgroup_dirs(hierarchy, 1):
        name = top.name
        if name in top_names or name.endswith(".slice") or name.startswith("kubepods"):
            yield top
            yield from _cgroup_dirs(top, CGROUP_SCAN_DEPTH - 1)


#: Levels of kubelet's cgroupfs hierarchy (``/kubepods/<qos>/pod<uid>``): kubelet owns them,
#: and no kubelet runs here, so they stay behind empty by design.
KUBELET_CGROUP_LEVELS = frozenset({"kubepods", "besteffort", "burstable", "guaranteed"})


def _parent_like(cg: Path, hierarchy: Path, allowed: set[str]) -> bool:
    """Whether an empty ``cg`` is a parent that runtimes create but never remove.

    runc creates missing parents of a container's cgroupsPath and removes only the leaf: the
    namespace dir (``/default``, ``/k8s.io``), systemd-style slices, and kubelet's pod levels.
    """
    name = cg.name
    if name in allowed or name.endswith(".slice"):
        return True
    rel = cg.relative_to(hierarchy).parts
    return rel[0] == "kubepods" and (name in KUBELET_CGROUP_LEVELS or name.startswith("pod"))


def _cgroup_procs(cg: Path) -> list[int]:
    try:
        return [int(x) for x in (cg / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


# How deep new cgroups are looked for: <ns>/<id> (cgroupfs), or slices with a scope
# (a systemd-style cgroupsPath such as kubepods.slice/kubepods-besteffort.slice/…/x.scope).
CGROUP_SCAN_DEPTH = 5


CNI_RESULTS_DIR = Path("/var/lib/cni/results")

_HEX_ID = re.compile(r"\b[0-9a-f]{64}\b")
_NETNS_NAME = re.compile(r"\bcni-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_LOG_ID = re.compile(r"\b(?:id|key|container_id|sandbox_id)=\"?([A-Za-z0-9][A-Za-z0-9._-]*)")
_LOG_BUNDLE = re.compile(r"io\.containerd\.runtime\.v2\.task/([^/\s\"]+)/([^/\s\"]+)")
_IDENTIFIER = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")


def shim_socket_name(address: str, namespace: str, group_id: str) -> str:
    """The socket name a runc-style shim uses: sha256 of ``<address>/<ns>/<group id>``."""
    return hashlib.sha256(f"{address}/{namespace}/{group_id}".encode()).hexdigest()


@dataclass(frozen=True)
class Leftover:
    """One thing a private containerd's containers left on the machine."""

    kind: str  # process, mount, socket, fifo, runc-state, netns, cni-cache, cgroup
    path: str
    detail: str = ""
    pids: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind} {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class _Snapshot:
    """Machine-wide state taken when a private containerd starts."""

    sockets: set[str]
    fifos: set[str]
    runc_dirs: set[str]
    netns: set[str]
    cni_results: set[str]
    cgroups: set[str]


def _listdir(path: Path) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def _runc_state_dirs() -> set[str]:
    return {f"{ns}/{c}" for ns in _listdir(RUNC_ROOT) for c in _listdir(RUNC_ROOT / ns)}


def _take_snapshot() -> _Snapshot:
    return _Snapshot(
        sockets=_listdir(SHIM_SOCKET_DIR),
        fifos=_listdir(FIFO_DIR),
        runc_dirs=_runc_state_dirs(),
        netns=_listdir(NETNS_DIR),
        cni_results=_listdir(CNI_RESULTS_DIR),
        # Every dir counts here (which namespaces a test will use is not known yet); only
        # the tracked subtrees are ever compared against it.
        cgroups={str(p) for h in cgroup_hierarchies() for p in _cgroup_dirs(h, CGROUP_SCAN_DEPTH)},
    )


class LeakTracker:
    """Finds what one containerd's containers left behind, and removes exactly that.

    Machine-wide places (shim sockets, fifo dirs, runc state, netns, cgroups) are shared with
    every other containerd on the machine, possibly a concurrent test run. So an entry counts
    only if it is new since :meth:`snapshot` *and* carries an id this containerd handled:
    ids it logged (container and snapshot keys, 64-hex CRI ids, pod netns names), ids given
    to ``ctr``, bundle dirs, and shims' ``-id``. Shim processes are matched by the
    ``-address`` of this containerd, mounts by lying under its private base dir.
    """

    def __init__(self, address: Path, base: Path, log_path: Path) -> None:
        self.address = address
        self.base = base
        self.log_path = log_path
        self.namespaces: set[str] = {"default", CRI_NAMESPACE}
        #: Names of empty cgroup dirs that may stay behind (parents runc never removes).
        self.allowed_cgroup_parents: set[str] = {"default", CRI_NAMESPACE}
        self.tokens: set[str] = set()
        self._snap: _Snapshot | None = None
        self._log_offset = 0

    def snapshot(self) -> None:
        self._snap = _take_snapshot()

    @property
    def active(self) -> bool:
        return self._snap is not None

    def add_tokens(self, words: Iterable[str]) -> None:
        """Remember words that may be ids (e.g. ``ctr`` arguments)."""
        self.tokens.update(w for w in words if _IDENTIFIER.match(w))

    def _read_ids(self, bundles: Path) -> None:
        # The log grows; only the complete lines appended since the last read are parsed.
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                chunk = fh.read()
        except OSError:
            chunk = b""
        cut = chunk.rfind(b"\n") + 1
        self._log_offset += cut
        text = chunk[:cut].decode(errors="replace")
        self.tokens.update(_HEX_ID.findall(text))
        self.tokens.update(_NETNS_NAME.findall(text))
        self.tokens.update(_LOG_ID.findall(text))
        for ns, cid in _LOG_BUNDLE.findall(text):
            self.namespaces.add(ns)
            self.tokens.add(cid)
        for ns in _listdir(bundles):
            self.namespaces.add(ns)
            self.tokens.update(_listdir(bundles / ns))

    def shim_processes(self) -> list[tuple[int, list[str]]]:
        """Processes whose argv names this containerd's ``-address``."""
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                argv = read_cmdline(int(entry))
                if argv_names_address(argv, str(self.address)):
                    out.append((int(entry), argv))
        return out

    def _owns_cgroup(self, name: str) -> bool:
        if name in self.tokens:
            return True
        # systemd-style leaves: "<prefix>-<id>.scope" (e.g. cri-containerd-<id>.scope).
        stem = name.removesuffix(".scope")
        return stem != name and (stem in self.tokens or stem.rsplit("-", 1)[-1] in self.tokens)

    def _cgroups(self) -> list[Leftover]:
        assert self._snap is not None
        tops = self.allowed_cgroup_parents | self.namespaces
        out = []
        for h in cgroup_hierarchies():
            for cg in _tracked_cgroup_dirs(h, tops):
                if str(cg) in self._snap.cgroups or not self._owns_cgroup(cg.name):
                    continue
                procs = _cgroup_procs(cg)
                if not procs and _parent_like(cg, h, tops):
                    continue  # e.g. the namespace dir, when "default" also is a logged id
                detail = f"pids {procs}" if procs else ""
                out.append(Leftover("cgroup", str(cg), detail, tuple(procs)))
        return out

    def _sockets(self) -> list[Leftover]:
        assert self._snap is not None
        new = _listdir(SHIM_SOCKET_DIR) - self._snap.sockets
        if not new:
            return []
        names = {
            shim_socket_name(str(self.address), ns, t)
            for ns in self.namespaces
            for t in self.tokens
        }
        # The debug socket of a Go shim hashes "<address>/<ns>/<id>/debug" the same way.
        names |= {
            shim_socket_name(str(self.address), ns, f"{t}/debug")
            for ns in self.namespaces
            for t in self.tokens
        }
        return [Leftover("socket", str(SHIM_SOCKET_DIR / n)) for n in sorted(new & names)]

    def find(self, bundles: Path, templates: bool = True) -> list[Leftover]:
        """Everything currently left behind (see the class docstring for what counts).

        ``templates=False`` while containerd runs: a shim's template lives as long as
        containerd does, and is a leftover only once containerd has stopped.
        """
        if self._snap is None:
            return []
        snap = self._snap
        self._read_ids(bundles)
        found: list[Leftover] = []
        for pid, argv in self.shim_processes():
            if not templates and is_shim_template(argv):
                continue
            found.append(Leftover("process", str(pid), " ".join(argv), (pid,)))
            self.add_tokens(argv)
        for mp, fstype in mount_points():
            pod_netns = mp != str(NETNS_DIR) and _is_under(mp, NETNS_DIR)
            if _is_under(mp, self.base) or (pod_netns and Path(mp).name in self.tokens):
                found.append(Leftover("mount", mp, fstype))
        found += self._sockets()
        for name in sorted(_listdir(FIFO_DIR) - snap.fifos):
            ids = {f.rsplit("-", 1)[0] for f in _listdir(FIFO_DIR / name)}
            if ids & self.tokens:
                found.append(Leftover("fifo", str(FIFO_DIR / name)))
        for name in sorted(_runc_state_dirs() - snap.runc_dirs):
            if name.split("/", 1)[1] in self.tokens:
                found.append(Leftover("runc-state", str(RUNC_ROOT / name)))
        for name in sorted(_listdir(NETNS_DIR) - snap.netns):
            if name in self.tokens:
                found.append(Leftover("netns", str(NETNS_DIR / name)))
        for name in sorted(_listdir(CNI_RESULTS_DIR) - snap.cni_results):
            if any(t in name for t in self.tokens if len(t) == 64):
                found.append(Leftover("cni-cache", str(CNI_RESULTS_DIR / name)))
        found += self._cgroups()
        return found

    def cleanup(self, bundles: Path, extra_pids: Iterable[int] = ()) -> None:
        """Kill, unmount and remove everything :meth:`find` reports."""
        items = self.find(bundles)
        pids = set(extra_pids)
        for item in items:
            pids.update(item.pids)
        # Descendants first collected, then killed: once a shim dies they are re-parented.
        pids |= descendants(pids)
        pids.discard(os.getpid())
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        _wait_gone(pids, 5.0)
        mounts = [i.path for i in items if i.kind == "mount"]
        mounts += [i.path for i in items if i.kind == "netns"]
        # Deepest first, so nested mounts (a rootfs inside a snapshot dir) go before parents.
        for mp in sorted(set(mounts), key=len, reverse=True):
            with contextlib.suppress(OSError):
                unmount(mp)
        for item in items:
            if item.kind in ("socket", "netns", "cni-cache"):
                with contextlib.suppress(OSError):
                    Path(item.path).unlink()
            elif item.kind in ("fifo", "runc-state"):
                shutil.rmtree(item.path, ignore_errors=True)
        cgroups = [Path(i.path) for i in items if i.kind == "cgroup"]
        for cg in sorted(cgroups, key=lambda p: len(p.parts), reverse=True):
            _rmdir_cgroup(cg)
        self._remove_empty_parents()

    def _remove_empty_parents(self) -> None:
        """Tidy up the empty parent cgroups created since the snapshot (namespace dirs…)."""
        assert self._snap is not None
        tops = self.allowed_cgroup_parents | self.namespaces
        new = [
            cg
            for h in cgroup_hierarchies()
            for cg in _tracked_cgroup_dirs(h, tops)
            if str(cg) not in self._snap.cgroups and _parent_like(cg, h, tops)
        ]
        for cg in sorted(new, key=lambda p: len(p.parts), reverse=True):
            if not _cgroup_procs(cg) and not any(_cgroup_dirs(cg, 1)):
                with contextlib.suppress(OSError):
                    cg.rmdir()


def _rmdir_cgroup(cg: Path) -> None:
    for _ in range(40):  # a just-killed task may take a moment to leave its cgroup
        try:
            cg.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def _wait_gone(pids: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(process_alive(p) for p in pids):
            return
        time.sleep(0.02)


# --------------------------------------------------------------------------- the daemon

_LIVE: weakref.WeakSet[PrivateContainerd] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # A crashed or interrupted test run must not leave containerd daemons behind.
    for instance in list(_LIVE):
        with contextlib.suppress(Exception):
            instance.stop()


def live_instances() -> list[PrivateContainerd]:
    """Every private containerd started in this process and not yet stopped."""
    return [i for i in _LIVE if i.running]


class PrivateContainerd:
    """One containerd daemon with its own root, state and sockets.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with PrivateContainerd(cri=CriConfig()) as ctd:
            ctd.ctr("images", "import", str(tar))
            ...
        assert not ctd.stop_leftovers
    """

    def __init__(
        self,
        binaries: ContainerdBinaries | None = None,
        *,
        cri: CriConfig | None = None,
        extra_path: Sequence[Path | str] = (),
        log_level: str = "debug",
        log_path: Path | None = None,
        extra_config: Mapping[str, TomlValue] | None = None,
        env: Mapping[str, str] | None = None,
        base_parent: Path = Path("/run"),
        allowed_cgroup_parents: Iterable[str] = (),
    ) -> None:
        self.binaries = binaries or resolve_binaries()
        self.cri = cri
        self.extra_path = [Path(p) for p in extra_path]
        self.log_level = log_level
        self.extra_config = dict(extra_config or {})
        self.extra_env = dict(env or {})
        self.base = base_parent / f"ctrtest-{secrets.token_hex(4)}"
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.address = self.base / "c.sock"
        self.opt_dir = self.base / "opt"
        self.cni_conf_dir = self.base / "cni" / "net.d"
        self.config_path = self.base / "config.toml"
        self.log_path = log_path or self.base / "containerd.log"
        self.tracker = LeakTracker(self.address, self.base, self.log_path)
        self.tracker.allowed_cgroup_parents.update(allowed_cgroup_parents)
        #: What :meth:`stop` found before it cleaned up (empty when nothing leaked).
        self.stop_leftovers: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None
        self._stopped = False

    # ----------------------------------------------------------------- properties

    @property
    def version(self) -> str:
        """The exact containerd version, e.g. ``1.6.20~ds1`` or ``2.1.9+unknown``."""
        return self.binaries.version

    @property
    def series(self) -> str:
        """``1.6``, ``1.7``, ``2.1``…"""
        return self.binaries.series

    @property
    def major(self) -> int:
        return self.binaries.major

    @property
    def ttrpc_address(self) -> Path:
        """Where containerd serves ttrpc (the ``TTRPC_ADDRESS`` shims get)."""
        return Path(f"{self.address}.ttrpc")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def config_text(self) -> str:
        """The TOML this instance runs with."""
        paths = ConfigPaths(self.root, self.state, self.address, self.opt_dir, self.cni_conf_dir)
        doc = generate_config(
            self.binaries.major,
            self.binaries.minor,
            paths,
            cri=self.cri,
            log_level=self.log_level,
            runc_binary=str(self.binaries.runc) if self.binaries.runc else None,
            extra=self.extra_config,
        )
        return render_toml(doc)

    def environment(self) -> dict[str, str]:
        """containerd's environment; shims inherit it (plus TTRPC_ADDRESS and friends)."""
        env = dict(os.environ)
        # A user's CONTAINERD_* settings must not redirect this instance or its ctr.
        for key in ("CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE", "CONTAINERD_SNAPSHOTTER"):
            env.pop(key, None)
        path = [str(p) for p in self.extra_path] + [str(self.binaries.bin_dir)]
        if self.binaries.runc:
            path.append(str(self.binaries.runc.parent))
        env["PATH"] = os.pathsep.join([*path, env.get("PATH", os.defpath)])
        env.update(self.extra_env)
        return env

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0) -> Self:
        """Write the config, start containerd and wait until its API answers."""
        if os.geteuid() != 0:
            raise ContainerdError("a private containerd needs root")
        if self._proc is not None:
            raise ContainerdError("already started")
        self.tracker.snapshot()
        for d in (self.root, self.state, self.opt_dir, self.cni_conf_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._launch()
        _LIVE.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        """Start the containerd process on the written config (its output appended to the
        log)."""
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(self.binaries.containerd), "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.base,
                # Own session: a Ctrl-C of the test run reaches pytest, which then stops it.
                start_new_session=True,
            )

    def stop_keeping_state(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the containerd process with ``sig`` (SIGKILL after ``timeout``) and nothing
        else: its shims keep running, and its config, root, state, log and leak tracker stay
        for :meth:`start_again`."""
        if not self.running:
            raise ContainerdError("containerd is not running")
        self._terminate_containerd(timeout, sig)

    def start_again(self, timeout: float = 30.0) -> None:
        """Start containerd again on the same config, root and state after
        :meth:`stop_keeping_state` (or after it died); the leak tracker keeps its first
        snapshot."""
        if self._proc is None or self._stopped:
            raise ContainerdError("containerd was never started, or was stopped for good")
        if self.running:
            raise ContainerdError("containerd is running")
        self._launch()
        self._wait_ready(timeout)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """:meth:`stop_keeping_state` with ``sig``, then :meth:`start_again`."""
        self.stop_keeping_state(sig)
        self.start_again()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise ContainerdError(
                    f"containerd exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            if self.address.exists():
                proc = self.ctr("version", timeout=10)
                if proc.returncode == 0:
                    return
                last = proc.stderr
            time.sleep(0.02)
        raise ContainerdError(
            f"containerd did not answer in {timeout}s ({last}):\n{self.log_tail()}"
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> list[str]:
        """Stop containerd, report what it left behind, then clean all of that up.

        Returns (and keeps in :attr:`stop_leftovers`) the leftovers found after containerd
        exited and before the forced cleanup; anything even the cleanup could not remove is
        appended with a ``NOT CLEANED:`` prefix.
        """
        if self._stopped:
            return self.stop_leftovers
        self._stopped = True
        if self.running:
            self._remember_namespaces()
        # Found before containerd goes: a shim still starting may be its child.
        pids = {pid for pid, _ in self.tracker.shim_processes()}
        if self._proc is not None:
            pids |= descendants([self._proc.pid])
        self._terminate_containerd(timeout)
        found = self.leftovers(wait=1.0)
        if self.tracker.active:
            self.tracker.cleanup(self._bundles, pids)
        remaining = self.leftovers()
        self.stop_leftovers = found + [f"NOT CLEANED: {r}" for r in remaining]
        # Keep the log readable after its directory is gone.
        if _is_under(str(self.log_path), self.base):
            with contextlib.suppress(OSError):
                self._final_log = self.log_path.read_text(errors="replace")
        self._unmount_base()
        shutil.rmtree(self.base, ignore_errors=True)
        _LIVE.discard(self)
        return self.stop_leftovers

    @property
    def _bundles(self) -> Path:
        return self.state / "io.containerd.runtime.v2.task"

    def _unmount_base(self) -> None:
        # Whatever is still mounted under the private dirs (the tracker already tried).
        for mp in sorted((m for m, _ in mount_points() if _is_under(m, self.base)), key=len)[::-1]:
            with contextlib.suppress(OSError):
                unmount(mp)

    def _terminate_containerd(self, timeout: float, sig: int = signal.SIGTERM) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _remember_namespaces(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            out = self.ctr("namespaces", "ls", "-q", timeout=5)
            if out.returncode == 0:
                self.tracker.namespaces.update(out.stdout.split())

    # ----------------------------------------------------------------- ctr

    def ctr(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60.0,
        namespace: str = "default",
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run this version's ``ctr -a <socket> -n <namespace> ARGS`` and capture its output.

        With ``check=True`` a non-zero exit raises :class:`ContainerdError` carrying the
        output (CalledProcessError would hide it).
        """
        self.tracker.namespaces.add(namespace)
        self.tracker.add_tokens(args)
        argv = [str(self.binaries.ctr), "-a", str(self.address), "-n", namespace, *args]
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise ContainerdError(
                f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def import_image(self, tar: Path, namespace: str = "default") -> None:
        """``ctr images import`` an OCI archive (namespace ``k8s.io`` for CRI)."""
        self.ctr("images", "import", str(tar), namespace=namespace, check=True)

    # ----------------------------------------------------------------- logs

    def log_text(self) -> str:
        """containerd's log (also after :meth:`stop` removed a log kept in the base dir)."""
        if self._final_log is not None and not self.log_path.exists():
            return self._final_log
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return self._final_log or ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ----------------------------------------------------------------- leftovers

    def shim_processes(self, include_templates: bool = False) -> list[tuple[int, list[str]]]:
        """``(pid, argv)`` of every running shim started for this containerd.

        Matched by ``-address <this socket>``: the daemon of a runc-style shim re-executes
        itself with the same flags, so one entry per shim daemon (plus any ``start`` or
        ``delete`` invocation that is running at that moment). A shim's template (it lives
        as long as containerd, see ``containerd_shimkit.cli.template``) is left out unless
        ``include_templates``; after containerd stops, one that is still there is a leak.
        """
        found = self.tracker.shim_processes()
        return found if include_templates else [p for p in found if not is_shim_template(p[1])]

    def leftover_items(self, wait: float = 0.0) -> list[Leftover]:
        """Like :meth:`leftovers`, as :class:`Leftover` records."""
        deadline = time.monotonic() + wait
        while True:
            found = self.tracker.find(self._bundles, templates=not self.running)
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def leftovers(self, wait: float = 0.0) -> list[str]:
        """What this containerd's containers left on the machine, one line each.

        Shim processes naming this instance's socket, mounts under its dirs, and (new since
        start, carrying an id this containerd handled) shim sockets, ctr fifo dirs, runc state
        dirs, pod netns, CNI result caches and container cgroups. With ``wait``, polls that
        long for the list to become empty (shims exit asynchronously after their last task).
        """
        return [str(i) for i in self.leftover_items(wait)]
