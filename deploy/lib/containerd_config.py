#!/usr/bin/env python3
"""Add or remove a CRI runtime handler in a containerd config file.

Run by ``deploy/install.sh`` with the node's own ``python3`` (3.11+, standard library only).

The file is never re-serialised: a handler is added by appending a marked block at the end and
removed by cutting exactly that block out again, so every other byte of the file stays as it
was (comments, ordering, quoting). ``tomllib`` then checks that the result parses and that it
means the original document plus the handler, and nothing else; when a ``containerd`` binary
is available, ``containerd --config <result> config dump`` must also accept it and resolve the
handler before the file is replaced.

The CRI plugin table that holds ``containerd.runtimes`` depends on the file's ``version``:

====  ===========================================  ===========================
file  table                                        containerd
====  ===========================================  ===========================
1     ``plugins.cri``                              1.x (deprecated)
2     ``plugins."io.containerd.grpc.v1.cri"``      1.x; 2.x migrates it on load
3     ``plugins."io.containerd.cri.v1.runtime"``   2.x
====  ===========================================  ===========================

containerd 1.x replaces its built-in runtimes map (the ``runc`` handler) with the file's as
soon as the file names any runtime: adding only our handler to a file that relies on the
built-in ``runc`` would leave the CRI plugin without its default runtime. Then a ``base``
block restates ``runc`` as containerd's defaults have it; it is removed with the last handler.

Blocks look like this (``[created-file]`` and ``[added-newline]`` flags record what removal
must undo)::

    # >>> containerd-shim-wasm: handler wasmtime >>> managed by install.sh ...
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]
      runtime_type = "io.containerd.wasmtime.v1"
    ...
    # <<< containerd-shim-wasm: handler wasmtime <<<
"""

from __future__ import annotations

import argparse
import copy
import datetime
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARK = "containerd-shim-wasm"
DEFAULT_RUNTIME_TYPE = "io.containerd.wasmtime.v1"
RUNC_RUNTIME_TYPES = frozenset({"io.containerd.runc.v2", "io.containerd.runc.v1"})
SYSTEMD_RUN_DIR = "/run/systemd/system"

#: The plugin table holding ``containerd.runtimes``, by config file version.
CRI_RUNTIME_PLUGIN = {1: "cri", 2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
#: ``disabled_plugins`` entries that switch the CRI runtime off, by config file version.
CRI_DISABLE_IDS = {
    1: frozenset({"cri", "io.containerd.grpc.v1.cri"}),
    2: frozenset({"cri", "io.containerd.grpc.v1.cri"}),
    3: frozenset({"cri", "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"}),
}
#: Where ``containerd config dump`` puts the runtimes (1.x dumps version 2, 2.x version 3).
DUMP_RUNTIME_PLUGINS = ("io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri")

#: A RuntimeClass ``handler`` must be a DNS label; it is also a bare TOML key then.
HANDLER_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
BEGIN_RE = re.compile(
    rf"^# >>> {MARK}: (?P<key>base|handler (?P<name>[a-z0-9-]+))"
    r"(?P<flags>(?: \[[a-z-]+\])*) >>>"
)
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

FLAG_CREATED = "created-file"
FLAG_NEWLINE = "added-newline"


class ConfigError(Exception):
    """The file cannot be changed safely; the message says why and what to do."""


# --------------------------------------------------------------------------- TOML text


def toml_key(key: str) -> str:
    return key if BARE_KEY.match(key) else json.dumps(key)


def table_header(path: Sequence[str]) -> str:
    return "[" + ".".join(toml_key(p) for p in path) + "]"


def runtimes_path(schema: int) -> tuple[str, ...]:
    return ("plugins", CRI_RUNTIME_PLUGIN[schema], "containerd", "runtimes")


def handler_tables(schema: int, name: str, runtime_type: str, systemd_cgroup: bool) -> str:
    """The two tables of a runtime handler (``runtime_type`` and ``options``)."""
    path = (*runtimes_path(schema), name)
    return (
        f"{table_header(path)}\n"
        f"  runtime_type = {json.dumps(runtime_type)}\n"
        f"{table_header((*path, 'options'))}\n"
        f"  SystemdCgroup = {'true' if systemd_cgroup else 'false'}\n"
    )


def begin_line(key: str, flags: Sequence[str] = ()) -> str:
    flag_text = "".join(f" [{f}]" for f in flags)
    if key == "base":
        note = "added with the first handler, removed with the last"
    else:
        note = "managed by containerd-shim-wasm's install.sh; remove with install.sh --uninstall"
    return f"# >>> {MARK}: {key}{flag_text} >>> {note}\n"


def end_line(key: str) -> str:
    return f"# <<< {MARK}: {key} <<<\n"


def handler_block(
    schema: int, name: str, runtime_type: str, systemd_cgroup: bool, flags: Sequence[str] = ()
) -> str:
    key = f"handler {name}"
    return (
        begin_line(key, flags)
        + handler_tables(schema, name, runtime_type, systemd_cgroup)
        + end_line(key)
    )


def base_block(
    schema: int, version_line: int | None, runc: str | None, flags: Sequence[str]
) -> str:
    body = ""
    if version_line is not None:
        body += f"version = {version_line}\n"
    if runc is not None:
        if body:
            body += "\n"
        body += (
            "# containerd 1.x drops its built-in runtimes as soon as the file names one, so the\n"
            f"# default runtime {runc!r} is restated here with containerd's default settings.\n"
            + handler_tables(schema, runc, "io.containerd.runc.v2", False)
        )
    return begin_line("base", flags) + body + end_line("base")


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """One marked block: ``text[start:end]`` is what removing it cuts out."""

    key: str
    flags: frozenset[str]
    start: int  # including the blank separator line (and added newline) before the marker
    body_start: int  # the ``# >>>`` line
    end: int  # after the ``# <<<`` line

    @property
    def handler(self) -> str | None:
        return self.key.removeprefix("handler ") if self.key.startswith("handler ") else None


def find_blocks(text: str) -> list[Block]:
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    blocks: list[Block] = []
    seen: set[str] = set()
    i = 0
    while i < len(lines):
        m = BEGIN_RE.match(lines[i])
        if not m:
            i += 1
            continue
        key = m["key"]
        if key in seen:
            raise ConfigError(f"line {i + 1}: a second '{MARK}: {key}' block; fix the file by hand")
        seen.add(key)
        flags = frozenset(re.findall(r"\[([a-z-]+)\]", m["flags"]))
        want_end = end_line(key).rstrip("\n")
        j = next((k for k in range(i + 1, len(lines)) if lines[k].rstrip("\r\n") == want_end), None)
        if j is None:
            raise ConfigError(
                f"line {i + 1}: '{lines[i].rstrip()}' has no closing '{want_end}'; "
                "fix the file by hand"
            )
        start = offsets[i]
        if i > 0 and lines[i - 1] in ("\n", "\r\n"):
            start = offsets[i - 1]
            if FLAG_NEWLINE in flags and start > 0 and text[start - 1] == "\n":
                start -= 1
        blocks.append(Block(key, flags, start, offsets[i], offsets[j + 1]))
        i = j + 1
    return blocks


def append_block(text: str, block: str) -> str:
    """``text`` plus ``block`` after a blank line (none at the start of an empty file)."""
    if not text:
        return block
    if not text.endswith("\n"):
        # Recorded in the marker so that removal restores the file without the newline.
        at = block.index(" >>> ", 2)  # the one after the key and flags, not "# >>> "
        return text + "\n\n" + block[:at] + f" [{FLAG_NEWLINE}]" + block[at:]
    return text + "\n" + block


def cut(text: str, block: Block) -> str:
    return text[: block.start] + text[block.end :]


# --------------------------------------------------------------------------- documents


def get_path(doc: dict[str, Any], path: Sequence[str]) -> Any:
    node: Any = doc
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def without(doc: dict[str, Any], path: Sequence[str], reference: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` without ``path``.

    Parents that this leaves empty go too, unless ``reference`` has them.
    """
    out = copy.deepcopy(doc)
    parents: list[dict[str, Any]] = [out]
    for key in path[:-1]:
        nxt = parents[-1].get(key)
        if not isinstance(nxt, dict):
            return out
        parents.append(nxt)
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):
        if not parents[depth] and get_path(reference, path[:depth]) is None:
            parents[depth - 1].pop(path[depth - 1], None)
    return out


def schema_of(doc: dict[str, Any]) -> int | None:
    """The file's config version (None: no keys at all, containerd's defaults apply)."""
    if not doc:
        return None
    version = doc.get("version", 1)
    if version not in CRI_RUNTIME_PLUGIN:
        raise ConfigError(f"unsupported containerd config version {version!r} (expected 1, 2 or 3)")
    return int(version)


def cri_disabled(doc: dict[str, Any], schema: int) -> str | None:
    disabled = doc.get("disabled_plugins") or []
    hit = [p for p in disabled if p in CRI_DISABLE_IDS[schema]]
    return hit[0] if hit else None


@dataclass(frozen=True)
class SystemdChoice:
    value: bool
    reason: str


def choose_systemd_cgroup(
    setting: str, doc: dict[str, Any], schema: int, systemd_dir: str
) -> SystemdChoice:
    """``true``/``false``, or ``auto``: whatever the default (runc) runtime already uses.

    The default runtime runs every other pod of the node with the kubelet's cgroup driver
    (or the node would not work), so its ``SystemdCgroup`` is the best evidence. Only when
    the default runtime is not runc does the presence of ``/run/systemd/system`` decide.
    """
    if setting in ("true", "false"):
        return SystemdChoice(setting == "true", "--systemd-cgroup " + setting)
    plugin = get_path(doc, ("plugins", CRI_RUNTIME_PLUGIN[schema])) or {}
    default = get_path(plugin, ("containerd", "default_runtime_name")) or "runc"
    runtimes = get_path(plugin, ("containerd", "runtimes")) or {}
    if not runtimes and default == "runc":
        return SystemdChoice(False, "auto: containerd's built-in runc handler uses cgroupfs")
    runtime = runtimes.get(default)
    if isinstance(runtime, dict):
        rtype = runtime.get("runtime_type", "")
        if rtype in RUNC_RUNTIME_TYPES or (not rtype and default == "runc"):
            value = get_path(runtime, ("options", "SystemdCgroup"))
            if isinstance(value, bool):
                return SystemdChoice(
                    value,
                    f"auto: as the default runtime {default!r} "
                    f"(SystemdCgroup = {str(value).lower()})",
                )
            return SystemdChoice(False, f"auto: the default runtime {default!r} uses cgroupfs")
    exists = os.path.isdir(systemd_dir)
    return SystemdChoice(exists, f"auto: {systemd_dir} {'exists' if exists else 'does not exist'}")


# --------------------------------------------------------------------------- containerd


def containerd_major(binary: str | None) -> int | None:
    if not binary:
        return None
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
        return int(out[2].removeprefix("v").split(".", 1)[0])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def containerd_dump(binary: str, text: str, config_path: Path, what: str) -> dict[str, Any]:
    """``containerd --config <text> config dump``, parsed. Raises ConfigError if rejected."""
    # Relative ``imports`` resolve against the file's directory: check it from there.
    doc = tomllib.loads(text)
    where = config_path.parent if doc.get("imports") and config_path.parent.is_dir() else None
    fd, tmp = tempfile.mkstemp(prefix=".containerd-shim-wasm-check-", suffix=".toml", dir=where)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        proc = subprocess.run(
            [binary, "--config", tmp, "config", "dump"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.unlink(tmp)
    if proc.returncode != 0:
        raise ConfigError(f"`{binary} config dump` rejects {what}:\n{proc.stderr.strip()}")
    try:
        return tomllib.loads(proc.stdout)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot parse `{binary} config dump` output: {exc}") from exc


def dump_runtimes(dump: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The resolved runtimes map and default runtime name of a ``config dump``."""
    for plugin in DUMP_RUNTIME_PLUGINS:
        ctd = get_path(dump, ("plugins", plugin, "containerd"))
        if isinstance(ctd, dict) and "runtimes" in ctd:
            return ctd["runtimes"], str(ctd.get("default_runtime_name", "runc"))
    return {}, "runc"


# --------------------------------------------------------------------------- plans


@dataclass
class Plan:
    """What to do with the file: ``new_text`` None means delete it."""

    old_text: str | None
    new_text: str | None
    messages: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.old_text != self.new_text


@dataclass(frozen=True)
class AddRequest:
    handler: str
    runtime_type: str = DEFAULT_RUNTIME_TYPE
    systemd_cgroup: str = "auto"  # true | false | auto
    containerd: str | None = None
    systemd_dir: str = SYSTEMD_RUN_DIR


def parse(text: str, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} is not valid TOML: {exc}") from exc


def plan_add(old_text: str | None, req: AddRequest, config_path: Path) -> Plan:
    if not HANDLER_RE.match(req.handler):
        raise ConfigError(
            f"handler {req.handler!r} is not a DNS label (lowercase letters, digits and '-', "
            "at most 63), which a RuntimeClass handler must be"
        )
    text = old_text or ""
    plan = Plan(old_text, old_text)
    doc = parse(text, str(config_path))
    blocks = find_blocks(text)
    key = f"handler {req.handler}"
    mine = next((b for b in blocks if b.key == key), None)
    major = containerd_major(req.containerd)
    schema = schema_of(doc)
    version_line: int | None = None
    if schema is None:
        schema = version_line = 3 if (major or 1) >= 2 else 2
        plan.messages.append(
            f"{'creating' if old_text is None else 'filling the empty'} {config_path} as config "
            f"version {schema}"
            + (f" (containerd {major}.x)" if major else " (no containerd binary to ask)")
        )
    elif schema == 1 and major is not None and major >= 2:
        raise ConfigError(
            f"{config_path} has no `version =` line (config version 1), which containerd 2.x "
            "does not load properly; convert it first: containerd config migrate"
        )
    if off := cri_disabled(doc, schema):
        raise ConfigError(
            f"{config_path} disables the CRI plugin (disabled_plugins contains {off!r}); "
            "Kubernetes needs it: remove that entry first"
        )
    path = (*runtimes_path(schema), req.handler)
    existing = get_path(doc, path)
    if existing is not None and mine is None:
        rtype = existing.get("runtime_type") if isinstance(existing, dict) else None
        note = f"{config_path} already has a handler {req.handler!r} (not added by install.sh)"
        if rtype != req.runtime_type:
            note += f" with runtime_type {rtype!r}, not {req.runtime_type!r}"
        plan.messages.append(note + "; left alone")
        return plan
    if mine is not None:
        # Ours: regenerate in place (keeps the flags it was written with).
        body = text[mine.body_start : mine.end]
        base_doc = parse(cut(text, mine), str(config_path))
        choice = choose_systemd_cgroup(req.systemd_cgroup, base_doc, schema, req.systemd_dir)
        new_body = handler_block(
            schema, req.handler, req.runtime_type, choice.value, sorted(mine.flags)
        )
        if new_body == body:
            plan.messages.append(f"handler {req.handler!r} is already in {config_path}")
            return plan
        plan.new_text = text[: mine.body_start] + new_body + text[mine.end :]
        plan.messages.append(
            f"updating handler {req.handler!r} in {config_path}: SystemdCgroup = "
            f"{str(choice.value).lower()} ({choice.reason})"
        )
        verify_add(plan.new_text, doc, schema, req, choice.value, restated=())
        if req.containerd:
            check_dump(req.containerd, plan.new_text, config_path, req)
        return plan
    if req.containerd and old_text is not None:
        dump = containerd_dump(req.containerd, text, config_path, f"the current {config_path}")
        runtimes, _ = dump_runtimes(dump)
        if req.handler in runtimes:
            plan.messages.append(
                f"containerd already resolves a handler {req.handler!r} from {config_path} "
                "(probably through `imports`); left alone"
            )
            return plan
    choice = choose_systemd_cgroup(req.systemd_cgroup, doc, schema, req.systemd_dir)
    restated: tuple[str, ...] = ()
    runc: str | None = None
    plugin = get_path(doc, ("plugins", CRI_RUNTIME_PLUGIN[schema])) or {}
    default = get_path(plugin, ("containerd", "default_runtime_name")) or "runc"
    if schema <= 2 and not get_path(plugin, ("containerd", "runtimes")) and default == "runc":
        runc = default
        restated = (runc,)
    new = text
    if version_line is not None or runc is not None:
        flags = [FLAG_CREATED] if old_text is None else []
        new = append_block(new, base_block(schema, version_line, runc, flags))
        if runc:
            plan.messages.append(
                f"restating containerd's default handler {runc!r}, which containerd 1.x would "
                "otherwise drop"
            )
    new = append_block(new, handler_block(schema, req.handler, req.runtime_type, choice.value))
    plan.new_text = new
    plan.messages.append(
        f"adding handler {req.handler!r} (runtime_type {req.runtime_type}) to {config_path}: "
        f"SystemdCgroup = {str(choice.value).lower()} ({choice.reason})"
    )
    verify_add(new, doc, schema, req, choice.value, restated, version_line is not None)
    if req.containerd:
        check_dump(req.containerd, new, config_path, req)
    return plan


def verify_add(
    new_text: str,
    old_doc: dict[str, Any],
    schema: int,
    req: AddRequest,
    systemd: bool,
    restated: Sequence[str],
    added_version: bool = False,
) -> None:
    """The new text parses and is the old document plus exactly what we meant to add."""
    new_doc = parse(new_text, "the edited config (a bug in install.sh)")
    path = (*runtimes_path(schema), req.handler)
    got = get_path(new_doc, path)
    want = {"runtime_type": req.runtime_type, "options": {"SystemdCgroup": systemd}}
    if got != want:
        raise ConfigError(f"BUG: the edited config has {got!r} at {path}, not {want!r}")
    rest = without(new_doc, path, old_doc)
    ref = without(old_doc, path, old_doc)
    for name in restated:
        rest = without(rest, (*runtimes_path(schema), name), old_doc)
    if added_version:
        rest.pop("version", None)
    if rest != ref:
        raise ConfigError("BUG: the edit would change more than the handler; file left alone")


def check_dump(binary: str, text: str, config_path: Path, req: AddRequest) -> None:
    runtimes, default = dump_runtimes(containerd_dump(binary, text, config_path, "the edited file"))
    got = runtimes.get(req.handler)
    if not isinstance(got, dict) or got.get("runtime_type") != req.runtime_type:
        raise ConfigError(
            f"`{binary} config dump` of the edited file does not resolve handler "
            f"{req.handler!r} to {req.runtime_type}; file left alone"
        )
    if default not in runtimes:
        raise ConfigError(
            f"with the edit, containerd would have no runtime for default_runtime_name "
            f"{default!r}; file left alone"
        )


def plan_remove(
    old_text: str | None, handler: str, config_path: Path, containerd: str | None = None
) -> Plan:
    plan = Plan(old_text, old_text)
    if old_text is None:
        plan.messages.append(f"{config_path} does not exist; nothing to remove")
        return plan
    blocks = find_blocks(old_text)
    mine = next((b for b in blocks if b.handler == handler), None)
    if mine is None:
        doc = parse(old_text, str(config_path))
        schema = schema_of(doc)
        if schema and get_path(doc, (*runtimes_path(schema), handler)) is not None:
            plan.messages.append(
                f"handler {handler!r} in {config_path} was not added by install.sh; left alone"
            )
        else:
            plan.messages.append(f"no handler {handler!r} in {config_path}; nothing to remove")
        return plan
    # Cut from the end backwards so that earlier offsets stay valid.
    cuts = [mine]
    base = next((b for b in blocks if b.key == "base"), None)
    if base is not None and not any(b.handler and b is not mine for b in blocks):
        cuts.append(base)
    text = old_text
    for block in sorted(cuts, key=lambda b: b.start, reverse=True):
        text = cut(text, block)
    plan.messages.append(f"removing handler {handler!r} from {config_path}")
    if base in cuts and base is not None:
        plan.messages.append("removing the restated defaults added with it")
        if FLAG_CREATED in base.flags and not text:
            plan.new_text = None
            plan.messages.append(f"deleting {config_path}, which install.sh created")
            return plan
    new_doc = parse(text, "the edited config (a bug in install.sh)")
    schema = schema_of(new_doc)
    if schema and get_path(new_doc, (*runtimes_path(schema), handler)) is not None:
        raise ConfigError(f"handler {handler!r} is still defined outside the managed block")
    plan.new_text = text
    if containerd:
        containerd_dump(containerd, text, config_path, "the edited file")
    return plan


# --------------------------------------------------------------------------- files


def read_config(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def backup(path: Path) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = path.with_name(f"{path.name}.bak.{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.bak.{stamp}.{n}")
        n += 1
    shutil.copy2(path, dest)
    return dest


def write_atomically(path: Path, text: str) -> None:
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, (st.st_mode & 0o7777) if st else 0o644)
        if st is not None and os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def apply(plan: Plan, path: Path) -> Path | None:
    """Carry out a plan (a backup is kept of a file that existed); returns the backup."""
    if not plan.changed:
        return None
    # Deleting only happens to a file that held nothing but our blocks: no backup needed.
    saved = backup(path) if plan.old_text is not None and plan.new_text is not None else None
    if plan.new_text is None:
        path.unlink()
    else:
        write_atomically(path, plan.new_text)
    return saved


def diff(plan: Plan, path: Path) -> str:
    old = (plan.old_text or "").splitlines(keepends=True)
    new = (plan.new_text or "").splitlines(keepends=True)
    label_old = str(path) if plan.old_text is not None else "/dev/null"
    label_new = str(path) if plan.new_text is not None else "/dev/null"
    return "".join(difflib.unified_diff(old, new, label_old, label_new))


# --------------------------------------------------------------------------- restarts


def process_start_times(name: str, proc: Path = Path("/proc")) -> list[float]:
    """When each running process whose ``comm`` is ``name`` started (seconds since the epoch)."""
    try:
        btime = next(
            float(line.split()[1])
            for line in (proc / "stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, IndexError, ValueError):
        return []
    ticks = os.sysconf("SC_CLK_TCK")
    starts = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != name:
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 22 (starttime, in clock ticks since boot); comm (field 2) may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        starts.append(btime + int(fields[19]) / ticks)
    return starts


def restarted_since(marker: Path, name: str = "containerd") -> bool:
    """Whether a ``name`` process started after ``marker`` was written (1 s of slack)."""
    written = marker.stat().st_mtime
    return any(start > written + 1.0 for start in process_start_times(name))


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="containerd_config.py", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("add", "remove"):
        p = sub.add_parser(name)
        p.add_argument("--config", required=True, type=Path)
        p.add_argument("--handler", required=True)
        p.add_argument(
            "--containerd",
            default=shutil.which("containerd"),
            help="containerd binary that checks the result (empty: no check)",
        )
        p.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
        p.add_argument("--status-file", type=Path, help="write 'changed' or 'unchanged' here")
        if name == "add":
            p.add_argument("--runtime-type", default=DEFAULT_RUNTIME_TYPE)
            p.add_argument("--systemd-cgroup", choices=("auto", "true", "false"), default="auto")
            p.add_argument("--systemd-dir", default=SYSTEMD_RUN_DIR)
    p = sub.add_parser(
        "restarted-since", help="exit 0 if a containerd process started after FILE was written"
    )
    p.add_argument("marker", type=Path)
    p.add_argument("--name", default="containerd")
    args = ap.parse_args(argv)
    if args.command == "restarted-since":
        try:
            return 0 if restarted_since(args.marker, args.name) else 1
        except OSError:
            return 1
    # Edit the file a symlink points to, not the link.
    path = Path(os.path.realpath(args.config))
    containerd = args.containerd or None
    try:
        old_text = read_config(path)
        if args.command == "add":
            req = AddRequest(
                args.handler, args.runtime_type, args.systemd_cgroup, containerd, args.systemd_dir
            )
            plan = plan_add(old_text, req, path)
        else:
            plan = plan_remove(old_text, args.handler, path, containerd)
        for msg in plan.messages:
            print(f"containerd config: {msg}", file=sys.stderr)
        if args.dry_run:
            sys.stdout.write(diff(plan, path))
        else:
            saved = apply(plan, path)
            if saved is not None:
                print(f"containerd config: previous version saved as {saved}", file=sys.stderr)
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        print(f"containerd config: error: {exc}", file=sys.stderr)
        return 1
    if args.status_file:
        args.status_file.write_text("changed\n" if plan.changed else "unchanged\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
