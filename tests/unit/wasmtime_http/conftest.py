"""Fixtures for the wasi:http/proxy server tests: real components, an in-process server.

The components come from the shared ``tests/fixtures/http`` build (componentize-py and
componentize-js). Compiling one takes 10-20 s, so the compiled artifact is cached in
``.cache/wasmtime-http-tests/`` keyed by the component's hash and wasmtime's version.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime
from wasmtime import component as wc

from containerd_shim_wasmtime.http import ProxyComponent, proxy_engine

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / ".cache" / "wasmtime-http-tests"


@pytest.fixture(scope="session")
def component_paths() -> dict[str, Path]:
    try:
        from tests.fixtures.http.build import build_http_components
    except ImportError:  # pragma: no cover - the fixture package is missing
        pytest.skip("tests/fixtures/http is not available")
    paths: dict[str, Path] = build_http_components()
    return paths


def _compile(path: Path) -> wc.Component:
    engine = proxy_engine()
    data = path.read_bytes()
    version = importlib.metadata.version("wasmtime").encode()
    key = hashlib.sha256(data + version).hexdigest()[:32]
    artifact = ARTIFACTS / f"{key}.cwasm"
    if artifact.exists():
        with contextlib.suppress(wasmtime.WasmtimeError):
            return wc.Component.deserialize_file(engine, str(artifact))
    component = wc.Component(engine, data)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = artifact.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(component.serialize())
    tmp.replace(artifact)  # atomic: parallel sessions never read half a file
    return component


@pytest.fixture(scope="session", params=["python", "js"])
def proxy(request: pytest.FixtureRequest, component_paths: dict[str, Path]) -> Iterator[Any]:
    """A linked :class:`ProxyComponent` of each test component; ``.lang`` says which."""
    client = httpx.Client()
    linked = ProxyComponent(_compile(component_paths[request.param]), client=client)
    linked.lang = request.param  # type: ignore[attr-defined]
    yield linked
    client.close()
