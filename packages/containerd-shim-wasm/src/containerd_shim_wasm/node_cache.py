"""Compiled artifacts of module files, kept on the node across pods and shim restarts.

The pod's zygote compiles a module file once (:mod:`containerd_shim_wasm.module_cache`);
this keeps the artifact on disk so that a new pod running the same module (the first
container of every pod, and every pod after a node restart of the shims) loads it instead
of compiling again, as runwasi's precompile cache does for OCI wasm layers in containerd's
content store.

Layout: ``<root>/<shim name>/<compiler cache key>/<sha256 of the module>``. A new engine
(or different CPU features) gives a new cache key, so stale artifacts are never loaded; they
age out when the cache grows past :data:`MAX_BYTES` (oldest first). Artifacts are native
code: a key directory is created ``0700``, and a key directory or an artifact is only used
when it belongs to this user and nobody else can write it (checked on the open descriptors,
so a swapped path cannot slip in between). Writes are synced before they are renamed into
place, and an empty file is never loaded.

``SHIM_COMPILE_CACHE`` in containerd's environment moves it (a directory) or turns it off
(``off``). Used only in the zygote's compile child, never in a container.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Callable

from .fdio import read_whole, write_all

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/var/lib/containerd-shim-wasm/compiled"
ENV = "SHIM_COMPILE_CACHE"
#: Past this many bytes the oldest artifacts are removed.
MAX_BYTES = 1 << 30
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
#: Ends the names of artifacts being written (never loaded, never evicted).
_TMP_SUFFIX = ".tmp"


class NodeCache:
    """One shim's directory of compiled module files."""

    def __init__(self, directory: str, max_bytes: int = MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    @classmethod
    def from_env(cls, shim_name: str) -> NodeCache | None:
        """The cache ``SHIM_COMPILE_CACHE`` selects (default :data:`DEFAULT_ROOT`), or
        ``None`` when it says ``off``."""
        root = os.environ.get(ENV, DEFAULT_ROOT)
        if root.lower() in ("off", "0", "false", "no", ""):
            return None
        return cls(os.path.join(root, _component(shim_name)))

    def load(self, cache_key: str, digest: str) -> bytes | None:
        """The artifact stored for ``digest`` under ``cache_key``, if there is a safe one."""
        dir_fd = self._open_key_dir(cache_key)
        if dir_fd < 0:
            return None
        try:
            fd = os.open(_component(digest), _OPEN_FLAGS, dir_fd=dir_fd)
        except OSError:
            os.close(dir_fd)
            return None
        try:
            info = os.fstat(fd)
            if not _private(info, stat.S_ISREG):
                log.warning("ignoring an unsafe compile cache entry", extra={"digest": digest})
                return None
            if info.st_size == 0:  # cut short by a crash: compile again
                return None
            data = read_whole(fd, info.st_size)
            with contextlib.suppress(OSError):  # e.g. a read-only cache
                os.utime(fd)  # recently used: evicted last
            return data
        except (OSError, ValueError) as exc:
            log.warning("cannot read a compile cache entry", extra={"error": str(exc)})
            return None
        finally:
            os.close(fd)
            os.close(dir_fd)

    def store(self, cache_key: str, digest: str, artifact: bytes) -> None:
        """Write the artifact atomically; problems are logged, never raised (the cache is
        an optimisation)."""
        name = _component(digest)
        tmp = f"{name}.{os.getpid()}{_TMP_SUFFIX}"
        try:
            os.makedirs(os.path.join(self.directory, _component(cache_key)), 0o700, exist_ok=True)
        except OSError as exc:
            log.warning("cannot store the compiled module", extra={"error": str(exc)})
            return
        dir_fd = self._open_key_dir(cache_key)
        if dir_fd < 0:
            return
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
            )
            try:
                write_all(fd, artifact)
                os.fsync(fd)  # never a renamed-in file whose data a crash lost
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            log.warning("cannot store the compiled module", extra={"error": str(exc)})
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            return
        finally:
            os.close(dir_fd)
        self._evict()

    def _open_key_dir(self, cache_key: str) -> int:
        """A descriptor of the key's directory if it is ours alone, else -1."""
        path = os.path.join(self.directory, _component(cache_key))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return -1
        try:
            safe = _private(os.fstat(fd), stat.S_ISDIR)
        except OSError:
            safe = False
        if not safe:
            log.warning("ignoring an unsafe compile cache directory", extra={"path": path})
            os.close(fd)
            return -1
        return fd

    def _evict(self) -> None:
        entries: list[tuple[float, int, str]] = []
        for dirpath, _dirs, files in os.walk(self.directory):
            for name in files:
                if name.endswith(_TMP_SUFFIX):
                    continue  # another writer's, still being written
                path = os.path.join(dirpath, name)
                try:
                    info = os.stat(path)
                except OSError:
                    continue
                entries.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            try:
                os.unlink(path)
                total -= size
            except OSError:
                pass


def _private(info: os.stat_result, is_kind: Callable[[int], bool]) -> bool:
    """Of the expected kind, owned by this user and writable by nobody else."""
    return (
        is_kind(info.st_mode)
        and info.st_uid == os.geteuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def _component(text: str) -> str:
    """``text`` as one safe path component (cache keys and digests contain ``:``)."""
    return _UNSAFE.sub("_", text) or "_"
