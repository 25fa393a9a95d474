"""Build OCI image archives for wasm workloads (and small native test images).

The Python counterpart of runwasi's ``oci-tar-builder``. It writes an *OCI image layout*
as a tar file (``oci-layout``, ``index.json``, ``blobs/sha256/*``, plus a Docker-style
``manifest.json``) that ``ctr images import`` and ``skopeo``/``podman`` accept. Three
image forms carry a wasm module:

``file``
    The module is a file (``/<module file name>``) in an ordinary gzip tar layer; the config
    says ``os=wasip1``, ``architecture=wasm`` and ``Entrypoint=["/<module file name>"]``.
    Any containerd can import and unpack it; the shim finds the module in the rootfs. The
    same form with ``--file``/``--symlink`` and no module builds native (linux) images.
``wasm-layer``
    Each module is a layer of media type :data:`WASM_LAYER_MEDIA_TYPE` (raw module bytes, no
    tar) and ``rootfs.diff_ids`` is empty; entrypoint ``<name>.wasm``. The shim reads the
    layers from containerd's content store. containerd refuses to *unpack* this before
    2.0 / 1.7.7 / 1.6.25 ("mismatched image rootfs and manifest layers").
``artifact``
    The CNCF TAG-runtime *Wasm OCI artifact*: config media type
    :data:`ARTIFACT_CONFIG_MEDIA_TYPE` holding ``{created, architecture, os, layerDigests}``
    and one layer of media type :data:`ARTIFACT_LAYER_MEDIA_TYPE`. ``ctr run`` cannot run it;
    CRI can.

The index entry carries the image's platform (as runwasi's builder writes it). ``ctr images
import`` filters on platform, so wasm images need ``--all-platforms`` (what runwasi's tests
pass); build with ``index_platform=False`` / ``--no-index-platform`` to import them without.

Archives are deterministic: the same inputs give byte-identical tar files (and so the same
digests). Tar entries have uid/gid 0, no user names and mtime 0; gzip streams have mtime 0;
JSON is compact with sorted keys; the only timestamp is the fixed :data:`CREATED`. (Gzip
output can differ between zlib versions, so digests are stable per machine image.)

Library use::

    from containerd_shim_wasm import oci_tar_builder as otb
    image = otb.wasm_layer_image("localhost/hello:latest", [otb.Module.from_path("hello.wasm")])
    image.write("hello.tar")

Command line: ``oci-tar-builder --help``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform as _platform
import posixpath
import re
import sys
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ARTIFACT_CONFIG_MEDIA_TYPE",
    "ARTIFACT_LAYER_MEDIA_TYPE",
    "CREATED",
    "DEFAULT_PATH_ENV",
    "FORMATS",
    "OCI_CONFIG_MEDIA_TYPE",
    "OCI_INDEX_MEDIA_TYPE",
    "OCI_LAYER_MEDIA_TYPE",
    "OCI_MANIFEST_MEDIA_TYPE",
    "WASM_LAYER_MEDIA_TYPE",
    "Blob",
    "BuildError",
    "Image",
    "Module",
    "Platform",
    "TarEntry",
    "artifact_image",
    "file_image",
    "gzip_layer",
    "host_arch",
    "image_from_args",
    "layer_tar",
    "main",
    "make_reference",
    "wasm_layer_image",
]

OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
#: runwasi's wasm layer (``oci_tar_builder::WASM_LAYER_MEDIA_TYPE``).
WASM_LAYER_MEDIA_TYPE = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"
#: CNCF Wasm OCI artifact config and layer (the ``oci-wasm`` crate's constants).
ARTIFACT_CONFIG_MEDIA_TYPE = "application/vnd.wasm.config.v0+json"
ARTIFACT_LAYER_MEDIA_TYPE = "application/wasm"

#: The one timestamp written anywhere (config ``created``), fixed for reproducibility.
CREATED = "1970-01-01T00:00:00Z"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Label runwasi puts on wasm-layer configs so that each config (image id) is unique.
RUNWASI_LAYERS_LABEL = "containerd.runwasi.layers"

FORMATS = ("file", "wasm-layer", "artifact")
Format = Literal["file", "wasm-layer", "artifact"]

_TAR_LAYER_SUFFIXES = (".tar", "tar+gzip", ".tar.gzip")  # OCI and Docker layer media types
_GZIP_LEVEL = 6

# Docker/distribution reference grammar, enough to reject what containerd would.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
_REFERENCE_RE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*:(?P<tag>[\w][\w.-]{{0,127}})$"
)


class BuildError(ValueError):
    """Invalid input for an image: the message says what to change."""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(value: Any) -> bytes:
    """Canonical JSON: compact, sorted keys, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def host_arch() -> str:
    """The host's architecture in GOARCH spelling (``amd64``, ``arm64``, ...)."""
    machine = _platform.machine().lower()
    return {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "armv7l": "arm",
        "i686": "386",
        "i386": "386",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine)


# --------------------------------------------------------------------------------------------
# Content


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob with its media type (a layer, a config or a manifest)."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return _digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        """The OCI descriptor (``mediaType``, ``digest``, ``size``)."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    def diff_id(self) -> str | None:
        """The uncompressed digest if this is a tar layer (``rootfs.diff_ids`` entry), else None."""
        if not self.media_type.endswith(_TAR_LAYER_SUFFIXES):
            return None
        if self.media_type.endswith("gzip"):
            return _digest(gzip.decompress(self.data))
        return self.digest


@dataclass(frozen=True)
class Module:
    """A wasm module (or component) and the file name it goes by in the image."""

    name: str
    data: bytes

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Module:
        """Read a module from disk; its name is the file's base name."""
        p = Path(path)
        try:
            return cls(p.name, p.read_bytes())
        except OSError as exc:
            raise BuildError(f"cannot read module {str(p)!r}: {exc.strerror}") from exc


@dataclass(frozen=True)
class TarEntry:
    """One entry of a layer tar: a regular file, a directory or a symlink."""

    path: str
    kind: Literal["file", "dir", "symlink"] = "file"
    data: bytes = b""
    mode: int = 0o644
    target: str = ""

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = 0o755) -> TarEntry:
        return cls(_clean_path(path), "file", data, mode)

    @classmethod
    def symlink(cls, path: str, target: str) -> TarEntry:
        if not target:
            raise BuildError(f"symlink {path!r} has an empty target")
        return cls(_clean_path(path), "symlink", mode=0o777, target=target)

    @classmethod
    def directory(cls, path: str, mode: int = 0o755) -> TarEntry:
        return cls(_clean_path(path), "dir", mode=mode)


def _clean_path(path: str) -> str:
    """A path inside the rootfs, relative, normalised, never escaping it."""
    clean = posixpath.normpath("/" + path).lstrip("/")
    if not clean or clean == "." or ".." in path.split("/"):
        raise BuildError(f"invalid path in image: {path!r}")
    return clean


def _tarinfo(
    name: str, kind: bytes, mode: int, size: int = 0, linkname: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def layer_tar(entries: Iterable[TarEntry]) -> bytes:
    """An uncompressed, deterministic layer tar.

    Entries are sorted by path and missing parent directories are added (mode 0755).

    Raises:
        BuildError: two entries with the same path.
    """
    by_path: dict[str, TarEntry] = {}
    for entry in entries:
        if entry.path in by_path:
            raise BuildError(f"duplicate path in layer: /{entry.path}")
        by_path[entry.path] = entry
    for path in list(by_path):
        parent = posixpath.dirname(path)
        while parent and parent not in by_path:
            by_path[parent] = TarEntry(parent, "dir", mode=0o755)
            parent = posixpath.dirname(parent)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(by_path):
            entry = by_path[path]
            if entry.kind == "dir":
                tar.addfile(_tarinfo(path + "/", tarfile.DIRTYPE, entry.mode))
            elif entry.kind == "symlink":
                tar.addfile(_tarinfo(path, tarfile.SYMTYPE, 0o777, linkname=entry.target))
            else:
                info = _tarinfo(path, tarfile.REGTYPE, entry.mode, len(entry.data))
                tar.addfile(info, io.BytesIO(entry.data))
    return buf.getvalue()


def gzip_layer(tar: bytes, media_type: str = OCI_LAYER_MEDIA_TYPE) -> Blob:
    """Compress a layer tar (gzip mtime 0, no file name) into a layer blob."""
    return Blob(media_type, gzip.compress(tar, compresslevel=_GZIP_LEVEL, mtime=0))


# --------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class Platform:
    """The platform recorded in ``index.json`` (GOOS/GOARCH spelling)."""

    os: str
    architecture: str


@dataclass(frozen=True)
class Image:
    """A single-manifest image, ready to be written as an OCI layout tar.

    ``platform`` goes into the index descriptor; ``None`` leaves it out, which makes
    ``ctr images import`` take the image without ``--all-platforms`` whatever its platform.
    """

    reference: str
    config: Blob
    layers: tuple[Blob, ...]
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def manifest(self) -> Blob:
        """The image manifest blob."""
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": self.config.descriptor(),
            "layers": [layer.descriptor() for layer in self.layers],
        }
        if self.annotations:
            manifest["annotations"] = dict(self.annotations)
        return Blob(OCI_MANIFEST_MEDIA_TYPE, _json(manifest))

    def index(self) -> dict[str, Any]:
        """``index.json``: one manifest, named with containerd's and OCI's annotations."""
        descriptor = self.manifest().descriptor()
        if self.platform is not None:
            descriptor["platform"] = {
                "architecture": self.platform.architecture,
                "os": self.platform.os,
            }
        descriptor["annotations"] = {
            "io.containerd.image.name": self.reference,
            "org.opencontainers.image.ref.name": self.reference.rsplit(":", 1)[1],
        }
        return {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": [descriptor]}

    def archive(self) -> bytes:
        """The OCI layout tar, byte-for-byte reproducible."""
        manifest = self.manifest()
        blobs: dict[str, bytes] = {}
        for blob in (*self.layers, self.config, manifest):
            blobs.setdefault(blob.digest, blob.data)
        docker_manifest = [
            {
                "Config": _blob_path(self.config.digest),
                "RepoTags": [self.reference],
                "Layers": [_blob_path(layer.digest) for layer in self.layers],
            }
        ]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for directory in ("blobs/", "blobs/sha256/"):
                tar.addfile(_tarinfo(directory, tarfile.DIRTYPE, 0o755))
            files = [(_blob_path(d), data) for d, data in blobs.items()]
            files += [
                ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
                ("index.json", _json(self.index())),
                ("manifest.json", _json(docker_manifest)),
            ]
            for name, data in files:
                tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        return buf.getvalue()

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`archive` to ``path`` atomically (temp file + rename); return the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(self.archive())
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def make_reference(name: str, repo: str = "localhost", tag: str = "latest") -> str:
    """``repo/name:tag`` (just ``name:tag`` when ``repo`` is empty), validated.

    Raises:
        BuildError: the result is not a valid image reference.
    """
    reference = f"{repo.rstrip('/')}/{name}:{tag}" if repo else f"{name}:{tag}"
    _check_reference(reference)
    return reference


def _check_reference(reference: str) -> None:
    if not _REFERENCE_RE.match(reference):
        raise BuildError(
            f"invalid image reference {reference!r}: expected [registry[:port]/]path:tag with "
            "lower-case path components (a-z, 0-9, '.', '_', '-') and a tag of at most 128 "
            "characters from [A-Za-z0-9_.-]"
        )


def _image_config(
    os_name: str,
    arch: str,
    diff_ids: Sequence[str],
    *,
    entrypoint: Sequence[str] | None,
    cmd: Sequence[str] | None,
    env: Sequence[str],
    workdir: str | None,
    labels: Mapping[str, str],
) -> Blob:
    process: dict[str, Any] = {}
    if entrypoint is not None:
        process["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        process["Cmd"] = list(cmd)
    if env:
        process["Env"] = list(env)
    if workdir:
        process["WorkingDir"] = workdir
    if labels:
        process["Labels"] = dict(labels)
    config = {
        "created": CREATED,
        "architecture": arch,
        "os": os_name,
        "config": process,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    return Blob(OCI_CONFIG_MEDIA_TYPE, _json(config))


def file_image(
    reference: str,
    modules: Sequence[Module] = (),
    *,
    files: Sequence[TarEntry] = (),
    extra_layers: Sequence[Blob] = (),
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] | None = None,
    workdir: str | None = "/",
    labels: Mapping[str, str] | None = None,
    os_name: str | None = None,
    arch: str | None = None,
    index_platform: bool = True,
) -> Image:
    """Form *file*: modules (at ``/<name>``) and ``files`` in one gzip tar layer.

    With modules, ``os``/``arch`` default to ``wasip1``/``wasm`` and the entrypoint to the
    first module; without, to ``linux``/the host's architecture (a native image). ``env``
    defaults to a standard ``PATH``. Extra tar layers are counted in ``rootfs.diff_ids``;
    extra non-tar layers are not (and then containerd < 1.6.25 will not unpack the image).
    """
    _check_reference(reference)
    entries = [TarEntry.file("/" + m.name, m.data, 0o755) for m in modules] + list(files)
    if not entries and not extra_layers:
        raise BuildError("a file image needs at least one module, file, symlink or layer")
    layers = [gzip_layer(layer_tar(entries))] if entries else []
    layers += extra_layers
    diff_ids = [d for d in (layer.diff_id() for layer in layers) if d is not None]
    if entrypoint is None and modules:
        entrypoint = ["/" + modules[0].name]
    os_name = os_name or ("wasip1" if modules else "linux")
    arch = arch or ("wasm" if modules else host_arch())
    config = _image_config(
        os_name,
        arch,
        diff_ids,
        entrypoint=entrypoint,
        cmd=cmd,
        env=[DEFAULT_PATH_ENV] if env is None else env,
        workdir=workdir,
        labels=labels or {},
    )
    target = Platform(os_name, arch) if index_platform else None
    return Image(reference, config, tuple(layers), target)


def wasm_layer_image(
    reference: str,
    modules: Sequence[Module],
    *,
    extra_layers: Sequence[Blob] = (),
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    os_name: str = "wasip1",
    arch: str = "wasm",
    index_platform: bool = True,
) -> Image:
    """Form *wasm-layer* (runwasi's OCI wasm image): each module is a raw layer.

    Like runwasi: ``rootfs.diff_ids`` is empty, the entrypoint defaults to
    ``<last path component of the image name>.wasm`` and the config carries the label
    ``containerd.runwasi.layers`` = sha256 of the concatenated layer digests (hex).
    """
    _check_reference(reference)
    if not modules:
        raise BuildError("the wasm-layer format needs at least one module (-m/--module)")
    layers = [Blob(WASM_LAYER_MEDIA_TYPE, m.data) for m in modules] + list(extra_layers)
    unique = hashlib.sha256("".join(b.digest.removeprefix("sha256:") for b in layers).encode())
    all_labels = {RUNWASI_LAYERS_LABEL: unique.hexdigest(), **(labels or {})}
    if entrypoint is None:
        name = reference.rsplit(":", 1)[0].rsplit("/", 1)[-1]
        entrypoint = [name + ".wasm"]
    config = _image_config(
        os_name,
        arch,
        [],
        entrypoint=entrypoint,
        cmd=cmd,
        env=env,
        workdir=None,
        labels=all_labels,
    )
    target = Platform(os_name, arch) if index_platform else None
    return Image(reference, config, tuple(layers), target)


def artifact_image(
    reference: str,
    module: Module,
    *,
    extra_layers: Sequence[Blob] = (),
    os_name: str = "wasip1",
    author: str | None = None,
    index_platform: bool = True,
) -> Image:
    """Form *artifact*: the CNCF TAG-runtime Wasm OCI artifact (as ``oci-wasm`` writes it).

    The config is ``{"created", "architecture": "wasm", "os", "layerDigests"}`` (plus
    ``author`` when given) with media type :data:`ARTIFACT_CONFIG_MEDIA_TYPE`; the module is
    one layer of media type :data:`ARTIFACT_LAYER_MEDIA_TYPE`. Use ``os_name="wasip2"`` for a
    component (the optional ``component`` description of the spec is not generated).
    """
    _check_reference(reference)
    layers = (Blob(ARTIFACT_LAYER_MEDIA_TYPE, module.data), *extra_layers)
    config: dict[str, Any] = {
        "created": CREATED,
        "architecture": "wasm",
        "os": os_name,
        "layerDigests": [layer.digest for layer in layers],
    }
    if author is not None:
        config["author"] = author
    target = Platform(os_name, "wasm") if index_platform else None
    return Image(reference, Blob(ARTIFACT_CONFIG_MEDIA_TYPE, _json(config)), layers, target)


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oci-tar-builder",
        description="Build a deterministic OCI image archive (for `ctr images import`) holding "
        "wasm modules, or files for a small native image.",
        epilog="examples:\n"
        "  oci-tar-builder -n hello -m hello.wasm                 # wasm-layer image\n"
        "  oci-tar-builder -n hello -m hello.wasm --format file   # module as /hello.wasm\n"
        "  oci-tar-builder -n hello -m hello.wasm --as-artifact   # CNCF wasm artifact\n"
        "  oci-tar-builder -n busybox -t test --file /bin/busybox:/bin/busybox \\\n"
        "      --symlink /bin/sh:busybox --cmd '[\"/bin/sh\"]'       # native image\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    many: dict[str, Any] = {"action": "append", "default": []}
    add("-o", "--out-path", help="output file, or a directory (default: ./<name>.tar)")
    add("-n", "--name", required=True, help="image name, e.g. wasi-demo-app")
    add("-t", "--tag", default="latest", help="image tag (default: latest)")
    add("-r", "--repo", default="localhost", help="registry/repository prefix (default: localhost)")
    add("-m", "--module", **many, metavar="PATH", help="wasm module (repeatable)")
    add("-l", "--layer", **many, metavar="MEDIATYPE=PATH", help="extra layer (repeatable)")
    add("--format", choices=FORMATS, help="image form (default: wasm-layer with -m, else file)")
    add("-a", "--as-artifact", action="store_true", help="same as --format artifact")
    add("--file", **many, metavar="SRC:DST[:MODE]", help="rootfs file (file form; repeatable)")
    add("--symlink", **many, metavar="DST:TARGET", help="rootfs symlink (file form; repeatable)")
    add("--entrypoint", metavar="JSON", help='e.g. \'["/bin/sh", "-c"]\'')
    add("--cmd", metavar="JSON", help='e.g. \'["echo", "hello"]\'')
    add("--env", action="append", metavar="KEY=VALUE", help="environment (repeatable)")
    add("--label", **many, metavar="KEY=VALUE", help="config label (repeatable)")
    add("--workdir", help="working directory (file form; default /)")
    add("--os", help="config os (default: wasip1, or linux for a file image without modules)")
    add("--arch", help="config architecture (default: wasm, or the host's for native images)")
    add("--no-index-platform", action="store_true", help="leave platform out of index.json")
    return parser


def _json_list(option: str, text: str | None) -> list[str] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BuildError(f"{option} is not valid JSON ({exc.msg}): {text!r}") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BuildError(f"{option} must be a JSON array of strings, e.g. '[\"/bin/sh\"]'")
    return value


def _key_values(option: str, items: Sequence[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BuildError(f"{option} expects KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def _read(what: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read {what} {path!r}: {exc.strerror}") from exc


def _parse_file(spec: str) -> TarEntry:
    parts = spec.split(":")
    mode = 0o755
    if len(parts) == 3 and re.fullmatch(r"[0-7]{3,4}", parts[2]):
        mode = int(parts.pop(), 8)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise BuildError(f"--file expects SRC:DST[:MODE] (MODE in octal, e.g. 0755), got {spec!r}")
    return TarEntry.file(parts[1], _read("file", parts[0]), mode)


def _parse_symlink(spec: str) -> TarEntry:
    dst, sep, target = spec.partition(":")
    if not sep or not dst or not target:
        raise BuildError(f"--symlink expects DST:TARGET, got {spec!r}")
    return TarEntry.symlink(dst, target)


def _parse_layer(spec: str) -> Blob:
    media_type, sep, path = spec.partition("=")
    if not sep or not media_type or not path:
        raise BuildError(f"-l/--layer expects MEDIATYPE=PATH, got {spec!r}")
    return Blob(media_type, _read("layer", path))


def image_from_args(args: argparse.Namespace) -> Image:
    """Turn parsed command-line arguments into an :class:`Image`.

    Raises:
        BuildError: inconsistent or unreadable arguments.
    """
    fmt: str | None = args.format
    if args.as_artifact:
        if fmt not in (None, "artifact"):
            raise BuildError(f"--as-artifact conflicts with --format {fmt}")
        fmt = "artifact"
    if fmt is None:
        fmt = "wasm-layer" if args.module else "file"
    if fmt != "file" and (args.file or args.symlink or args.workdir):
        raise BuildError(f"--file, --symlink and --workdir only apply to --format file, not {fmt}")
    reference = make_reference(args.name, args.repo, args.tag)
    modules = [Module(Path(p).name, _read("module", p)) for p in args.module]
    layers = [_parse_layer(spec) for spec in args.layer]
    entrypoint = _json_list("--entrypoint", args.entrypoint)
    cmd = _json_list("--cmd", args.cmd)
    env: list[str] | None = args.env
    for item in env or ():
        _key_values("--env", [item])
    labels = _key_values("--label", args.label)
    with_platform = not args.no_index_platform
    if fmt == "artifact":
        if len(modules) != 1:
            raise BuildError(f"the artifact format takes one -m/--module, got {len(modules)}")
        if entrypoint is not None or cmd is not None or env or labels:
            raise BuildError(
                "an artifact has no process config: no --entrypoint/--cmd/--env/--label"
            )
        if args.arch not in (None, "wasm"):
            raise BuildError("an artifact's architecture is always wasm")
        return artifact_image(
            reference,
            modules[0],
            extra_layers=layers,
            os_name=args.os or "wasip1",
            index_platform=with_platform,
        )
    if fmt == "wasm-layer":
        return wasm_layer_image(
            reference,
            modules,
            extra_layers=layers,
            entrypoint=entrypoint,
            cmd=cmd,
            env=env or (),
            labels=labels,
            os_name=args.os or "wasip1",
            arch=args.arch or "wasm",
            index_platform=with_platform,
        )
    files = [_parse_file(spec) for spec in args.file] + [_parse_symlink(s) for s in args.symlink]
    return file_image(
        reference,
        modules,
        files=files,
        extra_layers=layers,
        entrypoint=entrypoint,
        cmd=cmd,
        env=env,
        workdir=args.workdir or "/",
        labels=labels,
        os_name=args.os,
        arch=args.arch,
        index_platform=with_platform,
    )


def _out_path(out: str | None, name: str) -> Path:
    file_name = name.rsplit("/", 1)[-1] + ".tar"
    if out is None:
        return Path.cwd() / file_name
    path = Path(out)
    return path / file_name if path.is_dir() or out.endswith("/") else path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oci-tar-builder`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        image = image_from_args(args)
        out = image.write(_out_path(args.out_path, args.name))
    except BuildError as exc:
        parser.error(str(exc))
    except OSError as exc:
        parser.exit(1, f"oci-tar-builder: error: cannot write the archive: {exc}\n")
    sys.stdout.write(f"{out}: {image.reference} {image.manifest().digest}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
