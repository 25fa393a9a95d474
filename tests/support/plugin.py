"""pytest fixtures for tests that run a real containerd (registered from ``tests/conftest.py``).

Fixtures:

``containerd_binaries`` (session)
    The :class:`ContainerdBinaries` of ``$CONTAINERD_VERSION`` (``1.6`` default, ``1.7``,
    ``2.1``), fetched into the cache on first use. Skips when not root.
``containerd_factory`` (function)
    ``containerd_factory(cri=…, extra_path=[…], check_leaks=True, …)`` starts a
    :class:`PrivateContainerd`; at teardown every one is stopped and the test errors if one
    leaked anything (unless ``check_leaks=False`` or ``@pytest.mark.allow_leftovers``).
``containerd`` (function) / ``module_containerd`` (module)
    A started private containerd without CRI.
``cri_containerd`` (function)
    A :class:`CriEnv`: containerd with the CRI plugin, a connected :class:`CriClient`, a pod
    log dir and an optional bridge network. Configure it through indirect parametrization
    with a :class:`CriConfig` or a dict of its fields::

        @pytest.mark.parametrize("cri_containerd", [{"handlers": {"wasm": RuntimeHandler(
            "io.containerd.wasmtime.v1")}}], indirect=True)
        def test_x(cri_containerd): ...

``containerd_leak_check`` (function)
    After the test, fails if any live private containerd (e.g. a module-scoped one) has
    leftovers. Use with ``pytestmark = pytest.mark.usefixtures("containerd_leak_check")``.

``requires_root`` is a skip marker for tests that need root.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .containerd import (
    CRI_NAMESPACE,
    ContainerdBinaries,
    ContainerdError,
    CriConfig,
    PrivateContainerd,
    TomlValue,
    live_instances,
    load_fetch_module,
    resolve_binaries,
    selected_series,
)
from .cri import BridgeNetwork, CriApi, CriClient, container_config, load_cri_api, pod_config

IS_ROOT = os.geteuid() == 0
requires_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (namespaces, mounts, cgroups)")


def skip_unless_root() -> None:
    """Skip the calling test or fixture unless running as root."""
    if not IS_ROOT:
        pytest.skip("needs root (namespaces, mounts, cgroups)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_leftovers: the test may leave containerd leftovers (not checked)"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"containerd under test: {selected_series()} (CONTAINERD_VERSION)"


@pytest.fixture(scope="session")
def containerd_binaries() -> ContainerdBinaries:
    """The selected containerd version's binaries (fetched once into the cache)."""
    skip_unless_root()
    series = selected_series()
    fetch = load_fetch_module()
    if series == fetch.SYSTEM_SERIES and not Path(fetch.SYSTEM_BIN, "containerd").exists():
        pytest.skip("containerd is not installed (apt-get install containerd runc)")
    try:
        return resolve_binaries(series)
    except (fetch.FetchError, ContainerdError, OSError) as exc:
        # An explicitly selected version that cannot be had is an error, not a skip: a CI
        # matrix entry must not pass by testing nothing.
        pytest.fail(f"containerd {series} unavailable: {exc}", pytrace=False)


def _allow_leftovers(request: pytest.FixtureRequest) -> bool:
    node = getattr(request, "node", None)
    return node is not None and node.get_closest_marker("allow_leftovers") is not None


class ContainerdFactory:
    """Starts private containerds and stops them all (checking for leaks) at teardown."""

    def __init__(self, binaries: ContainerdBinaries, log_dir: Path) -> None:
        self.binaries = binaries
        self.log_dir = log_dir
        self.started: list[tuple[PrivateContainerd, bool]] = []

    def __call__(
        self,
        *,
        cri: CriConfig | None = None,
        extra_path: Sequence[Path | str] = (),
        log_level: str = "debug",
        extra_config: Mapping[str, TomlValue] | None = None,
        env: Mapping[str, str] | None = None,
        check_leaks: bool = True,
        binaries: ContainerdBinaries | None = None,
    ) -> PrivateContainerd:
        """Start a private containerd (its log goes to the test's tmp dir)."""
        n = len(self.started)
        ctd = PrivateContainerd(
            binaries or self.binaries,
            cri=cri,
            extra_path=extra_path,
            log_level=log_level,
            log_path=self.log_dir / f"containerd-{n}.log",
            extra_config=extra_config,
            env=env,
        )
        ctd.start()
        self.started.append((ctd, check_leaks))
        return ctd

    def stop_all(self) -> list[str]:
        """Stop every instance; returns the leak reports of those that are checked."""
        problems = []
        for ctd, check in reversed(self.started):
            found = ctd.stop()
            if check and found:
                problems.append(
                    f"containerd {ctd.version} ({ctd.log_path}) left:\n  " + "\n  ".join(found)
                )
        self.started.clear()
        return problems


@pytest.fixture
def containerd_factory(
    containerd_binaries: ContainerdBinaries, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ContainerdFactory]:
    """Start private containerds with custom options; all are stopped and leak-checked."""
    factory = ContainerdFactory(containerd_binaries, tmp_path)
    yield factory
    problems = factory.stop_all()
    if problems and not _allow_leftovers(request):
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def containerd(containerd_factory: ContainerdFactory) -> PrivateContainerd:
    """A private containerd without CRI (stopped and leak-checked after the test)."""
    return containerd_factory()


@pytest.fixture(scope="module")
def module_containerd(
    containerd_binaries: ContainerdBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateContainerd]:
    """One private containerd without CRI shared by a module's tests (leak-checked at end)."""
    factory = ContainerdFactory(containerd_binaries, tmp_path_factory.mktemp("containerd"))
    yield factory()
    problems = factory.stop_all()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def containerd_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the test: every live private containerd must have no leftovers."""
    yield
    if _allow_leftovers(request):
        return
    problems = []
    for ctd in live_instances():
        found = ctd.leftovers(wait=3.0)
        if found:
            problems.append(f"containerd {ctd.version}:\n  " + "\n  ".join(found))
    if problems:
        pytest.fail("leftovers after test:\n" + "\n".join(problems), pytrace=False)


# --------------------------------------------------------------------------- CRI


@dataclass
class Pod:
    """A pod sandbox started through CRI."""

    id: str
    config: Any
    host_network: bool
    log_directory: Path


@dataclass
class CriEnv:
    """containerd with CRI, a client, and what a test needs to run pods like kubelet does."""

    containerd: PrivateContainerd
    client: CriClient
    api: CriApi
    log_root: Path
    network: BridgeNetwork | None = None
    pods: list[Pod] = field(default_factory=list)

    def import_image(self, tar: Path) -> None:
        """Import an OCI archive into namespace ``k8s.io``, where CRI looks for images."""
        self.containerd.import_image(tar, namespace=CRI_NAMESPACE)

    def pod_network(self, subnet: str | None = None, timeout: float = 10.0) -> BridgeNetwork:
        """Write a bridge conflist and wait until CRI reports NetworkReady."""
        if self.network is None:
            self.network = BridgeNetwork(
                self.containerd.cni_conf_dir, self.containerd.base / "cni" / "ipam", subnet=subnet
            )
            self.network.write()
        deadline = time.monotonic() + timeout
        while True:
            conds = {c.type: c for c in self.client.status().status.conditions}
            ready = conds.get("NetworkReady")
            if ready is not None and ready.status:
                return self.network
            if time.monotonic() >= deadline:
                reason = (
                    f"{ready.reason}: {ready.message}" if ready else "no NetworkReady condition"
                )
                raise TimeoutError(f"CNI network not ready after {timeout}s ({reason})")
            time.sleep(0.1)

    def run_pod(
        self, name: str, *, handler: str = "", host_network: bool = True, **kwargs: Any
    ) -> Pod:
        """RunPodSandbox with a kubelet-like config (see :func:`cri.pod_config`)."""
        if not host_network:
            self.pod_network()
        log_dir = self.log_root / f"{name}-{len(self.pods)}"
        log_dir.mkdir(parents=True, exist_ok=True)
        config = pod_config(
            self.api, name, log_directory=log_dir, host_network=host_network, **kwargs
        )
        pod = Pod(self.client.run_pod_sandbox(config, handler), config, host_network, log_dir)
        self.pods.append(pod)
        return pod

    def create_container(self, pod: Pod, name: str, image: str, **kwargs: Any) -> str:
        """CreateContainer in ``pod`` (see :func:`cri.container_config` for ``kwargs``)."""
        config = container_config(self.api, name, image, host_network=pod.host_network, **kwargs)
        return self.client.create_container(pod.id, config, pod.config)

    def remove_pod(self, pod: Pod) -> None:
        """StopPodSandbox + RemovePodSandbox (removes its containers too)."""
        self.client.stop_pod_sandbox(pod.id)
        self.client.remove_pod_sandbox(pod.id)
        self.pods = [p for p in self.pods if p.id != pod.id]


def _cri_options(param: object) -> tuple[CriConfig, Sequence[Path | str]]:
    """The fixture param: None, a CriConfig, or a dict of CriConfig fields plus ``extra_path``."""
    if param is None:
        return CriConfig(), ()
    if isinstance(param, CriConfig):
        return param, ()
    if isinstance(param, Mapping):
        fields = dict(param)
        extra_path = fields.pop("extra_path", ())
        return CriConfig(**fields), extra_path
    raise TypeError(f"cri_containerd param must be a CriConfig or a dict, not {param!r}")


@pytest.fixture
def cri_containerd(
    containerd_factory: ContainerdFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[CriEnv]:
    """containerd with CRI (a ``runc`` handler plus any given by indirect parametrization).

    The param is a :class:`CriConfig`, or a dict of its fields plus ``extra_path`` (dirs put
    first on containerd's PATH, e.g. where ``containerd-shim-<name>-v1`` lives).
    """
    cri, extra_path = _cri_options(getattr(request, "param", None))
    api = load_cri_api()
    ctd = containerd_factory(cri=cri, extra_path=extra_path)
    env = CriEnv(ctd, CriClient(ctd.address, api), api, tmp_path / "pods")
    try:
        yield env
        left = [s.id for s in env.client.list_pod_sandboxes()]
    finally:
        # Pods a test left are torn down the kubelet way first, so that containerd and the
        # shims get a chance to clean up; the factory's leak check then looks at the rest.
        env.client.remove_all()
        env.client.close()
        ctd.stop()
        if env.network is not None:
            env.network.cleanup()
    if left and not _allow_leftovers(request):
        pytest.fail(f"pod sandboxes left by the test: {left}", pytrace=False)
