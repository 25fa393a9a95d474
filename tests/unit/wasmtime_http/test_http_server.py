"""The in-process wasi:http/proxy server against real components (JS and Python), over
HTTP/1.1 on 127.0.0.1. No timing assertions: deadlines are checked by outcome only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx
import pytest
from http_support import serving

from containerd_shim_wasmtime.http import ProxyComponent, ProxyServer, bind_socket

MiB = 1 << 20


async def test_routes(proxy: Any) -> None:
    async with serving(proxy) as srv, srv.client() as client:
        r = await client.get("/hello")
        assert (r.status_code, r.text) == (200, f"hello from {proxy.lang}")
        assert r.headers["content-type"].startswith("text/plain")
        r = await client.get("/status/418")
        assert (r.status_code, r.content) == (418, b"")
        r = await client.get("/no/such/route")
        assert (r.status_code, r.text.strip()) == (404, "not found")
        r = await client.get("/headers", headers={"X-Test": "yes"})
        assert r.status_code == 200
        assert r.headers["x-echo-x-test"] == "yes"
        assert "x-test: yes" in r.text.splitlines()
        assert r.headers["x-echo-host"] == f"127.0.0.1:{srv.port}"


async def test_echo_1mib_keeps_the_connection(proxy: Any) -> None:
    body = os.urandom(MiB)
    async with serving(proxy) as srv, srv.client() as client:
        for _ in range(2):
            r = await client.post("/echo", content=body)
            assert r.status_code == 200
            assert r.content == body
        # A chunked request body (a generator has no length), echoed as well.
        chunks = [os.urandom(1000) for _ in range(50)]

        async def gen() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        r = await client.post("/echo", content=gen())
        assert r.content == b"".join(chunks)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


async def _duplex_echo(port: int, total: int, chunk: bytes) -> int:
    """POST ``total`` bytes to /echo while reading the echo (httpx sends the whole request
    before it reads, which would deadlock once both directions' buffers are full);
    returns the number of body bytes received, each checked against what was sent."""
    conn = h11.Connection(h11.CLIENT)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    headers = [("host", "x"), ("content-length", str(total))]

    async def send() -> None:
        writer.write(conn.send(h11.Request(method="POST", target="/echo", headers=headers)))
        for _ in range(total // len(chunk)):
            writer.write(conn.send(h11.Data(data=chunk)))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    sender = asyncio.create_task(send())
    received = 0
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(1 << 16))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
            elif isinstance(event, h11.Data):
                offset = received % len(chunk)
                expected = (chunk[offset:] + chunk * (len(event.data) // len(chunk) + 1))[
                    : len(event.data)
                ]
                assert event.data == expected
                received += len(event.data)
            else:
                assert isinstance(event, h11.EndOfMessage), event
                break
        await sender
    finally:
        sender.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return received


async def test_echo_100mib_streams_in_bounded_memory(proxy: Any) -> None:
    """Neither side holds the body: the test process's peak RSS (server, guest and client
    are all in it) grows by far less than the 100 MiB that go through."""
    total, chunk = 100 * MiB, os.urandom(256 << 10)
    async with serving(proxy, request_timeout=600) as srv:
        assert await _duplex_echo(srv.port, MiB, chunk) == MiB  # warm up
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM (the peak) to the current RSS
        before = _rss_kib("VmRSS")
        received = await _duplex_echo(srv.port, total, chunk)
        peak = _rss_kib("VmHWM")
    assert received == total
    assert peak - before < 48 * 1024, f"peak RSS grew by {(peak - before) // 1024} MiB"


async def test_outgoing_request(proxy: Any) -> None:
    async with serving(proxy) as srv, srv.client() as client:
        r = await client.get("/outgoing", params={"url": f"{srv.url}/hello"})
        assert r.status_code == 200
        assert r.text == f"hello from {proxy.lang}"
        assert r.headers["x-outgoing-status"] == "200"


class _Counting:
    """Counts the guest's runs, to show the host answered without one."""

    def __init__(self, proxy: ProxyComponent) -> None:
        self.proxy = proxy
        self.calls = 0
        self.engine = proxy.engine

    def handle(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.proxy.handle(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.proxy, name)


async def test_malformed_requests_get_400_without_the_guest(proxy: Any) -> None:
    counting = _Counting(proxy)
    async with serving(counting) as srv:  # type: ignore[arg-type]
        for bad in (
            b"GARBAGE\r\n\r\n",  # not a request line
            b"GET /hello HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
            b"GET /hello HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ):
            reply = await srv.raw(bad)
            assert reply.startswith(b"HTTP/1.1 400 "), (bad, reply)
        assert counting.calls == 0
        async with srv.client() as client:
            assert (await client.get("/hello")).status_code == 200
        assert counting.calls == 1


async def test_body_shorter_than_content_length(proxy: Any) -> None:
    async with serving(proxy) as srv:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        reply = await srv.raw(head + b"x" * 50)
        # The guest may have answered first (then the response is cut short), else 400.
        assert reply == b"" or reply.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 200 "))
        assert b"\r\n0\r\n\r\n" not in reply  # never a complete chunked echo
        async with srv.client() as client:
            r = await client.get("/hello")
            assert r.status_code == 200


async def test_client_disconnecting_mid_body(proxy: Any) -> None:
    async with serving(proxy) as srv:
        for _ in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n")
            writer.write(os.urandom(MiB))
            await writer.drain()
            writer.transport.abort()
        async with srv.client() as client:
            for _ in range(3):
                r = await client.get("/hello")
                assert r.status_code == 200


async def test_trap_gives_500_and_the_next_request_works(proxy: Any) -> None:
    async with serving(proxy) as srv, srv.client() as client:
        for _ in range(2):
            r = await client.get("/trap")
            assert r.status_code == 500
            r = await client.get("/hello")
            assert r.status_code == 200


async def test_spin_is_stopped_by_the_deadline(proxy: Any) -> None:
    async with serving(proxy, request_timeout=1.0, workers=1) as srv, srv.client() as client:
        r = await client.get("/spin")
        assert r.status_code == 504
        # The only worker is free again.
        r = await client.get("/hello")
        assert r.status_code == 200


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _our_threads() -> list[threading.Thread]:
    """The server's worker pool and the epoch ticker (names ``wasi-http*``)."""
    return [t for t in threading.enumerate() if t.name.startswith("wasi-http")]


async def test_no_fd_or_thread_leak(proxy: Any) -> None:
    await asyncio.sleep(0)
    fds_before = _fds()
    async with serving(proxy, workers=3) as srv:
        async with srv.client() as client:
            for _ in range(30):
                assert (await client.get("/hello")).status_code == 200
            await asyncio.gather(*(client.get("/hello") for _ in range(12)))
            assert (await client.get("/trap")).status_code == 500
        # The pool's workers and the epoch ticker, nothing per request.
        assert len(_our_threads()) <= 3 + 1
    # After the drain the pool's threads and the ticker end, and closed transports let
    # go of their sockets, within a few loop iterations.
    for _ in range(250):
        if _fds() <= fds_before and not _our_threads():
            break
        await asyncio.sleep(0.02)
    assert _fds() <= fds_before
    assert not _our_threads()


@pytest.mark.parametrize("method", ["HEAD"])
async def test_head_has_no_body(proxy: Any, method: str) -> None:
    async with serving(proxy) as srv, srv.client() as client:
        r = await client.request(method, "/hello")
        assert r.content == b""
        assert (await client.get("/hello")).status_code == 200


async def test_drain_closes_idle_connections_and_cuts_stragglers(proxy: Any) -> None:
    server = ProxyServer(proxy, request_timeout=30)
    sock = bind_socket("127.0.0.1:0")
    port = sock.getsockname()[1]
    serve = asyncio.create_task(server.serve(sock))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        assert (await client.get("/hello")).status_code == 200  # leaves an idle connection
        spinning = asyncio.create_task(client.get("/spin"))
        while server.running == 0:  # the guest has started
            await asyncio.sleep(0.01)
        # Returns although a keep-alive connection is idle and a guest spins for 30 s.
        await server.drain(0.2)
        await serve
        with pytest.raises(httpx.HTTPError):
            await spinning
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_guest_stderr_goes_to_fd_2(proxy: Any, capfd: pytest.CaptureFixture[str]) -> None:
    if proxy.lang != "python":
        pytest.skip("only componentize-py prints the exception it traps on")
    async with serving(proxy) as srv, srv.client() as client:
        assert (await client.get("/trap")).status_code == 500
    assert "Traceback" in capfd.readouterr().err
