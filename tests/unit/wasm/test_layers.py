"""The pure parts of the wasm layer loader: documents, platform selection, labels, chunks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest

from containerd_shim_wasm import layers
from containerd_shim_wasm.layers import (
    MAX_WRITE_CHUNK,
    WASM_CONFIG_MEDIA_TYPE,
    Descriptor,
    LayerError,
    Manifest,
    cache_key_hash,
    gc_ref_label,
    is_wasm_config,
    original_label,
    parse_image_document,
    precompile_label,
    select_manifest,
    sha256_digest,
    wasm_layer_descriptors,
    write_chunks,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
WASM_LAYER = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"
TAR_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def desc(media_type: str, digest: str, **platform: str) -> dict[str, object]:
    d: dict[str, object] = {"mediaType": media_type, "digest": digest, "size": 7}
    if platform:
        d["platform"] = platform
    return d


def manifest_json(*layer_descs: dict[str, object], config_type: str = OCI_CONFIG) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(config_type, D1),
            "layers": list(layer_descs),
        }
    ).encode()


def test_the_module_imports_neither_grpc_nor_protobuf() -> None:
    # The shim's start path may import it; grpc would also start threads in the zygote.
    code = (
        "import sys, containerd_shim_wasm.layers\n"
        "print([m for m in ('grpc', 'google.protobuf', 'asyncio') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- labels


def test_cache_key_hash_is_the_first_16_hex_digits_of_sha256() -> None:
    assert cache_key_hash("abc") == "ba7816bf8f01cfea"  # sha256("abc") = ba7816bf8f01cfea41…
    assert cache_key_hash("abc") == cache_key_hash("abc")
    assert cache_key_hash("abd") != cache_key_hash("abc")
    assert re.fullmatch(r"[0-9a-f]{16}", cache_key_hash(""))


def test_label_names() -> None:
    pid = precompile_label("wasmtime", "abc")
    assert pid == "runwasi.io/precompiled/wasmtime/ba7816bf8f01cfea"
    assert original_label(pid) == "runwasi.io/precompiled/wasmtime/ba7816bf8f01cfea/original"
    assert gc_ref_label(0) == "containerd.io/gc.ref.content.precompile.0"
    assert gc_ref_label(3) == "containerd.io/gc.ref.content.precompile.3"


def test_sha256_digest() -> None:
    assert sha256_digest(b"abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_lease_ids_are_containerd_identifiers_and_unique() -> None:
    ident = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
    ids = {layers._lease_id("wasm/time v1!", D2) for _ in range(20)}
    assert len(ids) == 20
    for lid in ids:
        assert ident.match(lid) and len(lid) <= 76, lid
        assert lid.startswith("precompile-wasm-time-v1-2222222222222222-")
    assert ident.match(layers._lease_id("", D2))
    assert ident.match(layers._write_ref(D2))


def test_rfc3339_expiry_is_utc_with_z() -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert layers._rfc3339(when) == "2024-05-06T05:08:09Z"
    parsed = datetime.strptime(layers._rfc3339(datetime.now(UTC)), "%Y-%m-%dT%H:%M:%SZ")
    assert abs(parsed.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(seconds=5)


# --------------------------------------------------------------------------- chunks


@pytest.mark.parametrize(
    ("total", "chunk", "expected"),
    [
        (0, 10, []),
        (1, 10, [(0, 1)]),
        (10, 10, [(0, 10)]),
        (11, 10, [(0, 10), (10, 11)]),
        (25, 10, [(0, 10), (10, 20), (20, 25)]),
    ],
)
def test_write_chunks(total: int, chunk: int, expected: list[tuple[int, int]]) -> None:
    assert write_chunks(total, chunk) == expected


def test_write_chunks_default_is_15_mib() -> None:
    assert MAX_WRITE_CHUNK == 15 * 1024 * 1024 < 16 * 1024 * 1024  # containerd's gRPC limit
    total = 2 * MAX_WRITE_CHUNK + 5
    assert write_chunks(total) == [
        (0, MAX_WRITE_CHUNK),
        (MAX_WRITE_CHUNK, 2 * MAX_WRITE_CHUNK),
        (2 * MAX_WRITE_CHUNK, total),
    ]
    with pytest.raises(ValueError):
        write_chunks(5, 0)


# --------------------------------------------------------------------------- documents


def test_parse_manifest() -> None:
    doc = parse_image_document(OCI_MANIFEST, manifest_json(desc(WASM_LAYER, D2)), D3)
    assert doc == Manifest(
        config=Descriptor(OCI_CONFIG, D1, 7), layers=(Descriptor(WASM_LAYER, D2, 7),)
    )


def test_parse_index_keeps_platforms() -> None:
    data = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                desc(OCI_MANIFEST, D1, os="linux", architecture="amd64"),
                desc(OCI_MANIFEST, D2, os="wasip1", architecture="wasm"),
            ],
        }
    ).encode()
    assert parse_image_document(OCI_INDEX, data, D3) == (
        Descriptor(OCI_MANIFEST, D1, 7, "linux", "amd64"),
        Descriptor(OCI_MANIFEST, D2, 7, "wasip1", "wasm"),
    )


@pytest.mark.parametrize("media_type", ["", "application/octet-stream"])
def test_an_unknown_target_media_type_is_decided_by_the_document(media_type: str) -> None:
    assert isinstance(parse_image_document(media_type, manifest_json(), D3), Manifest)
    index = json.dumps({"manifests": [desc(OCI_MANIFEST, D1)]}).encode()
    assert parse_image_document(media_type, index, D3) == (Descriptor(OCI_MANIFEST, D1, 7),)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "is not valid JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (b'{"schemaVersion": 2}', "neither an OCI/Docker manifest nor an index"),
        (json.dumps({"config": {"mediaType": OCI_CONFIG}, "layers": []}).encode(), "no digest"),
        (json.dumps({"config": desc(OCI_CONFIG, D1), "layers": [3]}).encode(), "layers[0]"),
    ],
)
def test_malformed_documents(data: bytes, message: str) -> None:
    with pytest.raises(LayerError, match=re.escape(message)):
        parse_image_document("", data, D3)


def test_index_without_manifests_list() -> None:
    with pytest.raises(LayerError, match="no 'manifests' list"):
        parse_image_document(OCI_INDEX, b"{}", D3)


# --------------------------------------------------------------------------- platforms


def entry(digest: str, os: str = "", arch: str = "") -> Descriptor:
    return Descriptor(OCI_MANIFEST, digest, 1, os, arch)


@pytest.mark.parametrize("wasm_os", ["wasip1", "wasi", "wasip2"])
def test_select_manifest_prefers_a_wasm_platform(wasm_os: str) -> None:
    entries = [entry(D1, "linux", "amd64"), entry(D2, wasm_os, "wasm")]
    assert select_manifest(entries).digest == D2


def test_select_manifest_prefers_a_known_wasm_os_then_any_wasm_then_the_first() -> None:
    assert select_manifest([entry(D1, "other", "wasm"), entry(D2, "wasip1", "wasm")]).digest == D2
    assert select_manifest([entry(D1, "linux", "arm64"), entry(D2, "other", "wasm")]).digest == D2
    assert select_manifest([entry(D1, "linux", "amd64"), entry(D2, "linux", "arm64")]).digest == D1
    assert select_manifest([entry(D3)]).digest == D3


def test_select_manifest_of_an_empty_index() -> None:
    with pytest.raises(LayerError, match="lists no manifests"):
        select_manifest([])


# --------------------------------------------------------------------------- configs, layers


def test_is_wasm_config() -> None:
    oci = Descriptor(OCI_CONFIG, D1)
    assert is_wasm_config(oci, b'{"architecture": "wasm", "os": "wasip1"}')
    assert not is_wasm_config(oci, b'{"architecture": "amd64", "os": "linux"}')
    assert not is_wasm_config(oci, b"{}")
    # The CNCF artifact config is wasm by its media type, whatever it contains.
    assert is_wasm_config(Descriptor(WASM_CONFIG_MEDIA_TYPE, D1), b"{}")
    with pytest.raises(LayerError, match="is not valid JSON"):
        is_wasm_config(oci, b"\xff")


def test_wasm_layer_descriptors_keeps_supported_types_in_order() -> None:
    manifest = Manifest(
        config=Descriptor(OCI_CONFIG, D1),
        layers=(
            Descriptor(TAR_LAYER, D1),
            Descriptor("application/wasm", D2),
            Descriptor(WASM_LAYER, D3),
        ),
    )
    supported = ("application/wasm", WASM_LAYER)
    assert [d.digest for d in wasm_layer_descriptors(manifest, supported)] == [D2, D3]
    assert wasm_layer_descriptors(manifest, ()) == ()
