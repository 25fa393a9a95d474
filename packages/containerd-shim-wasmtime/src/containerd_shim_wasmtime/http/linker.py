"""A component Linker that implements every import of a proxy component in Python.

wasmtime-py's own ``add_wasi_http`` is outgoing-only, and its resources cannot be minted from
Python, so nothing of its WASI can be mixed in: ``wasi:http/types`` shares ``wasi:io``'s
stream types with ``wasi:cli``. This module walks the component's imports once:

* every resource gets a host type id; a resource that is only ``use``d from another
  interface (``wasi:http/types`` ``input-stream``, ``headers`` = ``fields``) compares equal
  to the one already seen and is not defined again;
* every function gets the implementation registered under its unversioned interface name
  (``wasi:io/streams``) and function name, through :func:`lowering.add_func`, which compiles
  the conversions from the import's type; a function with no implementation traps when
  called (and is logged once), so components that merely import it still instantiate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import component as wc

from . import http_types, outgoing, wasi_cli, wasi_io
from .lowering import ResourceIds, add_func, current
from .pipe import Pipe

log = logging.getLogger(__name__)

Impl = Callable[..., Any]


def _unversioned(name: str) -> str:
    return name.split("@", 1)[0]


def _client_or_server(server: Impl, client: Impl, client_type: type) -> Impl:
    """Body methods share names between server and client bodies: dispatch on the class."""

    def call(obj: Any, *args: Any) -> Any:
        return client(obj, *args) if isinstance(obj, client_type) else server(obj, *args)

    return call


def implementations(
    make_pipe: Callable[[], Pipe], environment: list[tuple[str, str]]
) -> dict[str, dict[str, Impl]]:
    """Every host function, by unversioned interface name and function name."""
    table: dict[str, dict[str, Impl]] = {}
    table.update(wasi_io.functions())
    table.update(wasi_cli.functions(environment))
    types = http_types.functions(make_pipe)
    types.update(outgoing.types_functions())
    server_write = types["[method]outgoing-body.write"]
    server_finish = types["[static]outgoing-body.finish"]
    server_stream = types["[method]incoming-body.stream"]
    server_trailers = types["[static]incoming-body.finish"]
    types["[method]outgoing-body.write"] = _client_or_server(
        server_write, outgoing.body_write, outgoing.OutgoingRequestBody
    )
    types["[static]outgoing-body.finish"] = _client_or_server(
        server_finish, outgoing.body_finish, outgoing.OutgoingRequestBody
    )
    types["[method]incoming-body.stream"] = _client_or_server(
        server_stream, outgoing.body_stream, outgoing.ClientBody
    )
    types["[static]incoming-body.finish"] = _client_or_server(
        server_trailers, lambda body: _NoTrailers(), outgoing.ClientBody
    )
    types["[method]future-trailers.subscribe"] = _client_or_server(
        types["[method]future-trailers.subscribe"],
        lambda ft: wasi_io.Pollable(lambda: True),
        _NoTrailers,
    )
    table["wasi:http/types"] = types
    table["wasi:http/outgoing-handler"] = outgoing.handler_functions()
    return table


class _NoTrailers:
    """``future-trailers`` of a client response (httpx does not expose trailers)."""

    def __init__(self) -> None:
        self.done = False

    def get(self) -> Any:
        from .lowering import Err, Ok

        if self.done:
            return Err(None)
        self.done = True
        return Ok(Ok(None))

    def close(self) -> None:
        pass


def _drop(store: Any, rep: int) -> None:
    """The dtor of every host resource: forget the handle, close the object if it was the
    last handle to it. Never raises (an exception here would go through wasmtime-py's
    thread-unsafe ``LAST_EXCEPTION``)."""
    try:
        obj = current().table.pop(rep)
        close = getattr(obj, "close", None)
        if close is not None:
            close()
    except Exception:
        log.debug("dropping resource %d", rep, exc_info=True)


def _missing(iface: str, name: str) -> Impl:
    warned: list[bool] = []

    def trap(*args: Any) -> Any:
        if not warned:
            warned.append(True)
            log.warning("guest called %s#%s, which this host does not implement", iface, name)
        raise NotImplementedError(f"{iface}#{name} is not implemented by this host")

    return trap


def build_linker(
    engine: wasmtime.Engine,
    component: wc.Component,
    impls: dict[str, dict[str, Impl]],
) -> tuple[wc.Linker, dict[tuple[str, str], int]]:
    """A linker with every import of ``component`` defined (for that component only: the
    conversions are compiled from its import types), and the host type id of each resource
    by (unversioned interface, name), to mint the handles the guest's export takes."""
    linker = wc.Linker(engine)
    ids: dict[tuple[str, str], int] = {}
    resources = ResourceIds()
    next_id = 1
    imports = component.type.imports(engine)
    with linker.root() as root:
        for iface, ext in imports.items():
            ty = ext.ty
            if not isinstance(ty, wc.ComponentInstanceType):
                raise ValueError(f"unsupported import {iface!r}: not an interface")
            funcs = impls.get(_unversioned(iface), {})
            with root.add_instance(iface) as inst:
                items = ty.exports(engine)
                for name, item in items.items():
                    rty = item.ty
                    if not isinstance(rty, wc.ResourceType):
                        continue
                    known = resources.find(rty)
                    if known is None:
                        known = next_id
                        next_id += 1
                        resources.add(rty, known)
                        inst.add_resource(name, wc.ResourceType.host(known), _drop)
                    ids[(_unversioned(iface), name)] = known
                for name, item in items.items():
                    fty = item.ty
                    if isinstance(fty, wc.FuncType):
                        impl = funcs.get(name) or _missing(iface, name)
                        add_func(inst, name, fty, impl, resources)
    return linker, ids
