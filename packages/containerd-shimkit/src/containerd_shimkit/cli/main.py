"""``run(spec)``: the single entry point of a shim binary built on this toolkit."""

from __future__ import annotations

import os
import sys

from .flags import UsageError, parse

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~6 ms)
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import NoReturn

    from ..task.instance import Instance
    from ..zygote import Handler
    from .delete import CleanupHook


class ShimSpec:
    """What the toolkit needs to know about a shim. Everything heavy is loaded lazily.

    Attributes:
        name: the shim's name, printed by ``-v`` (e.g. ``containerd-shim-wasmtime-v1``).
        version: returns ``(version, revision)``; called only for ``-v`` and ``-info``.
        instance: returns the :class:`Instance` class; called only in the daemon.
        prepare_daemon: runs in the daemon after its heavy imports but before the event loop
            starts, while it has a single thread (fork a zygote here).
        cleanup: extra cleanup for the ``delete`` action; returns the init pid or 0.
        default_log_level: the daemon's level without ``-debug`` or ``$SHIM_LOG_LEVEL``.
        setup_logging: configure the root logger for containerd's log FIFO (turn off when
            the embedding program configures logging itself).
        warm: imports and preloads what the daemon and its zygote need (the shim's Instance
            module, the engine). Setting it turns on the template
            (:mod:`containerd_shimkit.cli.template`), which runs it once per containerd and
            then forks pre-warmed daemons for new pods.
        zygote_handler: builds the request handler of a replacement zygote (given the log
            level), in a process started by exec with the ``zygote`` action after the
            daemon's zygote died (see :class:`containerd_shimkit.Zygote`).
        identify_daemon: awaited in a daemon that was started before it knew its pod (the
            template's spare), once it does and before it serves: pass the identity on to
            the processes ``prepare_daemon`` forked (:meth:`Zygote.identify`). Gets the
            daemon's command line; the log is on fd 2 and ``logs.pod_id`` is set. Without
            it the template keeps no spare.

    A plain class, not a dataclass: ``dataclasses`` costs ~15 ms to import, and every
    ``start`` and ``delete`` builds one.
    """

    def __init__(
        self,
        name: str,
        version: Callable[[], tuple[str, str]],
        instance: Callable[[], type[Instance]],
        prepare_daemon: Callable[[], None] | None = None,
        cleanup: CleanupHook | None = None,
        default_log_level: str = "info",
        setup_logging: bool = True,
        warm: Callable[[], None] | None = None,
        identify_daemon: Callable[[list[str]], Awaitable[None]] | None = None,
        zygote_handler: Callable[[int], Handler] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.instance = instance
        self.prepare_daemon = prepare_daemon
        self.cleanup = cleanup
        self.default_log_level = default_log_level
        self.setup_logging = setup_logging
        self.warm = warm
        self.identify_daemon = identify_daemon
        self.zygote_handler = zygote_handler

    def __repr__(self) -> str:
        return f"ShimSpec(name={self.name!r})"


#: The action of a replacement zygote (never used by containerd).
ZYGOTE_ACTION = "zygote"


def version_text(spec: ShimSpec, program: str) -> str:
    """What ``-v`` prints (the layout of containerd's and runwasi's shims)."""
    version, revision = spec.version()
    return f"{program}:\n  Runtime: {spec.name}\n  Version: {version}\n  Revision: {revision}\n"


def info_bytes(spec: ShimSpec) -> bytes:
    """``-info`` (containerd 2.x): a serialized ``containerd.types.RuntimeInfo``."""
    from ..api import types_pb2

    version, revision = spec.version()
    info = types_pb2.RuntimeInfo(
        name=spec.name, version=types_pb2.RuntimeVersion(version=version, revision=revision)
    )
    return info.SerializeToString()


def _exit_without_teardown(code: int) -> NoReturn:
    """Flush stdio and exit without the interpreter's teardown (~2 ms of finalizing
    modules), which start and delete, run twice per container, do not need: they hold
    nothing that must be closed or flushed but stdio."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


#: How ``start`` and ``delete`` end; a test that runs them in-process replaces it.
exit_now: Callable[[int], NoReturn] = _exit_without_teardown


def run(spec: ShimSpec, argv: list[str] | None = None) -> NoReturn:
    """Parse the command line and run ``start``, ``delete``, ``-v``, ``-info`` or the daemon."""
    argv = sys.argv if argv is None else argv
    program = os.path.abspath(argv[0])
    try:
        flags = parse(argv[1:])
    except UsageError as exc:
        sys.stderr.write(f"{os.path.basename(program)}: {exc}\n")
        sys.exit(2)
    if flags.v or flags.version:
        sys.stdout.write(version_text(spec, program))
        sys.exit(0)
    if flags.info:
        sys.stdin.buffer.read()
        sys.stdout.buffer.write(info_bytes(spec))
        sys.exit(0)
    if flags.action == "start":
        from .start import main_start

        exit_now(main_start(flags, sys.stdin.buffer.read(), program, spec.warm is not None))
    if flags.action == "delete":
        from .delete import main_delete

        exit_now(main_delete(flags, spec.cleanup))
    if flags.action == "template":
        from .template import main_template

        sys.exit(main_template(flags, spec, program))
    if flags.action == ZYGOTE_ACTION:
        from .daemon import main_zygote

        sys.exit(main_zygote(flags, spec))
    if flags.action:
        sys.stderr.write(f"{os.path.basename(program)}: unknown action {flags.action!r}\n")
        sys.exit(2)
    from .daemon import main_serve

    sys.exit(main_serve(flags, spec, program))
