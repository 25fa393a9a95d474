"""Serving a proxy component as a container's workload: detecting proxies without compiling,
the compiler declining them, :class:`ContainerProxy` (serve, drain on a stop signal, exit
code) and the sandbox's checks. The run through a real containerd is in
``tests/integration/test_http_containers.py``. No timing assertions."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from containerd_shim_wasm.context import SpecContext, WasmLayer
from containerd_shim_wasm.sandbox import CannotHandle
from containerd_shim_wasmtime import WasmtimeCompiler, WasmtimeSandbox
from containerd_shim_wasmtime.engine import exports_http_handler
from containerd_shim_wasmtime.http.container import ContainerProxy

ADDR = "WASMTIME_HTTP_PROXY_SOCKET_ADDR"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_proxies_are_told_from_their_export_sections(component_paths: dict[str, Path]) -> None:
    assert exports_http_handler(component_paths["python"].read_bytes())
    assert exports_http_handler(component_paths["js"].read_bytes())
    assert not exports_http_handler(component_paths["command"].read_bytes())
    assert not exports_http_handler(b"\0asm\x01\0\0\0")  # a core module
    assert not exports_http_handler(component_paths["python"].read_bytes()[:4096])  # cut


async def test_the_compiler_declines_proxy_components(component_paths: dict[str, Path]) -> None:
    """Its artifacts are for the sandbox's engine; a proxy runs on the proxy engine."""
    layers = [
        WasmLayer("application/wasm", "sha256:" + "ab" * 32, component_paths[name].read_bytes())
        for name in ("python", "command")
    ]
    proxy, command = await WasmtimeCompiler().compile(layers)
    assert proxy is None
    assert command  # a wasi:cli/command component is still precompiled


@contextmanager
def serving(
    wasm: bytes, env: list[str], drain_grace: float = 5.0
) -> Iterator[tuple[ContainerProxy, httpx.Client, list[int]]]:
    """:meth:`ContainerProxy.run` on a thread, as the init's guest thread does; yields once
    it answers. The list receives its exit code."""
    port = _free_port()
    proxy = ContainerProxy(drain_grace)
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(proxy.run(wasm, [f"{ADDR}=127.0.0.1:{port}", *env], "t"))
    )
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            while True:
                try:
                    client.get("/hello")
                    break
                except httpx.TransportError:
                    assert thread.is_alive(), "the server ended before serving"
                    time.sleep(0.1)
            yield proxy, client, codes
    finally:
        proxy.stop(signal.SIGKILL)  # if the test did not stop it
        thread.join()


def test_serves_until_stopped_then_exits_0(component_paths: dict[str, Path]) -> None:
    wasm = component_paths["python"].read_bytes()
    assert not ContainerProxy().stop(signal.SIGTERM)  # not serving: the caller exits at once
    with serving(wasm, ["GREETING=hi"]) as (proxy, client, codes):
        r = client.get("/hello")
        assert (r.status_code, r.text) == (200, "hello from python")
        assert client.get("/trap").status_code == 500
        assert client.get("/hello").status_code == 200
        assert proxy.stop(signal.SIGTERM)
        assert not proxy.stop(signal.SIGTERM)  # a second signal: the caller exits at once
    assert codes == [0]


def test_a_request_cut_by_the_drain_gives_128_plus_the_signal(
    component_paths: dict[str, Path],
) -> None:
    wasm = component_paths["python"].read_bytes()
    with serving(wasm, [], drain_grace=0.2) as (proxy, client, codes):
        answers: list[int | str] = []

        def spin() -> None:
            try:
                answers.append(client.get("/spin").status_code)
            except httpx.TransportError as exc:
                answers.append(type(exc).__name__)

        # The readiness probe's guest may still be finishing after its response went out:
        # wait for it, so that the next running guest is /spin's (which loops until cut).
        while _in_flight(proxy):
            time.sleep(0.05)
        spinner = threading.Thread(target=spin)
        spinner.start()
        while not _in_flight(proxy):
            time.sleep(0.05)
        assert proxy.stop(signal.SIGTERM)
        spinner.join()
    assert codes == [128 + signal.SIGTERM]
    assert answers and answers[0] != 200


def _in_flight(proxy: ContainerProxy) -> bool:
    server = proxy.server
    return server is not None and server.running > 0


def test_bad_settings_fail_before_compiling(component_paths: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=ADDR):
        ContainerProxy().run(component_paths["python"].read_bytes(), [f"{ADDR}=nonsense"], "t")


def test_the_sandbox_refuses_bad_settings_at_create(component_paths: dict[str, Path]) -> None:
    path = str(component_paths["python"])
    WasmtimeSandbox().can_handle_blocking(SpecContext([path], [f"{ADDR}=127.0.0.1:8080"]))
    with pytest.raises(CannotHandle, match=f"{ADDR}='nonsense'"):
        WasmtimeSandbox().can_handle_blocking(SpecContext([path], [f"{ADDR}=nonsense"]))


def test_the_sandbox_serves_a_proxy_whose_cached_artifact_is_for_its_own_engine(
    component_paths: dict[str, Path],
) -> None:
    """An artifact of a proxy made for the sandbox's engine (by a shim older than the
    compiler's refusal) is never loaded into the proxy engine: the file's wasm is served.
    ``stop_blocking`` drains it, and the run returns 0."""
    from wasmtime.component import Component

    from containerd_shim_wasmtime.engine import ENGINE_FLAGS, engine_for

    path = component_paths["python"]
    artifact = Component(engine_for(ENGINE_FLAGS), path.read_bytes()).serialize()
    compiled = WasmLayer("application/wasm", "sha256:" + "ef" * 32, bytes(artifact), True)
    port = _free_port()
    ctx = SpecContext([str(path)], [f"{ADDR}=127.0.0.1:{port}"], compiled=compiled)
    sandbox = WasmtimeSandbox()
    assert not sandbox.stop_blocking(signal.SIGTERM)  # nothing served yet: stop at once
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(sandbox.run_wasi_blocking(ctx)))
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            while True:
                try:
                    r = client.get("/hello")
                    break
                except httpx.TransportError:
                    assert thread.is_alive(), "the sandbox ended before serving"
                    time.sleep(0.1)
            assert (r.status_code, r.text) == (200, "hello from python")
        assert sandbox.stop_blocking(signal.SIGTERM)
    finally:
        sandbox.stop_blocking(signal.SIGKILL)
        thread.join()
    assert codes == [0]


_PRELOAD_PROBE = """
import sys
from pathlib import Path
from containerd_shim_wasmtime.sandbox import WasmtimeSandbox
WasmtimeSandbox.preload()
before = "httpx" in sys.modules
WasmtimeSandbox.preload_for(Path(sys.argv[1]).read_bytes())
after_command = "httpx" in sys.modules
WasmtimeSandbox.preload_for(Path(sys.argv[2]).read_bytes())
print(before, after_command, "httpx" in sys.modules)
"""


def test_only_a_proxy_loads_the_http_server_into_the_zygote(
    component_paths: dict[str, Path],
) -> None:
    # The server's modules (httpx, h11, ssl) cost a zygote ~10 MiB and ~130 ms: a pod that
    # runs no proxy must not pay for them. A fresh interpreter, as a zygote's imports are.
    probe = subprocess.run(
        [sys.executable, "-c", _PRELOAD_PROBE, component_paths["command"], component_paths["js"]],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["False", "False", "True"], probe.stderr
