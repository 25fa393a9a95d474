"""The wasmtime engine: runs WASI p1 modules and WASI p2 components with wasmtime-py.

This module is imported by the shim binary's ``start`` and ``delete`` actions, which must
stay cheap: ``wasmtime`` (and ``asyncio``, ``threading``, ``logging``...) are imported inside
functions only; ``WasmtimeSandbox.preload`` imports the engine once in the zygote, before
containers are forked.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

from containerd_shim_wasm import (
    CannotHandle,
    Compiler,
    FileSource,
    OciSource,
    RuntimeContext,
    Sandbox,
    Shim,
    Version,
    WasmLayer,
    env_path,
)

if TYPE_CHECKING:
    import threading

    import wasmtime
    from wasmtime.component import Component

__all__ = ["WasmtimeCompiler", "WasmtimeSandbox", "WasmtimeShim"]

_T = TypeVar("_T")

_EngineFlags = Mapping[str, bool | int | str]

#: The engine configuration shared by the sandbox and the compiler: a precompiled artifact
#: only loads into an engine whose compatibility-relevant settings are identical.
#: ``epoch_interruption`` is what lets a cancelled ``run_wasi`` stop a spinning guest.
_ENGINE_FLAGS: _EngineFlags = {"epoch_interruption": True, "wasm_component_model": True}

_WASM_MAGIC = b"\0asm"
_CORE_VERSION = b"\x01\x00\x00\x00"  # core module: version 1
_COMPONENT_LAYER = b"\x01\x00"  # bytes 6..8 of a component preamble: layer 1
_ELFOSABI_WASMTIME = 200  # e_ident[EI_OSABI] of wasmtime's precompiled artifacts
_EF_WASMTIME_MODULE, _EF_WASMTIME_COMPONENT = 1, 2  # ELF e_flags of those artifacts


class _Cancelled(Exception):
    """The worker saw the cancellation before calling the guest (the result is dropped)."""


_Kind = Literal["module", "component", "precompiled-module", "precompiled-component"]


def _kind(data: bytes) -> _Kind | None:
    """Classify bytes like wasmparser's ``is_core_wasm``/``is_component`` and wasmtime's
    ``Engine::detect_precompiled`` (which wasmtime-py does not expose); ``None`` otherwise."""
    if data[:4] == _WASM_MAGIC and len(data) >= 8:
        if data[4:8] == _CORE_VERSION:
            return "module"
        if data[6:8] == _COMPONENT_LAYER:
            return "component"
    if data[:4] == b"\x7fELF" and len(data) >= 52 and data[7] == _ELFOSABI_WASMTIME:
        e_flags = int.from_bytes(data[48:52], "little")
        if e_flags & _EF_WASMTIME_MODULE:
            return "precompiled-module"
        if e_flags & _EF_WASMTIME_COMPONENT:
            return "precompiled-component"
    return None


@functools.cache
def _engine(flags: tuple[tuple[str, bool | int | str], ...]) -> wasmtime.Engine:
    """One Engine per configuration per process. Creating one starts no threads (checked
    by a test), so the zygote may create it before forking containers."""
    import atexit

    import wasmtime

    config = wasmtime.Config()
    for name, value in flags:
        setattr(config, name, value)
    # Free cached engines before interpreter teardown unloads wasmtime's ctypes bindings
    # (else "Exception ignored in Managed.__del__" at exit).
    atexit.register(_engine.cache_clear)
    return wasmtime.Engine(config)


def _engine_for(flags: _EngineFlags, **overrides: bool | int | str) -> wasmtime.Engine:
    return _engine(tuple(sorted({**flags, **overrides}.items())))


def _compile(engine: wasmtime.Engine, data: bytes, where: str) -> wasmtime.Module | Component:
    """Compile (or, for trusted precompiled bytes, deserialize) a module or component."""
    import wasmtime
    from wasmtime.component import Component

    kind = _kind(data)
    if kind is None and not data.startswith((_WASM_MAGIC, b"\x7fELF")):
        # WAT text (a core module or a component); errors name the line and column.
        data = bytes(wasmtime.wat2wasm(data))
        kind = _kind(data)
    if kind == "module":
        return wasmtime.Module(engine, data)
    if kind == "component":
        return Component(engine, data)
    if kind == "precompiled-module":
        return wasmtime.Module.deserialize(engine, data)
    if kind == "precompiled-component":
        return Component.deserialize(engine, data)
    raise ValueError(f"{where} is not a wasm module or component")


async def _in_thread(
    fn: Callable[[], _T], stop: Callable[[], None] | None = None, grace: float = 0.0
) -> _T:
    """Run blocking ``fn`` in a daemon thread; on cancellation call ``stop``, give the thread
    ``grace`` seconds to finish, then re-raise ``CancelledError``.

    Not ``asyncio.to_thread``: a guest blocked in a host call (``sleep``, a read on stdin)
    cannot be interrupted, and ``asyncio.run`` joins default-executor threads at exit, which
    would keep a cancelled container alive. A daemon thread dies with the process.
    """
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()
    done.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "unretrieved"

    def settle(outcome: Callable[[], None]) -> None:
        if not done.done():
            outcome()

    def work() -> None:
        outcome: Callable[[], None]
        try:
            outcome = functools.partial(done.set_result, fn())
        except BaseException as exc:
            outcome = functools.partial(done.set_exception, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: we were abandoned
            loop.call_soon_threadsafe(settle, outcome)

    thread = threading.Thread(target=work, name="wasmtime-guest", daemon=True)
    thread.start()
    try:
        result = await asyncio.shield(done)
    except asyncio.CancelledError:
        if stop is not None:
            stop()
        await asyncio.wait([done], timeout=grace)
        raise
    thread.join()  # it has only to return from work(): no thread outlives the call
    return result


class WasmtimeSandbox(Sandbox):
    """Runs a container's WASI workload with wasmtime, in the container's init process.

    Core modules get WASI preview 1, components WASI preview 2 (``wasi:cli/run``, or the
    export named by ``#func``). The guest sees exactly ``ctx.args()`` (argv0 included),
    ``ctx.envs()``, the process's fds 0/1/2 and the container's ``/`` preopened as ``/``.
    """

    #: Engine settings; kept identical to :class:`WasmtimeCompiler` (a test overrides it).
    _engine_flags: ClassVar[_EngineFlags] = _ENGINE_FLAGS
    #: Host directory preopened as the guest's ``/``. This runs after ``pivot_root``, so
    #: ``/`` is the container's rootfs; tests point it at a temporary directory.
    _preopen_host_dir: str = "/"
    #: Seconds a cancelled ``run_wasi`` waits for a guest stuck in a host call.
    _cancel_grace: float = 1.0

    @classmethod
    def preload(cls) -> None:
        """Import wasmtime and create the shared Engine in the zygote (no threads start)."""
        import wasmtime.component  # noqa: F401 - the import is the point

        _engine_for(cls._engine_flags)

    async def run_wasi(self, ctx: RuntimeContext) -> int:
        """Run the entrypoint; see :meth:`Sandbox.run_wasi` for exit codes and cancellation.

        A ``wasi:cli/run`` component returning ``err`` exits 1, as ``wasmtime run`` does.
        """
        import threading

        engine = _engine_for(self._engine_flags)
        cancelled = threading.Event()

        def stop() -> None:
            # Order matters: the worker sets its epoch deadline before checking the flag,
            # so either it sees the flag or this increment passes its deadline.
            cancelled.set()
            engine.increment_epoch()

        return await _in_thread(lambda: self._run(engine, ctx, cancelled), stop, self._cancel_grace)

    async def can_handle(self, ctx: RuntimeContext) -> None:
        """Accept one OCI layer, or a file wasmtime validates as a core module, a component
        (preamble only) or WAT text.

        Raises:
            CannotHandle: naming the path and why, e.g. ``/app/x.wasm is not a wasm
                module: bad magic number b'MZ\\x90\\x00'`` or the WAT error's line:column.
        """
        source = ctx.entrypoint().source
        if isinstance(source, FileSource) and source.compiled is not None:
            return  # the zygote compiled exactly this file: it is a valid module
        try:
            if isinstance(source, OciSource):
                source.read()  # exactly one layer; run_wasi reports what is wrong with it
                return
            data, path, _ = _read_source(ctx)
        except (OSError, ValueError) as exc:
            raise CannotHandle(f"{exc}; args[0] must be a path to a wasm module") from exc
        problem = await _in_thread(lambda: _check(data, path, self._engine_flags))
        if problem is not None:
            raise CannotHandle(problem)

    def _run(self, engine: wasmtime.Engine, ctx: RuntimeContext, cancelled: threading.Event) -> int:
        import wasmtime
        from wasmtime.component import Component

        entrypoint = ctx.entrypoint()
        data, where, trusted = _read_source(ctx)
        kind = _kind(data)
        if kind in ("precompiled-module", "precompiled-component") and not trusted:
            # Deserializing is loading native code: only artifacts from the shim's own
            # precompile cache are trusted, never a file from the image.
            raise ValueError(f"{where} is a precompiled wasmtime artifact from the image")
        program = _compile(engine, data, where)

        wasi = wasmtime.WasiConfig()
        wasi.argv = ctx.args()
        wasi.env = [item.partition("=")[::2] for item in ctx.envs()]  # never the shim's env
        wasi.inherit_stdin()
        wasi.inherit_stdout()
        wasi.inherit_stderr()
        wasi.preopen_dir(self._preopen_host_dir, "/")
        store = wasmtime.Store(engine)
        store.set_wasi(wasi)
        store.set_epoch_deadline(1)  # before anything runs: see ``stop`` in run_wasi
        if self.limits.memory_bytes is not None:
            # The guest's memory.grow (malloc) fails instead of the cgroup OOM-killing us.
            store.set_limits(memory_size=self.limits.memory_bytes)

        try:
            if isinstance(program, Component):
                return _run_component(engine, store, program, entrypoint.func, where, cancelled)
            linker = wasmtime.Linker(engine)
            linker.define_wasi()
            instance = linker.instantiate(store, program)
            func = instance.exports(store).get(entrypoint.func)
            if not isinstance(func, wasmtime.Func):
                names = [e.name for e in program.exports if isinstance(e.type, wasmtime.FuncType)]
                raise LookupError(
                    f"{where} does not export a function {entrypoint.func!r} "
                    f"(its exported functions: {', '.join(names) or 'none'})"
                )
            if cancelled.is_set():
                raise _Cancelled
            func(store)
            return 0
        except wasmtime.ExitTrap as exit_:
            return int(exit_.code)


def _read_source(ctx: RuntimeContext) -> tuple[bytes, str, bool]:
    """The entrypoint's bytes, a description for messages, and whether precompiled bytes
    may be deserialized (only the shim's own artifacts: OCI layers the precompile cache
    marked ``precompiled``, or a file's artifact from the zygote's compile cache)."""
    source = ctx.entrypoint().source
    if isinstance(source, OciSource):
        data = source.read()
        layer = source.layers[0]
        return data, f"OCI layer {layer.digest}", layer.precompiled
    assert isinstance(source, FileSource)
    path = source.resolve(env_path(ctx.envs()))
    if source.compiled is not None:
        return source.compiled.data, path, True
    with open(path, "rb") as f:
        return f.read(), path, False


def _run_component(
    engine: wasmtime.Engine,
    store: wasmtime.Store,
    component: Component,
    func_name: str,
    where: str,
    cancelled: threading.Event,
) -> int:
    from wasmtime.component import Linker

    exports = list(component.type.exports(engine))
    linker = Linker(engine)
    linker.add_wasip2()
    instance = linker.instantiate(store, component)
    run = next((name for name in exports if name.startswith("wasi:cli/run@")), None)
    if run is not None:  # a command: call wasi:cli/run.run
        index = instance.get_export_index(store, "run", instance.get_export_index(store, run))
    elif any(name.startswith("wasi:http/incoming-handler@") for name in exports):
        raise NotImplementedError(f"{where}: wasi:http proxy components are not supported")
    else:  # as runwasi: call the export named by #func, with no parameters
        index = instance.get_export_index(store, func_name)
    func = instance.get_func(store, index) if index is not None else None
    if func is None:
        raise LookupError(
            f"{where} does not export a function {func_name!r} "
            f"(its exports: {', '.join(exports) or 'none'})"
        )
    if cancelled.is_set():
        raise _Cancelled
    result = func(store)
    return 1 if run is not None and getattr(result, "tag", "ok") == "err" else 0


def _check(data: bytes, path: str, flags: _EngineFlags) -> str | None:
    """Why ``data`` (the file at ``path``) is not something wasmtime runs, or ``None``."""
    import wasmtime

    kind = _kind(data)
    if kind is None and data[:4] != _WASM_MAGIC:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return f"{path} is not a wasm module: bad magic number {data[:4]!r}"
        try:
            data = bytes(wasmtime.wat2wasm(text))
        except wasmtime.WasmtimeError as exc:
            return f"{path} is neither a wasm binary nor valid WAT: {_wat_error(str(exc), path)}"
        kind = _kind(data)
    if kind in ("precompiled-module", "precompiled-component"):
        return f"{path} is a precompiled wasmtime artifact; only wasm or WAT files are run"
    if kind == "component":
        # wasmtime-py has no component validator, and compiling here would double the
        # compile time of every start; run_wasi reports a broken component.
        return None
    if kind is None:
        return f"{path} is not a wasm module: unsupported wasm version {data[4:8]!r}"
    try:
        # A single-threaded engine: validating must not start compiler threads in the
        # container's init process before its credentials and seccomp are final.
        wasmtime.Module.validate(_engine_for(flags, parallel_compilation=False), data)
    except wasmtime.WasmtimeError as exc:
        return f"{path} is not a valid wasm module: {exc}"
    return None


def _wat_error(message: str, path: str) -> str:
    """``expected `(`\\n --> <anon>:1:33 …`` becomes ``path:1:33: expected `(` ``."""
    lines = message.strip().splitlines()
    where = next((ln.split("-->", 1)[1].strip() for ln in lines if "-->" in ln), None)
    if where is None:
        return lines[0] if lines else message
    return f"{where.replace('<anon>', path)}: {lines[0]}"


class WasmtimeCompiler(Compiler):
    """Precompiles OCI wasm layers to wasmtime's native artifacts (``Module.serialize``)."""

    _engine_flags: ClassVar[_EngineFlags] = _ENGINE_FLAGS

    def cache_key(self) -> str:
        """Our equivalent of ``Engine::precompile_compatibility_hash`` (not in wasmtime-py).

        Every artifact carries a ``.wasmtime.engine`` ELF section with exactly what wasmtime
        compares when loading it: its version, the target, the Cranelift shared and ISA
        flags (host CPU features), tunables and wasm features. The key hashes that section
        from an empty module compiled by our engine, plus the wasmtime-py version.
        """
        return _cache_key(tuple(sorted(self._engine_flags.items())))

    async def compile(self, layers: Sequence[WasmLayer]) -> list[bytes | None]:
        """Serialize each module/component layer; ``None`` for precompiled or unknown ones
        (and for invalid wasm, logged: the run then reports the error)."""
        import asyncio

        engine = _engine_for(self._engine_flags)

        def compile_one(layer: WasmLayer) -> bytes | None:
            import logging

            import wasmtime

            if layer.precompiled or _kind(layer.data) not in ("module", "component"):
                return None
            try:
                return bytes(_compile(engine, layer.data, layer.digest).serialize())
            except wasmtime.WasmtimeError as exc:
                logging.getLogger(__name__).warning(
                    "cannot precompile layer %s: %s", layer.digest, exc
                )
                return None

        return await asyncio.to_thread(lambda: [compile_one(layer) for layer in layers])


@functools.cache
def _cache_key(flags: tuple[tuple[str, bool | int | str], ...]) -> str:
    import hashlib
    import importlib.metadata

    import wasmtime

    artifact = bytes(wasmtime.Module(_engine(flags), b"\0asm\x01\0\0\0").serialize())
    digest = hashlib.sha256(_elf_section(artifact, b".wasmtime.engine") or artifact)
    return f"wasmtime-py-{importlib.metadata.version('wasmtime')}-{digest.hexdigest()[:32]}"


def _elf_section(elf: bytes, name: bytes) -> bytes | None:
    """The contents of section ``name`` of a little-endian ELF64 file, if present."""
    import struct

    try:
        (shoff,) = struct.unpack_from("<Q", elf, 40)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 58)
        headers = [struct.unpack_from("<I20xQQ", elf, shoff + i * shentsize) for i in range(shnum)]
        names = headers[shstrndx][1]
        for name_at, offset, size in headers:
            start = names + name_at
            if elf[start : elf.index(b"\0", start)] == name:
                return elf[offset : offset + size]
    except (struct.error, IndexError, ValueError):
        pass
    return None


class WasmtimeShim(Shim):
    """The ``io.containerd.wasmtime.v1`` shim: ``ShimCli.run(WasmtimeShim)``."""

    @classmethod
    def name(cls) -> str:
        """``wasmtime``."""
        return "wasmtime"

    @classmethod
    def version(cls) -> Version:
        """This distribution's version; the revision names the wasmtime-py in use (there is
        no ``git describe`` at install time)."""
        from importlib import metadata

        def of(dist: str) -> str:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                return "<none>"

        return Version(of("containerd-shim-wasmtime"), f"wasmtime-py {of('wasmtime')}")

    @classmethod
    def sandbox(cls) -> type[Sandbox]:
        """:class:`WasmtimeSandbox`."""
        return WasmtimeSandbox

    @classmethod
    async def compiler(cls) -> Compiler | None:
        """:class:`WasmtimeCompiler`: OCI layers are precompiled and cached by containerd."""
        return WasmtimeCompiler()
