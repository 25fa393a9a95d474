"""Compile each distinct module once per zygote (pod), not once per container.

A module that is a file in the rootfs (the common image form) would otherwise be compiled by
every container's init: most of a container's start time, and the compiler's memory in every
container. Instead the daemon hands the zygote a descriptor of the file it found in the
rootfs; the zygote compiles it once with the shim's :class:`~containerd_shim_wasm.Compiler`,
keeps the artifact, and gives it to every init forked afterwards (shared copy-on-write).

Trust: the daemon's view of the rootfs is only a hint. The init, after ``pivot_root``, reads
the file it is about to run and uses the artifact only if that file has the same SHA-256
(:meth:`WasmWorkload.prepare <containerd_shim_wasm.executor.WasmWorkload.prepare>`). The
artifact itself is native code made by the shim, never bytes from the image.

Compiling happens in a forked child: engines start compiler threads, and the zygote must stay
single-threaded to fork containers safely. The child first looks in the node's cache
(:mod:`containerd_shim_wasm.node_cache`), where it also stores what it compiles, so a module
is compiled once per node rather than once per pod.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import time
from collections import OrderedDict

from .context import WasmLayer
from .node_cache import NodeCache
from .shim import Shim

log = logging.getLogger(__name__)

_WASM_MAGIC = b"\0asm"
#: Bigger files are not cached (their compile still happens, in the container).
MAX_MODULE_BYTES = 256 << 20
#: Artifacts kept per zygote, least recently used dropped first.
MAX_CACHE_BYTES = 256 << 20
#: Exit statuses of the compile child: compiled, declined by the compiler, from the node cache.
_COMPILED, _DECLINED, _FROM_NODE_CACHE = 0, 3, 4


def digest_of(data: bytes) -> str:
    """The ``sha256:<hex>`` digest the zygote and the init compare."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ModuleCache:
    """The zygote's compiled modules, by the SHA-256 of the module file."""

    def __init__(
        self,
        shim: type[Shim],
        max_bytes: int = MAX_CACHE_BYTES,
        node_cache: NodeCache | None = None,
    ) -> None:
        self.shim = shim
        self.max_bytes = max_bytes
        self.node_cache = node_cache
        # digest → artifact, or None when the compiler declined it (not compiled again).
        self._entries: OrderedDict[str, WasmLayer | None] = OrderedDict()
        self._size = 0

    def artifact_for(self, fd: int) -> WasmLayer | None:
        """The precompiled artifact of the module file open at ``fd``, compiling it on first
        use; ``None`` when it is not a wasm binary or cannot be compiled (the init then
        compiles or rejects it itself, with the usual error messages)."""
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MODULE_BYTES:
                return None
            data = _read_all(fd, info.st_size)
        except (OSError, ValueError) as exc:
            log.warning("cannot read the module file", extra={"error": str(exc)})
            return None
        if not data.startswith(_WASM_MAGIC):
            return None
        digest = digest_of(data)
        if digest in self._entries:
            self._entries.move_to_end(digest)
            return self._entries[digest]
        started = time.monotonic()
        layer = WasmLayer("application/wasm", digest, data)
        compiled, status = _compile_in_child(self.shim, layer, self.node_cache)
        log.info(
            _OUTCOMES.get(status, "the module was not compiled"),
            extra={"digest": digest, "ms": round((time.monotonic() - started) * 1000)},
        )
        artifact = WasmLayer("application/wasm", digest, compiled, True) if compiled else None
        self._remember(digest, artifact)
        return artifact

    def _remember(self, digest: str, artifact: WasmLayer | None) -> None:
        self._entries[digest] = artifact
        self._size += len(artifact.data) if artifact else 0
        while self._size > self.max_bytes and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self._size -= len(dropped.data) if dropped else 0


def _read_all(fd: int, size: int) -> bytes:
    data = os.pread(fd, size, 0)
    if len(data) != size:
        raise ValueError(f"short read of a module: {len(data)} of {size} bytes")
    return data


_OUTCOMES = {
    _COMPILED: "compiled the module for this pod",
    _FROM_NODE_CACHE: "loaded the module for this pod from the node cache",
}


def _compile_in_child(
    shim: type[Shim], layer: WasmLayer, node_cache: NodeCache | None
) -> tuple[bytes | None, int]:
    """Get ``layer``'s artifact in a child process: from the node cache, or by running the
    shim's Compiler (then stored in the node cache). The artifact (or ``None``) and how."""
    out = os.memfd_create("compiled-module", os.MFD_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child; covered by the zygote tests
            code = 1
            try:
                code = _compile_to(shim, layer, out, node_cache)
            except BaseException:
                log.exception("compiling the module failed", extra={"digest": layer.digest})
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code not in (_COMPILED, _FROM_NODE_CACHE):
            return None, code
        return _read_all(out, os.fstat(out).st_size), code
    finally:
        os.close(out)


def _compile_to(shim: type[Shim], layer: WasmLayer, out: int, node_cache: NodeCache | None) -> int:
    async def get() -> tuple[bytes | None, int]:
        compiler = await shim.compiler()
        if compiler is None:
            return None, _DECLINED
        key = compiler.cache_key() if node_cache else ""
        if node_cache and (stored := node_cache.load(key, layer.digest)) is not None:
            return stored, _FROM_NODE_CACHE
        artifact = (await compiler.compile([layer]))[0]
        if artifact is not None and node_cache:
            node_cache.store(key, layer.digest, artifact)
        return artifact, _COMPILED if artifact is not None else _DECLINED

    artifact, code = asyncio.run(get())
    if artifact is None:
        return code
    view = memoryview(artifact)
    while view:
        view = view[os.write(out, view) :]
    return code
