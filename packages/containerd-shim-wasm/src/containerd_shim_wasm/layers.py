"""Wasm layers from containerd's content store, and the precompile cache (runwasi's
``containerd/client.rs``).

The shim daemon calls :func:`load_wasm_layers` when a container is created. It asks
containerd over its gRPC socket (the shim's ``-address``):

1. ``Containers.Get(id)`` → the container's image name (none: no layers);
2. ``Images.Get(name)`` → the image's target; ``Content.Read`` it. An index selects the
   manifest whose platform is wasm (:func:`select_manifest`);
3. the manifest's config must be a wasm config (``architecture: wasm``, or the CNCF
   artifact's ``application/vnd.wasm.config.v0+json``), otherwise there are no layers;
4. the layers whose media type is in :meth:`Shim.supported_layers_types` are the wasm
   layers: none → ``()``, one → read it, more → :class:`LayerError` (runwasi runs exactly
   one module per container).

When the shim has a :class:`~containerd_shim_wasm.Compiler`, the layer goes through the
precompile cache, keyed by :func:`precompile_label`:

- *hit*: the layer's content labels map the cache key to the digest of a compiled blob that
  is still in the store and still hashes to that digest → its bytes, ``precompiled=True``;
- *miss* (no label, blob deleted, blob corrupt, or ``force_recompile``): compile, hand the
  compiled bytes on (``precompiled=True``), and store them (:func:`store_precompiled`) under a
  lease, labelled so that containerd's garbage collector keeps the blob exactly as long as
  the image (or another image with the same layer) exists.

Label scheme (runwasi.md §3.10), with ``P`` = ``runwasi.io/precompiled/<shim>/<key>``:

==============  ====================================================================
compiled blob   ``P/original=<layer digest>``
original layer  ``P=<compiled digest>``, ``G<i>=<compiled digest>``
image manifest  ``P=true``, ``G<i>=<compiled digest>``
==============  ====================================================================

where ``G`` is ``containerd.io/gc.ref.content.precompile.``

``<i>`` is the layer's index among the image's wasm layers (always 0: one layer). The
``gc.ref.content`` labels are what keep the blob alive: image → manifest → (layer) →
compiled blob; ``P=true`` on the manifest is informational (runwasi checks it; we re-add it
when only the layer carries the cache, e.g. a second image sharing the layer).

Nothing here imports ``grpc`` or ``google.protobuf`` at import time: the shim's ``start``
path must stay light, and ``grpc`` starts threads, which must not exist in the zygote.
Failures that prevent loading raise :class:`LayerError`; failures of the cache only (store,
label, lease) and of the compiler are logged and never fail a container.

How the daemon uses it (in its event loop, before asking the zygote for the container)::

    try:
        layers = await load_wasm_layers(cfg.containerd_address, cfg.namespace, id, shim)
    except LayerError as exc:
        log.warning("not using the image's wasm layers (%s); the module comes from the "
                    "rootfs", exc)
        layers = ()

If the engine then rejects a ``precompiled=True`` layer where the daemon can still retry,
retry once with ``force_recompile=True`` (and, should that fail too, with
``precompile=False``); where it cannot (the failure happened in the container), call
:func:`invalidate_precompiled` so that the next container compiles afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .context import WasmLayer

if TYPE_CHECKING:
    from .compiler import Compiler
    from .shim import Shim

__all__ = [
    "GC_REF_PRECOMPILE_PREFIX",
    "MAX_WRITE_CHUNK",
    "PRECOMPILE_PREFIX",
    "WASM_CONFIG_MEDIA_TYPE",
    "ContainerdClient",
    "Descriptor",
    "LayerError",
    "Manifest",
    "cache_key_hash",
    "gc_ref_label",
    "invalidate_precompiled",
    "is_wasm_config",
    "load_wasm_layers",
    "original_label",
    "parse_image_document",
    "precompile_label",
    "select_manifest",
    "sha256_digest",
    "store_precompiled",
    "wasm_layer_descriptors",
    "write_chunks",
]

log = logging.getLogger(__name__)

PRECOMPILE_PREFIX = "runwasi.io/precompiled"
GC_REF_PRECOMPILE_PREFIX = "containerd.io/gc.ref.content.precompile."
GC_EXPIRE_LABEL = "containerd.io/gc.expire"
NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"

#: containerd's gRPC server accepts messages of at most 16 MiB (``defaults.DefaultMaxRecvMsgSize``);
#: 15 MiB chunks leave room for the rest of the message (runwasi's choice).
MAX_WRITE_CHUNK = 15 * 1024 * 1024
#: A lease outlives a crashed shim by this long, then containerd drops it (and what only it held).
LEASE_TTL = timedelta(hours=24)
#: Each RPC's deadline, in seconds (a read of a large layer is one RPC).
DEFAULT_TIMEOUT = 30.0

WASM_CONFIG_MEDIA_TYPE = "application/vnd.wasm.config.v0+json"
INDEX_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
MANIFEST_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
#: ``platform.os`` values of wasm manifests in an index (``wasi`` is the older spelling).
WASM_OSES = ("wasip1", "wasip2", "wasi")
WASM_ARCHITECTURE = "wasm"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# containerd's identifier grammar (lease ids): alphanumerics separated by single . _ -
_NOT_IDENT = re.compile(r"[^A-Za-z0-9]+")


class LayerError(Exception):
    """The image's wasm layers could not be loaded; the message says why and what to do.

    ``code`` is the gRPC status name (``NOT_FOUND``, ``UNAVAILABLE``…) when containerd
    answered with an error, else ``None``.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class TooManyWasmLayers(LayerError):
    """The image has more than one wasm layer; only one module per container is supported.

    Unlike other layer errors this is final: falling back to the rootfs would only replace
    it with a misleading "module not found".
    """


# --------------------------------------------------------------------------- OCI documents


@dataclass(frozen=True)
class Descriptor:
    """An OCI descriptor; ``os``/``architecture`` come from an index entry's ``platform``."""

    media_type: str
    digest: str
    size: int = 0
    os: str = ""
    architecture: str = ""

    @classmethod
    def from_json(cls, obj: object, where: str) -> Descriptor:
        """Validate one descriptor object of a manifest or index (``where`` names it)."""
        if not isinstance(obj, dict):
            raise LayerError(f"{where} is not a descriptor object")
        digest, media_type, size = obj.get("digest"), obj.get("mediaType", ""), obj.get("size", 0)
        if not isinstance(digest, str) or not digest:
            raise LayerError(f"{where} has no digest")
        if not isinstance(media_type, str) or not isinstance(size, int):
            raise LayerError(f"{where} has a malformed mediaType or size")
        platform = obj.get("platform")
        platform = platform if isinstance(platform, dict) else {}
        os_, arch = platform.get("os", ""), platform.get("architecture", "")
        return cls(
            media_type,
            digest,
            size,
            os_ if isinstance(os_, str) else "",
            arch if isinstance(arch, str) else "",
        )


@dataclass(frozen=True)
class Manifest:
    """The parts of an image manifest the loader uses."""

    config: Descriptor
    layers: tuple[Descriptor, ...]


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise LayerError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise LayerError(f"{what} is not a JSON object")
    return doc


def parse_image_document(
    media_type: str, data: bytes, digest: str
) -> Manifest | tuple[Descriptor, ...]:
    """Parse an image target: a :class:`Manifest`, or an index's manifest descriptors.

    The descriptor's media type decides; an unknown one (older images) is decided by the
    document's own ``mediaType``, then by its shape (``manifests`` vs ``layers``).

    Raises:
        LayerError: not JSON, or neither a manifest nor an index.
    """
    doc = _json_object(data, f"image document {digest}")
    kind = media_type if media_type in INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES else ""
    if not kind:
        declared = doc.get("mediaType")
        if isinstance(declared, str) and declared in INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES:
            kind = declared
        elif "manifests" in doc:
            kind = next(iter(INDEX_MEDIA_TYPES))
        elif "layers" in doc and "config" in doc:
            kind = next(iter(MANIFEST_MEDIA_TYPES))
        else:
            raise LayerError(
                f"image document {digest} ({media_type or 'no media type'}) is neither an "
                "OCI/Docker manifest nor an index"
            )
    if kind in INDEX_MEDIA_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise LayerError(f"image index {digest} has no 'manifests' list")
        return tuple(
            Descriptor.from_json(e, f"manifests[{i}] of index {digest}")
            for i, e in enumerate(entries)
        )
    layers = doc.get("layers", [])
    if not isinstance(layers, list):
        raise LayerError(f"manifest {digest} has a malformed 'layers' list")
    return Manifest(
        config=Descriptor.from_json(doc.get("config"), f"the config of manifest {digest}"),
        layers=tuple(
            Descriptor.from_json(e, f"layers[{i}] of manifest {digest}")
            for i, e in enumerate(layers)
        ),
    )


def select_manifest(entries: Sequence[Descriptor]) -> Descriptor:
    """The index entry to use: the first wasm one (``architecture: wasm`` with an ``os`` in
    :data:`WASM_OSES`, then any ``architecture: wasm``), else the first entry (whose config
    then decides; a linux image has no wasm layers).

    Raises:
        LayerError: the index is empty.
    """
    if not entries:
        raise LayerError("the image index lists no manifests")
    wasm = [e for e in entries if e.architecture == WASM_ARCHITECTURE]
    for entry in wasm:
        if entry.os in WASM_OSES:
            return entry
    return wasm[0] if wasm else entries[0]


def is_wasm_config(config: Descriptor, data: bytes) -> bool:
    """Whether an image config says "wasm": the CNCF artifact config media type, or an
    OCI image config whose ``architecture`` is ``wasm`` (runwasi parses it as a Platform).

    Raises:
        LayerError: the config is not a JSON object.
    """
    if config.media_type == WASM_CONFIG_MEDIA_TYPE:
        return True
    doc = _json_object(data, f"image config {config.digest}")
    return doc.get("architecture") == WASM_ARCHITECTURE


def wasm_layer_descriptors(manifest: Manifest, supported: Sequence[str]) -> tuple[Descriptor, ...]:
    """The manifest's layers whose media type the shim supports, in manifest order."""
    return tuple(layer for layer in manifest.layers if layer.media_type in supported)


# --------------------------------------------------------------------------- cache labels


def cache_key_hash(cache_key: str) -> str:
    """The ``<key>`` part of the cache label: the first 16 hex digits of the SHA-256 of the
    compiler's :meth:`~containerd_shim_wasm.Compiler.cache_key` (UTF-8).

    runwasi puts the decimal ``u64`` of Rust's ``DefaultHasher`` here, which Python cannot
    reproduce (and which is not stable across Rust releases); a runwasi shim and this one
    therefore never share cache entries, which is right: their artifacts differ anyway.
    64 bits keep the label short and make an accidental collision negligible.
    """
    return hashlib.sha256(cache_key.encode()).hexdigest()[:16]


def precompile_label(shim_name: str, cache_key: str) -> str:
    """``runwasi.io/precompiled/<shim_name>/<cache_key_hash(cache_key)>``."""
    return f"{PRECOMPILE_PREFIX}/{shim_name}/{cache_key_hash(cache_key)}"


def original_label(precompile_id: str) -> str:
    """The compiled blob's label naming the layer it was compiled from."""
    return f"{precompile_id}/original"


def gc_ref_label(index: int) -> str:
    """``containerd.io/gc.ref.content.precompile.<index>``: a GC reference to a blob."""
    return f"{GC_REF_PRECOMPILE_PREFIX}{index}"


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_chunks(total: int, chunk: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges covering ``total`` bytes in pieces of at most ``chunk``
    (default :data:`MAX_WRITE_CHUNK`); empty for ``total == 0``."""
    size = MAX_WRITE_CHUNK if chunk is None else chunk
    if size <= 0:
        raise ValueError("chunk size must be positive")
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _write_ref(digest: str) -> str:
    # One ingest ref per blob: concurrent writers of the same compiled bytes serialize on
    # containerd's ref lock (the loser gets UNAVAILABLE and leaves caching to the winner).
    return f"precompile-{digest.replace(':', '-')}"


def _lease_id(shim_name: str, digest: str) -> str:
    # Unique per call (two containers of one image may store concurrently); only
    # identifier characters, short of containerd's 76-character limit.
    name = _NOT_IDENT.sub("-", shim_name).strip("-")[:20] or "shim"
    return f"precompile-{name}-{digest.partition(':')[2][:16]}-{secrets.token_hex(4)}"


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- gRPC client

_SERVICES = "containerd.services"


class ContainerdClient:
    """A minimal asyncio client for containerd's gRPC API, bound to one namespace.

    Use as ``async with ContainerdClient(address, namespace) as client``. ``grpc`` and the
    generated messages are imported on entry, not at module import. RPC failures raise
    :class:`LayerError` with the gRPC status name in ``code``.
    """

    def __init__(self, address: str, namespace: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        self.timeout = timeout
        self._channel: Any = None
        self._grpc: Any = None

    async def __aenter__(self) -> ContainerdClient:
        if not self.address:
            raise LayerError("the shim was given no containerd address")
        if not os.path.exists(self.address):
            # Checked first: saves importing grpc (and its threads) for nothing.
            raise LayerError(
                f"containerd's socket {self.address} does not exist; is containerd running?",
                "UNAVAILABLE",
            )
        import grpc  # type: ignore[import-untyped, unused-ignore]
        import grpc.aio  # type: ignore[import-untyped, unused-ignore]

        self._grpc = grpc
        self._channel = grpc.aio.insecure_channel(
            f"unix://{os.path.abspath(self.address)}",
            # Reads come in 1 MiB messages, but be generous with what containerd may send.
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # -- plumbing ---------------------------------------------------------------------

    def _metadata(self, lease: str | None = None) -> tuple[tuple[str, str], ...]:
        md = ((NAMESPACE_HEADER, self.namespace),)
        return (*md, (LEASE_HEADER, lease)) if lease else md

    def _method(self, kind: str, service: str, name: str, request: Any, response: Any) -> Any:
        if self._channel is None:
            raise RuntimeError("ContainerdClient used outside 'async with'")
        factory = getattr(self._channel, kind)
        return factory(
            f"/{_SERVICES}.{service}/{name}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )

    def _error(self, exc: Any, what: str) -> LayerError:
        """A LayerError for a failed call (``exc``: a ``grpc.aio.AioRpcError``)."""
        code = exc.code()
        details = exc.details() or code.name.lower()
        hint = ""
        if code == self._grpc.StatusCode.UNAVAILABLE:
            hint = f" (is containerd listening on {self.address}?)"
        return LayerError(f"{what}: {details}{hint}", code.name)

    async def _unary(self, service: str, name: str, req: Any, resp: Any, what: str) -> Any:
        call = self._method("unary_unary", service, name, type(req), resp)
        try:
            return await call(req, metadata=self._metadata(), timeout=self.timeout)
        except self._grpc.aio.AioRpcError as exc:
            raise self._error(exc, what) from None

    # -- services ---------------------------------------------------------------------

    async def container_image(self, container_id: str) -> str:
        """The image name of container ``container_id`` (``""`` when it has none)."""
        from .api import containers_pb2 as pb

        resp = await self._unary(
            "containers.v1.Containers", "Get", pb.GetContainerRequest(id=container_id),
            pb.GetContainerResponse, f"cannot get container {container_id!r} from containerd",
        )  # fmt: skip
        return str(resp.container.image)

    async def image_target(self, name: str) -> Descriptor:
        """The target descriptor (manifest or index) of image ``name``."""
        from .api import images_pb2 as pb

        resp = await self._unary(
            "images.v1.Images", "Get", pb.GetImageRequest(name=name), pb.GetImageResponse,
            f"cannot get image {name!r} from containerd",
        )  # fmt: skip
        target = resp.image.target
        if not target.digest:
            raise LayerError(f"image {name!r} has no target descriptor")
        return Descriptor(target.media_type, target.digest, target.size)

    async def labels(self, digest: str) -> dict[str, str]:
        """The labels of blob ``digest`` (``Content.Info``)."""
        from .api import content_pb2 as pb

        resp = await self._unary(
            "content.v1.Content", "Info", pb.InfoRequest(digest=digest), pb.InfoResponse,
            f"cannot get info of blob {digest}",
        )  # fmt: skip
        return dict(resp.info.labels)

    async def update_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        """Set ``labels`` on blob ``digest``, leaving its other labels alone.

        The field mask names each label (``labels.<key>``): a read-modify-write of the whole
        map would lose labels another shim sets at the same time.
        """
        from google.protobuf import field_mask_pb2

        from .api import content_pb2 as pb

        req = pb.UpdateRequest(
            info=pb.Info(digest=digest, labels=dict(labels)),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        await self._unary(
            "content.v1.Content", "Update", req, pb.UpdateResponse,
            f"cannot label blob {digest}",
        )  # fmt: skip

    async def delete(self, digest: str) -> None:
        """Remove blob ``digest`` from the namespace (``Content.Delete``)."""
        from google.protobuf import empty_pb2

        from .api import content_pb2 as pb

        await self._unary(
            "content.v1.Content", "Delete", pb.DeleteContentRequest(digest=digest),
            empty_pb2.Empty, f"cannot delete blob {digest}",
        )  # fmt: skip

    async def read(self, digest: str) -> bytes:
        """The whole blob ``digest`` (``Content.Read`` streams it in pieces)."""
        from .api import content_pb2 as pb

        method = self._method(
            "unary_stream", "content.v1.Content", "Read", pb.ReadContentRequest,
            pb.ReadContentResponse,
        )  # fmt: skip
        call = method(
            pb.ReadContentRequest(digest=digest), metadata=self._metadata(), timeout=self.timeout
        )
        parts: list[bytes] = []
        try:
            async for msg in call:
                parts.append(msg.data)
        except self._grpc.aio.AioRpcError as exc:
            raise self._error(exc, f"cannot read blob {digest}") from None
        return b"".join(parts)

    async def write(
        self, data: bytes, *, ref: str, labels: Mapping[str, str], lease: str | None
    ) -> str:
        """Store ``data`` as a blob and return its digest (``Content.Write``).

        Stat first: containerd answers ALREADY_EXISTS when the blob is already there (and
        adds it to ``lease``), which ends the write early. Then chunks of at most
        :data:`MAX_WRITE_CHUNK` from offset 0 (offset 0 truncates whatever an interrupted
        earlier write left under ``ref``), then a commit that verifies size and digest and
        sets ``labels``.
        """
        from .api import content_pb2 as pb

        expected = sha256_digest(data)
        what = f"cannot write blob {expected}"
        call = self._method(
            "stream_stream", "content.v1.Content", "Write", pb.WriteContentRequest,
            pb.WriteContentResponse,
        )(metadata=self._metadata(lease), timeout=self.timeout)  # fmt: skip

        async def exchange(req: Any) -> Any:
            await call.write(req)
            resp = await call.read()
            if resp is self._grpc.aio.EOF:
                raise LayerError(f"{what}: containerd closed the write stream early")
            return resp

        try:
            try:
                await exchange(
                    pb.WriteContentRequest(
                        action=pb.STAT, ref=ref, total=len(data), expected=expected
                    )
                )
            except self._grpc.aio.AioRpcError as exc:
                if exc.code() == self._grpc.StatusCode.ALREADY_EXISTS:
                    return expected
                raise
            for start, end in write_chunks(len(data)):
                await exchange(
                    pb.WriteContentRequest(action=pb.WRITE, offset=start, data=data[start:end])
                )
            resp = await exchange(
                pb.WriteContentRequest(
                    action=pb.COMMIT,
                    total=len(data),
                    offset=len(data),
                    expected=expected,
                    labels=dict(labels),
                )
            )
            await call.done_writing()
        except self._grpc.aio.AioRpcError as exc:
            if exc.code() == self._grpc.StatusCode.ALREADY_EXISTS:  # committed meanwhile
                return expected
            raise self._error(exc, what) from None
        finally:
            call.cancel()  # no-op once the server ended the stream
        if resp.offset != len(data) or resp.digest != expected:
            raise LayerError(
                f"{what}: containerd committed {resp.offset} bytes as {resp.digest or '?'}"
            )
        return expected

    async def create_lease(self, lease_id: str, labels: Mapping[str, str]) -> str:
        """Create lease ``lease_id`` (``Leases.Create``) and return its id."""
        from .api import leases_pb2 as pb

        resp = await self._unary(
            "leases.v1.Leases", "Create", pb.CreateRequest(id=lease_id, labels=dict(labels)),
            pb.CreateResponse, f"cannot create lease {lease_id}",
        )  # fmt: skip
        return str(resp.lease.id or lease_id)

    async def delete_lease(self, lease_id: str) -> None:
        """Delete lease ``lease_id``; what it alone held becomes garbage."""
        from google.protobuf import empty_pb2

        from .api import leases_pb2 as pb

        await self._unary(
            "leases.v1.Leases", "Delete", pb.DeleteRequest(id=lease_id), empty_pb2.Empty,
            f"cannot delete lease {lease_id}",
        )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lease(self, lease_id: str, ttl: timedelta = LEASE_TTL) -> AsyncIterator[str]:
        """A lease for the duration of the block, expiring after ``ttl`` should the shim
        die first; a failure to delete it is only logged (it expires anyway)."""
        expire = _rfc3339(datetime.now(UTC) + ttl)
        lid = await self.create_lease(lease_id, {GC_EXPIRE_LABEL: expire})
        try:
            yield lid
        finally:
            try:
                await self.delete_lease(lid)
            except LayerError as exc:
                log.warning("cannot delete lease %s (it expires at %s): %s", lid, expire, exc)


# --------------------------------------------------------------------------- the flow


async def load_wasm_layers(
    address: str,
    namespace: str,
    container_id: str,
    shim: type[Shim],
    *,
    precompile: bool = True,
    force_recompile: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[WasmLayer, ...]:
    """The wasm layers of container ``container_id``'s image, for its
    :class:`~containerd_shim_wasm.OciSource`.

    Args:
        address: containerd's gRPC socket (the shim's ``-address``; ``unix://`` optional).
        namespace: the containerd namespace of the container.
        container_id: the container's id.
        shim: the engine shim: its ``supported_layers_types()`` select the layers, its
            ``compiler()`` (if any) and ``name()`` drive the precompile cache.
        precompile: ``False`` skips the cache and the compiler: original bytes only.
        force_recompile: ignore (and delete) a cached compiled blob, compile again and
            store the result: use it after the engine rejected precompiled bytes.
        timeout: seconds allowed for each RPC.

    Returns:
        ``()`` when the image is not a wasm image (its config's architecture is not
        ``wasm``), has no layer of a supported media type, or the container has no image.
        Otherwise one :class:`WasmLayer` with the layer's media type and digest; ``data`` is
        the compiled artifact (``precompiled=True``) when the shim has a compiler that
        produced one, else the layer's bytes.

    Raises:
        LayerError: containerd is unreachable, the container, image or a blob is missing,
            a document is malformed, or the image has more than one wasm layer. The caller
            logs it and runs the module from the rootfs instead.
    """
    async with ContainerdClient(address, namespace, timeout=timeout) as client:
        return await _load(client, container_id, shim, precompile, force_recompile)


async def _load(
    client: ContainerdClient,
    container_id: str,
    shim: type[Shim],
    precompile: bool,
    force_recompile: bool,
) -> tuple[WasmLayer, ...]:
    found = await _find_wasm_layers(client, container_id, shim)
    if found is None:
        return ()
    manifest_digest, descriptors = found
    compiler = await shim.compiler() if precompile else None
    if compiler is None:
        return tuple(
            [WasmLayer(d.media_type, d.digest, await client.read(d.digest)) for d in descriptors]
        )
    return await _load_precompiled(
        client, shim.name(), compiler, manifest_digest, descriptors, force_recompile
    )


async def _find_wasm_layers(
    client: ContainerdClient, container_id: str, shim: type[Shim]
) -> tuple[str, tuple[Descriptor, ...]] | None:
    """``(manifest digest, wasm layer descriptors)``, or None when there are none."""
    image = await client.container_image(container_id)
    if not image:
        log.debug("container %s has no image: no wasm layers", container_id)
        return None
    target = await client.image_target(image)
    manifest_desc = target
    document = parse_image_document(
        target.media_type, await client.read(target.digest), target.digest
    )
    for _ in range(2):  # an index may nest one more index (e.g. attestations); no deeper
        if isinstance(document, Manifest):
            break
        manifest_desc = select_manifest(document)
        document = parse_image_document(
            manifest_desc.media_type, await client.read(manifest_desc.digest), manifest_desc.digest
        )
    if not isinstance(document, Manifest):
        raise LayerError(f"image {image!r}: indexes nested too deeply to find a manifest")
    config = await client.read(document.config.digest)
    if not is_wasm_config(document.config, config):
        log.debug("image %s is not in wasm OCI image format (architecture is not wasm)", image)
        return None
    supported = shim.supported_layers_types()
    layers = wasm_layer_descriptors(document, supported)
    if not layers:
        log.debug("image %s has no layer of a wasm media type (%s)", image, ", ".join(supported))
        return None
    if len(layers) > 1:
        raise TooManyWasmLayers(
            f"image {image!r} has {len(layers)} wasm layers "
            f"({', '.join(d.digest for d in layers)}); only one module per container is "
            "supported: build the image with a single wasm layer"
        )
    log.info("image %s: using wasm layer %s", image, layers[0].digest)
    return manifest_desc.digest, layers


async def _read_cached(client: ContainerdClient, digest: str, layer: str) -> bytes | None:
    """The compiled blob ``digest`` if it exists and is intact; else None (logged)."""
    if not _DIGEST.match(digest):
        log.warning("layer %s: precompile label holds no sha256 digest (%r)", layer, digest)
        return None
    try:
        data = await client.read(digest)
    except LayerError as exc:
        log.info("layer %s: compiled blob %s unavailable, recompiling: %s", layer, digest, exc)
        return None
    if sha256_digest(data) != digest:
        # A corrupt blob would crash or mislead the engine: drop it so the store is rewritten.
        log.warning("layer %s: compiled blob %s is corrupt, recompiling", layer, digest)
        await _forget(client, digest)
        return None
    return data


async def _forget(client: ContainerdClient, digest: str) -> None:
    try:
        await client.delete(digest)
    except LayerError as exc:
        if exc.code != "NOT_FOUND":
            log.warning("cannot delete compiled blob %s: %s", digest, exc)


async def _load_precompiled(
    client: ContainerdClient,
    shim_name: str,
    compiler: Compiler,
    manifest_digest: str,
    descriptors: Sequence[Descriptor],
    force: bool,
) -> tuple[WasmLayer, ...]:
    precompile_id = precompile_label(shim_name, compiler.cache_key())
    manifest_labels = await client.labels(manifest_digest)
    result: list[WasmLayer | None] = [None] * len(descriptors)
    for i, desc in enumerate(descriptors):
        cached = (await client.labels(desc.digest)).get(precompile_id)
        if not cached:
            continue
        if force:
            await _forget(client, cached)
            continue
        data = await _read_cached(client, cached, desc.digest)
        if data is None:
            continue
        log.info("layer %s: using precompiled blob %s", desc.digest, cached)
        result[i] = WasmLayer(desc.media_type, desc.digest, data, precompiled=True)
        if manifest_labels.get(gc_ref_label(i)) != cached or precompile_id not in manifest_labels:
            # Cached through another image sharing this layer: make this image hold it too.
            with contextlib.suppress(LayerError):
                await client.update_labels(
                    manifest_digest, {gc_ref_label(i): cached, precompile_id: "true"}
                )

    missing = [i for i, layer in enumerate(result) if layer is None]
    if missing:
        originals = {
            i: WasmLayer(
                descriptors[i].media_type,
                descriptors[i].digest,
                await client.read(descriptors[i].digest),
            )
            for i in missing
        }
        compiled = await _compile(compiler, [originals[i] for i in missing])
        for i, out in zip(missing, compiled, strict=True):
            if out is None:
                result[i] = originals[i]
                continue
            result[i] = WasmLayer(
                originals[i].media_type, originals[i].digest, out, precompiled=True
            )
            try:
                await store_precompiled(
                    client, shim_name, precompile_id, i, originals[i].digest, out, manifest_digest
                )
            except LayerError as exc:
                log.warning(
                    "layer %s: compiled, but not cached (the next container compiles again): %s",
                    originals[i].digest, exc,
                )  # fmt: skip
    return tuple(layer for layer in result if layer is not None)


async def _compile(compiler: Compiler, layers: list[WasmLayer]) -> list[bytes | None]:
    """The compiler's output, or all ``None`` (originals) when it fails or misbehaves:
    precompiling is an optimisation and never fails a container."""
    try:
        out = await compiler.compile(layers)
    except Exception as exc:
        log.warning("precompiling failed, running the original layers: %s", exc)
        return [None] * len(layers)
    if len(out) != len(layers):
        log.warning(
            "the compiler returned %d results for %d layers; running the original layers",
            len(out), len(layers),
        )  # fmt: skip
        return [None] * len(layers)
    return [bytes(b) if b is not None else None for b in out]


async def store_precompiled(
    client: ContainerdClient,
    shim_name: str,
    precompile_id: str,
    index: int,
    original_digest: str,
    data: bytes,
    manifest_digest: str,
) -> str:
    """Store compiled ``data`` for layer ``original_digest`` and label it (module docstring);
    returns the compiled blob's digest.

    Everything happens under a fresh lease (expiring after :data:`LEASE_TTL`), so the blob
    cannot be collected between its commit and the labels that reference it.

    Raises:
        LayerError: a write, label or lease call failed (the caller logs it).
    """
    digest = sha256_digest(data)
    async with client.lease(_lease_id(shim_name, digest)) as lease:
        await client.write(
            data,
            ref=_write_ref(digest),
            labels={original_label(precompile_id): original_digest},
            lease=lease,
        )
        await client.update_labels(
            original_digest, {precompile_id: digest, gc_ref_label(index): digest}
        )
        await client.update_labels(
            manifest_digest, {gc_ref_label(index): digest, precompile_id: "true"}
        )
    log.info("layer %s: stored precompiled blob %s", original_digest, digest)
    return digest


async def invalidate_precompiled(
    address: str,
    namespace: str,
    container_id: str,
    shim: type[Shim],
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Delete the cached compiled blobs of the container's image for this shim and cache
    key, so that the next :func:`load_wasm_layers` compiles again; returns how many.

    For when the engine rejected precompiled bytes after the fact (e.g. in the container
    process), where the daemon can no longer retry with ``force_recompile``.

    Raises:
        LayerError: as :func:`load_wasm_layers` (a blob already gone is not an error).
    """
    async with ContainerdClient(address, namespace, timeout=timeout) as client:
        found = await _find_wasm_layers(client, container_id, shim)
        compiler = await shim.compiler()
        if found is None or compiler is None:
            return 0
        precompile_id = precompile_label(shim.name(), compiler.cache_key())
        deleted = 0
        for desc in found[1]:
            cached = (await client.labels(desc.digest)).get(precompile_id)
            if cached:
                await _forget(client, cached)
                deleted += 1
        return deleted
