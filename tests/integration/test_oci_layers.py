"""The wasm layer loader and the precompile cache against a real containerd.

One private containerd for the module (``$CONTAINERD_VERSION``); each test imports its
image into its own namespace (``hello-oci`` and ``hello-artifact`` share their layer, and
the cache labels live on the layer), creates a container record — no task: only the
record's image matters — and calls :func:`load_wasm_layers` with the real wasmtime shim.

containerd < 1.6.25 / 1.7.7 refuses to *unpack* wasm-layer images ("mismatched image rootfs
and manifest layers"); the loader does not need them unpacked, so the image is then imported
with ``--no-unpack``. ``ctr`` cannot create a container from such an image, nor from the
artifact form at all ("unknown image config media type"), so the record is then created
through containerd's Containers API (as CRI would).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from containerd_shim_wasm.compiler import Compiler
from containerd_shim_wasm.context import WasmLayer
from containerd_shim_wasm.layers import (
    ContainerdClient,
    gc_ref_label,
    load_wasm_layers,
    original_label,
    precompile_label,
    sha256_digest,
)
from containerd_shim_wasmtime import WasmtimeCompiler, WasmtimeShim
from tests.fixtures.wasm.build import Fixtures, build_all
from tests.support.containerd import PrivateContainerd

pytestmark = [pytest.mark.containerd, pytest.mark.root]

if os.geteuid() != 0:
    pytest.skip("a private containerd needs root", allow_module_level=True)

RUNTIME = "io.containerd.wasmtime.v1"
MISMATCH = "mismatched image rootfs and manifest layers"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
GC_WAIT = 10.0


class CountingCompiler(WasmtimeCompiler):
    """The wasmtime compiler, counting its calls (class-level: the shim makes new ones)."""

    calls: ClassVar[int] = 0

    async def compile(self, layers: Sequence[WasmLayer]) -> list[bytes | None]:
        type(self).calls += 1
        return await super().compile(layers)


class CountingShim(WasmtimeShim):
    """:class:`WasmtimeShim` (same name, so the same cache label) with a counting compiler."""

    @classmethod
    async def compiler(cls) -> Compiler | None:
        return CountingCompiler()


@pytest.fixture(scope="module")
def fixtures() -> Fixtures:
    return build_all()


@dataclass
class Image:
    """An image imported into a namespace, with a container record using it."""

    ctd: PrivateContainerd
    namespace: str
    name: str
    container: str
    unpacked: bool

    def ctr(self, *args: str, check: bool = True) -> str:
        proc = self.ctd.ctr(*args, namespace=self.namespace, check=check)
        return proc.stdout

    def content(self) -> dict[str, dict[str, str]]:
        """``ctr content ls``: digest → labels."""
        out: dict[str, dict[str, str]] = {}
        for line in self.ctr("content", "ls").splitlines()[1:]:
            cols = line.split("\t")
            labels = cols[-1].strip()
            pairs = [kv.partition("=") for kv in labels.split(",")] if labels != "-" else []
            out[cols[0].strip()] = {k: v for k, _, v in pairs}
        return out


def _import(ctd: PrivateContainerd, ns: str, path: str) -> bool:
    """Import an archive; returns whether containerd unpacked it."""
    proc = ctd.ctr("images", "import", "--all-platforms", path, namespace=ns)
    if proc.returncode == 0:
        return True
    if MISMATCH not in proc.stderr:
        pytest.fail(f"ctr images import {path}: {proc.stderr}")
    proc = ctd.ctr("images", "import", "--all-platforms", "--no-unpack", path, namespace=ns)
    if proc.returncode != 0:
        pytest.skip(f"containerd {ctd.version} cannot import {path}: {proc.stderr.strip()}")
    return False


async def _create_record(ctd: PrivateContainerd, ns: str, image: str, cid: str) -> None:
    """A container record through the Containers API (ctr refuses these images)."""
    import grpc  # type: ignore[import-untyped, unused-ignore]

    from containerd_shim_wasm.api import containers_pb2 as pb

    container = pb.Container(
        id=cid,
        image=image,
        runtime=pb.Container.Runtime(name=RUNTIME),
        spec={"type_url": SPEC_TYPE_URL, "value": b"{}"},
    )
    async with grpc.aio.insecure_channel(f"unix://{ctd.address}") as channel:
        create = channel.unary_unary(
            "/containerd.services.containers.v1.Containers/Create",
            request_serializer=pb.CreateContainerRequest.SerializeToString,
            response_deserializer=pb.CreateContainerResponse.FromString,
        )
        await create(
            pb.CreateContainerRequest(container=container),
            metadata=(("containerd-namespace", ns),),
            timeout=30,
        )


@pytest.fixture
async def image_factory(
    module_containerd: PrivateContainerd, fixtures: Fixtures
) -> AsyncIterator[Any]:
    """``await make(key)``: import ``fixtures.images[key]`` into a fresh namespace and create
    a container record for it; everything is removed at teardown."""
    made: list[Image] = []
    ctd = module_containerd

    async def make(key: str) -> Image:
        archive = fixtures.images[key]
        ns = f"layers-{key}-{os.getpid()}-{len(made)}"
        cid = f"{key}-{len(made)}"
        unpacked = _import(ctd, ns, str(archive.path))
        img = Image(ctd, ns, archive.name, cid, unpacked)
        made.append(img)
        proc = ctd.ctr("containers", "create", "--runtime", RUNTIME, img.name, cid, namespace=ns)
        if proc.returncode != 0:
            await _create_record(ctd, ns, img.name, cid)
        return img

    yield make
    for img in made:
        img.ctr("containers", "rm", img.container, check=False)
        img.ctr("images", "rm", "--sync", img.name, check=False)
        leases = img.ctr("leases", "ls", "-q", check=False).split()
        assert not [lease for lease in leases if lease.startswith("precompile-")], leases


async def _manifest_and_layer(img: Image) -> tuple[str, str]:
    async with ContainerdClient(str(img.ctd.address), img.namespace) as client:
        target = await client.image_target(img.name)
    manifest = json.loads(img.ctr("content", "get", target.digest))
    (layer,) = manifest["layers"]
    return target.digest, layer["digest"]


def _loads_in_the_sandbox_engine(data: bytes) -> None:
    """The compiled bytes deserialize in the engine the sandbox runs with."""
    from containerd_shim_wasmtime import WasmtimeSandbox
    from containerd_shim_wasmtime.engine import engine_for, load_program

    load_program(engine_for(WasmtimeSandbox._engine_flags), data, "cached layer")


def _collect_garbage(img: Image) -> None:
    """Run containerd's garbage collector now: deleting a lease with --sync does."""
    lease = img.ctr("leases", "create").split()[0]
    img.ctr("leases", "rm", "--sync", lease)


def _wait_gone(img: Image, digests: Sequence[str]) -> dict[str, dict[str, str]]:
    # containerd collects garbage asynchronously after the image goes, even with --sync on
    # some versions: poll.
    deadline = time.monotonic() + GC_WAIT
    while True:
        content = img.content()
        if not any(d in content for d in digests) or time.monotonic() > deadline:
            return content
        time.sleep(0.2)


@pytest.mark.parametrize("form", ["hello-oci", "hello-artifact"])
async def test_precompile_cache_lifecycle(image_factory: Any, form: str) -> None:
    img: Image = await image_factory(form)
    address, ns, cid = str(img.ctd.address), img.namespace, img.container
    manifest, layer_digest = await _manifest_and_layer(img)
    pid = precompile_label("wasmtime", WasmtimeCompiler().cache_key())
    CountingCompiler.calls = 0

    # 1. The first load compiles and stores the artifact under the label scheme.
    (first,) = await load_wasm_layers(address, ns, cid, CountingShim)
    assert CountingCompiler.calls == 1
    assert first.digest == layer_digest and first.precompiled
    assert first.data[:4] == b"\x7fELF"
    _loads_in_the_sandbox_engine(first.data)
    compiled = sha256_digest(first.data)
    content = img.content()
    assert content[compiled] == {original_label(pid): layer_digest}
    assert content[layer_digest][pid] == compiled
    assert content[layer_digest][gc_ref_label(0)] == compiled
    assert content[manifest][pid] == "true"
    assert content[manifest][gc_ref_label(0)] == compiled
    # The lease is gone; the labels alone keep the artifact from the garbage collector.
    _collect_garbage(img)
    assert compiled in img.content()

    # 2. The second load reads the cached artifact.
    (second,) = await load_wasm_layers(address, ns, cid, CountingShim)
    assert CountingCompiler.calls == 1
    assert second == first

    # 3. A deleted artifact is compiled and stored again.
    img.ctr("content", "rm", compiled)
    assert compiled not in img.content()
    (third,) = await load_wasm_layers(address, ns, cid, CountingShim)
    assert CountingCompiler.calls == 2
    assert third.precompiled and sha256_digest(third.data) in img.content()
    _loads_in_the_sandbox_engine(third.data)
    compiled = sha256_digest(third.data)

    # 4. Removing the image lets the garbage collector take the artifact with it.
    img.ctr("containers", "rm", cid)
    img.ctr("images", "rm", "--sync", img.name)
    content = _wait_gone(img, [compiled, layer_digest])
    assert compiled not in content, f"the compiled blob outlived its image: {content}"
    assert layer_digest not in content


async def test_force_recompile_replaces_a_rejected_artifact(image_factory: Any) -> None:
    img: Image = await image_factory("hello-oci")
    address, ns, cid = str(img.ctd.address), img.namespace, img.container
    CountingCompiler.calls = 0
    (first,) = await load_wasm_layers(address, ns, cid, CountingShim)
    (forced,) = await load_wasm_layers(address, ns, cid, CountingShim, force_recompile=True)
    assert CountingCompiler.calls == 2 and forced.precompiled
    assert sha256_digest(forced.data) in img.content()
    (cached,) = await load_wasm_layers(address, ns, cid, CountingShim)
    assert CountingCompiler.calls == 2 and cached == forced
    assert first.digest == forced.digest


async def test_without_compiler_the_layer_bytes_are_returned(
    image_factory: Any, fixtures: Fixtures
) -> None:
    img: Image = await image_factory("hello-oci")
    (layer,) = await load_wasm_layers(
        str(img.ctd.address), img.namespace, img.container, WasmtimeShim, precompile=False
    )
    assert layer.data == fixtures.demo_wasm.read_bytes() and not layer.precompiled
    assert not [d for d, labels in img.content().items() if any("precompiled" in k for k in labels)]


async def test_a_module_in_a_file_is_no_wasm_layer(image_factory: Any) -> None:
    img: Image = await image_factory("hello")
    CountingCompiler.calls = 0
    layers = await load_wasm_layers(
        str(img.ctd.address), img.namespace, img.container, CountingShim
    )
    assert layers == () and CountingCompiler.calls == 0


@pytest.fixture(autouse=True)
def _no_leftovers(module_containerd: PrivateContainerd) -> Iterator[None]:
    yield
    assert module_containerd.leftovers(wait=2.0) == []
