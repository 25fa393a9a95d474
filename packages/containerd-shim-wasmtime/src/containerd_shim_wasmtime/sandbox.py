"""``WasmtimeSandbox``: runs a container's WASI workload with wasmtime, in its init process."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

from containerd_shim_wasm import (
    CannotHandle,
    FileSource,
    OciSource,
    RuntimeContext,
    Sandbox,
    env_path,
)

from .engine import (
    ENGINE_FLAGS,
    WASM_MAGIC,
    EngineFlags,
    engine_for,
    exports_http_handler,
    kind_of,
    load_program,
)

if TYPE_CHECKING:
    import threading

    import wasmtime
    from wasmtime.component import Component

    from .http.container import ContainerProxy


class _Cancelled(Exception):
    """The worker saw the cancellation before calling the guest (the result is dropped)."""


_T = TypeVar("_T")


async def _in_thread(
    fn: Callable[[], _T], stop: Callable[[], None] | None = None, grace: float = 0.0
) -> _T:
    """Run blocking ``fn`` in a daemon thread; on cancellation call ``stop``, give the thread
    ``grace`` seconds to finish, then re-raise ``CancelledError``.

    Not ``asyncio.to_thread``: a guest blocked in a host call (``sleep``, a read on stdin)
    cannot be interrupted, and ``asyncio.run`` joins default-executor threads at exit, which
    would keep a cancelled embedder's process alive. A daemon thread dies with the process.
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

    A component exporting ``wasi:http/incoming-handler@0.2.x`` (a ``wasi:http/proxy``) is
    served instead, as ``wasmtime serve`` and runwasi do: HTTP/1.1 on
    ``WASMTIME_HTTP_PROXY_SOCKET_ADDR`` (default ``0.0.0.0:8080``) in the container's
    network namespace, a fresh instance per request, on the proxy engine
    (:mod:`containerd_shim_wasmtime.http`); SIGTERM/SIGINT drain it (:meth:`stop_blocking`).
    """

    #: Engine settings; kept identical to :class:`WasmtimeCompiler`. A subclass may use
    #: :data:`~containerd_shim_wasmtime.engine.INTERRUPTIBLE_FLAGS` (tests do).
    _engine_flags: ClassVar[EngineFlags] = ENGINE_FLAGS
    #: Host directory preopened as the guest's ``/``. This runs after ``pivot_root``, so
    #: ``/`` is the container's rootfs; tests point it at a temporary directory.
    _preopen_host_dir: str = "/"
    #: Seconds a cancelled ``run_wasi`` waits for an epoch-interrupted guest to unwind
    #: (without epoch interruption nothing would end it: the call returns at once).
    _cancel_grace: float = 1.0
    #: The proxy being served by this sandbox, if its workload is one.
    _proxy: ContainerProxy | None = None

    @classmethod
    def _interruptible(cls) -> bool:
        return bool(cls._engine_flags.get("epoch_interruption"))

    @classmethod
    def preload(cls) -> None:
        """Import wasmtime and create the shared Engine (no threads start)."""
        import wasmtime.component  # noqa: F401 - the import is the point

        engine_for(cls._engine_flags)

    @classmethod
    def preload_for(cls, module: bytes) -> None:
        """Before the zygote forks a ``wasi:http/proxy`` container: the proxy server's
        modules (httpx, h11, ssl) and TLS roots, which an init cannot import or read after
        pivot_root. Only then: they cost a zygote ~10 MiB and ~130 ms, which pods that serve
        no HTTP should not pay (measured with ``benchmarks/memory.py``)."""
        if exports_http_handler(module):
            from .http import container

            container.preload()

    async def run_wasi(self, ctx: RuntimeContext) -> int:
        """Run the entrypoint; see :meth:`Sandbox.run_wasi` for exit codes and cancellation.

        A ``wasi:cli/run`` component returning ``err`` exits 1, as ``wasmtime run`` does.
        Cancelled, it raises ``CancelledError`` at once; the guest thread (a daemon thread)
        is abandoned and ends with the process, unless the engine has epoch interruption,
        which stops a guest that is running wasm code (not one blocked in a host call).
        """
        import threading

        engine = engine_for(self._engine_flags)
        cancelled = threading.Event()
        interruptible = self._interruptible()

        def stop() -> None:
            if self._proxy is not None:
                import signal

                self._proxy.stop(signal.SIGTERM)
            # Order matters: the worker sets its epoch deadline before checking the flag,
            # so either it sees the flag or this increment passes its deadline.
            cancelled.set()
            if interruptible:
                engine.increment_epoch()

        grace = self._cancel_grace if interruptible else 0.0
        return await _in_thread(lambda: self._run(engine, ctx, cancelled), stop, grace)

    def run_wasi_blocking(self, ctx: RuntimeContext) -> int:
        """:meth:`run_wasi` on the calling thread, with no event loop (what the container
        init calls; see :meth:`Sandbox.run_wasi_blocking`)."""
        import threading

        return self._run(engine_for(self._engine_flags), ctx, threading.Event())

    def stop_blocking(self, signum: int) -> bool:
        """A served proxy drains (see :class:`~containerd_shim_wasmtime.http.container.
        ContainerProxy`): ``run_wasi_blocking`` then returns 0, or 128 + ``signum`` if
        requests were cut. Anything else, a second signal, or a proxy still compiling,
        stops at once (``False``)."""
        return self._proxy is not None and self._proxy.stop(signum)

    async def can_handle(self, ctx: RuntimeContext) -> None:
        """Accept one OCI layer, or a file wasmtime validates as a core module, a component
        (preamble only) or WAT text.

        Raises:
            CannotHandle: naming the path and why, e.g. ``/app/x.wasm is not a wasm
                module: bad magic number b'MZ\\x90\\x00'`` or the WAT error's line:column.
        """
        todo = self._to_check(ctx)
        if todo is not None:
            data, path = todo
            _refuse(await _in_thread(lambda: _check(data, path, self._engine_flags)))

    def can_handle_blocking(self, ctx: RuntimeContext) -> None:
        """:meth:`can_handle` on the calling thread (for the container init)."""
        todo = self._to_check(ctx)
        if todo is not None:
            _refuse(_check(*todo, self._engine_flags))

    @staticmethod
    def _to_check(ctx: RuntimeContext) -> tuple[bytes, str] | None:
        """The module and its path for :func:`_check`; None when there is nothing to check."""
        source = ctx.entrypoint().source
        if isinstance(source, FileSource) and source.compiled is not None:
            return None  # the zygote compiled exactly this file: it is a valid module
        try:
            if isinstance(source, OciSource):
                _check_proxy_config(source.read(), ctx)  # exactly one layer
                return None
            data, path, _ = _read_source(ctx)
        except (OSError, ValueError) as exc:
            raise CannotHandle(f"{exc}; args[0] must be a path to a wasm module") from exc
        _check_proxy_config(data, ctx)
        return data, path

    def _run(self, engine: wasmtime.Engine, ctx: RuntimeContext, cancelled: threading.Event) -> int:
        import wasmtime
        from wasmtime.component import Component

        entrypoint = ctx.entrypoint()
        data, where, trusted = _read_source(ctx)
        kind = kind_of(data)
        if exports_http_handler(data):
            return self._serve(data, ctx, where)
        if kind in ("precompiled-module", "precompiled-component") and not trusted:
            # Deserializing is loading native code: only artifacts from the shim's own
            # precompile cache are trusted, never a file from the image.
            raise ValueError(f"{where} is a precompiled wasmtime artifact from the image")
        program = load_program(engine, data, where)
        if isinstance(program, Component) and _is_proxy(engine, program):
            # An artifact (or WAT) of a proxy component: the zygote's compiler declines
            # proxies, so only artifacts cached by an older shim get here. Never load it
            # into the proxy engine (other flags): serve the wasm it was made from.
            return self._serve(_proxy_wasm(ctx, data), ctx, where)

        wasi = wasmtime.WasiConfig()
        wasi.argv = ctx.args()
        wasi.env = [item.partition("=")[::2] for item in ctx.envs()]  # never the shim's env
        wasi.inherit_stdin()
        wasi.inherit_stdout()
        wasi.inherit_stderr()
        wasi.preopen_dir(self._preopen_host_dir, "/")
        store = wasmtime.Store(engine)
        store.set_wasi(wasi)
        if self._interruptible():
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

    def _serve(self, wasm: bytes, ctx: RuntimeContext, where: str) -> int:
        from .http.container import ContainerProxy

        self._proxy = ContainerProxy()
        return self._proxy.run(wasm, ctx.envs(), where)


def _is_proxy(engine: wasmtime.Engine, component: Component) -> bool:
    return any(
        name.startswith("wasi:http/incoming-handler@") for name in component.type.exports(engine)
    )


def _proxy_wasm(ctx: RuntimeContext, data: bytes) -> bytes:
    """The wasm binary of a proxy component that reached ``_run`` as WAT or an artifact."""
    import wasmtime

    source = ctx.entrypoint().source
    if kind_of(data) in ("precompiled-module", "precompiled-component"):
        if not isinstance(source, FileSource):
            raise ValueError("a wasi:http/proxy OCI layer was precompiled for another engine")
        data = source.read(env_path(ctx.envs()))
    if kind_of(data) is None:
        data = bytes(wasmtime.wat2wasm(data))
    return data


def _check_proxy_config(data: bytes, ctx: RuntimeContext) -> None:
    """Fail Create, not Start, on bad ``WASMTIME_HTTP_PROXY_*`` settings of a proxy."""
    if exports_http_handler(data):
        from .http import ProxyConfig

        try:
            ProxyConfig.from_env(dict(item.partition("=")[::2] for item in ctx.envs()))
        except ValueError as exc:
            raise CannotHandle(f"wasi:http/proxy settings: {exc}") from exc


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


def _refuse(problem: str | None) -> None:
    if problem is not None:
        raise CannotHandle(problem)


def _check(data: bytes, path: str, flags: EngineFlags) -> str | None:
    """Why ``data`` (the file at ``path``) is not something wasmtime runs, or ``None``."""
    import wasmtime

    kind = kind_of(data)
    if kind is None and data[:4] != WASM_MAGIC:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return f"{path} is not a wasm module: bad magic number {data[:4]!r}"
        try:
            data = bytes(wasmtime.wat2wasm(text))
        except wasmtime.WasmtimeError as exc:
            return f"{path} is neither a wasm binary nor valid WAT: {_wat_error(str(exc), path)}"
        kind = kind_of(data)
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
        wasmtime.Module.validate(engine_for(flags, parallel_compilation=False), data)
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
