"""Real cgroups for tests (root): create ``cgtest-<random>`` cgroups and remove them again.

The ``make_cgroup`` fixture (registered in conftest.py) removes every cgroup it made even
when a test fails: its processes are SIGKILLed, then the directories are deleted in every
hierarchy.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from containerd_shimkit.container.cgroups import Cgroup, CgroupNotFoundError

MakeCgroup = Callable[..., Cgroup]


def wait_empty(cg: Cgroup, timeout: float = 10.0) -> None:
    """Wait until no process is left in ``cg`` (or it is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not cg.pids():
                return
        except CgroupNotFoundError:
            return
        time.sleep(0.02)
    raise AssertionError(f"processes left in {cg}: {cg.pids()}")


def cgroup_maker() -> Iterator[MakeCgroup]:
    """Body of the ``make_cgroup`` fixture: yields a factory, then cleans up."""
    created: list[tuple[Cgroup, list[Path]]] = []

    def make(
        resources: dict[str, Any] | None = None, *, path: str | None = None, name: str = ""
    ) -> Cgroup:
        name = name or f"cgtest-{uuid.uuid4().hex[:12]}"
        cg = Cgroup.for_container(name if path is None else path, name, systemd=False)
        # Parents this test creates (for nested absolute paths) are removed by the fixture too.
        extra = [p.parent for p in cg.paths.values() if p.parent.name.startswith("cgtest-")]
        created.append((cg, [p for p in extra if not p.exists()]))
        cg.create(resources)
        return cg

    yield make

    problems = []
    for cg, parents in reversed(created):
        try:
            cg.kill_all(signal.SIGKILL)
            wait_empty(cg)
        except CgroupNotFoundError:
            pass
        except (OSError, AssertionError) as exc:
            problems.append(f"kill {cg}: {exc}")
        try:
            cg.delete()
        except OSError as exc:
            problems.append(f"delete {cg}: {exc}")
        for parent in dict.fromkeys(parents):
            try:
                parent.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"rmdir {parent}: {exc}")
        problems += [f"left behind: {p}" for p in cg.paths.values() if p.exists()]
    assert not problems, problems
