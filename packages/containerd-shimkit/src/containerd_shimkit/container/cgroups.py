"""Container cgroups: create, limit, join, signal, freeze, measure and delete.

One :class:`Cgroup` stands for one container's cgroup in every hierarchy the host mounts. The
host layout is detected once per cgroupfs root (:func:`detect_layout`) and is one of:

``v1``
    Only legacy hierarchies (``/sys/fs/cgroup/<controller>``).
``hybrid``
    Legacy hierarchies plus a cgroup2 mount at ``/sys/fs/cgroup/unified`` (systemd's hybrid
    mode). Like runc's cgroupfs driver, the container also gets a directory there, so that
    ``cgroup.kill``/``cgroup.freeze`` and cgroup2-based tools see it. Resources, freezing and
    metrics use the v1 controllers; :meth:`Cgroup.stats` reports v1 Metrics.
``v2``
    The unified hierarchy at the root (pure cgroup v2, e.g. systemd nodes).

Paths (:meth:`Cgroup.for_container`) follow runc (``libcontainer/specconv``,
``cgroups/fs/paths.go``, ``cgroups/fs2/defaultpath.go``, ``cgroups/systemd/common.go``):

* cgroupfs driver (``systemd=False``): ``linux.cgroupsPath`` is cleaned like runc's
  ``utils.CleanPath`` (``..`` cannot climb above the root). An absolute path is taken from each
  hierarchy's mount point (``/default/ctr1`` -> ``/sys/fs/cgroup/memory/default/ctr1``). A
  relative path is taken from the cgroup the *calling process* is in: on v1 from its own cgroup in
  each hierarchy, on v2 from the *parent* of its own cgroup (a v2 cgroup with processes cannot
  also have controller-enabled children). An empty path means the relative path
  ``<container_id>``, exactly as runc does.
* systemd driver (``systemd=True``): ``linux.cgroupsPath`` is ``"slice:prefix:name"``; the slice
  is expanded like systemd/runc ``ExpandSlice`` (``a-b-c.slice`` ->
  ``/a.slice/a-b.slice/a-b-c.slice``; empty -> ``system.slice``) and the unit is
  ``<prefix>-<name>.scope`` (or ``name`` itself when it ends in ``.slice``). An empty path means
  ``system.slice:runc:<container_id>`` as in runc. **No D-Bus is spoken**: the same directories
  are created directly in cgroupfs, whether or not systemd runs (on a host without systemd
  nobody else would create them; on a systemd host this is what a delegated subtree permits,
  but systemd does not know about the scope as a unit).

Every directory is created with ``mkdir -p``. :meth:`Cgroup.delete` removes the container's own
directory (and any sub-cgroups) in every hierarchy, but not the parents: those (``/default``,
``/k8s.io``, kubelet's pod slices) are shared by other containers, which is also why runc and
containerd leave them.

A separate process (``shim delete`` after a crashed daemon) rebuilds the object from
:meth:`Cgroup.to_state` with :meth:`Cgroup.from_state`, without re-detecting anything.

Typical use::

    cg = Cgroup.for_container(spec["linux"].get("cgroupsPath", ""), container_id, systemd=False)
    cg.create(spec["linux"].get("resources"))     # mkdir everywhere, apply limits
    state["cgroup"] = cg.to_state()               # for `shim delete` after a crash
    pid = os.fork()
    if pid == 0:
        cg.join_self()                            # before exec, in every hierarchy
        os.execv(...)
    type_url, value = cg.stats()                  # Task.Stats -> Any(type_url, value)
    cg.kill_all(signal.SIGKILL); cg.delete()      # teardown

Errors are :class:`CgroupError` (an ``OSError`` carrying the errno) with a message that names the
file and value; :class:`CgroupNotFoundError` (also a ``FileNotFoundError``) when the cgroup is
gone. Resource planning lives in :mod:`.cgroup_resources`, metrics in :mod:`.cgroup_stats`;
both are imported lazily, so this module (imported in a forked child before exec) pulls in only
small stdlib modules, and never protobuf or asyncio.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import signal as _signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from containerd_shimkit.container.cgroup_resources import Write

__all__ = [
    "DEFAULT_ROOT",
    "UNIFIED",
    "V1_METRICS_TYPE_URL",
    "V2_METRICS_TYPE_URL",
    "Cgroup",
    "CgroupError",
    "CgroupNotFoundError",
    "CgroupV1",
    "CgroupV2",
    "HostLayout",
    "clean_path",
    "detect_layout",
    "expand_slice",
    "is_systemd_cgroups_path",
    "prime_attach",
    "systemd_path",
]

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/sys/fs/cgroup")
#: Key of the cgroup2 directory in :attr:`Cgroup.paths` (runc uses ``""``).
UNIFIED = "unified"
#: Bare type URLs: containerd 1.6 resolves Any.type_url by exact full name (shim-protocol §2.4).
V1_METRICS_TYPE_URL = "io.containerd.cgroups.v1.Metrics"
V2_METRICS_TYPE_URL = "io.containerd.cgroups.v2.Metrics"

Mode = Literal["v1", "hybrid", "v2"]
STATE_VERSION = 1

#: Legacy controllers a container gets a directory in (runc's v1 subsystem list).
V1_CONTROLLERS = (
    "cpuset",
    "cpu",
    "cpuacct",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
)
SYSTEMD_HIERARCHY = "name=systemd"
#: Where pids are listed from on v1: any hierarchy the container joined has all its processes.
_PRIMARY_ORDER = ("pids", "freezer", "memory", "cpu", "cpuacct", "cpuset", SYSTEMD_HIERARCHY)

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
PROC_SELF_MOUNTINFO = Path("/proc/self/mountinfo")

FREEZE_TIMEOUT = 5.0
#: rmdir retries while the last processes drain (EBUSY), as containerd's cgroups ``remove``.
_RMDIR_DELAYS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)


class CgroupError(OSError):
    """A cgroup operation failed. ``errno`` is the underlying error; the message names the
    file and, for writes, the value."""


class CgroupNotFoundError(CgroupError, FileNotFoundError):
    """The container's cgroup does not exist (runc answers Stats with NotFound for this)."""


def _error(exc: OSError, what: str) -> CgroupError:
    code = exc.errno or errno.EIO
    reason = exc.strerror or str(exc)
    return CgroupError(code, f"{what}: {reason}")


def _invalid(message: str) -> CgroupError:
    return CgroupError(errno.EINVAL, message)


# --- raw file access ---------------------------------------------------------------------------


def _write_file(path: Path, value: str) -> None:
    """Write ``value`` in one write(2), as cgroupfs requires; never creates the file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise _error(exc, f"cannot write {value!r} to {path}") from exc


def _read_file(path: Path) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError as exc:
        raise _error(exc, f"cannot read {path}") from exc


def _rmdir(path: Path) -> None:
    # Indirection so unit tests on a fake tree (regular files, not cgroupfs) can replace it.
    os.rmdir(path)


# --- host layout -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostLayout:
    """How cgroups are mounted under ``root``.

    ``v1`` maps each legacy controller (and ``name=systemd``) to its hierarchy's mount point;
    co-mounted controllers (``cpu,cpuacct``) share one. ``unified`` is the cgroup2 mount.
    """

    mode: Mode
    root: Path
    v1: Mapping[str, Path] = field(default_factory=dict)
    unified: Path | None = None


def _unescape_mount(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit() and i + 4 <= len(text):
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str, root: Path) -> HostLayout | None:
    """Layout from ``/proc/self/mountinfo`` text: cgroup mounts at ``root`` or directly below.

    Returns ``None`` when none are found (e.g. ``root`` is a fake tree).
    """
    v1: dict[str, Path] = {}
    unified: Path | None = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if not sep or len(lf) < 5 or len(rf) < 3:
            continue
        mnt = Path(_unescape_mount(lf[4]))
        fstype, options = rf[0], rf[2].split(",")
        if fstype == "cgroup2" and mnt in (root, root / UNIFIED):
            unified = mnt
        elif fstype == "cgroup" and mnt.parent == root:
            for opt in options:
                if opt in V1_CONTROLLERS or opt.startswith("name="):
                    v1[opt] = mnt
    if unified == root:
        return HostLayout("v2", root, {}, unified)
    if v1:
        return HostLayout("hybrid" if unified else "v1", root, v1, unified)
    if unified is not None:
        return HostLayout("v2", root, {}, unified)
    return None


def scan_layout(root: Path) -> HostLayout:
    """Layout from the directory tree alone (works on fake trees and on real hosts).

    ``root/cgroup.controllers`` means pure v2. Otherwise each subdirectory with
    ``cgroup.procs`` is a v1 hierarchy named by its (symlink-resolved) directory name, e.g.
    ``cpu,cpuacct``; ``systemd`` is ``name=systemd``; one with ``cgroup.controllers`` is the
    cgroup2 mount of a hybrid host.
    """
    if (root / "cgroup.controllers").is_file():
        return HostLayout("v2", root, {}, root)
    v1: dict[str, Path] = {}
    unified: Path | None = None
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise _error(exc, f"cannot list cgroup root {root}") from exc
    for entry in entries:
        if not entry.is_dir():
            continue
        if (entry / "cgroup.controllers").is_file():
            if unified is None or entry.name == UNIFIED:
                unified = entry
            continue
        if not (entry / "cgroup.procs").is_file():
            continue
        real = entry.resolve()
        mount = real if real.parent == root.resolve() else entry
        for name in real.name.split(","):
            key = name if name in V1_CONTROLLERS or name.startswith("name=") else f"name={name}"
            v1.setdefault(key, root / mount.name)
    if not v1 and unified is None:
        raise CgroupError(errno.ENOENT, f"no cgroup hierarchy found under {root}")
    if not v1:
        return HostLayout("v2", root, {}, unified)
    return HostLayout("hybrid" if unified else "v1", root, v1, unified)


@cache
def detect_layout(root: Path = DEFAULT_ROOT) -> HostLayout:
    """Detect (once per ``root``, cached) whether the host is v1, hybrid or v2.

    The kernel's mount table is authoritative; a tree with no cgroup mounts (tests) is scanned.
    """
    try:
        text = PROC_SELF_MOUNTINFO.read_text()
    except OSError:
        text = ""
    return parse_mountinfo(text, root) or scan_layout(root)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` -> {controller: path}; the cgroup2 line is keyed :data:`UNIFIED`."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if hierarchy_id == "0" and not controllers:
            own[UNIFIED] = path
        else:
            for controller in controllers.split(","):
                own[controller] = path
    return own


def _own_cgroups() -> dict[str, str]:
    return parse_proc_cgroup(_read_file(PROC_SELF_CGROUP))


def prime_attach(root: Path = DEFAULT_ROOT) -> bool:
    """Start the kernel's wait for the next move into a cgroup now, so the move is quick.

    Every move into a cgroup (v1 or v2) takes the kernel's global
    ``cgroup_threadgroup_rwsem`` for writing, and a writer first waits for an RCU grace
    period unless another writer did so moments ago: 5–15 ms on a 2-CPU node, paid by
    the first move after a quiet spell (by runc's too). Writing the calling process into the
    cgroup it is already in takes the same lock and moves nothing, so a thread calling this
    once a container's cgroup exists lets the grace period pass while the container init is
    forked; its move then finds the lock's fast path.

    The writer holds ``cgroup_mutex`` while it waits, so cgroup creation and removal
    meanwhile wait too: call this after the container's cgroup is made, not before.

    Best effort: returns whether a write was done; never raises. Between reading
    ``/proc/self/cgroup`` and the write, something else could move this process, which the
    write would then undo; shim daemons are not moved by anyone and the window is
    microseconds.
    """
    try:
        layout = detect_layout(root)
        own = _own_cgroups()
        hierarchies = [*layout.v1.items()]
        if layout.unified is not None:
            hierarchies.append((UNIFIED, layout.unified))
        for key, mount in hierarchies:
            if key in own:
                _write_file(_join(mount, own[key]) / "cgroup.procs", str(os.getpid()))
                return True
    except OSError as exc:  # CgroupError included
        log.debug("cgroups: cannot prime the attach lock: %s", exc)
    return False


# --- path computation --------------------------------------------------------------------------


def clean_path(path: str) -> str:
    """runc ``utils.CleanPath``: normalize; a relative path cannot climb out with ``..``."""
    if not path:
        return ""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("/"):
        return "/" + cleaned.lstrip("/")
    cleaned = posixpath.normpath("/" + cleaned).lstrip("/")
    return cleaned or "."


def expand_slice(slice_name: str) -> str:
    """systemd slice name -> cgroup path, as runc ``ExpandSlice``.

    ``test-a-b.slice`` -> ``/test.slice/test-a.slice/test-a-b.slice``; ``-.slice`` -> ``/``.
    """
    suffix = ".slice"
    if len(slice_name) <= len(suffix) or not slice_name.endswith(suffix) or "/" in slice_name:
        raise _invalid(f"invalid slice name: {slice_name!r}")
    base = slice_name[: -len(suffix)]
    if base == "-":
        return "/"
    path, prefix = "", ""
    for component in base.split("-"):
        if not component:  # "a--b.slice" and "-a.slice" are not valid
            raise _invalid(f"invalid slice name: {slice_name!r}")
        path += f"/{prefix}{component}{suffix}"
        prefix += f"{component}-"
    return path


def systemd_path(cgroups_path: str, container_id: str) -> str:
    """``"slice:prefix:name"`` -> absolute cgroup path, as runc's systemd driver.

    Empty -> ``system.slice:runc:<container_id>``; an empty slice is ``system.slice``.
    """
    if not cgroups_path:
        parent, prefix, name = "", "runc", container_id
    else:
        parts = cgroups_path.split(":")
        if len(parts) != 3:
            raise _invalid(
                'expected cgroupsPath to be of format "slice:prefix:name" for systemd cgroups, '
                f"got {cgroups_path!r} instead"
            )
        parent, prefix, name = parts
    unit = name if name.endswith(".slice") else f"{prefix}-{name}.scope"
    if not name or "/" in unit or unit in (".", ".."):
        raise _invalid(f"invalid systemd unit name {unit!r} from cgroupsPath {cgroups_path!r}")
    return posixpath.join(expand_slice(parent or "system.slice"), unit)


def is_systemd_cgroups_path(cgroups_path: str) -> bool:
    """Whether ``linux.cgroupsPath`` has the systemd driver's ``"slice:prefix:name"`` form.

    containerd's CRI writes that form whenever the pod's cgroup parent is a ``.slice``
    (kubelet's systemd driver), whatever the runtime's options say. containerd 1.6 never
    passes a non-runc runtime its ``SystemdCgroup`` option (it sends an empty
    ``runtimeoptions.v1.Options``), so the form is the only hint the shim gets there; read as
    a cgroupfs path it would be a directory named ``a.slice:cri-containerd:<id>`` below the
    shim's own cgroup, outside the pod's.
    """
    parts = cgroups_path.split(":")
    if len(parts) != 3 or "/" in cgroups_path or not parts[2]:
        return False
    return parts[0] == "" or (parts[0].endswith(".slice") and len(parts[0]) > len(".slice"))


def _join(base: Path, inner: str) -> Path:
    return base.joinpath(*[p for p in inner.split("/") if p])


def _resolve_paths(
    layout: HostLayout, cgroups_path: str, container_id: str, systemd: bool
) -> dict[str, Path]:
    if systemd:
        inner = systemd_path(cgroups_path, container_id)
    else:
        # runc: an empty path means Name=<container id>, which is relative.
        inner = clean_path(cgroups_path) or clean_path(container_id)
        if inner in ("", ".", "/"):
            raise _invalid(
                f"cgroupsPath {cgroups_path!r} (container {container_id!r}) does not name a cgroup"
            )
    own: dict[str, str] = {} if inner.startswith("/") else _own_cgroups()

    def place(mount: Path, own_key: str, *, parent_of_own: bool = False) -> Path:
        if inner.startswith("/"):
            return _join(mount, inner)
        base = own.get(own_key, "/")
        if parent_of_own:
            # runc fs2: the parent of our own cgroup, since ours already holds processes.
            base = posixpath.dirname(base.rstrip("/")) or "/"
        return _join(_join(mount, base), inner)

    paths: dict[str, Path] = {}
    if layout.mode == "v2":
        assert layout.unified is not None
        paths[UNIFIED] = place(layout.unified, UNIFIED, parent_of_own=True)
    else:
        for controller, mount in layout.v1.items():
            if controller in V1_CONTROLLERS or controller == SYSTEMD_HIERARCHY:
                paths[controller] = place(mount, controller)
        if layout.unified is not None:
            paths[UNIFIED] = place(layout.unified, UNIFIED)
    mounts = {*layout.v1.values(), layout.unified}
    for path in paths.values():
        if path in mounts:
            raise _invalid(f"cgroupsPath {cgroups_path!r} resolves to a hierarchy root ({path})")
    return paths


# --- the cgroup --------------------------------------------------------------------------------


class Cgroup:
    """One container's cgroup across every hierarchy of the host.

    Build it with :meth:`for_container` (new container) or :meth:`from_state` (saved with
    :meth:`to_state`); the result is a :class:`CgroupV1` on v1/hybrid hosts and a
    :class:`CgroupV2` on v2 hosts. Every method raises :class:`CgroupError` (an ``OSError``)
    whose message names the file and value involved, :class:`CgroupNotFoundError` when the
    cgroup itself is gone.
    """

    mode: Mode

    def __init__(self, mode: Mode, paths: Mapping[str, Path], root: Path = DEFAULT_ROOT) -> None:
        """Wrap known paths; prefer :meth:`for_container` / :meth:`from_state`."""
        self.mode = mode
        self.root = root
        self._paths = dict(paths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, paths={self._paths!r})"

    # construction / persistence

    @classmethod
    def for_container(
        cls,
        cgroups_path: str,
        container_id: str,
        *,
        systemd: bool,
        root: Path = DEFAULT_ROOT,
    ) -> Cgroup:
        """The cgroup for a container from OCI ``linux.cgroupsPath`` (see the module docstring
        for the cgroupfs and systemd path rules). Nothing is created until :meth:`create`."""
        layout = detect_layout(root)
        paths = _resolve_paths(layout, cgroups_path, container_id, systemd)
        return _CLASSES[layout.mode](layout.mode, paths, root)

    def to_state(self) -> dict[str, Any]:
        """JSON-serializable description for :meth:`from_state`."""
        return {
            "version": STATE_VERSION,
            "mode": self.mode,
            "root": str(self.root),
            "paths": {k: str(v) for k, v in self._paths.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Cgroup:
        """Rebuild a cgroup saved with :meth:`to_state` (no host detection, nothing touched)."""
        try:
            version, mode = state["version"], state["mode"]
            root = Path(state["root"])
            paths = {str(k): Path(v) for k, v in dict(state["paths"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid(f"invalid cgroup state {state!r}: {exc}") from exc
        if version != STATE_VERSION or mode not in _CLASSES or not paths:
            raise _invalid(f"unsupported cgroup state {state!r}")
        for path in paths.values():
            # A corrupt state file must not point delete() anywhere else.
            if not root.is_absolute() or root not in path.parents or ".." in path.parts:
                raise _invalid(f"cgroup state path {path} is not below {root}")
        return _CLASSES[mode](mode, paths, root)

    @property
    def paths(self) -> dict[str, Path]:
        """Directory per controller (v1 names, ``name=systemd``, and :data:`UNIFIED`)."""
        return dict(self._paths)

    def _dirs(self) -> list[Path]:
        return list(dict.fromkeys(self._paths.values()))

    def _primary(self) -> Path:
        for key in (*_PRIMARY_ORDER, UNIFIED):
            if key in self._paths:
                return self._paths[key]
        return next(iter(self._paths.values()))

    def _require(self, controller: str) -> Path:
        try:
            return self._paths[controller]
        except KeyError:
            raise CgroupError(
                errno.ENOENT,
                f"the {controller} cgroup controller is not available under {self.root}",
            ) from None

    def _check_exists(self) -> None:
        primary = self._primary()
        if not primary.is_dir():
            raise CgroupNotFoundError(errno.ENOENT, f"cgroup does not exist: {primary}")

    # lifecycle

    def create(self, resources: Mapping[str, Any] | None = None) -> bool:
        """Create the directories in every hierarchy and apply OCI ``linux.resources``.

        Existing directories are reused (``ctr run --cgroup``, a pod's shared cgroup).
        Returns whether this call created the container's cgroup (its primary directory):
        only a cgroup made for the container may be emptied and removed with it. On
        failure the directories this call made are removed again (best effort) and the
        error is raised.
        """
        made: list[Path] = []
        try:
            for path in self._dirs():
                existed = path.is_dir()
                self._make(path)  # also for an existing one: v1 cpuset needs its values
                if not existed:
                    made.append(path)
            if resources:
                self.update(resources)
        except BaseException:
            for path in reversed(made):
                try:
                    _remove_tree(path)
                except OSError as exc:
                    log.warning("cgroups: cleanup after failed create: %s", exc)
            raise
        return self._primary() in made

    def _make(self, path: Path) -> None:
        try:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise _error(exc, f"cannot create cgroup {path}") from exc

    def update(self, resources: Mapping[str, Any]) -> None:
        """Apply OCI ``linux.resources`` (the JSON object, camelCase keys as in config.json)."""
        self._check_exists()
        self._apply(self._plan(resources))

    def _plan(self, resources: Mapping[str, Any]) -> list[Write]:
        raise NotImplementedError

    def _apply(self, writes: list[Write]) -> None:
        deferred: list[Write] = []
        for w in writes:
            try:
                self._write(w)
            except CgroupError as exc:
                if not (w.retry_einval and exc.errno == errno.EINVAL):
                    raise
                deferred.append(w)
        for w in deferred:
            self._write(w)

    def _write(self, w: Write) -> None:
        path = self._require(w.controller) / w.file
        try:
            _write_file(path, w.value)
        except CgroupError as exc:
            if exc.errno != errno.ENOENT:
                raise
            if w.fallback is not None:
                _write_file(path.with_name(w.fallback[0]), w.fallback[1])
            elif not w.missing_ok:
                raise CgroupError(
                    errno.ENOENT,
                    f"cannot write {w.value!r} to {path}: no such file (is the controller "
                    "enabled for this cgroup and supported by the kernel?)",
                ) from exc

    def join_self(self) -> None:
        """Move the calling process into the cgroup in every hierarchy (writes ``0`` to each
        ``cgroup.procs``). Meant for a forked child before exec."""
        for path in self._dirs():
            _write_file(path / "cgroup.procs", "0")

    def open_procs(self) -> list[int]:
        """Open ``cgroup.procs`` in every hierarchy for writing (close-on-exec fds; the
        caller closes them). Writing a pid to each moves that process in: the container
        init's helper opens them before it enters the container's namespaces, where these
        paths may not resolve."""
        fds: list[int] = []
        try:
            for path in self._dirs():
                procs = path / "cgroup.procs"
                try:
                    fds.append(os.open(procs, os.O_WRONLY | os.O_CLOEXEC))
                except OSError as exc:
                    raise _error(exc, f"cannot open {procs}") from exc
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the cgroup in every hierarchy."""
        for path in self._dirs():
            _write_file(path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        """Every process in the cgroup and its sub-cgroups (from one hierarchy)."""
        self._check_exists()
        seen: dict[int, None] = {}
        for dirpath, _dirs, files in os.walk(self._primary()):
            if "cgroup.procs" in files:
                try:
                    text = _read_file(Path(dirpath) / "cgroup.procs")
                except CgroupError as exc:
                    if exc.errno == errno.ENOENT:  # a sub-cgroup vanished meanwhile
                        continue
                    raise
                seen.update((int(tok), None) for tok in text.split())
        return list(seen)

    def kill_all(self, signal: int) -> None:
        """Send ``signal`` to every process in the cgroup.

        The cgroup is frozen first, so nothing forks away between listing and signalling, and
        thawed afterwards (runc ``signalAllProcesses``); without a freezer it signals anyway.
        SIGKILL uses ``cgroup.kill`` where it exists (Linux 5.14+), which is atomic; on hybrid
        hosts the v1 sweep still follows for processes that are only in the v1 hierarchies.
        """
        if signal == _signal.SIGKILL and UNIFIED in self._paths:
            kill_file = self._paths[UNIFIED] / "cgroup.kill"
            if kill_file.exists():
                _write_file(kill_file, "1")
                if self.mode == "v2":
                    return
        if not self.pids():
            # Nothing to signal, and nothing can join an empty cgroup by forking: skip the
            # freeze and thaw (~1 ms of every Delete, whose workload has usually exited).
            return
        try:
            self.freeze()
            frozen = True
        except CgroupNotFoundError:
            raise
        except CgroupError as exc:
            log.debug("cgroups: signalling without freezing: %s", exc)
            frozen = False
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    os.kill(pid, signal)
        finally:
            if frozen:
                self.thaw()

    def freeze(self) -> None:
        """Freeze every process in the cgroup; returns once the kernel reports it frozen."""
        raise NotImplementedError

    def thaw(self) -> None:
        """Undo :meth:`freeze`."""
        raise NotImplementedError

    def stats(self) -> tuple[str, bytes]:
        """(bare type URL, serialized containerd cgroups Metrics) for the Task API Stats reply.

        v1 Metrics on v1 and hybrid hosts, v2 Metrics on v2 hosts. Files that the host lacks
        leave their fields zero; a missing cgroup raises :class:`CgroupNotFoundError`.
        """
        raise NotImplementedError

    def oom_kill_count(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup (0 if not accounted).

        A rise means a TaskOOM event is due.
        """
        raise NotImplementedError

    def delete(self) -> None:
        """Remove the container's directory (and sub-cgroups) in every hierarchy.

        Retries briefly while exiting processes drain (EBUSY); a directory that is already gone
        is fine, so this is idempotent. Parent directories are left in place, and a directory
        without ``cgroup.procs`` (not a cgroup: e.g. a corrupt state file) is refused.
        """
        failures: list[str] = []
        code = 0
        for path in self._dirs():
            try:
                _remove_tree(path)
            except OSError as exc:
                code = code or exc.errno or errno.EIO
                failures.append(f"{path}: {exc.strerror or exc}")
        if failures:
            raise CgroupError(code, "cannot remove cgroup " + "; ".join(failures))


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    if not (path / "cgroup.procs").exists():
        # Only ever rmdir cgroups: a corrupt state file must not empty out other trees.
        raise CgroupError(errno.ENOTDIR, f"refusing to remove {path}: not a cgroup directory")
    error: OSError | None = None
    for delay in (0.0, *_RMDIR_DELAYS):
        if delay:
            time.sleep(delay)
        try:
            for sub in _sub_cgroups_bottom_up(path):
                _rmdir(sub)
            _rmdir(path)
            return
        except FileNotFoundError as exc:
            if not path.exists():
                return
            error = exc  # a sub-cgroup vanished while walking: walk again
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EAGAIN):
                raise
            error = exc  # processes still draining
    assert error is not None
    raise error


def _sub_cgroups_bottom_up(path: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, _files in os.walk(path):
        dirnames[:] = [
            d for d in dirnames if os.path.exists(os.path.join(dirpath, d, "cgroup.procs"))
        ]
        found += [Path(dirpath) / d for d in dirnames]
    return found[::-1]


class CgroupV1(Cgroup):
    """A cgroup on a v1 or hybrid host (resources, freezer and metrics from v1 controllers)."""

    FROZEN: ClassVar[str] = "FROZEN"
    THAWED: ClassVar[str] = "THAWED"

    def _make(self, path: Path) -> None:
        super()._make(path)
        if self._paths.get("cpuset") == path:
            self._init_cpuset(path)

    def _init_cpuset(self, leaf: Path) -> None:
        # A new v1 cpuset cgroup starts with empty cpus/mems and rejects tasks until they are
        # set: copy them down from the nearest ancestor, as runc's cpuset ensureParent does.
        chain = [leaf, *leaf.parents]
        mount = next(p for p in chain if p.parent == self.root)
        chain = list(reversed(chain[: chain.index(mount) + 1]))
        for name in ("cpuset.cpus", "cpuset.mems"):
            inherited = ""
            for path in chain:
                file = path / name
                if not file.exists():
                    continue
                current = _read_file(file).strip()
                if current:
                    inherited = current
                elif inherited:
                    _write_file(file, inherited)

    def _plan(self, resources: Mapping[str, Any]) -> list[Write]:
        current: int | None = None
        from containerd_shimkit.container.cgroup_resources import plan_v1

        mem = resources.get("memory")
        if isinstance(mem, Mapping) and mem.get("limit") and mem.get("swap"):
            file = self._require("memory") / "memory.limit_in_bytes"
            current = int(_read_file(file).strip())
        return plan_v1(resources, current_memory_limit=current)

    def freeze(self) -> None:
        """Freeze via the v1 freezer (or, lacking one, the hybrid cgroup2 ``cgroup.freeze``)."""
        if "freezer" not in self._paths and UNIFIED in self._paths:
            _freeze_v2(self._paths[UNIFIED], True)
            return
        _freeze_v1(self._require("freezer"), self.FROZEN)

    def thaw(self) -> None:
        """Thaw via the v1 freezer (or the hybrid cgroup2 ``cgroup.freeze``)."""
        if "freezer" not in self._paths and UNIFIED in self._paths:
            _freeze_v2(self._paths[UNIFIED], False)
            return
        _freeze_v1(self._require("freezer"), self.THAWED)

    def stats(self) -> tuple[str, bytes]:
        """v1 Metrics (see :meth:`Cgroup.stats`)."""
        self._check_exists()
        from containerd_shimkit.container import cgroup_stats

        return V1_METRICS_TYPE_URL, cgroup_stats.collect_v1(self._paths).SerializeToString()

    def oom_kill_count(self) -> int:
        """``oom_kill`` from memory.oom_control (Linux 4.13+)."""
        path = self._paths.get("memory")
        if path is None:
            return 0
        from containerd_shimkit.container import cgroup_stats

        return cgroup_stats.read_kv(path / "memory.oom_control").get("oom_kill", 0)


class CgroupV2(Cgroup):
    """A cgroup on a pure cgroup v2 host."""

    def _make(self, path: Path) -> None:
        # runc fs2 CreateCgroupPath: walking down from the mount, enable every controller the
        # root offers in each ancestor's cgroup.subtree_control, so the leaf gets its files.
        mount = self.root
        try:
            available = _read_file(mount / "cgroup.controllers").split()
        except CgroupError:
            available = []
        chain = [path, *path.parents]
        chain = list(reversed(chain[: chain.index(mount) + 1]))
        for i, current in enumerate(chain):
            if i > 0:
                try:
                    current.mkdir(mode=0o755)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise _error(exc, f"cannot create cgroup {current}") from exc
            if i < len(chain) - 1 and available:
                _enable_controllers(current / "cgroup.subtree_control", available)

    def _plan(self, resources: Mapping[str, Any]) -> list[Write]:
        from containerd_shimkit.container.cgroup_resources import plan_v2

        return plan_v2(resources)

    def freeze(self) -> None:
        """Write ``cgroup.freeze`` and wait for ``frozen 1`` in cgroup.events."""
        self._check_exists()
        _freeze_v2(self._paths[UNIFIED], True)

    def thaw(self) -> None:
        """Write ``cgroup.freeze`` 0 and wait for ``frozen 0``."""
        self._check_exists()
        _freeze_v2(self._paths[UNIFIED], False)

    def stats(self) -> tuple[str, bytes]:
        """v2 Metrics (see :meth:`Cgroup.stats`)."""
        self._check_exists()
        from containerd_shimkit.container import cgroup_stats

        metrics = cgroup_stats.collect_v2(self._paths[UNIFIED])
        return V2_METRICS_TYPE_URL, metrics.SerializeToString()

    def oom_kill_count(self) -> int:
        """``oom_kill`` from memory.events."""
        from containerd_shimkit.container import cgroup_stats

        return cgroup_stats.read_kv(self._paths[UNIFIED] / "memory.events").get("oom_kill", 0)


def _enable_controllers(subtree_control: Path, controllers: list[str]) -> None:
    try:
        _write_file(subtree_control, " ".join(f"+{c}" for c in controllers))
    except CgroupError:
        # runc: retry one by one; some may be unavailable (rootless, containerized, threaded).
        # Errors surface later as ENOENT on the limit files that need them.
        for c in controllers:
            try:
                _write_file(subtree_control, f"+{c}")
            except CgroupError as exc:
                log.debug("cgroups: %s", exc)


def _wait(check: Callable[[], bool], what: str, retry: Callable[[], None]) -> None:
    deadline = time.monotonic() + FREEZE_TIMEOUT
    delay = 0.0005
    while not check():
        if time.monotonic() > deadline:
            raise CgroupError(errno.ETIMEDOUT, f"timed out after {FREEZE_TIMEOUT:g} s: {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        retry()


def _freeze_v1(path: Path, state: str) -> None:
    file = path / "freezer.state"
    if not path.is_dir():
        raise CgroupNotFoundError(errno.ENOENT, f"cgroup does not exist: {path}")
    _write_file(file, state)
    # The kernel may sit in FREEZING while tasks are busy; rewriting retries the freeze (runc).
    try:
        _wait(
            lambda: _read_file(file).strip() == state,
            f"waiting for {file} to read {state}",
            lambda: _write_file(file, state),
        )
    except CgroupError:
        if state == CgroupV1.FROZEN:
            _write_file(file, CgroupV1.THAWED)
        raise


def _freeze_v2(path: Path, frozen: bool) -> None:
    want = "1" if frozen else "0"
    _write_file(path / "cgroup.freeze", want)
    events = path / "cgroup.events"

    def done() -> bool:
        from containerd_shimkit.container.cgroup_stats import parse_kv

        return str(parse_kv(_read_file(events)).get("frozen", -1)) == want

    try:
        _wait(done, f"waiting for 'frozen {want}' in {events}", lambda: None)
    except CgroupError:
        if frozen:
            _write_file(path / "cgroup.freeze", "0")
        raise


_CLASSES: dict[str, type[Cgroup]] = {"v1": CgroupV1, "hybrid": CgroupV1, "v2": CgroupV2}
