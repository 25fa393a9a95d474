"""``ShimCli.run``: the one-line entry point of an engine shim."""

from __future__ import annotations

from containerd_shimkit.cli.main import ShimSpec, run

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import NoReturn

    from containerd_shimkit import CleanupRequest
    from containerd_shimkit.zygote import Handler

    from .shim import Shim
    from .shim_config import Config


class ShimCli:
    """Runs a :class:`Shim` as a containerd shim binary."""

    @staticmethod
    def run(shim: type[Shim], config: Config | None = None) -> NoReturn:
        """Handle the command line containerd uses (``start``, ``delete``, the daemon, -v).

        An engine's ``main`` is just ``ShimCli.run(MyShim)``.
        """
        # Not ``config or Config()``: Config is a dataclass, and start/delete skip that import.
        log_level = config.default_log_level if config else "info"
        setup_logging = not config.no_setup_logger if config else True

        def version() -> tuple[str, str]:
            v = shim.version()
            return v.version, v.revision

        def instance() -> type:
            from .instance import instance_class

            return instance_class(shim)

        def prepare_daemon() -> None:
            import logging

            from containerd_shimkit import Zygote
            from containerd_shimkit.cli import zygote_command

            from .executor import zygote_factory
            from .instance import WasmInstance

            level = logging.getLogger().level
            WasmInstance.zygote = Zygote.fork(
                lambda: zygote_factory(shim, level), restart=zygote_command
            )

        def zygote_handler(level: int) -> Handler:
            # A replacement zygote, exec'd after the daemon's first one died.
            from .executor import zygote_factory

            return zygote_factory(shim, level)

        async def identify_daemon(argv: list[str]) -> None:
            # A spare daemon forked its zygote before it knew its pod: pass it on.
            import logging

            from containerd_shimkit import logs

            from .instance import WasmInstance

            if WasmInstance.zygote is not None:
                level = logging.getLogger().level
                await WasmInstance.zygote.identify(argv, logs.pod_id.get(), level, 2)

        def warm() -> None:
            # What the daemon and the zygote import, and the engine (no threads start).
            import encodings.ascii  # noqa: F401 - the import is the point

            from containerd_shimkit.container import cgroup_resources  # noqa: F401

            from . import executor, instance  # noqa: F401
            from .module_cache import learn_cache_key
            from .node_cache import NodeCache

            shim.sandbox().preload()
            if NodeCache.from_env(shim.name()) is not None:
                learn_cache_key(shim)  # in a child: daemons and zygotes inherit the key

        def cleanup(request: CleanupRequest) -> int:
            from .cleanup import cleanup as wasm_cleanup

            return wasm_cleanup(request)

        run(
            ShimSpec(
                name=f"containerd-shim-{shim.name()}-v1",
                version=version,
                instance=instance,
                prepare_daemon=prepare_daemon,
                cleanup=cleanup,
                default_log_level=log_level,
                setup_logging=setup_logging,
                warm=warm,
                identify_daemon=identify_daemon,
                zygote_handler=zygote_handler,
            )
        )
