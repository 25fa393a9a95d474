"""ctypes declarations of the libc and libseccomp calls the container code makes.

One pattern throughout, after benchexec's ``libc.py``: each C function is declared once with
its argument types and an ``errcheck`` that raises ``OSError(errno, "<call>(<args>) failed:
<strerror>")`` (``OSError`` picks the subclass from the errno, so callers can catch
``FileNotFoundError`` and friends), and is exposed through a typed Python wrapper that
encodes paths. Constants cite the header they come from.

Python 3.12 has ``os.unshare``/``os.setns``; they are used when present.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Sequence
from typing import Any, NoReturn

# --- <sys/mount.h>, <linux/mount.h> ------------------------------------------------------
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_POSIXACL = 1 << 16
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_I_VERSION = 1 << 23
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MS_PROPAGATION = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE

MNT_DETACH = 0x2

# --- <linux/sched.h> ---------------------------------------------------------------------
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# --- <linux/prctl.h> ---------------------------------------------------------------------
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# --- <linux/capability.h> ----------------------------------------------------------------
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# --- pivot_root has no glibc wrapper: syscall numbers from each arch's unistd.h ----------
_NR_PIVOT_ROOT = {
    "x86_64": 155,  # arch/x86/entry/syscalls/syscall_64.tbl
    "aarch64": 41,  # include/uapi/asm-generic/unistd.h
    "riscv64": 41,  # asm-generic
    "i686": 217,  # arch/x86/entry/syscalls/syscall_32.tbl
    "armv7l": 218,  # arch/arm/tools/syscall.tbl
    "ppc64le": 203,  # arch/powerpc/kernel/syscalls/syscall.tbl
    "s390x": 217,  # arch/s390/kernel/syscalls/syscall.tbl
}

# CDLL(None) is the already-loaded C library: no ldconfig subprocess (find_library) needed.
_libc = ctypes.CDLL(None, use_errno=True)


def _format_arg(value: object) -> str:
    if isinstance(value, bytes):
        return repr(value.decode(errors="replace"))
    if isinstance(value, int) and value > 0xFF:
        return hex(value)
    if isinstance(value, int | str) or value is None:
        return repr(value)
    return "…"


def _raise(name: str, arguments: Sequence[object], err: int) -> NoReturn:
    shown = ", ".join(_format_arg(a) for a in arguments)
    raise OSError(err, f"{name}({shown}) failed: {os.strerror(err)}")


def _errcheck(name: str, skip: int = 0) -> Any:
    """An errcheck for the usual ``-1 and errno`` convention; ``skip`` hides leading args."""

    def check(result: int, func: Any, arguments: tuple[Any, ...]) -> int:
        if result == -1:
            _raise(name, arguments[skip:], ctypes.get_errno())
        return result

    return check


def _declare(
    symbol: str,
    argtypes: list[Any],
    *,
    name: str | None = None,
    restype: Any = ctypes.c_int,
    skip: int = 0,
    lib: ctypes.CDLL = _libc,
) -> Any:
    # lib[symbol] (not getattr) returns a fresh function object, so declaring "syscall"
    # for pivot_root cannot clash with another declaration of the same symbol.
    func = lib[symbol]
    func.argtypes = argtypes
    func.restype = restype
    func.errcheck = _errcheck(name or symbol, skip)
    return func


def _enc(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


_mount = _declare(
    "mount",
    # source, target, filesystemtype, mountflags, data
    [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p],
)
_umount2 = _declare("umount2", [ctypes.c_char_p, ctypes.c_int])  # target, flags
_unshare = _declare("unshare", [ctypes.c_int])  # flags
_setns = _declare("setns", [ctypes.c_int, ctypes.c_int])  # fd, nstype
_sethostname = _declare("sethostname", [ctypes.c_char_p, ctypes.c_size_t])  # name, len
_setdomainname = _declare("setdomainname", [ctypes.c_char_p, ctypes.c_size_t])  # name, len
_prctl = _declare(
    "prctl",
    # option, arg2, arg3, arg4, arg5
    [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong],
)
_pivot_root = _declare(
    "syscall",
    [ctypes.c_long, ctypes.c_char_p, ctypes.c_char_p],  # number, new_root, put_old
    name="pivot_root",
    restype=ctypes.c_long,
    skip=1,
)


def mount(
    source: str | None,
    target: str | os.PathLike[str],
    fstype: str | None,
    flags: int,
    data: str | None = None,
) -> None:
    """mount(2)."""
    _mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data or None))


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    """umount2(2)."""
    _umount2(_enc(target), flags)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2), through syscall(2): glibc has no wrapper."""
    number = _NR_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {platform.machine()}")
    _pivot_root(number, _enc(new_root), _enc(put_old))


def unshare(flags: int) -> None:
    """unshare(2); ``os.unshare`` when Python has it (3.12+)."""
    native = getattr(os, "unshare", None)
    if native is not None:
        native(flags)
    else:
        _unshare(flags)


def setns(fd: int, nstype: int) -> None:
    """setns(2); ``os.setns`` when Python has it (3.12+)."""
    native = getattr(os, "setns", None)
    if native is not None:
        native(fd, nstype)
    else:
        _setns(fd, nstype)


def sethostname(name: str) -> None:
    """sethostname(2)."""
    raw = name.encode()
    _sethostname(raw, len(raw))


def setdomainname(name: str) -> None:
    """setdomainname(2)."""
    raw = name.encode()
    _setdomainname(raw, len(raw))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); returns the call's non-negative result."""
    return int(_prctl(option, arg2, arg3, arg4, arg5))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CapDataPair = _CapData * 2
_capget = _declare("capget", [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)])
_capset = _declare("capset", [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)])


def capget() -> tuple[int, int, int]:
    """capget(2) for this thread: ``(effective, permitted, inheritable)`` as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    _capget(ctypes.byref(header), data)
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for this thread, from 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _capset(ctypes.byref(header), data)


# --- libseccomp (<seccomp.h>): loaded on first use, functions return -errno ---------------


class ScmpArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``: one argument condition of a seccomp rule."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),  # enum scmp_compare
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _seccomp_check(name: str, skip: int = 1) -> Any:
    # libseccomp returns -errno rather than setting errno; the filter handle (first
    # argument) is hidden from the message.
    def check(result: int, func: Any, arguments: tuple[Any, ...]) -> int:
        if result < 0:
            _raise(name, arguments[skip:], -result)
        return result

    return check


class _Seccomp:
    """The libseccomp functions, declared once the library has been loaded."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.init = lib["seccomp_init"]
        self.init.argtypes = [ctypes.c_uint32]  # def_action
        self.init.restype = ctypes.c_void_p
        self.release = lib["seccomp_release"]
        self.release.argtypes = [ctypes.c_void_p]  # ctx
        self.release.restype = None
        self.resolve_syscall = lib["seccomp_syscall_resolve_name"]
        self.resolve_syscall.argtypes = [ctypes.c_char_p]  # name
        self.resolve_syscall.restype = ctypes.c_int
        self.resolve_arch = lib["seccomp_arch_resolve_name"]
        self.resolve_arch.argtypes = [ctypes.c_char_p]  # arch_name
        self.resolve_arch.restype = ctypes.c_uint32
        self.arch_add = self._checked(lib, "seccomp_arch_add", [ctypes.c_uint32])  # arch
        self.attr_set = self._checked(
            lib,
            "seccomp_attr_set",
            [ctypes.c_int, ctypes.c_uint32],  # attr, value
        )
        self.rule_add_array = self._checked(
            lib,
            "seccomp_rule_add_array",
            # action, syscall, arg_cnt, arg_array
            [ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ScmpArgCmp)],
        )
        self.load = self._checked(lib, "seccomp_load", [])
        self.export_pfc = self._checked(lib, "seccomp_export_pfc", [ctypes.c_int])  # fd

    @staticmethod
    def _checked(lib: ctypes.CDLL, symbol: str, argtypes: list[Any]) -> Any:
        func = lib[symbol]
        func.argtypes = [ctypes.c_void_p, *argtypes]  # ctx first
        func.restype = ctypes.c_int
        func.errcheck = _seccomp_check(symbol)
        return func


@functools.cache
def seccomp() -> _Seccomp:
    """libseccomp.so.2, loaded on first use (raises ``OSError`` when it is not installed)."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise OSError(2, f"libseccomp.so.2 cannot be loaded ({exc})") from exc
    return _Seccomp(lib)
