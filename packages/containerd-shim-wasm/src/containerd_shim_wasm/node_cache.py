"""Compiled artifacts of module files, kept on the node across pods and shim restarts.

The pod's zygote compiles a module file once (:mod:`containerd_shim_wasm.module_cache`);
this keeps the artifact on disk so that a new pod running the same module (the first
container of every pod, and every pod after a node restart of the shims) loads it instead
of compiling again, as runwasi's precompile cache does for OCI wasm layers in containerd's
content store.

Layout: ``<root>/<shim name>/<compiler cache key>/<sha256 of the module>``. A new engine
(or different CPU features) gives a new cache key, so stale artifacts are never loaded; they
age out when the cache grows past :data:`MAX_BYTES` (oldest first). Artifacts are native
code: the directories are created ``0700`` and a file is only loaded when it belongs to
this user and nobody else can write it.

``SHIM_COMPILE_CACHE`` in containerd's environment moves it (a directory) or turns it off
(``off``). Used only in the zygote's compile child, never in a container.
"""

from __future__ import annotations

import logging
import os
import re
import stat

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/var/lib/containerd-shim-wasm/compiled"
ENV = "SHIM_COMPILE_CACHE"
#: Past this many bytes the oldest artifacts are removed.
MAX_BYTES = 1 << 30
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


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

    def _path(self, cache_key: str, digest: str) -> str:
        return os.path.join(self.directory, _component(cache_key), _component(digest))

    def load(self, cache_key: str, digest: str) -> bytes | None:
        """The artifact stored for ``digest`` under ``cache_key``, if there is a safe one."""
        path = self._path(cache_key, digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if (
                not stat.S_ISREG(info.st_mode)
                or info.st_uid != os.geteuid()
                or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            ):
                log.warning("ignoring an unsafe compile cache entry", extra={"path": path})
                return None
            data = os.pread(fd, info.st_size, 0)
        finally:
            os.close(fd)
        os.utime(path)  # recently used: evicted last
        return data if len(data) == info.st_size else None

    def store(self, cache_key: str, digest: str, artifact: bytes) -> None:
        """Write the artifact atomically; problems are logged, never raised (the cache is
        an optimisation)."""
        path = self._path(cache_key, digest)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(artifact)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._evict()
        except OSError as exc:
            log.warning("cannot store the compiled module", extra={"error": str(exc)})
            try:  # noqa: SIM105 - one more import for a rare path is not worth it here
                os.unlink(tmp)
            except OSError:
                pass

    def _evict(self) -> None:
        entries: list[tuple[float, int, str]] = []
        for dirpath, _dirs, files in os.walk(self.directory):
            for name in files:
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


def _component(text: str) -> str:
    """``text`` as one safe path component (cache keys and digests contain ``:``)."""
    return _UNSAFE.sub("_", text) or "_"
