"""The manifests, snippets and scripts of deploy/ agree with each other and with containerd."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    DEPLOY,
    RUNTIME_TYPE,
    config_dump,
    dump_runtimes,
    handler_table,
    load_deploy_module,
    require_containerd,
)

LABEL = "containerd-shim-wasm/wasmtime"
SCRIPTS = [DEPLOY / "install.sh", DEPLOY / "daemonset-entrypoint.sh"]


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --------------------------------------------------------------------------- snippets


@pytest.mark.parametrize(
    ("snippet", "schema", "series"),
    [
        ("config-1.6-1.7.toml", 2, "1.6"),
        ("config-1.6-1.7.toml", 2, "1.7"),
        ("config-1.6-1.7.toml", 2, "2.1"),  # 2.x migrates version 2
        ("config-2.x.toml", 3, "2.1"),
    ],
)
def test_snippets_resolve_in_containerd(snippet: str, schema: int, series: str) -> None:
    path = DEPLOY / "containerd" / snippet
    doc = tomllib.loads(path.read_text())
    assert doc["version"] == schema
    assert handler_table(doc, schema) == {
        "runtime_type": RUNTIME_TYPE,
        "options": {"SystemdCgroup": True},
    }
    binary = require_containerd(series)
    runtimes = dump_runtimes(config_dump(binary, path))
    assert runtimes["wasmtime"]["runtime_type"] == RUNTIME_TYPE
    assert runtimes["wasmtime"]["options"]["SystemdCgroup"] is True


def test_snippet_runc_comment_is_valid_toml() -> None:
    """The commented-out runc tables of the 1.x snippet, uncommented, are what they say."""
    text = (DEPLOY / "containerd" / "config-1.6-1.7.toml").read_text()
    uncommented = re.sub(r"(?m)^# (\[|  )", r"\1", text)
    runc = handler_table(tomllib.loads(uncommented), 2, "runc")
    assert runc == {"runtime_type": "io.containerd.runc.v2", "options": {"SystemdCgroup": True}}


# --------------------------------------------------------------------------- manifests


def test_names_agree_across_files() -> None:
    install = (DEPLOY / "install.sh").read_text()
    entry = (DEPLOY / "daemonset-entrypoint.sh").read_text()
    rc = (DEPLOY / "runtimeclass.yaml").read_text()
    ds = (DEPLOY / "daemonset.yaml").read_text()
    pod = (DEPLOY / "example-pod.yaml").read_text()
    assert "\nhandler=wasmtime\n" in install
    assert re.search(r"(?m)^handler: wasmtime$", rc)
    assert re.search(r"(?m)^  name: wasmtime$", rc)
    assert re.search(r"(?m)^  runtimeClassName: wasmtime$", pod)
    assert f'    {LABEL}: "true"' in rc
    assert f"NODE_LABEL=${{NODE_LABEL-{LABEL}=true}}" in entry
    assert f"value: {LABEL}=true" in ds
    # The env the manifest sets is the env the entrypoint reads.
    for name in re.findall(r"- name: ([A-Z_]+)", ds):
        assert f"{name}=${{{name}" in entry, name
    # The hostPath and its mount are the entrypoint's defaults.
    assert (
        "path: /opt/containerd-shim-wasm\n" in ds
        and "HOST_DIR:-/opt/containerd-shim-wasm}" in entry
    )
    assert "mountPath: /host/opt/containerd-shim-wasm\n" in ds
    assert "HOST_MOUNT:-/host/opt/containerd-shim-wasm}" in entry
    assert "prefix=/opt/containerd-shim-wasm\n" in install


def test_dockerfile_layout_matches_the_entrypoint() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("FROM debian:bookworm-slim") == 2
    assert "COPY deploy/ /payload/deploy/" in text
    assert "/payload/wheels" in text and "pip download" in text
    assert 'ENTRYPOINT ["/bin/sh", "/payload/deploy/daemonset-entrypoint.sh"]' in text
    for pkg in ("containerd-shimkit", "containerd-shim-wasm", "containerd-shim-wasmtime"):
        assert f"COPY packages/{pkg} /src/{pkg}" in text
        assert (DEPLOY.parent / "packages" / pkg / "pyproject.toml").is_file()


def test_manifest_structure() -> None:
    (rc,) = yaml_docs(DEPLOY / "runtimeclass.yaml")
    assert rc["apiVersion"] == "node.k8s.io/v1" and rc["kind"] == "RuntimeClass"
    assert rc["handler"] == "wasmtime"
    assert rc["scheduling"]["nodeSelector"] == {LABEL: "true"}

    docs = {d["kind"]: d for d in yaml_docs(DEPLOY / "daemonset.yaml")}
    assert set(docs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}
    assert docs["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}
    ]
    ds = docs["DaemonSet"]
    assert ds["metadata"]["namespace"] == "kube-system"
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert spec["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    (container,) = spec["containers"]
    assert container["securityContext"] == {"privileged": True}
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["INSTALL_ARGS"]["value"] == "--restart"
    (volume,) = spec["volumes"]
    assert volume["hostPath"] == {"path": "/opt/containerd-shim-wasm", "type": "DirectoryOrCreate"}

    (pod,) = yaml_docs(DEPLOY / "example-pod.yaml")
    assert pod["spec"]["runtimeClassName"] == "wasmtime"
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == ["wasm", "sidecar"]


# --------------------------------------------------------------------------- scripts


def test_scripts_are_posix_sh() -> None:
    for script in SCRIPTS:
        assert script.read_text().startswith("#!/bin/sh\n")
        assert os.access(script, os.X_OK), script
        for shell in ("sh", "dash"):
            if shutil.which(shell):
                subprocess.run([shell, "-n", str(script)], check=True)


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run(
        [shellcheck, "-s", "sh", *map(str, SCRIPTS)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_entrypoint_stages_runs_and_cleans_up(tmp_path: Path) -> None:
    """The entrypoint with the node replaced by a local directory (HOST_EXEC empty)."""
    payload = tmp_path / "payload"
    shutil.copytree(DEPLOY, payload / "deploy")
    (payload / "wheels").mkdir()
    host = tmp_path / "host-opt"
    config = tmp_path / "config.toml"
    config.write_text("version = 2\n")
    env = {
        **os.environ,
        "PAYLOAD": str(payload),
        "HOST_DIR": str(host),
        "HOST_MOUNT": str(host),
        "HOST_EXEC": "",
        "NODE_LABEL": "",
        "PAUSE": "0",
        "INSTALL_SYSTEMD_DIR": str(tmp_path / "no-systemd"),
        "INSTALL_ARGS": f"--skip-venv --config {config} --containerd=",
    }
    script = str(DEPLOY / "daemonset-entrypoint.sh")
    proc = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "adding handler 'wasmtime'" in proc.stderr
    assert "runtimes.wasmtime]" in config.read_text()
    assert sorted(p.name for p in host.iterdir()) == ["restart-pending"]  # staging removed

    env["ACTION"] = "uninstall"
    proc = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert config.read_text() == "version = 2\n"
    assert not host.exists() or not any(host.iterdir())

    env["ACTION"] = "reinstall"
    proc = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "ACTION must be install or uninstall" in proc.stderr


def test_entrypoint_fails_when_install_fails(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    shutil.copytree(DEPLOY, payload / "deploy")
    env = {
        **os.environ,
        "PAYLOAD": str(payload),
        "HOST_DIR": str(tmp_path / "host"),
        "HOST_MOUNT": str(tmp_path / "host"),
        "HOST_EXEC": "",
        "PAUSE": "0",
        "NODE_NAME": "node-1",
        "INSTALL_ARGS": "--skip-venv --handler=Bad_Name",
    }
    script = str(DEPLOY / "daemonset-entrypoint.sh")
    proc = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "install.sh failed" in proc.stderr
    assert "label_node" not in proc.stderr  # no label for a failed install
    assert not (tmp_path / "host" / "installer").exists()


# --------------------------------------------------------------------------- label_node


class _Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    status = 200

    def do_PATCH(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).requests.append(
            {
                "path": self.path,
                "type": self.headers["Content-Type"],
                "auth": self.headers["Authorization"],
                "body": json.loads(self.rfile.read(length)),
            }
        )
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[str]:
    _Recorder.requests = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_label_node_patches_and_removes(api_server: str) -> None:
    ln = load_deploy_module("label_node")
    ln.label_node(api_server, "node-1", LABEL, "true", "tok")
    ln.label_node(api_server, "node-1", *ln.parse_label(f"{LABEL}-"), "tok")
    first, second = _Recorder.requests
    assert first == {
        "path": "/api/v1/nodes/node-1",
        "type": "application/merge-patch+json",
        "auth": "Bearer tok",
        "body": {"metadata": {"labels": {LABEL: "true"}}},
    }
    assert second["body"] == {"metadata": {"labels": {LABEL: None}}}


def test_label_node_cli_outside_a_pod(capsys: pytest.CaptureFixture[str]) -> None:
    ln = load_deploy_module("label_node")
    env = dict(os.environ)
    os.environ.pop("KUBERNETES_SERVICE_HOST", None)
    try:
        assert ln.main(["node-1", f"{LABEL}=true"]) == 1
        assert "not in a pod" in capsys.readouterr().err
        assert ln.main(["node-1", "no-equals-sign"]) == 1
        assert ln.main([]) == 2
    finally:
        os.environ.clear()
        os.environ.update(env)
