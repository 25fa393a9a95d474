"""Helpers of the wasi:http/proxy server tests: an in-process server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from containerd_shim_wasmtime.http import ProxyComponent, ProxyServer, bind_socket


class Running:
    """A :class:`ProxyServer` serving on 127.0.0.1 in the test's event loop."""

    def __init__(self, server: ProxyServer, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=60, **kwargs)

    async def raw(self, data: bytes, *, shut_write: bool = True) -> bytes:
        """Send ``data`` on a new connection and read until the server closes it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            if shut_write:
                writer.write_eof()
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(proxy: ProxyComponent, **kwargs: Any) -> AsyncIterator[Running]:
    server = ProxyServer(proxy, **kwargs)
    sock = bind_socket("127.0.0.1:0")
    port = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sock))
    try:
        yield Running(server, port)
    finally:
        await server.drain(5)
        await task
