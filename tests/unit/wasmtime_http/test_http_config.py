"""The proxy's settings from a container's environment (runwasi's variables)."""

from __future__ import annotations

import pytest

from containerd_shim_wasmtime.http import ProxyConfig
from containerd_shim_wasmtime.http.context import RequestContext
from containerd_shim_wasmtime.http.lowering import bind
from containerd_shim_wasmtime.http.wasi_cli import functions


def test_defaults_are_runwasis() -> None:
    config, guest_env = ProxyConfig.from_env({"PATH": "/bin"})
    assert (config.addr, config.backlog) == ("0.0.0.0:8080", 100)
    assert guest_env == {"PATH": "/bin"}


def test_settings_are_read_and_hidden_from_the_guest() -> None:
    env = {
        "WASMTIME_HTTP_PROXY_SOCKET_ADDR": "127.0.0.1:9000",
        "WASMTIME_HTTP_BACKLOG": "7",  # the name runwasi's code reads
        "WASMTIME_HTTP_PROXY_WORKERS": "2",
        "WASMTIME_HTTP_PROXY_REQUEST_TIMEOUT": "2.5",
        "KEEP": "me",
    }
    config, guest_env = ProxyConfig.from_env(env)
    assert config == ProxyConfig("127.0.0.1:9000", 7, 2, 2.5)
    assert guest_env == {"KEEP": "me"}
    # The documented name wins over the one runwasi's code reads.
    config, _ = ProxyConfig.from_env({**env, "WASMTIME_HTTP_PROXY_BACKLOG": "9"})
    assert config.backlog == 9


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WASMTIME_HTTP_PROXY_SOCKET_ADDR", "8080"),
        ("WASMTIME_HTTP_PROXY_SOCKET_ADDR", "[::]:99999"),
        ("WASMTIME_HTTP_PROXY_BACKLOG", "many"),
        ("WASMTIME_HTTP_PROXY_WORKERS", "0"),
        ("WASMTIME_HTTP_PROXY_REQUEST_TIMEOUT", "-1"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        ProxyConfig.from_env({name: value})


def test_the_guest_sees_its_environment_and_a_request_id() -> None:
    get_environment = functions([("A", "1")])["wasi:cli/environment"]["get-environment"]
    ctx = RequestContext(deadline=0, client=None)
    ctx.request_id = 41
    bind(ctx)
    try:
        assert get_environment() == [("A", "1"), ("REQUEST_ID", "41")]
    finally:
        bind(None)
