"""Mounts: the rootfs from CreateTaskRequest (host side) and the container's mount tree.

Host side (the daemon, in the host mount namespace): :func:`mount_rootfs`,
:func:`unmount_rootfs`. Container side (the init process, in its new mount namespace), in
runc's order: :func:`prepare_root`, :func:`mount_all`, then ``/dev`` (:mod:`.devices`),
:func:`pivot_root`, and after it :func:`readonly_path`, :func:`mask_path`,
:func:`remount_readonly`. For a workload that runs untrusted code in-process:
:func:`hide_kernel_filesystems`.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import _libc
from .spec import ContainerError, Mount, step

logger = logging.getLogger(__name__)

# Option → (clears the flag, flag), the table of runc's and containerd's parseMountOptions.
_FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    "acl": (False, _libc.MS_POSIXACL),
    "async": (True, _libc.MS_SYNCHRONOUS),
    "atime": (True, _libc.MS_NOATIME),
    "bind": (False, _libc.MS_BIND),
    "defaults": (False, 0),
    "dev": (True, _libc.MS_NODEV),
    "diratime": (True, _libc.MS_NODIRATIME),
    "dirsync": (False, _libc.MS_DIRSYNC),
    "exec": (True, _libc.MS_NOEXEC),
    "iversion": (False, _libc.MS_I_VERSION),
    "lazytime": (False, _libc.MS_LAZYTIME),
    "loud": (True, _libc.MS_SILENT),
    "mand": (False, _libc.MS_MANDLOCK),
    "noacl": (True, _libc.MS_POSIXACL),
    "noatime": (False, _libc.MS_NOATIME),
    "nodev": (False, _libc.MS_NODEV),
    "nodiratime": (False, _libc.MS_NODIRATIME),
    "noexec": (False, _libc.MS_NOEXEC),
    "noiversion": (True, _libc.MS_I_VERSION),
    "nolazytime": (True, _libc.MS_LAZYTIME),
    "nomand": (True, _libc.MS_MANDLOCK),
    "norelatime": (True, _libc.MS_RELATIME),
    "nostrictatime": (True, _libc.MS_STRICTATIME),
    "nosuid": (False, _libc.MS_NOSUID),
    "nosymfollow": (False, _libc.MS_NOSYMFOLLOW),
    "rbind": (False, _libc.MS_BIND | _libc.MS_REC),
    "relatime": (False, _libc.MS_RELATIME),
    "remount": (False, _libc.MS_REMOUNT),
    "ro": (False, _libc.MS_RDONLY),
    "rw": (True, _libc.MS_RDONLY),
    "silent": (False, _libc.MS_SILENT),
    "strictatime": (False, _libc.MS_STRICTATIME),
    "suid": (True, _libc.MS_NOSUID),
    "symfollow": (True, _libc.MS_NOSYMFOLLOW),
    "sync": (False, _libc.MS_SYNCHRONOUS),
}

_PROPAGATION_OPTIONS: dict[str, int] = {
    "private": _libc.MS_PRIVATE,
    "shared": _libc.MS_SHARED,
    "slave": _libc.MS_SLAVE,
    "unbindable": _libc.MS_UNBINDABLE,
    "rprivate": _libc.MS_PRIVATE | _libc.MS_REC,
    "rshared": _libc.MS_SHARED | _libc.MS_REC,
    "rslave": _libc.MS_SLAVE | _libc.MS_REC,
    "runbindable": _libc.MS_UNBINDABLE | _libc.MS_REC,
}

# runc extensions that are not mount(2) data and that this runtime does not implement.
_IGNORED_OPTIONS = frozenset({"tmpcopyup", "idmap", "ridmap", "loop"})

# Flags a bind mount needs a second (remount) call to apply.
_BIND_ONLY = _libc.MS_BIND | _libc.MS_REC | _libc.MS_REMOUNT


@dataclass(frozen=True)
class MountOptions:
    """Mount options split like containerd's/runc's ``parseMountOptions``.

    ``flags`` are the mount(2) flags, ``propagation`` the propagation changes to apply
    afterwards (one mount(2) call each), ``data`` the comma-joined remainder for the
    filesystem, and ``ignored`` the options dropped because they are not supported.
    """

    flags: int = 0
    propagation: tuple[int, ...] = ()
    data: str = ""
    ignored: tuple[str, ...] = ()


def parse_mount_options(options: Iterable[str]) -> MountOptions:
    """Split mount options into flags, propagation flags and filesystem data.

    Recursive variants added by runc 1.1 (``rro``, ``rnosuid``…) are applied as their
    non-recursive flag: mount_setattr(2) is not used here.
    """
    flags = 0
    propagation: list[int] = []
    data: list[str] = []
    ignored: list[str] = []
    for option in options:
        entry = _FLAG_OPTIONS.get(option)
        if entry is None and option.startswith("r") and option not in _PROPAGATION_OPTIONS:
            entry = _FLAG_OPTIONS.get(option[1:]) if option[1:] != "bind" else None
        if entry is not None:
            clear, flag = entry
            flags = flags & ~flag if clear else flags | flag
        elif option in _PROPAGATION_OPTIONS:
            propagation.append(_PROPAGATION_OPTIONS[option])
        elif option in _IGNORED_OPTIONS:
            ignored.append(option)
        else:
            data.append(option)
    return MountOptions(flags, tuple(propagation), ",".join(data), tuple(ignored))


def _apply_propagation(target: str | Path, propagation: Sequence[int]) -> None:
    for flag in propagation:
        _libc.mount(None, target, None, flag)


def _page_size() -> int:
    return os.sysconf("SC_PAGESIZE")


# --- host side: the rootfs mounts from CreateTaskRequest --------------------------------


def mount_one(kind: str, source: str, options: Sequence[str], target: Path) -> None:
    """Mount one containerd ``Mount`` on ``target`` the way containerd's mount package does.

    Propagation options get their own mount(2) calls, and a read-only bind mount is
    remounted read-only (the kernel ignores MS_RDONLY on the initial MS_BIND call).
    """
    parsed = parse_mount_options(options)
    if "loop" in parsed.ignored:
        raise ContainerError(f"{kind} mount of {source}: loop devices are not supported")
    if len(parsed.data) > _page_size():
        # containerd shortens long overlay lowerdir lists by chdir-ing to their common
        # parent in a helper process; that is not implemented here.
        raise ContainerError(f"{kind} mount of {source}: mount options exceed a page")
    flags = parsed.flags
    if kind == "bind":
        flags |= _libc.MS_BIND
    fstype = None if flags & _libc.MS_BIND else kind
    if not flags & _libc.MS_REMOUNT or parsed.data:
        _libc.mount(source, target, fstype, flags, parsed.data or None)
    _apply_propagation(target, parsed.propagation)
    if flags & (_libc.MS_BIND | _libc.MS_RDONLY) == _libc.MS_BIND | _libc.MS_RDONLY:
        _libc.mount(None, target, None, flags | _libc.MS_REMOUNT)


def mount_rootfs(mounts: Iterable[tuple[str, str, Sequence[str]]], target: Path) -> None:
    """Mount the rootfs given in CreateTaskRequest (``(type, source, options)`` each) on
    ``target``, in order, like containerd's ``mount.All``.

    Runs in the daemon, in the host mount namespace. Overlay and bind mounts (what the
    overlayfs and native snapshotters produce) are supported; any other type is passed
    to mount(2) as is.

    Raises:
        ContainerError: a mount failed; mounts made so far are left for
            :func:`unmount_rootfs`.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for kind, source, options in mounts:
        with step(f"mounting {kind} rootfs {source} on {target}"):
            mount_one(kind, source, list(options), target)


def unmount_rootfs(target: Path) -> None:
    """Unmount everything mounted on ``target`` (stacked mounts too), detaching busy ones.

    Idempotent: a path that is not a mount point, or does not exist, is left alone (and
    needs no privileges). Mount points are looked up in mountinfo, not with
    ``os.path.ismount``, which misses bind mounts within one filesystem.
    """
    path = os.path.realpath(target)
    for _ in range(64):
        if not any(info.mount_point == path for info in _read_mountinfo()):
            return
        try:
            _libc.umount2(path, _libc.MNT_DETACH)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise ContainerError(f"unmounting {target}: {exc.strerror}") from exc
    raise ContainerError(f"unmounting {target}: still mounted after 64 unmounts")


# --- paths inside the rootfs -------------------------------------------------------------


def secure_join(root: Path, unsafe: str) -> Path:
    """``root`` joined with ``unsafe``, resolving symlinks as if ``root`` were ``/``.

    Like filepath-securejoin's ``SecureJoin`` (used by runc): ``..`` and absolute symlink
    targets cannot leave ``root``. Components that do not exist are kept literally.
    """
    pending = [p for p in reversed(unsafe.split("/")) if p]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            mode = os.lstat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        links += 1
        if links > 255:
            raise ContainerError(f"too many symlinks resolving {unsafe} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending.extend(p for p in reversed(target.split("/")) if p)
    return root.joinpath(*resolved)


@dataclass(frozen=True)
class MountInfo:
    """One line of ``/proc/self/mountinfo`` (the fields used here)."""

    mount_point: str
    fstype: str
    optional: tuple[str, ...]
    #: ``major:minor`` of the filesystem (what ``stat`` reports as ``st_dev``).
    device: str = field(default="", compare=False)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Parse ``/proc/<pid>/mountinfo`` (proc(5))."""
    result = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        result.append(
            MountInfo(_unescape(fields[4]), fields[sep + 1], tuple(fields[6:sep]), fields[2])
        )
    return result


def parent_mount(path: str, infos: Sequence[MountInfo]) -> MountInfo:
    """The mount containing ``path`` (``path`` itself if it is a mount point).

    Among stacked mounts on the same point the last listed (the top one) wins.
    """
    best: MountInfo | None = None
    for info in infos:
        mp = info.mount_point
        inside = path == mp or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = info
    if best is None:
        raise ContainerError(f"no mount contains {path}")
    return best


def _read_mountinfo() -> list[MountInfo]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def host_cgroup2_unified() -> bool:
    """Whether ``/sys/fs/cgroup`` is a pure cgroup v2 mount (read before pivot_root)."""
    try:
        return parent_mount("/sys/fs/cgroup", _read_mountinfo()).fstype == "cgroup2"
    except (OSError, ContainerError):
        return False


# --- container side, before pivot_root ---------------------------------------------------


def root_propagation_flags(propagation: str) -> int:
    """The flags for ``linux.rootfsPropagation``; runc's default is ``rslave``."""
    if not propagation:
        return _libc.MS_SLAVE | _libc.MS_REC
    if propagation not in _PROPAGATION_OPTIONS:
        raise ContainerError(f"config.json: invalid rootfsPropagation {propagation!r}")
    return _PROPAGATION_OPTIONS[propagation]


def prepare_root(rootfs: Path, propagation: str) -> None:
    """runc's ``prepareRoot``: set the propagation of the whole tree, make the rootfs'
    parent mount private if it is shared, and bind-mount the rootfs onto itself.

    The parent must not be shared for two reasons (runc): pivot_root(2) refuses it, and
    the bind mount would propagate to the host. An unbindable tree could not be
    bind-mounted at all, so unbindable is applied only after pivot_root (see
    :func:`apply_root_propagation`), and the tree is made rslave until then.
    """
    flags = root_propagation_flags(propagation)
    if flags & _libc.MS_UNBINDABLE:
        flags = _libc.MS_SLAVE | _libc.MS_REC
    with step("setting mount propagation of /"):
        _libc.mount(None, "/", None, flags)
    with step(f"making the parent mount of {rootfs} private"):
        parent = parent_mount(str(rootfs), _read_mountinfo())
        if any(opt.startswith("shared:") for opt in parent.optional):
            _libc.mount(None, parent.mount_point, None, _libc.MS_PRIVATE)
    with step(f"bind-mounting {rootfs} onto itself"):
        _libc.mount(str(rootfs), rootfs, None, _libc.MS_BIND | _libc.MS_REC)


def apply_root_propagation(propagation: str) -> None:
    """Once the mount tree is complete, apply ``linux.rootfsPropagation`` to the new ``/``
    too, as runc 1.1 does after pivot_root (private is already in effect from
    :func:`prepare_root`)."""
    flags = root_propagation_flags(propagation)
    if propagation and not flags & _libc.MS_PRIVATE:
        with step(f"setting mount propagation of the container's / to {propagation}"):
            _libc.mount(None, "/", None, flags)


def _create_mount_point(dest: Path, is_dir: bool) -> None:
    if dest.exists():
        return
    if is_dir:
        dest.mkdir(parents=True, exist_ok=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.touch()


def _bind_mount(dest: Path, source: str, parsed: MountOptions) -> None:
    flags = parsed.flags | _libc.MS_BIND
    _create_mount_point(dest, os.path.isdir(source))
    _libc.mount(source, dest, None, flags)
    _apply_propagation(dest, parsed.propagation)
    # runc: "bind mount won't change mount options, we need remount to make mount
    # options effective" — only when there is something beyond bind/rec to apply.
    if flags & ~_BIND_ONLY:
        _libc.mount(None, dest, None, flags | _libc.MS_REMOUNT)


def _host_sysfs_bind(m: Mount) -> Mount:
    # Without a network namespace of its own the container must not get a fresh sysfs of
    # the host netns read-write; bind the host's /sys read-only instead (what runc and
    # Docker do for host-network containers).
    options = tuple(o for o in m.options if o not in ("rw", "bind", "rbind"))
    return Mount(m.destination, "bind", "/sys", (*options, "rbind", "ro"))


def mount_entry(rootfs: Path, m: Mount, *, bundle: Path) -> None:
    """Mount one ``mounts`` entry under ``rootfs`` (runc's ``mountToRootfs``)."""
    parsed = parse_mount_options(m.options)
    if parsed.ignored:
        logger.debug("mount %s: ignoring options %s", m.destination, ",".join(parsed.ignored))
    dest = secure_join(rootfs, m.destination)
    if m.type == "bind" or parsed.flags & _libc.MS_BIND:
        source = m.source if os.path.isabs(m.source) else str(bundle / m.source)
        os.stat(source)  # a missing source is an error (runc)
        _bind_mount(dest, source, parsed)
        return
    flags = parsed.flags
    if os.path.normpath(m.destination) == "/dev":
        # /dev is filled in after mounting; a read-only /dev is remounted at the end.
        flags &= ~_libc.MS_RDONLY
    _create_mount_point(dest, True)
    _libc.mount(m.source or m.type, dest, m.type, flags, parsed.data or None)
    _apply_propagation(dest, parsed.propagation)


def mount_all(
    rootfs: Path,
    mounts: Sequence[Mount],
    *,
    bundle: Path,
    host_network: bool,
    before_cgroup: Callable[[], None] = lambda: None,
) -> None:
    """Apply the spec's ``mounts`` under ``rootfs``, in order.

    ``cgroup`` mounts are mounted as cgroup2 on a pure cgroup v2 host and skipped
    otherwise (v1 and hybrid hosts would need runc's per-controller bind mounts).
    ``before_cgroup`` is called before each cgroup mount: the container init must be in
    its cgroup and cgroup namespace by then, since cgroupfs shows the mounter's view.
    """
    cgroup2 = host_cgroup2_unified()
    for m in mounts:
        if m.type == "cgroup":
            if not cgroup2:
                logger.debug("skipping cgroup mount on %s (cgroup v1 host)", m.destination)
                continue
            before_cgroup()
            m = Mount(m.destination, "cgroup2", "cgroup2", m.options)
        if m.type == "sysfs" and host_network:
            m = _host_sysfs_bind(m)
        with step(f"mounting {m.type or 'bind'} {m.source} on {m.destination}"):
            mount_entry(rootfs, m, bundle=bundle)


def pivot_root(rootfs: Path) -> None:
    """Make ``rootfs`` the root, with runc's ``pivot_root(".", ".")`` trick.

    pivot_root(".", ".") stacks the old root on top of the new one, so no directory for
    it is needed in the rootfs; the old root (now under ".") is made rslave, so that the
    unmount cannot propagate to the host, and detached.
    """
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new_root = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new_root)
        _libc.pivot_root(".", ".")
        # The kernel leaves "." on the old root today; fchdir makes sure of it.
        os.fchdir(old_root)
        _libc.mount(None, ".", None, _libc.MS_SLAVE | _libc.MS_REC)
        _libc.umount2(".", _libc.MNT_DETACH)
    finally:
        os.close(old_root)
        os.close(new_root)
    os.chdir("/")


# --- container side, after pivot_root ----------------------------------------------------


def mask_path(path: str) -> None:
    """Hide ``path``: /dev/null over a file, a read-only tmpfs over a directory (runc).

    A path that does not exist is skipped.
    """
    try:
        _libc.mount("/dev/null", path, None, _libc.MS_BIND)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        _libc.mount("tmpfs", path, "tmpfs", _libc.MS_RDONLY)


def _locked_flags(path: str) -> int:
    # statvfs's ST_NOSUID/ST_NODEV/ST_NOEXEC have the values of the MS_ flags. They are
    # kept on remount: dropping them is refused when they are locked.
    flags = os.statvfs(path).f_flag
    return flags & (_libc.MS_NOSUID | _libc.MS_NODEV | _libc.MS_NOEXEC)


def readonly_path(path: str) -> None:
    """Make ``path`` read-only with a bind mount onto itself (runc); missing paths are
    skipped."""
    try:
        _libc.mount(path, path, None, _libc.MS_BIND | _libc.MS_REC)
    except FileNotFoundError:
        return
    flags = _locked_flags(path) | _libc.MS_BIND | _libc.MS_REMOUNT | _libc.MS_RDONLY
    _libc.mount(path, path, None, flags | _libc.MS_REC)


def remount_readonly(path: str, flags: int = 0) -> None:
    """Remount the mount at ``path`` read-only (used for ``root.readonly`` and a ro ``/dev``)."""
    base = _libc.MS_REMOUNT | _libc.MS_RDONLY | (flags & ~_libc.MS_PROPAGATION)
    try:
        _libc.mount(None, path, None, base | _libc.MS_BIND)
    except PermissionError:
        # Like runc's setReadonly: retry keeping the flags the mount already has.
        _libc.mount(None, path, None, base | _libc.MS_BIND | _locked_flags(path))


def dev_mount_flags(mounts: Sequence[Mount]) -> int | None:
    """The flags of the ``/dev`` mount if the spec wants it read-only, else None."""
    for m in mounts:
        if os.path.normpath(m.destination) == "/dev":
            flags = parse_mount_options(m.options).flags
            return flags if flags & _libc.MS_RDONLY else None
    return None


# --- hiding the kernel's filesystems ------------------------------------------------------

#: Filesystems through which a process reaches itself, other processes or the kernel:
#: ``proc`` (``/proc/self/mem`` is write access to the process's own memory; ``environ``,
#: ``maps``, ``fd/``, ``root/`` of every visible pid), ``sysfs`` and what is mounted under it
#: (cgroupfs, debugfs, tracefs, securityfs, bpf, configfs, fusectl, pstore, efivarfs,
#: selinuxfs, smackfs), ``binfmt_misc`` and ``nsfs`` (namespace handles). Not here:
#: ``tmpfs``, ``devpts``, ``mqueue`` and ``hugetlbfs`` hold the container's own data and
#: IPC objects, not a view of processes or of the kernel.
KERNEL_FILESYSTEMS = frozenset(
    {
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "bpf",
        "configfs",
        "fusectl",
        "pstore",
        "efivarfs",
        "selinuxfs",
        "smackfs",
        "binfmt_misc",
        "nsfs",
    }
)


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def kernel_mount_points(
    infos: Sequence[MountInfo], kinds: frozenset[str] = KERNEL_FILESYSTEMS
) -> list[str]:
    """The mount points to detach so that no filesystem of ``kinds`` stays reachable.

    Only the outermost ones: detaching a mount takes every mount below it along, including
    mounts the kernel would refuse to detach on their own (locked ones, inherited from a
    more privileged namespace). A point where another filesystem is stacked on top of a
    kernel one is listed too (detaching removes the top one; the caller repeats until
    nothing is left). Sorted, without duplicates.
    """
    points = sorted({info.mount_point for info in infos if info.fstype in kinds})
    outermost: list[str] = []
    for point in points:  # sorted: a parent comes before everything under it
        if not any(_is_under(point, parent) for parent in outermost):
            outermost.append(point)
    return outermost


def _read_mountinfo_fd(fd: int) -> list[MountInfo]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return parse_mountinfo(b"".join(chunks).decode("utf-8", "surrogateescape"))


def _shows(path: str, infos: Sequence[MountInfo]) -> bool:
    """Whether ``path`` leads to one of the kernel mounts listed at that point (it may not:
    another mount over one of its parents shadows it, and it is out of reach)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    return any(i.mount_point == path and i.device == device for i in infos)


def hide_kernel_filesystems(kinds: frozenset[str] = KERNEL_FILESYSTEMS) -> list[str]:
    """Detach (``umount2(MNT_DETACH)``) every mount of ``kinds`` in this mount namespace,
    wherever it is mounted; returns the mount points detached.

    For a process that runs untrusted code in-process with the filesystem as its only
    interface to the host (a wasm guest with ``/`` preopened): without ``/proc`` it cannot
    open ``/proc/self/mem`` or another process's files, without ``/sys`` nor the cgroupfs
    the kernel's. The mount namespace must be the caller's own (a container's, not shared
    with processes that need these filesystems); needs CAP_SYS_ADMIN in its user namespace.
    Nothing in this process may need ``/proc`` afterwards (mountinfo is read through a
    descriptor opened first, which stays valid once ``/proc`` is gone).

    Raises:
        ContainerError: a mount could not be detached (the caller must not run the
            untrusted code then).
    """
    fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    detached: list[str] = []
    shadowed: set[str] = set()
    try:
        for _ in range(64):
            infos = _read_mountinfo_fd(fd)
            # Without the shadowed points: a mount made under one later can be reachable.
            points = kernel_mount_points([i for i in infos if i.mount_point not in shadowed], kinds)
            if not points:
                return detached
            for point in points:
                with step(f"detaching {point}"):
                    try:
                        _libc.umount2(point, _libc.MNT_DETACH)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOENT, errno.EINVAL) or _shows(point, infos):
                            raise
                        # No path reaches it (a mount over a parent of its mount point):
                        # out of reach for the workload too.
                        shadowed.add(point)
                        continue
                detached.append(point)
    finally:
        os.close(fd)
    raise ContainerError("kernel filesystems still mounted after 64 rounds of detaching")
