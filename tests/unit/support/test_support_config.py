"""Config generation for the private containerd: 1.6/1.7 (schema 2) and 2.x (schema 3)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.support.containerd import (
    ConfigPaths,
    CriConfig,
    RuntimeHandler,
    generate_config,
    render_toml,
)

PATHS = ConfigPaths(
    root=Path("/run/ctrtest-x/root"),
    state=Path("/run/ctrtest-x/state"),
    address=Path("/run/ctrtest-x/c.sock"),
    opt=Path("/run/ctrtest-x/opt"),
    cni_conf_dir=Path("/run/ctrtest-x/cni/net.d"),
)

WASM = RuntimeHandler(
    "io.containerd.wasmtime.v1",
    options={"SystemdCgroup": True},
    pod_annotations=["wasm.*"],
    container_annotations=["wasm.*"],
)


def config(major: int, minor: int, **kwargs: Any) -> dict[str, Any]:
    """Generate, render and parse back: what containerd would read."""
    return tomllib.loads(render_toml(generate_config(major, minor, PATHS, **kwargs)))


@pytest.mark.parametrize(("major", "minor", "schema"), [(1, 6, 2), (1, 7, 2), (2, 1, 3), (2, 2, 3)])
def test_common_keys(major: int, minor: int, schema: int) -> None:
    doc = config(major, minor)
    assert doc["version"] == schema
    assert doc["root"] == "/run/ctrtest-x/root"
    assert doc["state"] == "/run/ctrtest-x/state"
    assert doc["grpc"] == {"address": "/run/ctrtest-x/c.sock"}
    assert "ttrpc" not in doc  # containerd then serves ttrpc on "<grpc>.ttrpc"
    assert doc["debug"]["level"] == "debug"
    assert doc["plugins"]["io.containerd.internal.v1.opt"] == {"path": "/run/ctrtest-x/opt"}


def test_no_cri_disables_the_cri_plugin() -> None:
    for major, minor in ((1, 6), (2, 1)):
        doc = config(major, minor)
        assert doc["disabled_plugins"] == ["io.containerd.grpc.v1.cri"]
        assert "io.containerd.cri.v1.runtime" not in doc["plugins"]


def test_nri_disabled_from_1_7_on() -> None:
    # NRI's socket is machine-wide; 1.6 has no NRI plugin at all.
    assert "io.containerd.nri.v1.nri" not in config(1, 6)["plugins"]
    assert config(1, 7)["plugins"]["io.containerd.nri.v1.nri"] == {"disable": True}
    assert config(2, 1)["plugins"]["io.containerd.nri.v1.nri"] == {"disable": True}


def test_cri_schema_1_6() -> None:
    doc = config(1, 6, cri=CriConfig(handlers={"wasm": WASM}, sandbox_image="localhost/p:1"))
    assert "disabled_plugins" not in doc
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "localhost/p:1"
    assert cri["restrict_oom_score_adj"] is True
    assert cri["stream_server_port"] == "0"
    assert cri["cni"] == {
        "bin_dir": "/usr/lib/cni",
        "conf_dir": "/run/ctrtest-x/cni/net.d",
        "max_conf_num": 1,
    }
    assert cri["containerd"]["snapshotter"] == "overlayfs"
    assert cri["containerd"]["default_runtime_name"] == "runc"
    runtimes = cri["containerd"]["runtimes"]
    assert runtimes["runc"] == {
        "runtime_type": "io.containerd.runc.v2",
        "options": {"SystemdCgroup": False},
    }
    assert runtimes["wasm"] == {
        "runtime_type": "io.containerd.wasmtime.v1",
        "pod_annotations": ["wasm.*"],
        "container_annotations": ["wasm.*"],
        "options": {"SystemdCgroup": True},
    }
    assert "enable_cdi" not in cri  # a 1.7 key


def test_cri_schema_1_7_turns_cdi_off() -> None:
    cri = config(1, 7, cri=CriConfig())["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["enable_cdi"] is False


def test_cri_schema_2_x() -> None:
    doc = config(2, 1, cri=CriConfig(handlers={"wasm": WASM}, sandbox_image="localhost/p:1"))
    plugins = doc["plugins"]
    assert "disabled_plugins" not in doc
    assert plugins["io.containerd.cri.v1.images"] == {
        "snapshotter": "overlayfs",
        "pinned_images": {"sandbox": "localhost/p:1"},
    }
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["cni"]["bin_dirs"] == ["/usr/lib/cni"]
    assert runtime["cni"]["conf_dir"] == "/run/ctrtest-x/cni/net.d"
    assert runtime["containerd"]["default_runtime_name"] == "runc"
    assert runtime["containerd"]["runtimes"]["wasm"]["runtime_type"] == "io.containerd.wasmtime.v1"
    assert runtime["containerd"]["runtimes"]["wasm"]["options"] == {"SystemdCgroup": True}
    # The gRPC service plugin keeps only the streaming server settings in 2.x.
    assert plugins["io.containerd.grpc.v1.cri"] == {
        "stream_server_address": "127.0.0.1",
        "stream_server_port": "0",
    }
    assert "sandbox_image" not in runtime


def test_runc_handler_options() -> None:
    cri = CriConfig(runc_systemd_cgroup=True)
    runc = cri.all_handlers("/opt/runc")["runc"]
    assert runc.options == {"SystemdCgroup": True, "BinaryName": "/opt/runc"}
    assert "runc" not in CriConfig(include_runc=False).all_handlers()
    custom = RuntimeHandler("io.containerd.runc.v2", options={"Root": "/x"})
    assert CriConfig(handlers={"runc": custom}).all_handlers()["runc"] is custom


def test_extra_config_merges_deeply() -> None:
    extra = {
        "timeouts": {"io.containerd.timeout.shim.cleanup": "10s"},
        "plugins": {"io.containerd.internal.v1.opt": {"path": "/elsewhere"}},
    }
    doc = config(1, 6, extra=extra)
    assert doc["timeouts"] == {"io.containerd.timeout.shim.cleanup": "10s"}
    assert doc["plugins"]["io.containerd.internal.v1.opt"] == {"path": "/elsewhere"}
    cri = CriConfig(extra={"cni": {"max_conf_num": 2}, "enable_selinux": False})
    table = config(1, 6, cri=cri)["plugins"]["io.containerd.grpc.v1.cri"]
    assert table["cni"]["max_conf_num"] == 2
    assert table["cni"]["bin_dir"] == "/usr/lib/cni"
    assert table["enable_selinux"] is False


def test_render_toml_quotes_dotted_keys_and_escapes_strings() -> None:
    text = render_toml(
        {
            "version": 2,
            "plugins": {"io.containerd.x": {"s": 'a "q" \\ b', "n": 1.5, "b": True, "l": [1, "x"]}},
        }
    )
    assert '[plugins."io.containerd.x"]' in text
    assert tomllib.loads(text)["plugins"]["io.containerd.x"] == {
        "s": 'a "q" \\ b',
        "n": 1.5,
        "b": True,
        "l": [1, "x"],
    }


def test_render_toml_rejects_unknown_types() -> None:
    with pytest.raises(TypeError):
        render_toml({"x": object()})
