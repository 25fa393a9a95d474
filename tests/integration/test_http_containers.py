"""``wasi:http/proxy`` components served from containers, under a real containerd.

A component exporting ``wasi:http/incoming-handler`` is served by the container's init in
the container's network namespace (here the host's: ``ctr run --net-host``) on
``WASMTIME_HTTP_PROXY_SOCKET_ADDR``, which points at a free port of 127.0.0.1 (the only
address these tests talk to). The image ``localhost/http:test`` carries the Python proxy
component and a ``wasi:cli/command`` component as files (``tests/fixtures/http/build.py``).

Module fixture modelled on ``test_wasm_containers.py``'s ``env``; after every test nothing
of its containers may be left (the same checks).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from containerd_shim_wasm import oci_tar_builder as otb
from tests.support.containerd import ContainerdBinaries

pytestmark = [pytest.mark.containerd, pytest.mark.root]

if os.geteuid() != 0:
    pytest.skip("a private containerd and containers need root", allow_module_level=True)

from tests.integration.test_wasm_containers import (  # noqa: E402 - after the root check
    Env,
    _spares,
    assert_nothing_left,
    private_containerd_env,
)

IMAGE = "localhost/http:test"
ADDR_ENV = "WASMTIME_HTTP_PROXY_SOCKET_ADDR"
MiB = 1 << 20
#: Bound on the wait for a new server: its init compiles the ~19 MB component first.
READY_WITHIN = 300.0


def _http_image(out: Path) -> Path:
    from tests.fixtures.http.build import build_http_components

    paths = build_http_components(["python", "command"])
    modules = [
        otb.Module("proxy.wasm", paths["python"].read_bytes()),
        otb.Module("command.wasm", paths["command"].read_bytes()),
    ]
    return otb.file_image(IMAGE, modules, entrypoint=["/proxy.wasm"]).write(out / "http.tar")


@pytest.fixture(scope="module")
def env(
    containerd_binaries: ContainerdBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    with private_containerd_env(
        containerd_binaries,
        tmp_path_factory.mktemp("http-containers"),
        lambda fx, tmp: [_http_image(tmp)],
        env_type=Env,
    ) as started:
        yield started
    assert started.ctd.stop_leftovers == [], started.ctd.stop_leftovers


@pytest.fixture(autouse=True)
def no_leftovers(env: Env) -> Iterator[None]:
    """After each test: nothing of its containers is left."""
    env.ids.clear()
    yield
    assert_nothing_left(env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(env: Env, cid: str, client: httpx.Client) -> None:
    """Until the server answers /hello (its init compiles the component first)."""
    deadline = time.monotonic() + READY_WITHIN
    while True:
        try:
            if client.get("/hello").status_code == 200:
                return
        except httpx.TransportError:
            pass
        status = env.task_status(cid)
        if status != "RUNNING" or time.monotonic() > deadline:
            pytest.fail(f"task {cid} is {status} and does not serve:\n{env.log(cid)}")
        time.sleep(0.2)


def _spare_ready(env: Env) -> None:
    """Run a pod (the first one spawns the template), then wait for the template's spare
    daemon, which the next pod gets: its zygote, not the template, loads the HTTP server."""
    _run_command(env)
    deadline = time.monotonic() + 20
    while not _spares(env.ctd):
        assert time.monotonic() < deadline, env.ctd.shim_processes(include_templates=True)
        time.sleep(0.05)


def _run_command(env: Env) -> None:
    cid = env.new_id("command")
    result = env.run(IMAGE, cid, "/command.wasm")
    assert (result.returncode, result.stdout) == (0, "hello from wasi\n"), env.log(cid)


@pytest.mark.parametrize("daemon", ["first", "spare"])
def test_proxy_component_is_served_and_drains_on_sigterm(env: Env, daemon: str) -> None:
    if daemon == "spare":
        _spare_ready(env)
    cid = env.new_id("proxy")
    port = _free_port()
    env.run_detached(IMAGE, cid, opts=("--net-host", "--env", f"{ADDR_ENV}=127.0.0.1:{port}"))
    stopped = False
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            _wait_ready(env, cid, client)
            r = client.get("/hello")
            assert (r.status_code, r.text) == (200, "hello from python")
            body = os.urandom(MiB)
            r = client.post("/echo", content=body)
            assert r.status_code == 200
            assert r.content == body
            assert client.get("/status/418").status_code == 418
            assert client.get("/trap").status_code == 500
            r = client.get("/hello")  # a trap costs only its own request's instance
            assert (r.status_code, r.text) == (200, "hello from python")
            # Outgoing requests leave from the container's network (here the host's).
            r = client.get("/outgoing", params={"url": f"http://127.0.0.1:{port}/hello"})
            assert (r.status_code, r.text) == (200, "hello from python")
        kill = env.ctr("task", "kill", "--signal", "SIGTERM", cid)
        assert kill.returncode == 0, kill.stderr
        env.wait_status(cid, "STOPPED", timeout=60)
        stopped = True
        # Drained, nothing cut short: exit status 0. ctr (which also removes its stdio
        # FIFOs) warns "exit code N" only for a non-zero status; the shim logs it.
        deleted = env.ctr("task", "delete", cid)
        assert deleted.returncode == 0, deleted.stderr
        assert "exit code" not in deleted.stderr, deleted.stderr
        exits = [ln for ln in env.log(cid).splitlines() if 'msg="container exited"' in ln]
        assert len(exits) == 1 and exits[0].endswith("exit_status=0"), exits
    finally:
        if not stopped:
            env.ctr("task", "kill", "--signal", "SIGKILL", cid)
            env.wait_status(cid, "STOPPED")
            env.ctr("task", "delete", cid)
        env.ctr("containers", "delete", cid)


def test_bad_proxy_address_fails_create(env: Env) -> None:
    cid = env.new_id("badaddr")
    result = env.run(IMAGE, cid, opts=("--net-host", "--env", f"{ADDR_ENV}=nonsense"))
    assert result.returncode != 0
    assert ADDR_ENV in result.stderr, result.stderr
    env.ctr("containers", "delete", cid)


def test_command_component_still_runs(env: Env) -> None:
    _run_command(env)
