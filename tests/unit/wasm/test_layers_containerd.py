"""load_wasm_layers against a fake containerd: grpcio's asyncio server on a unix socket,
serving an in-memory content store with containerd's Write/Update/lease semantics."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]
import pytest
from google.protobuf import empty_pb2

from containerd_shim_wasm import layers
from containerd_shim_wasm.api import containers_pb2, content_pb2, images_pb2, leases_pb2
from containerd_shim_wasm.compiler import Compiler
from containerd_shim_wasm.context import WasmLayer
from containerd_shim_wasm.layers import (
    LayerError,
    TooManyWasmLayers,
    gc_ref_label,
    invalidate_precompiled,
    load_wasm_layers,
    original_label,
    precompile_label,
)
from containerd_shim_wasm.sandbox import Sandbox
from containerd_shim_wasm.shim import Shim

NS = "testns"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
WASM_LAYER = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"
TAR_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MODULE = b"\0asm\x01\0\0\0" + b"module body"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the fake


@dataclass
class FakeContainerd:
    """containerd's metadata for one namespace, and a log of what clients did."""

    containers: dict[str, str] = field(default_factory=dict)  # id -> image name
    images: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (type, digest)
    blobs: dict[str, bytes] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    leases: dict[str, dict[str, str]] = field(default_factory=dict)
    deleted_leases: list[str] = field(default_factory=list)
    ingests: dict[str, bytearray] = field(default_factory=dict)
    write_requests: list[Any] = field(default_factory=list)
    write_leases: list[str | None] = field(default_factory=list)
    namespaces: set[str] = field(default_factory=set)
    fail_update_of: set[str] = field(default_factory=set)

    def add_blob(self, data: bytes, labels: dict[str, str] | None = None) -> str:
        d = digest_of(data)
        self.blobs[d] = data
        self.labels.setdefault(d, {}).update(labels or {})
        return d

    def add_json(self, doc: object) -> str:
        return self.add_blob(json.dumps(doc).encode())

    # -- handlers ---------------------------------------------------------------------

    async def _ns(self, context: Any) -> dict[str, str]:
        md = dict(context.invocation_metadata())
        if md.get("containerd-namespace") != NS:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "namespace is required")
        self.namespaces.add(md["containerd-namespace"])
        return md

    async def get_container(self, req: Any, context: Any) -> Any:
        await self._ns(context)
        if req.id not in self.containers:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"container {req.id!r}: not found")
        c = containers_pb2.Container(id=req.id, image=self.containers[req.id])
        return containers_pb2.GetContainerResponse(container=c)

    async def get_image(self, req: Any, context: Any) -> Any:
        await self._ns(context)
        if req.name not in self.images:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"image {req.name!r}: not found")
        media_type, d = self.images[req.name]
        target = {"media_type": media_type, "digest": d, "size": len(self.blobs[d])}
        return images_pb2.GetImageResponse(image=images_pb2.Image(name=req.name, target=target))

    async def _blob(self, d: str, context: Any) -> bytes:
        if d not in self.blobs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"content digest {d}: not found")
        return self.blobs[d]

    async def info(self, req: Any, context: Any) -> Any:
        await self._ns(context)
        data = await self._blob(req.digest, context)
        info = content_pb2.Info(
            digest=req.digest, size=len(data), labels=self.labels.get(req.digest, {})
        )
        return content_pb2.InfoResponse(info=info)

    async def update(self, req: Any, context: Any) -> Any:
        await self._ns(context)
        d = req.info.digest
        await self._blob(d, context)
        if d in self.fail_update_of:
            await context.abort(grpc.StatusCode.INTERNAL, "update refused by the test")
        labels = self.labels.setdefault(d, {})
        for path in req.update_mask.paths:
            assert path.startswith("labels."), path  # the client never replaces the map
            key = path.removeprefix("labels.")
            if key in req.info.labels:
                labels[key] = req.info.labels[key]
            else:
                labels.pop(key, None)
        return content_pb2.UpdateResponse(info=content_pb2.Info(digest=d, labels=labels))

    async def delete(self, req: Any, context: Any) -> Any:
        await self._ns(context)
        await self._blob(req.digest, context)
        del self.blobs[req.digest]
        self.labels.pop(req.digest, None)
        return empty_pb2.Empty()

    async def read(self, req: Any, context: Any) -> AsyncIterator[Any]:
        await self._ns(context)
        data = await self._blob(req.digest, context)
        for start in range(0, max(len(data), 1), 1 << 20):  # containerd sends 1 MiB pieces
            yield content_pb2.ReadContentResponse(
                offset=start, data=data[start : start + (1 << 20)]
            )

    async def write(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        md = await self._ns(context)
        lease = md.get("containerd-lease")
        self.write_leases.append(lease)
        ref, expected, total = "", "", 0
        async for req in requests:
            self.write_requests.append(req)
            if not ref:
                ref, expected = req.ref, req.expected
                assert ref, "first message must have a reference"
                if expected in self.blobs:
                    await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{expected}: exists")
            buf = self.ingests.setdefault(ref, bytearray())
            expected = req.expected or expected
            total = req.total or total
            resp = content_pb2.WriteContentResponse(action=req.action, offset=len(buf), total=total)
            if req.action in (content_pb2.WRITE, content_pb2.COMMIT):
                if req.offset > 0 and req.offset != len(buf):
                    await context.abort(grpc.StatusCode.OUT_OF_RANGE, "write at wrong offset")
                if req.offset == 0:
                    del buf[:]
                buf.extend(req.data)
                resp.offset = len(buf)
                if req.action == content_pb2.COMMIT:
                    data = bytes(buf)
                    if (total and len(data) != total) or digest_of(data) != expected:
                        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "bad commit")
                    self.add_blob(data, dict(req.labels))
                    del self.ingests[ref]
                    resp.digest = digest_of(data)
            yield resp

    async def create_lease(self, req: Any, context: Any) -> Any:
        await self._ns(context)
        if req.id in self.leases:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"lease {req.id}: exists")
        self.leases[req.id] = dict(req.labels)
        return leases_pb2.CreateResponse(lease=leases_pb2.Lease(id=req.id, labels=req.labels))

    async def delete_lease(self, req: Any, context: Any) -> Any:
        await self._ns(context)
        self.leases.pop(req.id)
        self.deleted_leases.append(req.id)
        return empty_pb2.Empty()

    def handlers(self) -> list[Any]:
        def unary(fn: Any, req: Any, resp: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        cpb, lpb = content_pb2, leases_pb2
        return [
            grpc.method_handlers_generic_handler(
                "containerd.services.containers.v1.Containers",
                {
                    "Get": unary(
                        self.get_container,
                        containers_pb2.GetContainerRequest,
                        containers_pb2.GetContainerResponse,
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "containerd.services.images.v1.Images",
                {
                    "Get": unary(
                        self.get_image, images_pb2.GetImageRequest, images_pb2.GetImageResponse
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "containerd.services.content.v1.Content",
                {
                    "Info": unary(self.info, cpb.InfoRequest, cpb.InfoResponse),
                    "Update": unary(self.update, cpb.UpdateRequest, cpb.UpdateResponse),
                    "Delete": unary(self.delete, cpb.DeleteContentRequest, empty_pb2.Empty),
                    "Read": grpc.unary_stream_rpc_method_handler(
                        self.read,
                        request_deserializer=cpb.ReadContentRequest.FromString,
                        response_serializer=cpb.ReadContentResponse.SerializeToString,
                    ),
                    "Write": grpc.stream_stream_rpc_method_handler(
                        self.write,
                        request_deserializer=cpb.WriteContentRequest.FromString,
                        response_serializer=cpb.WriteContentResponse.SerializeToString,
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                "containerd.services.leases.v1.Leases",
                {
                    "Create": unary(self.create_lease, lpb.CreateRequest, lpb.CreateResponse),
                    "Delete": unary(self.delete_lease, lpb.DeleteRequest, empty_pb2.Empty),
                },
            ),
        ]

    # -- images -----------------------------------------------------------------------

    def add_image(
        self,
        name: str,
        layer_blobs: Sequence[tuple[str, bytes]],
        *,
        config: dict[str, object] | None = None,
        config_type: str = OCI_CONFIG,
    ) -> str:
        """A single-manifest image; returns the manifest digest."""
        config_digest = self.add_json(
            {"architecture": "wasm", "os": "wasip1"} if config is None else config
        )
        manifest = self.add_json(self.manifest_doc(config_digest, config_type, layer_blobs))
        self.images[name] = (OCI_MANIFEST, manifest)
        return manifest

    def manifest_doc(
        self, config_digest: str, config_type: str, layer_blobs: Sequence[tuple[str, bytes]]
    ) -> dict[str, object]:
        return {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type, "digest": config_digest, "size": 1},
            "layers": [
                {"mediaType": t, "digest": self.add_blob(b), "size": len(b)} for t, b in layer_blobs
            ],
        }


class FakeCompiler(Compiler):
    """Compiles ``x`` to ``b"compiled:" + x``, or as ``outputs`` says."""

    def __init__(self, key: str = "key-1") -> None:
        self.key = key
        self.calls: list[list[WasmLayer]] = []
        self.outputs: list[bytes | None] | None = None
        self.error: Exception | None = None

    def cache_key(self) -> str:
        return self.key

    async def compile(self, layers: Sequence[WasmLayer]) -> list[bytes | None]:
        self.calls.append(list(layers))
        if self.error is not None:
            raise self.error
        if self.outputs is not None:
            return self.outputs
        return [b"compiled:" + layer.data for layer in layers]


class FakeShim(Shim):
    compiler_instance: ClassVar[Compiler | None] = None

    @classmethod
    def name(cls) -> str:
        return "fake"

    @classmethod
    def sandbox(cls) -> type[Sandbox]:
        raise NotImplementedError

    @classmethod
    async def compiler(cls) -> Compiler | None:
        return cls.compiler_instance


@dataclass
class Env:
    fake: FakeContainerd
    address: str
    compiler: FakeCompiler
    shim: type[Shim]

    async def load(self, container: str = "c1", **kwargs: Any) -> tuple[WasmLayer, ...]:
        return await load_wasm_layers(self.address, NS, container, self.shim, **kwargs)

    @property
    def precompile_id(self) -> str:
        return precompile_label("fake", self.compiler.key)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    fake = FakeContainerd()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(fake.handlers())
    sock = tmp_path / "c.sock"
    assert server.add_insecure_port(f"unix://{sock}")
    await server.start()
    compiler = FakeCompiler()
    shim = type("Shim1", (FakeShim,), {"compiler_instance": compiler})
    try:
        yield Env(fake, str(sock), compiler, shim)
    finally:
        await server.stop(None)
        # Collect grpc's garbage now, in this process: a later test's forked child would
        # otherwise collect it without grpc's threads and spin forever.
        gc.collect()


def hello_oci(env: Env, name: str = "img", container: str = "c1", data: bytes = MODULE) -> str:
    manifest = env.fake.add_image(name, [(WASM_LAYER, data)])
    env.fake.containers[container] = name
    return manifest


# --------------------------------------------------------------------------- finding layers


async def test_without_a_compiler_the_layer_bytes_are_returned(env: Env) -> None:
    hello_oci(env)
    env.shim.compiler_instance = None  # type: ignore[attr-defined]
    (layer,) = await env.load()
    assert layer == WasmLayer(WASM_LAYER, digest_of(MODULE), MODULE, precompiled=False)
    assert env.fake.namespaces == {NS}
    assert env.fake.write_requests == [] and env.fake.leases == {}


async def test_precompile_false_skips_the_cache(env: Env) -> None:
    hello_oci(env)
    (layer,) = await env.load(precompile=False)
    assert (layer.data, layer.precompiled) == (MODULE, False)
    assert env.compiler.calls == []


async def test_an_index_selects_the_wasm_manifest(env: Env) -> None:
    f = env.fake
    linux_config = f.add_json({"architecture": "amd64", "os": "linux"})
    linux = f.add_json(f.manifest_doc(linux_config, OCI_CONFIG, [(TAR_LAYER, b"tar")]))
    wasm_config = f.add_json({"architecture": "wasm", "os": "wasip1"})
    wasm = f.add_json(f.manifest_doc(wasm_config, OCI_CONFIG, [(WASM_LAYER, MODULE)]))
    index = f.add_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": linux, "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": wasm, "size": 1,
                 "platform": {"os": "wasip1", "architecture": "wasm"}},
            ],
        }
    )  # fmt: skip
    f.images["multi"] = (OCI_INDEX, index)
    f.containers["c1"] = "multi"
    (layer,) = await env.load()
    assert layer.digest == digest_of(MODULE) and layer.precompiled
    # The cache labels go on the selected manifest, not on the index.
    assert f.labels[wasm][env.precompile_id] == "true"
    assert env.precompile_id not in f.labels[index]


async def test_a_linux_image_has_no_wasm_layers(env: Env) -> None:
    env.fake.add_image("linux", [(WASM_LAYER, MODULE)], config={"architecture": "amd64"})
    env.fake.containers["c1"] = "linux"
    assert await env.load() == ()
    assert env.compiler.calls == []


async def test_a_wasm_image_with_the_module_in_a_file_has_no_wasm_layers(env: Env) -> None:
    env.fake.add_image("hello", [(TAR_LAYER, b"a tar with /demo.wasm")])
    env.fake.containers["c1"] = "hello"
    assert await env.load() == ()


async def test_the_cncf_artifact_form(env: Env) -> None:
    # Its config's media type says wasm, whatever the config holds.
    env.fake.add_image(
        "artifact",
        [("application/wasm", MODULE)],
        config={"layerDigests": []},
        config_type="application/vnd.wasm.config.v0+json",
    )
    env.fake.containers["c1"] = "artifact"
    (layer,) = await env.load(precompile=False)
    assert (layer.media_type, layer.data) == ("application/wasm", MODULE)


async def test_unsupported_layer_types_are_not_wasm_layers(env: Env) -> None:
    hello_oci(env)
    shim = type("Narrow", (env.shim,), {"supported_layers_types": classmethod(lambda c: ("x",))})
    assert await load_wasm_layers(env.address, NS, "c1", shim) == ()


async def test_more_than_one_wasm_layer_is_an_error(env: Env) -> None:
    env.fake.add_image("two", [(WASM_LAYER, MODULE), ("application/wasm", b"\0asm2")])
    env.fake.containers["c1"] = "two"
    with pytest.raises(
        TooManyWasmLayers, match=r"has 2 wasm layers .* only one module per container"
    ):
        await env.load()
    assert env.compiler.calls == []


async def test_a_container_without_image_has_no_layers(env: Env) -> None:
    env.fake.containers["c1"] = ""
    assert await env.load() == ()


async def test_a_missing_container_or_image_is_a_layer_error(env: Env) -> None:
    with pytest.raises(LayerError, match="cannot get container 'nope'") as info:
        await env.load("nope")
    assert info.value.code == "NOT_FOUND"
    env.fake.containers["c1"] = "gone:latest"
    with pytest.raises(LayerError, match="cannot get image 'gone:latest'"):
        await env.load()


async def test_a_missing_blob_is_a_layer_error(env: Env) -> None:
    hello_oci(env)
    del env.fake.blobs[digest_of(MODULE)]
    with pytest.raises(LayerError, match=f"cannot read blob {digest_of(MODULE)}"):
        await env.load(precompile=False)


async def test_no_containerd_socket(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="does not exist; is containerd running") as info:
        await load_wasm_layers(str(tmp_path / "none.sock"), NS, "c1", FakeShim)
    assert info.value.code == "UNAVAILABLE"
    with pytest.raises(LayerError, match="no containerd address"):
        await load_wasm_layers("", NS, "c1", FakeShim)


async def test_nobody_listening_is_unavailable(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # exists, but nobody accepts
    with pytest.raises(LayerError) as info:
        await load_wasm_layers(f"unix://{path}", NS, "c1", FakeShim, timeout=5)
    assert info.value.code == "UNAVAILABLE"
    assert "is containerd listening on" in str(info.value)


# --------------------------------------------------------------------------- the cache


async def test_first_load_compiles_and_stores_with_the_label_scheme(env: Env) -> None:
    manifest = hello_oci(env)
    f, pid, orig = env.fake, env.precompile_id, digest_of(MODULE)
    compiled = b"compiled:" + MODULE
    cd = digest_of(compiled)

    (layer,) = await env.load()

    assert layer == WasmLayer(WASM_LAYER, orig, compiled, precompiled=True)
    assert len(env.compiler.calls) == 1
    assert env.compiler.calls[0] == [WasmLayer(WASM_LAYER, orig, MODULE)]
    assert f.blobs[cd] == compiled
    assert f.labels[cd] == {original_label(pid): orig}
    assert f.labels[orig] == {pid: cd, gc_ref_label(0): cd}
    assert f.labels[manifest] == {pid: "true", gc_ref_label(0): cd}
    # Written under a lease that expires, deleted once the labels hold the blob.
    (lease,) = f.deleted_leases
    assert f.write_leases == [lease] and f.leases == {}
    assert lease.startswith("precompile-fake-")
    actions = [r.action for r in f.write_requests]
    assert actions == [content_pb2.STAT, content_pb2.WRITE, content_pb2.COMMIT]
    commit = f.write_requests[-1]
    assert (commit.total, commit.offset, commit.expected) == (len(compiled), len(compiled), cd)


async def test_the_lease_expires_in_24_hours(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime, timedelta

    hello_oci(env)
    created: list[dict[str, str]] = []
    original = layers.ContainerdClient.create_lease

    async def spy(self: Any, lease_id: str, labels: Any) -> str:
        created.append(dict(labels))
        return await original(self, lease_id, labels)

    monkeypatch.setattr(layers.ContainerdClient, "create_lease", spy)
    await env.load()
    (labels,) = created
    expire = datetime.strptime(labels["containerd.io/gc.expire"], "%Y-%m-%dT%H:%M:%SZ")
    delta = expire.replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(hours=23, minutes=59) < delta <= timedelta(hours=24)


async def test_second_load_uses_the_cache(env: Env) -> None:
    hello_oci(env)
    (first,) = await env.load()
    writes = len(env.fake.write_requests)
    (second,) = await env.load()
    assert second == first and second.precompiled
    assert len(env.compiler.calls) == 1
    assert len(env.fake.write_requests) == writes and env.fake.leases == {}


async def test_a_deleted_compiled_blob_is_recompiled(env: Env) -> None:
    hello_oci(env)
    (first,) = await env.load()
    del env.fake.blobs[digest_of(first.data)]
    (again,) = await env.load()
    assert again == first and len(env.compiler.calls) == 2
    assert env.fake.blobs[digest_of(first.data)] == first.data


async def test_a_corrupt_compiled_blob_is_dropped_and_recompiled(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    hello_oci(env)
    (first,) = await env.load()
    cd = digest_of(first.data)
    env.fake.blobs[cd] = b"bit rot"
    with caplog.at_level(logging.WARNING, logger="containerd_shim_wasm.layers"):
        (again,) = await env.load()
    assert again == first and len(env.compiler.calls) == 2
    assert env.fake.blobs[cd] == first.data
    assert f"compiled blob {cd} is corrupt" in caplog.text


async def test_a_label_that_is_no_digest_is_ignored(env: Env) -> None:
    hello_oci(env)
    env.fake.labels[digest_of(MODULE)] = {env.precompile_id: "garbage"}
    (layer,) = await env.load()
    assert layer.precompiled and len(env.compiler.calls) == 1


async def test_force_recompile_replaces_the_cached_blob(env: Env) -> None:
    hello_oci(env)
    (first,) = await env.load()
    env.compiler.outputs = [b"better artifact"]
    (forced,) = await env.load(force_recompile=True)
    assert forced.data == b"better artifact" and forced.precompiled
    assert digest_of(first.data) not in env.fake.blobs  # the rejected blob is gone
    (third,) = await env.load()
    assert third.data == b"better artifact" and len(env.compiler.calls) == 2


async def test_invalidate_precompiled_makes_the_next_load_compile(env: Env) -> None:
    hello_oci(env)
    (first,) = await env.load()
    assert await invalidate_precompiled(env.address, NS, "c1", env.shim) == 1
    assert digest_of(first.data) not in env.fake.blobs
    assert await invalidate_precompiled(env.address, NS, "c1", env.shim) == 1  # label remains
    (again,) = await env.load()
    assert again == first and len(env.compiler.calls) == 2


async def test_a_new_cache_key_compiles_again(env: Env) -> None:
    hello_oci(env)
    await env.load()
    old_id = env.precompile_id
    env.compiler.key = "key-2"
    env.compiler.outputs = [b"for engine 2"]
    (layer,) = await env.load()
    assert layer.data == b"for engine 2" and len(env.compiler.calls) == 2
    labels = env.fake.labels[digest_of(MODULE)]
    assert labels[old_id] != labels[env.precompile_id] == digest_of(b"for engine 2")
    # The GC ref now points at the new blob: the old one is collectable.
    assert labels[gc_ref_label(0)] == digest_of(b"for engine 2")


async def test_writes_are_chunked(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layers, "MAX_WRITE_CHUNK", 1000)
    hello_oci(env)
    big = bytes(range(256)) * 10  # 2560 bytes
    env.compiler.outputs = [big]
    (layer,) = await env.load()
    assert layer.data == big
    writes = [r for r in env.fake.write_requests if r.action == content_pb2.WRITE]
    assert [(w.offset, len(w.data)) for w in writes] == [(0, 1000), (1000, 1000), (2000, 560)]
    assert env.fake.blobs[digest_of(big)] == big


async def test_an_existing_blob_is_not_written_again_but_labelled(env: Env) -> None:
    manifest = hello_oci(env)
    compiled = b"compiled:" + MODULE
    env.fake.add_blob(compiled)  # e.g. left by a run that died before labelling
    (layer,) = await env.load()
    assert layer.precompiled
    assert [r.action for r in env.fake.write_requests] == [content_pb2.STAT]
    assert env.fake.labels[manifest][gc_ref_label(0)] == digest_of(compiled)
    assert env.fake.leases == {}


async def test_a_stale_partial_ingest_is_overwritten(env: Env) -> None:
    hello_oci(env)
    compiled = b"compiled:" + MODULE
    env.fake.ingests[layers._write_ref(digest_of(compiled))] = bytearray(b"half-written junk")
    (layer,) = await env.load()
    assert layer.data == compiled and env.fake.blobs[digest_of(compiled)] == compiled


async def test_a_failing_compiler_runs_the_original(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    hello_oci(env)
    env.compiler.error = RuntimeError("engine exploded")
    with caplog.at_level(logging.WARNING, logger="containerd_shim_wasm.layers"):
        (layer,) = await env.load()
    assert (layer.data, layer.precompiled) == (MODULE, False)
    assert "precompiling failed" in caplog.text and "engine exploded" in caplog.text
    assert env.fake.write_requests == []


@pytest.mark.parametrize("outputs", [[None], [], [b"a", b"b"]])
async def test_no_or_wrong_compiler_output_runs_the_original(
    env: Env, outputs: list[bytes | None]
) -> None:
    hello_oci(env)
    env.compiler.outputs = outputs
    (layer,) = await env.load()
    assert (layer.data, layer.precompiled) == (MODULE, False)
    assert env.fake.write_requests == []


async def test_a_failure_to_cache_still_runs_the_compiled_bytes(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    hello_oci(env)
    env.fake.fail_update_of.add(digest_of(MODULE))
    with caplog.at_level(logging.WARNING, logger="containerd_shim_wasm.layers"):
        (layer,) = await env.load()
    assert layer.precompiled and layer.data == b"compiled:" + MODULE
    assert "compiled, but not cached" in caplog.text and "update refused" in caplog.text
    assert env.fake.leases == {}  # the lease is released on failure too


async def test_a_layer_shared_with_another_manifest_labels_that_manifest(env: Env) -> None:
    hello_oci(env, "one", "c1")
    # Same layer, different config → a different manifest digest.
    env.fake.add_image("two", [(WASM_LAYER, MODULE)], config={"architecture": "wasm", "x": 1})
    env.fake.containers["c2"] = "two"
    second = env.fake.images["two"][1]
    await env.load("c1")
    assert env.precompile_id not in env.fake.labels.get(second, {})
    (layer,) = await env.load("c2")
    assert layer.precompiled and len(env.compiler.calls) == 1
    assert env.fake.labels[second] == {
        env.precompile_id: "true",
        gc_ref_label(0): digest_of(layer.data),
    }
