"""Typed accessors for the parts of an OCI runtime ``config.json`` the container code reads.

The spec stays a plain ``dict`` (as parsed by :func:`json.load`) everywhere; these functions
pull one section out at a time, fill in the runtime-spec defaults and turn a malformed value
into a :class:`ContainerError` that names the field. Nothing here touches the system.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Spec = Mapping[str, Any]

#: OCI namespace type names (runtime-spec config-linux.md "Namespaces").
NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")


class ContainerError(Exception):
    """Creating or starting a container failed: an invalid spec or a failed setup step.

    The message says which step failed and why, e.g. ``mounting proc on /proc: …``.
    """


def describe(exc: BaseException) -> str:
    """A one-line description of ``exc`` without Python's ``[Errno n]`` prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None:
            text += f": {exc.filename}"
        return text
    return str(exc) or type(exc).__name__


@contextmanager
def step(description: str) -> Iterator[None]:
    """Turn any error raised inside the block into ``ContainerError("<description>: …")``."""
    try:
        yield
    except ContainerError as exc:
        raise ContainerError(f"{description}: {exc}") from exc
    except Exception as exc:
        raise ContainerError(f"{description}: {describe(exc)}") from exc


def _section(spec: Spec, *keys: str) -> Mapping[str, Any]:
    value: Any = spec
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
        if value is None:
            return {}
    if not isinstance(value, Mapping):
        raise ContainerError(f"config.json: {'.'.join(keys)} must be an object")
    return value


def _list(section: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = section.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ContainerError(f"config.json: {where}.{key} must be a list")
    return value


def process(spec: Spec) -> Mapping[str, Any]:
    """``process`` (empty when absent)."""
    return _section(spec, "process")


def linux(spec: Spec) -> Mapping[str, Any]:
    """``linux`` (empty when absent)."""
    return _section(spec, "linux")


def resolve_rootfs(bundle: Path, spec: Spec) -> Path:
    """The absolute path of ``root.path``; a relative path is relative to the bundle."""
    path = Path(str(_section(spec, "root").get("path") or "rootfs"))
    return path if path.is_absolute() else Path(bundle).absolute() / path


def root_readonly(spec: Spec) -> bool:
    """``root.readonly``."""
    return bool(_section(spec, "root").get("readonly", False))


def args(spec: Spec) -> list[str]:
    """``process.args``."""
    return [str(a) for a in _list(process(spec), "args", "process")]


def env(spec: Spec) -> dict[str, str]:
    """``process.env`` as a dict; a later duplicate wins, like execve's environment."""
    result: dict[str, str] = {}
    for item in _list(process(spec), "env", "process"):
        key, _, value = str(item).partition("=")
        result[key] = value
    return result


def cwd(spec: Spec) -> str:
    """``process.cwd`` (``/`` when absent)."""
    return str(process(spec).get("cwd") or "/")


def hostname(spec: Spec) -> str:
    """``hostname`` (empty when absent)."""
    return str(spec.get("hostname") or "")


def domainname(spec: Spec) -> str:
    """``domainname`` (empty when absent)."""
    return str(spec.get("domainname") or "")


def no_new_privileges(spec: Spec) -> bool:
    """``process.noNewPrivileges``."""
    return bool(process(spec).get("noNewPrivileges", False))


def oom_score_adj(spec: Spec) -> int | None:
    """``process.oomScoreAdj`` or None."""
    value = process(spec).get("oomScoreAdj")
    return None if value is None else int(value)


def sysctl(spec: Spec) -> dict[str, str]:
    """``linux.sysctl``."""
    return {str(k): str(v) for k, v in _section(spec, "linux", "sysctl").items()}


def masked_paths(spec: Spec) -> list[str]:
    """``linux.maskedPaths``."""
    return [str(p) for p in _list(linux(spec), "maskedPaths", "linux")]


def readonly_paths(spec: Spec) -> list[str]:
    """``linux.readonlyPaths``."""
    return [str(p) for p in _list(linux(spec), "readonlyPaths", "linux")]


def rootfs_propagation(spec: Spec) -> str:
    """``linux.rootfsPropagation`` (empty when absent)."""
    return str(linux(spec).get("rootfsPropagation") or "")


def seccomp(spec: Spec) -> Mapping[str, Any] | None:
    """``linux.seccomp`` or None."""
    section = _section(spec, "linux", "seccomp")
    return section or None


@dataclass(frozen=True)
class Mount:
    """One entry of ``mounts``."""

    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()


def mounts(spec: Spec) -> list[Mount]:
    """``mounts``, in order."""
    result = []
    for i, item in enumerate(_list(spec, "mounts", "")):
        if not isinstance(item, Mapping) or not item.get("destination"):
            raise ContainerError(f"config.json: mounts[{i}] needs a destination")
        result.append(
            Mount(
                destination=str(item["destination"]),
                type=str(item.get("type") or ""),
                source=str(item.get("source") or ""),
                options=tuple(str(o) for o in item.get("options") or ()),
            )
        )
    return result


@dataclass(frozen=True)
class Namespace:
    """One entry of ``linux.namespaces``: a namespace to create (no path) or join."""

    type: str
    path: str = ""


def namespaces(spec: Spec) -> list[Namespace]:
    """``linux.namespaces``; rejects unknown types and duplicates like runc's validator."""
    result: list[Namespace] = []
    for item in _list(linux(spec), "namespaces", "linux"):
        kind = str(item.get("type", "")) if isinstance(item, Mapping) else ""
        if kind not in NAMESPACE_TYPES:
            raise ContainerError(f"config.json: unknown namespace type {kind!r}")
        if any(ns.type == kind for ns in result):
            raise ContainerError(f"config.json: namespace {kind!r} is listed twice")
        result.append(Namespace(kind, str(item.get("path") or "")))
    return result


@dataclass(frozen=True)
class User:
    """``process.user`` (numeric ids only: containerd resolves names before Create)."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    umask: int | None = None


def user(spec: Spec) -> User:
    """``process.user``."""
    section = _section(spec, "process", "user")
    umask = section.get("umask")
    return User(
        uid=int(section.get("uid", 0)),
        gid=int(section.get("gid", 0)),
        additional_gids=tuple(int(g) for g in section.get("additionalGids") or ()),
        umask=None if umask is None else int(umask),
    )


@dataclass(frozen=True)
class Rlimit:
    """One ``process.rlimits`` entry, resolved to a :mod:`resource` constant.

    ``soft``/``hard`` use :data:`resource.RLIM_INFINITY` for "unlimited" (the spec writes it
    as 2**64-1).
    """

    name: str
    resource: int
    soft: int
    hard: int


def _rlim_value(value: Any) -> int:
    number = int(value)
    return resource.RLIM_INFINITY if number >= 2**63 or number < 0 else number


def rlimits(spec: Spec) -> list[Rlimit]:
    """``process.rlimits``; an unknown ``type`` is an error, as in runc."""
    result = []
    for item in _list(process(spec), "rlimits", "process"):
        name = str(item.get("type", ""))
        number = getattr(resource, name, None) if name.startswith("RLIMIT_") else None
        if not isinstance(number, int):
            raise ContainerError(f"config.json: unknown rlimit type {name!r}")
        soft, hard = _rlim_value(item.get("soft", 0)), _rlim_value(item.get("hard", 0))
        result.append(Rlimit(name, number, soft, hard))
    return result


@dataclass(frozen=True)
class Device:
    """A device node to create in the container (``linux.devices`` or a default one)."""

    path: str
    type: str
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0


def devices(spec: Spec) -> list[Device]:
    """``linux.devices``; ``fileMode`` defaults to 0666 and uid/gid to 0, like runc."""
    result = []
    for item in _list(linux(spec), "devices", "linux"):
        if item.get("type") not in ("c", "b", "u", "p") or not item.get("path"):
            raise ContainerError(f"config.json: invalid device {dict(item)!r}")
        mode = item.get("fileMode")
        result.append(
            Device(
                path=str(item["path"]),
                type=str(item["type"]),
                major=int(item.get("major", 0)),
                minor=int(item.get("minor", 0)),
                file_mode=0o666 if mode is None else int(mode),
                uid=int(item.get("uid") or 0),
                gid=int(item.get("gid") or 0),
            )
        )
    return result


@dataclass(frozen=True)
class Capabilities:
    """``process.capabilities``: capability names (``CAP_…``) per set."""

    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


def capabilities(spec: Spec) -> Capabilities:
    """``process.capabilities``; an absent section means every set is empty, as in runc."""
    section = _section(spec, "process", "capabilities")

    def names(key: str) -> tuple[str, ...]:
        return tuple(str(n) for n in _list(section, key, "process.capabilities"))

    return Capabilities(
        bounding=names("bounding"),
        effective=names("effective"),
        permitted=names("permitted"),
        inheritable=names("inheritable"),
        ambient=names("ambient"),
    )
