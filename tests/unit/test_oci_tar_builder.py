"""oci_tar_builder: archive layout, the three wasm forms, native images, determinism, CLI."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from containerd_shim_wasm import oci_tar_builder as otb

MODULE = b"\0asm\x01\0\0\0"  # the smallest valid core module
OTHER = b"\0asm\x01\0\0\0\0\x04\x01\0"  # a different valid module (empty custom section)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Archive:
    """An OCI layout tar opened for inspection."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            self.members = {m.name: m for m in tar.getmembers()}
            self.files = {
                m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile()
            }

    def json(self, name: str) -> Any:
        return json.loads(self.files[name])

    def blob(self, digest: str) -> bytes:
        return self.files["blobs/sha256/" + digest.removeprefix("sha256:")]

    @property
    def index(self) -> Any:
        return self.json("index.json")

    @property
    def manifest(self) -> Any:
        return json.loads(self.blob(self.index["manifests"][0]["digest"]))

    @property
    def config(self) -> Any:
        return json.loads(self.blob(self.manifest["config"]["digest"]))

    def layer_members(self, i: int = 0) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
        layer = gzip.decompress(self.blob(self.manifest["layers"][i]["digest"]))
        with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
            return {
                m.name: (m, tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
                for m in tar.getmembers()
            }


def run_cli(tmp_path: Path, *argv: str) -> Archive:
    out = tmp_path / "out.tar"
    assert otb.main([*argv, "-o", str(out)]) == 0
    return Archive(out.read_bytes())


@pytest.fixture
def module_file(tmp_path: Path) -> Path:
    path = tmp_path / "app.wasm"
    path.write_bytes(MODULE)
    return path


# ------------------------------------------------------------------------------------------
# layout common to every form


@pytest.mark.parametrize("fmt", otb.FORMATS)
def test_layout_and_digests(tmp_path: Path, module_file: Path, fmt: str) -> None:
    a = run_cli(tmp_path, "-n", "app", "-m", str(module_file), "--format", fmt)
    assert a.json("oci-layout") == {"imageLayoutVersion": "1.0.0"}
    # Every blob is stored under its own digest.
    for name, data in a.files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = a.index
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == otb.OCI_INDEX_MEDIA_TYPE
    [desc] = index["manifests"]
    assert desc["annotations"] == {
        "io.containerd.image.name": "localhost/app:latest",
        "org.opencontainers.image.ref.name": "latest",
    }
    manifest_bytes = a.blob(desc["digest"])
    assert desc["size"] == len(manifest_bytes)
    assert desc["mediaType"] == otb.OCI_MANIFEST_MEDIA_TYPE
    assert desc["platform"] == {"architecture": "wasm", "os": "wasip1"}
    manifest = a.manifest
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == otb.OCI_MANIFEST_MEDIA_TYPE
    for d in [manifest["config"], *manifest["layers"]]:
        assert sha(a.blob(d["digest"])) == d["digest"]
        assert len(a.blob(d["digest"])) == d["size"]
    # The Docker-style manifest.json names the same blobs.
    [docker] = a.json("manifest.json")
    assert docker["RepoTags"] == ["localhost/app:latest"]
    assert docker["Config"] == "blobs/sha256/" + manifest["config"]["digest"][7:]
    assert docker["Layers"] == ["blobs/sha256/" + d["digest"][7:] for d in manifest["layers"]]


@pytest.mark.parametrize("fmt", otb.FORMATS)
def test_archive_is_deterministic(tmp_path: Path, module_file: Path, fmt: str) -> None:
    args = ["-n", "app", "-m", str(module_file), "--format", fmt]
    first = run_cli(tmp_path, *args).data
    module_file.touch()  # a newer mtime must not matter
    (tmp_path / "b").mkdir()
    assert run_cli(tmp_path / "b", *args).data == first
    for member in Archive(first).members.values():
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            0,
            0,
            0,
            "",
            "",
        )


def test_json_is_canonical_and_gzip_has_no_timestamp(tmp_path: Path, module_file: Path) -> None:
    a = run_cli(tmp_path, "-n", "app", "-m", str(module_file), "--format", "file")
    for raw in (a.files["index.json"], a.blob(a.manifest["config"]["digest"])):
        assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    layer = a.blob(a.manifest["layers"][0]["digest"])
    assert layer[:2] == b"\x1f\x8b" and layer[4:8] == b"\0\0\0\0"  # gzip MTIME = 0
    assert a.config["created"] == otb.CREATED


def test_different_inputs_give_different_digests(tmp_path: Path) -> None:
    one = otb.wasm_layer_image("localhost/x:1", [otb.Module("x.wasm", MODULE)])
    two = otb.wasm_layer_image("localhost/x:1", [otb.Module("x.wasm", OTHER)])
    assert one.manifest().digest != two.manifest().digest
    assert one.config.digest != two.config.digest  # thanks to the runwasi layers label


# ------------------------------------------------------------------------------------------
# the three wasm forms


def test_file_form(tmp_path: Path, module_file: Path) -> None:
    a = run_cli(tmp_path, "-n", "app", "-t", "v1", "-m", str(module_file), "--format", "file")
    [layer] = a.manifest["layers"]
    assert layer["mediaType"] == otb.OCI_LAYER_MEDIA_TYPE
    members = a.layer_members()
    info, data = members["app.wasm"]
    assert data == MODULE and info.mode == 0o755 and info.isfile()
    config = a.config
    assert (config["os"], config["architecture"]) == ("wasip1", "wasm")
    assert config["config"]["Entrypoint"] == ["/app.wasm"]
    assert config["config"]["Env"] == [otb.DEFAULT_PATH_ENV]
    diff_id = sha(gzip.decompress(a.blob(layer["digest"])))
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    assert a.manifest["config"]["mediaType"] == otb.OCI_CONFIG_MEDIA_TYPE
    assert a.index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1"


def test_wasm_layer_form(tmp_path: Path, module_file: Path) -> None:
    other = tmp_path / "other.wasm"
    other.write_bytes(OTHER)
    a = run_cli(tmp_path, "-n", "demo", "-m", str(module_file), "-m", str(other))
    layers = a.manifest["layers"]
    assert [d["mediaType"] for d in layers] == [otb.WASM_LAYER_MEDIA_TYPE] * 2
    assert [a.blob(d["digest"]) for d in layers] == [MODULE, OTHER]  # raw bytes, in order
    config = a.config
    assert a.manifest["config"]["mediaType"] == otb.OCI_CONFIG_MEDIA_TYPE
    assert (config["os"], config["architecture"]) == ("wasip1", "wasm")
    assert config["config"]["Entrypoint"] == ["demo.wasm"]
    assert config["rootfs"] == {"type": "layers", "diff_ids": []}
    joined = "".join(d["digest"][7:] for d in layers)
    assert config["config"]["Labels"] == {
        "containerd.runwasi.layers": hashlib.sha256(joined.encode()).hexdigest()
    }


def test_artifact_form(tmp_path: Path, module_file: Path) -> None:
    a = run_cli(tmp_path, "-n", "app", "-m", str(module_file), "--as-artifact")
    assert a.manifest["config"]["mediaType"] == otb.ARTIFACT_CONFIG_MEDIA_TYPE
    [layer] = a.manifest["layers"]
    assert layer["mediaType"] == otb.ARTIFACT_LAYER_MEDIA_TYPE
    assert a.blob(layer["digest"]) == MODULE
    assert a.config == {
        "created": otb.CREATED,
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [sha(MODULE)],
    }
    # --format artifact is the same thing.
    (tmp_path / "b").mkdir()
    same = run_cli(tmp_path / "b", "-n", "app", "-m", str(module_file), "--format", "artifact")
    assert same.data == a.data


def test_extra_layers_keep_order_and_media_type(tmp_path: Path, module_file: Path) -> None:
    cfg = tmp_path / "runtime.json"
    cfg.write_bytes(b'{"x":1}')
    a = run_cli(
        tmp_path, "-n", "app", "-m", str(module_file), "-l", f"application/x.cfg+json={cfg}"
    )
    layers = a.manifest["layers"]
    assert [d["mediaType"] for d in layers] == [otb.WASM_LAYER_MEDIA_TYPE, "application/x.cfg+json"]
    assert a.blob(layers[1]["digest"]) == b'{"x":1}'


def test_default_format_is_wasm_layer_with_modules(tmp_path: Path, module_file: Path) -> None:
    a = run_cli(tmp_path, "-n", "app", "-m", str(module_file))
    assert a.manifest["layers"][0]["mediaType"] == otb.WASM_LAYER_MEDIA_TYPE


# ------------------------------------------------------------------------------------------
# native images (busybox/pause style)


def test_native_image_with_files_and_symlinks(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_bytes(b"\x7fELF fake")
    a = run_cli(
        tmp_path,
        "-n", "busybox", "-t", "test",
        "--file", f"{tool}:/bin/busybox",
        "--file", f"{tool}:/etc/motd:0644",
        "--symlink", "/bin/sh:busybox",
        "--cmd", '["/bin/sh"]',
        "--env", "FOO=bar",
        "--arch", "arm64",
    )  # fmt: skip
    members = a.layer_members()
    assert members["bin/busybox"][0].mode == 0o755
    assert members["bin/busybox"][1] == b"\x7fELF fake"
    assert members["etc/motd"][0].mode == 0o644
    link = members["bin/sh"][0]
    assert link.issym() and link.linkname == "busybox"
    assert members["bin"][0].isdir() and members["etc"][0].isdir()  # parents added
    assert list(members) == sorted(members)
    config = a.config
    assert (config["os"], config["architecture"]) == ("linux", "arm64")
    assert config["config"]["Cmd"] == ["/bin/sh"]
    assert "Entrypoint" not in config["config"]
    assert config["config"]["Env"] == ["FOO=bar"]
    assert a.index["manifests"][0]["platform"] == {"architecture": "arm64", "os": "linux"}


def test_native_image_defaults_to_host_arch() -> None:
    image = otb.file_image("localhost/p:t", files=[otb.TarEntry.file("pause", b"x")])
    config = json.loads(image.config.data)
    assert (config["os"], config["architecture"]) == ("linux", otb.host_arch())


def test_no_index_platform() -> None:
    image = otb.file_image("localhost/p:t", [otb.Module("m.wasm", MODULE)], index_platform=False)
    assert "platform" not in image.index()["manifests"][0]


def test_layer_tar_rejects_duplicates_and_escapes() -> None:
    with pytest.raises(otb.BuildError, match="duplicate path"):
        otb.layer_tar([otb.TarEntry.file("/a", b""), otb.TarEntry.file("a", b"")])
    with pytest.raises(otb.BuildError, match="invalid path"):
        otb.TarEntry.file("../etc/passwd", b"")


def test_write_is_atomic_and_creates_parents(tmp_path: Path) -> None:
    image = otb.artifact_image("localhost/a:b", otb.Module("m.wasm", MODULE))
    out = image.write(tmp_path / "sub" / "a.tar")
    assert out.read_bytes() == image.archive()
    assert [p.name for p in out.parent.iterdir()] == ["a.tar"]


# ------------------------------------------------------------------------------------------
# CLI argument errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-n", "app", "--format", "wasm-layer"], "needs at least one module"),
        (["-n", "app", "-m", "{m}", "-m", "{m}", "--as-artifact"], "takes one -m/--module, got 2"),
        (["-n", "app", "-m", "{m}", "--as-artifact", "--format", "file"], "conflicts with"),
        (["-n", "app", "-m", "{m}", "--file", "{m}:/x"], "only apply to --format file"),
        (["-n", "app", "-m", "{m}", "--as-artifact", "--cmd", '["x"]'], "no process config"),
        (["-n", "App", "-m", "{m}"], "invalid image reference 'localhost/App:latest'"),
        (["-n", "app", "-t", "bad:tag", "-m", "{m}"], "invalid image reference"),
        (["-n", "app", "-m", "/nonexistent.wasm"], "cannot read module '/nonexistent.wasm'"),
        (["-n", "app", "-m", "{m}", "--entrypoint", "/bin/sh"], "--entrypoint is not valid JSON"),
        (["-n", "app", "-m", "{m}", "--cmd", '"sh"'], "--cmd must be a JSON array of strings"),
        (["-n", "app", "-m", "{m}", "-l", "application/x"], "expects MEDIATYPE=PATH"),
        (["-n", "app", "--file", "only-one-part"], "expects SRC:DST[:MODE]"),
        (["-n", "app", "--symlink", "/bin/sh"], "expects DST:TARGET"),
        (["-n", "app", "-m", "{m}", "--env", "NOEQUALS"], "--env expects KEY=VALUE"),
        (["-n", "app"], "needs at least one module, file, symlink or layer"),
        (["-m", "{m}"], "the following arguments are required: -n/--name"),
        (["-n", "app", "--format", "zip"], "invalid choice: 'zip'"),
    ],
)
def test_cli_errors(
    tmp_path: Path,
    module_file: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    argv = [a.replace("{m}", str(module_file)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        otb.main([*argv, "-o", str(tmp_path / "out.tar")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "oci-tar-builder: error:" in err
    assert message in err
    assert not (tmp_path / "out.tar").exists()


def test_cli_default_out_path_and_summary(
    tmp_path: Path,
    module_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert otb.main(["-n", "demo", "-r", "ghcr.io/containerd/runwasi", "-m", str(module_file)]) == 0
    out = tmp_path / "demo.tar"
    a = Archive(out.read_bytes())
    name = "ghcr.io/containerd/runwasi/demo:latest"
    assert a.index["manifests"][0]["annotations"]["io.containerd.image.name"] == name
    assert capsys.readouterr().out == f"{out}: {name} {a.index['manifests'][0]['digest']}\n"
    # -o naming a directory puts <name>.tar in it.
    (tmp_path / "d").mkdir()
    assert otb.main(["-n", "demo", "-m", str(module_file), "-o", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "demo.tar").is_file()


def test_reference_with_registry_port() -> None:
    assert otb.make_reference("app", "localhost:5000", "v1") == "localhost:5000/app:v1"
    image = otb.artifact_image("localhost:5000/app:v1", otb.Module("m.wasm", MODULE))
    annotations = image.index()["manifests"][0]["annotations"]
    assert annotations["org.opencontainers.image.ref.name"] == "v1"
