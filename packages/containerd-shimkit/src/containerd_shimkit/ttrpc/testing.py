"""Helpers for testing code that serves or calls ttrpc services, over real unix sockets.

Example::

    async with client_for([Service.from_descriptor(descriptor, tasks)]) as client:
        response = await client.call(
            "containerd.task.v2.Task", "State", shim_pb2.StateRequest(id="c1"),
            shim_pb2.StateResponse,
        )
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .client import Client
from .server import Server
from .service import Service

__all__ = ["RunningServer", "client_for", "serve_in_tmp"]


@dataclass(frozen=True)
class RunningServer:
    """A :class:`Server` listening on :attr:`path`."""

    server: Server
    path: str

    async def connect(self) -> Client:
        """Open a new client connection (the caller closes it)."""
        return await Client.connect(self.path)


@asynccontextmanager
async def serve_in_tmp(
    services: Iterable[Service],
    path: str | None = None,
    *,
    require_same_user: bool = True,
) -> AsyncIterator[RunningServer]:
    """Run a :class:`Server` on ``path``, by default a socket in a fresh temporary directory.

    The default directory lives under the system temp dir rather than pytest's
    ``tmp_path`` because unix socket paths are limited to 107 bytes. On exit the server
    is shut down (which unlinks the socket) and the temporary directory removed.
    """
    directory = tempfile.mkdtemp(prefix="ttrpc-")
    try:
        server = Server(services, require_same_user=require_same_user)
        path = path or os.path.join(directory, "ttrpc.sock")
        await server.start_unix(path)
        try:
            yield RunningServer(server, path)
        finally:
            await server.shutdown()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def client_for(
    services: Iterable[Service], *, require_same_user: bool = True
) -> AsyncIterator[Client]:
    """A :class:`Client` connected to a temporary :class:`Server` for ``services``."""
    async with serve_in_tmp(services, require_same_user=require_same_user) as running:
        client = await running.connect()
        try:
            yield client
        finally:
            await client.close()
