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

Before compiling, the zygote looks in the node's cache (:mod:`containerd_shim_wasm.node_cache`),
where the compile child also stores what it compiles: a module is compiled once per node,
not once per pod. Compiling (and computing the Compiler's cache key, which compiles an
empty module) happens in forked children: engines start compiler threads, and the zygote
must stay single-threaded to fork containers safely. The template computes the key once
(:func:`learn_cache_key`) and every daemon and zygote forked from it inherits it.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable

from .context import WasmLayer
from .fdio import read_whole, write_all
from .node_cache import NodeCache
from .shim import Shim

log = logging.getLogger(__name__)

_WASM_MAGIC = b"\0asm"
#: Bigger files are not cached (their compile still happens, in the container).
MAX_MODULE_BYTES = 256 << 20
#: Artifacts kept per zygote, least recently used dropped first.
MAX_CACHE_BYTES = 256 << 20
#: shim name → its Compiler's cache key ("" when it has no Compiler), once known in this
#: process (or in the template it was forked from).
_cache_keys: dict[str, str] = {}


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
        """The precompiled artifact of the module file open at ``fd``: from memory, from the
        node cache, or compiled now; ``None`` when it is not a wasm binary or cannot be
        compiled (the init then compiles or rejects it itself, with the usual messages)."""
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MODULE_BYTES:
                return None
            # Most files are native executables (the pause container, sidecars): look at
            # the magic number before reading the whole file.
            if os.pread(fd, len(_WASM_MAGIC), 0) != _WASM_MAGIC:
                return None
            data = read_whole(fd, info.st_size)
        except (OSError, ValueError) as exc:
            log.warning("cannot read the module file", extra={"error": str(exc)})
            return None
        digest = digest_of(data)
        if digest in self._entries:
            self._entries.move_to_end(digest)
            return self._entries[digest]
        started = time.monotonic()
        key = learn_cache_key(self.shim) if self.node_cache else ""
        node_cache = self.node_cache if key else None  # no Compiler, no cache key
        compiled = node_cache.load(key, digest) if node_cache else None
        if compiled:
            outcome = "loaded the module for this pod from the node cache"
        else:
            layer = WasmLayer("application/wasm", digest, data)
            compiled = _compile_in_child(self.shim, layer, node_cache, key)
            outcome = (
                "compiled the module for this pod"
                if compiled
                else "the module was not compiled: its containers compile it themselves"
            )
        log.info(outcome, extra={"digest": digest, "ms": _ms_since(started)})
        artifact = WasmLayer("application/wasm", digest, compiled, True) if compiled else None
        self._remember(digest, artifact)
        return artifact

    def _remember(self, digest: str, artifact: WasmLayer | None) -> None:
        self._entries[digest] = artifact
        self._size += len(artifact.data) if artifact else 0
        while self._size > self.max_bytes and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self._size -= len(dropped.data) if dropped else 0


def learn_cache_key(shim: type[Shim]) -> str:
    """The shim's Compiler cache key ("" without a Compiler), computed once per process
    tree in a forked child (the template calls this so that its daemons inherit it)."""
    key = _cache_keys.get(shim.name())
    if key is None:
        key = _in_child(lambda: _key_of(shim)).decode()
        _cache_keys[shim.name()] = key
    return key


def _key_of(shim: type[Shim]) -> bytes:
    async def get() -> str:
        compiler = await shim.compiler()
        return compiler.cache_key() if compiler is not None else ""

    return asyncio.run(get()).encode()


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _in_child(work: Callable[[], bytes | None]) -> bytes:
    """Run ``work`` in a forked child; its bytes (b"" when it returned None or failed)."""
    out = os.memfd_create("module-cache", os.MFD_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child; covered by the zygote tests
            # No collection in this short-lived child: collecting objects of libraries whose
            # threads did not survive the fork (grpc's, in a test process) can spin forever.
            gc.disable()
            code = 1
            try:
                write_all(out, work() or b"")
                code = 0
            except BaseException:
                log.exception("the module cache's child failed")
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return b""
        return read_whole(out)
    finally:
        os.close(out)


def _compile_in_child(
    shim: type[Shim], layer: WasmLayer, node_cache: NodeCache | None, key: str
) -> bytes | None:
    """Run the shim's Compiler on ``layer`` in a child process, which also stores the
    artifact in ``node_cache`` under ``key``; the artifact, or ``None``."""

    def compile_one() -> bytes | None:
        async def get() -> bytes | None:
            compiler = await shim.compiler()
            return None if compiler is None else (await compiler.compile([layer]))[0]

        artifact = asyncio.run(get())
        if artifact is not None and node_cache is not None:
            node_cache.store(key, layer.digest, artifact)
        return artifact

    return _in_child(compile_one) or None
