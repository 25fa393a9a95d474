"""The ``Sandbox``: runs one container's wasm workload, inside the container."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from .context import FileSource, OciSource, RuntimeContext, env_path

WASM_MAGIC = b"\0asm"


class CannotHandle(Exception):
    """The entrypoint is not something this sandbox can run; the message says why."""


@dataclass(frozen=True)
class ResourceLimits:
    """Limits from the container's OCI spec that an engine can also enforce itself.

    The cgroup enforces them for the whole process; an engine that applies
    ``memory_bytes`` to its store makes the guest see a failed allocation instead of
    the whole container being OOM-killed.
    """

    memory_bytes: int | None = None


class Sandbox(ABC):
    """Runs a wasm workload. One instance is made per container, inside the container.

    Subclasses must be constructible without arguments. Everything here runs in the
    container's init process after its rootfs, namespaces and cgroup are set up.
    """

    #: Set by the shim before ``can_handle``/``run_wasi`` are called.
    limits: ResourceLimits = ResourceLimits()

    @classmethod
    def preload(cls) -> None:
        """Import the engine and warm what can be shared, once, in the zygote.

        Containers are forked from the zygote, so whatever this loads is paid for once per
        shim and shared copy-on-write by every container. The default does nothing.
        """
        return

    @classmethod
    def preload_for(cls, module: bytes) -> None:
        """In the zygote, before it forks a container that will run ``module`` (a wasm
        binary): load what running *this kind* of workload needs beyond :meth:`preload`.

        The container's init cannot import anything after ``pivot_root``, and what only
        some workloads need (an HTTP server, say) should not cost every pod. Loaded once
        per zygote, then shared with its later containers. The default does nothing.
        """
        return

    @abstractmethod
    async def run_wasi(self, ctx: RuntimeContext) -> int:
        """Run the workload and return its exit code.

        WASI ``proc_exit(n)`` returns ``n``; a normal return from the entry function
        returns 0. Raise for a trap or an engine error: the caller turns that into 137.

        The guest's stdio is the process's fds 0, 1 and 2. When the container receives
        SIGTERM or SIGINT this coroutine is cancelled: stop the guest promptly (e.g. by
        epoch interruption) and let ``CancelledError`` propagate; the exit code becomes
        128 + the signal number. Blocking engine calls must therefore run off the event
        loop's thread (``asyncio.to_thread``).
        """

    def run_wasi_blocking(self, ctx: RuntimeContext) -> int:
        """Run the workload to its end on the calling thread; what the container init calls.

        The init runs this in a thread of its own and answers SIGTERM and SIGINT itself
        (the exit code becomes 128 + the signal; the thread ends with the process), so it
        need not be cancellable. The default drives :meth:`run_wasi` with ``asyncio.run``.
        An engine whose guest runs in one blocking call should override it: every container
        is then spared an event loop, about 0.9 MiB of private memory each (measured with
        wasmtime).
        """
        import asyncio

        return asyncio.run(self.run_wasi(ctx))

    def stop_blocking(self, signum: int) -> bool:
        """SIGTERM or SIGINT reached the container while :meth:`run_wasi_blocking` runs.

        Called on the init's main thread (in its signal handler, so it must only hand the
        request over, e.g. with ``loop.call_soon_threadsafe``, and return at once), once per
        signal. Return ``True`` when the workload will now end by itself (a server that
        drains its requests): :meth:`run_wasi_blocking`'s result is then the exit code. The
        default, ``False``, ends the container at once with 128 + ``signum``.
        """
        return False

    async def can_handle(self, ctx: RuntimeContext) -> None:
        """Check at Create time that the entrypoint is a module this sandbox can run.

        The default accepts OCI wasm layers, files starting with the ``\\0asm`` magic, and
        files that parse as WAT text (balanced s-expressions headed by ``module`` or
        ``component``; an engine should override this to validate fully).

        Raises:
            CannotHandle: naming the path it looked at and why it was refused.
        """
        check_entrypoint(ctx)

    def can_handle_blocking(self, ctx: RuntimeContext) -> None:
        """:meth:`can_handle` on the calling thread, for the container init (no event loop).

        The default runs an overridden :meth:`can_handle` with ``asyncio.run``; an engine
        that overrides ``can_handle`` should override this too, for the reason given in
        :meth:`run_wasi_blocking`.
        """
        if type(self).can_handle is Sandbox.can_handle:
            check_entrypoint(ctx)
            return
        import asyncio

        asyncio.run(self.can_handle(ctx))


def check_entrypoint(ctx: RuntimeContext) -> None:
    """The engine-independent check behind :meth:`Sandbox.can_handle` (see there)."""
    entrypoint = ctx.entrypoint()
    source = entrypoint.source
    if isinstance(source, OciSource):
        source.read()  # raises for a number of layers other than one
        return
    assert isinstance(source, FileSource)
    try:
        path = source.resolve(env_path(ctx.envs()))
        with open(path, "rb") as f:
            head = f.read(4)
            if head == WASM_MAGIC:
                return
            text = head + f.read()
    except OSError as exc:
        raise CannotHandle(f"{exc.strerror or exc}; args[0] must name a wasm module") from exc
    problem = wat_problem(text)
    if problem:
        raise CannotHandle(
            f"{path} is neither a wasm binary (no \\0asm magic) nor WAT text: {problem}"
        )


def wat_problem(data: bytes) -> str | None:
    """Return why ``data`` is not WAT text, or ``None`` when it looks like WAT.

    This checks the s-expression structure only (strings, comments and parentheses), so it
    needs no engine; the engine reports semantic errors when it compiles the module.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "it is binary data"
    depth = 0
    first_atom: str | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith(";;", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("(;", i):
            end = text.find(";)", i + 2)
            if end < 0:
                return "unterminated block comment"
            i = end + 2
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                return "unterminated string"
            i = j + 1
        elif c == "(":
            depth += 1
            if first_atom is None:
                j = i + 1
                while j < n and not text[j].isspace() and text[j] not in "()":
                    j += 1
                first_atom = text[i + 1 : j]
                if first_atom not in ("module", "component"):
                    return f"it starts with ({first_atom!s}, not (module or (component"
            i += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return "unbalanced ')'"
            i += 1
        elif c.isspace() or depth > 0:
            i += 1
        else:
            return f"unexpected text {text[i : i + 20]!r} outside of the module"
    if first_atom is None:
        return "it is empty"
    if depth:
        return "unbalanced '('"
    return None
