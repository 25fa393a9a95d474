"""A test-only shim built on containerd_shimkit: it runs a container's ``args`` as a plain
host process (no namespaces, no rootfs). Scaffolding for the toolkit's integration tests,
not a runtime anyone should ship.

Runtime name ``io.containerd.pyhost.v1`` → binary ``containerd-shim-pyhost-v1``
(:func:`install` writes that script).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Self

from containerd_shimkit import (
    REAPER,
    ExitStatus,
    InstanceConfig,
    InvalidArgument,
    NotFound,
    ShimSpec,
    run,
)

RUNTIME = "io.containerd.pyhost.v1"
BINARY = "containerd-shim-pyhost-v1"


def _open_stdio(path: str, flags: int) -> int:
    if not path:
        return os.open(os.devnull, os.O_RDWR)
    # O_RDWR never blocks on a FIFO and keeps the pipe writable if containerd restarts.
    return os.open(path, flags)


class HostProcessInstance:
    """Runs ``process.args`` from the bundle's config.json on the host."""

    def __init__(self, id: str, args: list[str], env: list[str], fds: list[int]) -> None:
        self.id = id
        self.args = args
        self.env = env
        self.fds = fds
        self._pid = 0
        self._exit: asyncio.Future[ExitStatus] | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @classmethod
    async def new(cls, id: str, config: InstanceConfig) -> Self:
        try:
            spec = json.loads((config.bundle / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"cannot read {config.bundle}/config.json: {exc}") from exc
        process = spec.get("process") or {}
        args = process.get("args") or []
        if not args:
            raise InvalidArgument("process.args is empty")
        fds = [
            _open_stdio(config.stdin, os.O_RDONLY | os.O_NONBLOCK),
            _open_stdio(config.stdout, os.O_RDWR),
            _open_stdio(config.stderr, os.O_RDWR),
        ]
        os.set_blocking(fds[0], True)
        return cls(id, args, process.get("env") or [], fds)

    async def start(self) -> int:
        env = dict(item.partition("=")[::2] for item in self.env)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        try:
            self._pid = os.posix_spawnp(
                self.args[0],
                self.args,
                env,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(self.fds)],
                setsid=True,
            )
        except OSError as exc:
            raise InvalidArgument(f"cannot run {self.args[0]}: {exc.strerror}") from exc
        self._exit = REAPER.wait_for(self._pid)
        return self._pid

    async def kill(self, signal: int, all: bool = False) -> None:
        if not self._pid or (self._exit is not None and self._exit.done()):
            raise NotFound("process already finished")
        try:
            if all:
                os.killpg(self._pid, signal)
            else:
                os.kill(self._pid, signal)
        except ProcessLookupError as exc:
            raise NotFound("process already finished") from exc

    async def wait(self) -> ExitStatus:
        while self._exit is None:
            await asyncio.sleep(0.01)
        return await asyncio.shield(self._exit)

    async def delete(self) -> None:
        if self._exit is not None and not self._exit.done():
            os.kill(self._pid, signal.SIGKILL)
            await self._exit
        for fd in self.fds:
            os.close(fd)
        self.fds = []


SPEC = ShimSpec(
    name=BINARY,
    version=lambda: ("0.0.0-test", "<none>"),
    instance=lambda: HostProcessInstance,
)


def main() -> None:
    run(SPEC)


def install(bin_dir: Path) -> Path:
    """Write the ``containerd-shim-pyhost-v1`` script into ``bin_dir`` and return its path."""
    root = Path(__file__).resolve().parents[2]
    paths = [str(root), *(str(p) for p in sorted((root / "packages").glob("*/src")))]
    script = bin_dir / BINARY
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path[:0] = {paths!r}\n"
        "from tests.shims.host_shim import main\n"
        "main()\n"
    )
    script.chmod(0o755)
    return script
