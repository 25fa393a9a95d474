"""deploy/lib/containerd_config.py as a library: blocks, plans, the SystemdCgroup choice."""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from .conftest import RUNTIME_TYPE, load_deploy_module

cc = load_deploy_module("containerd_config")

V2 = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = "overlayfs"\n'


def add(text: str | None, **kwargs: Any) -> Any:
    req = cc.AddRequest(kwargs.pop("handler", "wasmtime"), **kwargs)
    return cc.plan_add(text, req, Path("/etc/containerd/config.toml"))


def test_add_then_remove_round_trip() -> None:
    plan = add(V2, systemd_cgroup="true")
    assert plan.changed
    new = plan.new_text
    blocks = cc.find_blocks(new)
    assert [b.key for b in blocks] == ["base", "handler wasmtime"]
    assert cc.find_blocks(new)[0].flags == frozenset()
    doc = tomllib.loads(new)
    runtimes = doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert runtimes["wasmtime"] == {
        "runtime_type": RUNTIME_TYPE,
        "options": {"SystemdCgroup": True},
    }
    assert runtimes["runc"] == {
        "runtime_type": "io.containerd.runc.v2",
        "options": {"SystemdCgroup": False},
    }
    assert not add(new, systemd_cgroup="true").changed
    removed = cc.plan_remove(new, "wasmtime", Path("c.toml"))
    assert removed.new_text == V2


def test_created_file_is_deleted_again() -> None:
    plan = add(None)
    assert plan.old_text is None and plan.new_text.startswith("# >>> containerd-shim-wasm: base")
    (base, _) = cc.find_blocks(plan.new_text)
    assert base.flags == frozenset({"created-file"})
    removed = cc.plan_remove(plan.new_text, "wasmtime", Path("c.toml"))
    assert removed.new_text is None and removed.changed


def test_added_newline_flag() -> None:
    text = 'version = 3\nroot = "/x"'
    new = add(text).new_text
    assert new.startswith(
        text + "\n\n# >>> containerd-shim-wasm: handler wasmtime [added-newline] >>>"
    )
    (block,) = cc.find_blocks(new)
    assert block.flags == frozenset({"added-newline"})
    assert cc.cut(new, block) == text


def test_duplicate_block_is_an_error() -> None:
    block = cc.handler_block(2, "wasmtime", RUNTIME_TYPE, False)
    with pytest.raises(cc.ConfigError, match="a second 'containerd-shim-wasm: handler wasmtime'"):
        cc.find_blocks(block + block)


def test_changed_runtime_type_updates_the_block() -> None:
    new = add(V2).new_text
    plan = add(new, runtime_type="/opt/bin/containerd-shim-wasmtime-v1")
    assert plan.changed
    assert "/opt/bin/containerd-shim-wasmtime-v1" in plan.new_text
    assert plan.new_text.count("runtimes.wasmtime]") == 1


@pytest.mark.parametrize(
    ("doc", "setting", "expect"),
    [
        ({}, "true", True),
        ({}, "false", False),
        ({"version": 2}, "auto", False),  # built-in runc: cgroupfs
        (
            {
                "plugins": {
                    "io.containerd.grpc.v1.cri": {
                        "containerd": {
                            "runtimes": {
                                "runc": {
                                    "runtime_type": "io.containerd.runc.v2",
                                    "options": {"SystemdCgroup": True},
                                }
                            }
                        }
                    }
                }
            },
            "auto",
            True,
        ),
        (
            {"plugins": {"io.containerd.grpc.v1.cri": {"containerd": {"runtimes": {"runc": {}}}}}},
            "auto",
            False,  # runc without options: runc's default, cgroupfs
        ),
    ],
)
def test_choose_systemd_cgroup(doc: dict[str, Any], setting: str, expect: bool) -> None:
    assert cc.choose_systemd_cgroup(setting, doc, 2, "/nonexistent").value is expect


def test_choose_systemd_cgroup_other_default_runtime(tmp_path: Path) -> None:
    doc = {
        "plugins": {
            "io.containerd.cri.v1.runtime": {
                "containerd": {
                    "default_runtime_name": "crun",
                    "runtimes": {"crun": {"runtime_type": "io.containerd.crun.v2"}},
                }
            }
        }
    }
    assert cc.choose_systemd_cgroup("auto", doc, 3, str(tmp_path)).value is True
    assert cc.choose_systemd_cgroup("auto", doc, 3, str(tmp_path / "x")).value is False


def test_without_prunes_only_what_was_added() -> None:
    ref: dict[str, Any] = {"a": {"b": {}}}
    doc: dict[str, Any] = {"a": {"b": {"c": {"d": 1}}}}
    assert cc.without(doc, ("a", "b", "c", "d"), ref) == {"a": {"b": {}}}
    assert cc.without(doc, ("a", "b", "c", "d"), {}) == {}


def test_schema_of() -> None:
    assert cc.schema_of({}) is None
    assert cc.schema_of({"root": "/x"}) == 1
    assert cc.schema_of({"version": 3}) == 3
    with pytest.raises(cc.ConfigError, match="unsupported containerd config version 4"):
        cc.schema_of({"version": 4})


def test_table_header_quotes_dotted_keys() -> None:
    assert cc.table_header(cc.runtimes_path(2)) == (
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]'
    )
    assert cc.table_header(cc.runtimes_path(1)) == "[plugins.cri.containerd.runtimes]"


def test_process_start_times_sees_this_process() -> None:
    comm = Path("/proc/self/comm").read_text().strip()
    starts = cc.process_start_times(comm)
    assert starts, comm
    assert all(s <= time.time() + 1 for s in starts)


def test_restarted_since(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    marker.touch()
    old = time.time() - 10 * 365 * 86400
    os.utime(marker, (old, old))
    comm = Path("/proc/self/comm").read_text().strip()
    assert cc.restarted_since(marker, comm)  # this process started after 10 years ago
    marker.touch()
    assert not cc.restarted_since(marker, comm)


def test_main_status_file_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, status = tmp_path / "c.toml", tmp_path / "status"
    config.write_text(V2)
    argv = [
        "add",
        f"--config={config}",
        "--handler=wasmtime",
        "--containerd=",
        f"--status-file={status}",
    ]
    assert cc.main(argv) == 0
    assert status.read_text() == "changed\n"
    assert cc.main(argv) == 0
    assert status.read_text() == "unchanged\n"
    config.write_text("version = [")
    assert cc.main(argv) == 1
    assert "is not valid TOML" in capsys.readouterr().err
