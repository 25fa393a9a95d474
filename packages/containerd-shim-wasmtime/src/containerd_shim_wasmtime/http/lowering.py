"""A thin typed layer over component-model host functions.

wasmtime-py's ``LinkerInstance.add_func`` rebuilds the import's ``FuncType`` and walks every
variant's cases in Python on *each* call, to guess whether a variant value is "tagged"; that
was most of the ~5 ms a request cost in the proof of concept (34 host calls). Here each
import's type is read once, from the component's own import types, and compiled into a pair of
closures per value type (:func:`compile_type`); the host function is registered through the C
callback directly, so a call costs the conversions of its own arguments and nothing else.

The same place handles the two pitfalls of that API:

* a ``borrow<T>`` argument must be consumed exactly once (``to_host`` *or* ``drop``, never
  both) or the guest traps with "borrow handles still remain"; :class:`_Handle` lifts every
  resource argument with ``to_host`` and frees the C box, nothing else;
* wasmtime-py passes a variant either bare or as ``Variant(...)`` depending on whether its
  cases' Python classes overlap; here values have one representation per WIT type, whatever
  the other cases are:

  ===================  ==================================================
  WIT                  Python
  ===================  ==================================================
  bool, ints, floats   ``bool``, ``int``, ``float``
  char, string         ``str``
  ``list<u8>``         ``bytes`` (copied with one strided slice, not per byte)
  other lists          ``list``
  record               ``dict`` keyed by field name
  tuple                ``tuple``
  variant              :class:`Case` ``(tag, payload)``
  enum                 ``str``
  option               ``None`` or the payload (``option<option<T>>`` is refused)
  result               :class:`Ok` / :class:`Err` (payload ``None`` for ``_``)
  flags                ``frozenset`` of names (any set when lowering)
  own/borrow           the host object (see :class:`ResourceTable`)
  ===================  ==================================================

Host objects cross the boundary as integers ("reps") into a :class:`ResourceTable` owned by the
request running on the calling thread (:func:`current`): one table per Store, so a Store's
handles never outlive it and no dtor is needed at the Store's end.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import wasmtime
from wasmtime import _bindings
from wasmtime import _ffi as ffi
from wasmtime import component as wc

Ctx = "ctypes._Pointer[ffi.wasmtime_context_t]"
Val = ffi.wasmtime_component_val_t
Lift = Callable[[Any, Any], Any]  # (wasmtime_component_val_t, context) -> Python value
Lower = Callable[[Any, Any, Any], None]  # (value, POINTER(val), context) -> None

_VAL_SIZE = ctypes.sizeof(Val)
_VAL_OF = Val.of.offset  # offset of the payload union in a val
_K = {name: getattr(ffi, f"WASMTIME_COMPONENT_{name}").value for name in (
    "BOOL", "S8", "U8", "S16", "U16", "S32", "U32", "S64", "U64", "F32", "F64", "CHAR",
    "STRING", "LIST", "RECORD", "TUPLE", "VARIANT", "ENUM", "OPTION", "RESULT", "FLAGS",
    "RESOURCE",
)}  # fmt: skip


# -- the C calls of the conversions, without releasing the GIL -----------------------------
#
# ctypes releases the GIL around every foreign call. These calls take well under a
# microsecond, and a host call makes several: with several guests running, each release
# lets another thread in and costs a context switch to get back. So the conversions call
# the same library through ``PyDLL`` (which keeps the GIL). The guest itself still runs
# with the GIL released: ``Func.__call__`` goes through wasmtime-py's ``CDLL``.
_PYDLL = ctypes.PyDLL(ffi.dll._name)


def _holding_gil(name: str) -> Any:
    released = getattr(_bindings, "_" + name)
    fn = getattr(_PYDLL, name)
    fn.argtypes, fn.restype = released.argtypes, released.restype
    return fn


_to_host = _holding_gil("wasmtime_component_resource_any_to_host")
_host_rep = _holding_gil("wasmtime_component_resource_host_rep")
_host_type = _holding_gil("wasmtime_component_resource_host_type")
_host_delete = _holding_gil("wasmtime_component_resource_host_delete")
_host_new = _holding_gil("wasmtime_component_resource_host_new")
_host_to_any = _holding_gil("wasmtime_component_resource_host_to_any")
_val_new = _holding_gil("wasmtime_component_val_new")
_vallist_new_uninit = _holding_gil("wasmtime_component_vallist_new_uninit")
_valtuple_new_uninit = _holding_gil("wasmtime_component_valtuple_new_uninit")
_valrecord_new_uninit = _holding_gil("wasmtime_component_valrecord_new_uninit")
_valflags_new_uninit = _holding_gil("wasmtime_component_valflags_new_uninit")
_byte_vec_new = _holding_gil("wasm_byte_vec_new")
_memmove = ctypes.PyDLL(None).memmove
_memmove.argtypes, _memmove.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t], None
_BYTE_P = ctypes.POINTER(ffi.wasm_byte_t)


def _name(s: str) -> Any:
    """A ``wasm_name_t`` holding a copy of ``s`` (the C side takes ownership)."""
    data = s.encode()
    vec = ffi.wasm_byte_vec_t()
    _byte_vec_new(ctypes.byref(vec), len(data), ctypes.cast(ctypes.c_char_p(data), _BYTE_P))
    return vec


class Ok(NamedTuple):
    """The ``ok`` case of a ``result``."""

    value: Any = None


class Err(NamedTuple):
    """The ``err`` case of a ``result``."""

    value: Any = None


class Case(NamedTuple):
    """A case of a WIT ``variant``: always tagged, whatever the other cases hold."""

    tag: str
    payload: Any = None


class HostTrap(Exception):
    """Raised by a host function to trap the guest (e.g. ``wasi:cli/exit``, a deadline)."""


class ResourceTable:
    """The host objects one Store's guest holds handles to, by rep (a u32)."""

    def __init__(self) -> None:
        self._objects: dict[int, object] = {}
        self._next = 1

    def push(self, obj: object) -> int:
        rep = self._next
        self._next += 1
        self._objects[rep] = obj
        return rep

    def get(self, rep: int) -> object:
        return self._objects[rep]

    def pop(self, rep: int) -> object:
        return self._objects.pop(rep)

    def __len__(self) -> int:
        return len(self._objects)

    def values(self) -> list[object]:
        return list(self._objects.values())


class CallContext:
    """What a host function may reach on the calling thread: the request's resource table
    and state. Subclassed by the request (see ``handler.py``)."""

    table: ResourceTable
    #: The first exception a host function raised: wasmtime-py's module-global
    #: ``LAST_EXCEPTION`` is not thread-safe, so the request keeps its own.
    error: BaseException | None = None

    def __init__(self) -> None:
        self.table = ResourceTable()


_local = threading.local()


def current() -> CallContext:
    """The :class:`CallContext` of the request running on this thread."""
    ctx: CallContext = _local.ctx
    return ctx


def bind(ctx: CallContext | None) -> None:
    """Make ``ctx`` the current context of this thread (``None`` to clear)."""
    _local.ctx = ctx


# -- value types ------------------------------------------------------------------------


class ResourceIds:
    """Maps the component's imported resource types to host type ids (``ResourceType.host``).

    Equality of ``ResourceType`` is an FFI call, so lookups happen at compile time only.
    """

    def __init__(self) -> None:
        self._types: list[tuple[wc.ResourceType, int]] = []

    def add(self, ty: wc.ResourceType, host_id: int) -> None:
        self._types.append((ty, host_id))

    def find(self, ty: wc.ResourceType) -> int | None:
        for known, host_id in self._types:
            if known == ty:
                return host_id
        return None


def _prim(field: str, kind: str, check: type) -> tuple[Lift, Lower]:
    k = _K[kind]

    def lift(v: Any, ctx: Any) -> Any:
        return getattr(v.of, field)

    def lower(x: Any, p: Any, ctx: Any) -> None:
        if not isinstance(x, check):
            raise TypeError(f"expected {check.__name__} for {kind.lower()}, got {x!r}")
        p.contents.kind = k
        setattr(p.contents.of, field, x)

    return lift, lower


def _string() -> tuple[Lift, Lower]:
    k = _K["STRING"]

    def lift(v: Any, ctx: Any) -> Any:
        return ffi.to_str(v.of.string)

    def lower(x: Any, p: Any, ctx: Any) -> None:
        if not isinstance(x, str):
            raise TypeError(f"expected str, got {x!r}")
        p.contents.kind = k
        p.contents.of.string = _name(x)

    return lift, lower


def _char() -> tuple[Lift, Lower]:
    k = _K["CHAR"]

    def lift(v: Any, ctx: Any) -> Any:
        return chr(v.of.character)

    def lower(x: Any, p: Any, ctx: Any) -> None:
        p.contents.kind = k
        p.contents.of.character = ord(x)

    return lift, lower


def _bytes_list() -> tuple[Lift, Lower]:
    """``list<u8>`` as ``bytes``: each element is a 32-byte tagged val in C, so instead of
    one Python conversion per byte, one strided slice of the array's memory."""
    k_list, k_u8 = _K["LIST"], _K["U8"]

    def lift(v: Any, ctx: Any) -> Any:
        n = v.of.list.size
        if n == 0:
            return b""
        return ctypes.string_at(v.of.list.data, n * _VAL_SIZE)[_VAL_OF::_VAL_SIZE]

    def lower(x: Any, p: Any, ctx: Any) -> None:
        if not isinstance(x, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(x).__name__}")
        n = len(x)
        raw = ffi.wasmtime_component_vallist_t()
        _vallist_new_uninit(ctypes.byref(raw), n)
        if n:
            buf = bytearray(n * _VAL_SIZE)
            buf[0::_VAL_SIZE] = bytes((k_u8,)) * n
            buf[_VAL_OF::_VAL_SIZE] = x
            _memmove(raw.data, (ctypes.c_char * len(buf)).from_buffer(buf), len(buf))
        p.contents.kind = k_list
        p.contents.of.list = raw

    return lift, lower


def _list(elem: tuple[Lift, Lower]) -> tuple[Lift, Lower]:
    k = _K["LIST"]
    elift, elower = elem

    def lift(v: Any, ctx: Any) -> Any:
        data = v.of.list.data
        return [elift(data[i], ctx) for i in range(v.of.list.size)]

    def lower(x: Any, p: Any, ctx: Any) -> None:
        raw = ffi.wasmtime_component_vallist_t()
        _vallist_new_uninit(ctypes.byref(raw), len(x))
        for i, e in enumerate(x):
            elower(e, ctypes.pointer(raw.data[i]), ctx)
        p.contents.kind = k
        p.contents.of.list = raw

    return lift, lower


def _tuple(elems: list[tuple[Lift, Lower]]) -> tuple[Lift, Lower]:
    k = _K["TUPLE"]

    def lift(v: Any, ctx: Any) -> Any:
        data = v.of.tuple.data
        return tuple(el[0](data[i], ctx) for i, el in enumerate(elems))

    def lower(x: Any, p: Any, ctx: Any) -> None:
        raw = ffi.wasmtime_component_valtuple_t()
        _valtuple_new_uninit(ctypes.byref(raw), len(elems))
        for i, (el, e) in enumerate(zip(elems, x, strict=True)):
            el[1](e, ctypes.pointer(raw.data[i]), ctx)
        p.contents.kind = k
        p.contents.of.tuple = raw

    return lift, lower


def _record(fields: list[tuple[str, tuple[Lift, Lower]]]) -> tuple[Lift, Lower]:
    k = _K["RECORD"]

    def lift(v: Any, ctx: Any) -> Any:
        data = v.of.record.data
        return {name: conv[0](data[i].val, ctx) for i, (name, conv) in enumerate(fields)}

    def lower(x: Any, p: Any, ctx: Any) -> None:
        raw = ffi.wasmtime_component_valrecord_t()
        _valrecord_new_uninit(ctypes.byref(raw), len(fields))
        for i, (name, conv) in enumerate(fields):
            entry = raw.data[i]
            entry.name = _name(name)
            conv[1](x[name], ctypes.pointer(entry.val), ctx)
        p.contents.kind = k
        p.contents.of.record = raw

    return lift, lower


def _boxed(conv: tuple[Lift, Lower] | None, x: Any, ctx: Any) -> Any:
    """A heap-allocated val for an option/variant/result payload (``None`` for no payload)."""
    if conv is None:
        return None
    tmp = Val()
    conv[1](x, ctypes.pointer(tmp), ctx)
    return _val_new(ctypes.byref(tmp))


def _unboxed(conv: tuple[Lift, Lower] | None, ptr: Any, ctx: Any) -> Any:
    if conv is None or not ptr:
        return None
    return conv[0](ptr.contents, ctx)


def _variant(cases: dict[str, tuple[Lift, Lower] | None]) -> tuple[Lift, Lower]:
    k = _K["VARIANT"]

    def lift(v: Any, ctx: Any) -> Any:
        tag = ffi.to_str(v.of.variant.discriminant)
        return Case(tag, _unboxed(cases[tag], v.of.variant.val, ctx))

    def lower(x: Any, p: Any, ctx: Any) -> None:
        if not isinstance(x, Case) or x.tag not in cases:
            raise TypeError(f"expected a Case of {sorted(cases)}, got {x!r}")
        val = _boxed(cases[x.tag], x.payload, ctx)
        p.contents.kind = k
        p.contents.of.variant.discriminant = _name(x.tag)
        p.contents.of.variant.val = val

    return lift, lower


def _enum(names: list[str]) -> tuple[Lift, Lower]:
    k = _K["ENUM"]
    known = frozenset(names)

    def lift(v: Any, ctx: Any) -> Any:
        return ffi.to_str(v.of.enumeration)

    def lower(x: Any, p: Any, ctx: Any) -> None:
        if x not in known:
            raise TypeError(f"expected one of {sorted(known)}, got {x!r}")
        p.contents.kind = k
        p.contents.of.enumeration = _name(x)

    return lift, lower


def _option(payload: tuple[Lift, Lower]) -> tuple[Lift, Lower]:
    k = _K["OPTION"]

    def lift(v: Any, ctx: Any) -> Any:
        return _unboxed(payload, v.of.option, ctx)

    def lower(x: Any, p: Any, ctx: Any) -> None:
        val = None if x is None else _boxed(payload, x, ctx)
        p.contents.kind = k
        p.contents.of.option = val

    return lift, lower


def _result(ok: tuple[Lift, Lower] | None, err: tuple[Lift, Lower] | None) -> tuple[Lift, Lower]:
    k = _K["RESULT"]

    def lift(v: Any, ctx: Any) -> Any:
        if v.of.result.is_ok:
            return Ok(_unboxed(ok, v.of.result.val, ctx))
        return Err(_unboxed(err, v.of.result.val, ctx))

    def lower(x: Any, p: Any, ctx: Any) -> None:
        if isinstance(x, Ok):
            val, is_ok = _boxed(ok, x.value, ctx), True
        elif isinstance(x, Err):
            val, is_ok = _boxed(err, x.value, ctx), False
        else:
            raise TypeError(f"expected Ok or Err, got {x!r}")
        p.contents.kind = k
        p.contents.of.result.is_ok = is_ok
        p.contents.of.result.val = val

    return lift, lower


def _flags(names: list[str]) -> tuple[Lift, Lower]:
    k = _K["FLAGS"]

    def lift(v: Any, ctx: Any) -> Any:
        f = v.of.flags
        return frozenset(ffi.to_str(f.data[i]) for i in range(f.size))

    def lower(x: Any, p: Any, ctx: Any) -> None:
        raw = ffi.wasmtime_component_valflags_t()
        _valflags_new_uninit(ctypes.byref(raw), len(x))
        for i, name in enumerate(x):
            raw.data[i] = _name(name)
        p.contents.kind = k
        p.contents.of.flags = raw

    return lift, lower


class _Handle:
    """``own<T>``/``borrow<T>`` of a host resource type ``host_id``.

    Lifting calls ``to_host`` (which consumes a borrow) and frees the C box, nothing else: a
    borrow then maps to the table's object; an own is taken out of the table (the guest gave
    it to the host, and its dtor will not run). Lowering an own pushes the object into the
    table and hands the guest ``own(rep, host_id)``.
    """

    def __init__(self, host_id: int, owned: bool) -> None:
        self.host_id = host_id
        self.owned = owned

    def lift(self, v: Any, ctx: Any) -> Any:
        host = ctypes.POINTER(ffi.wasmtime_component_resource_host_t)()
        err = _to_host(ctx, v.of.resource, ctypes.byref(host))
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
        try:
            rep = _host_rep(host)
            if _host_type(host) != self.host_id:
                raise TypeError(f"resource of host type {self.host_id} expected")
        finally:
            _host_delete(host)
        table = current().table
        return table.pop(rep) if self.owned else table.get(rep)

    def lower(self, x: Any, p: Any, ctx: Any) -> None:
        if not self.owned:
            raise TypeError("host functions do not return borrows")
        rep = current().table.push(x)
        host = _host_new(True, rep, self.host_id)
        anyp = ctypes.POINTER(ffi.wasmtime_component_resource_any_t)()
        try:
            err = _host_to_any(ctx, host, ctypes.byref(anyp))
            if err:
                raise wasmtime.WasmtimeError._from_ptr(err)
        finally:
            _host_delete(host)
        p.contents.kind = _K["RESOURCE"]
        p.contents.of.resource = anyp


_PRIMS: dict[type, tuple[str, str, type]] = {
    wc.Bool: ("boolean", "BOOL", bool),
    wc.S8: ("s8", "S8", int),
    wc.U8: ("u8", "U8", int),
    wc.S16: ("s16", "S16", int),
    wc.U16: ("u16", "U16", int),
    wc.S32: ("s32", "S32", int),
    wc.U32: ("u32", "U32", int),
    wc.S64: ("s64", "S64", int),
    wc.U64: ("u64", "U64", int),
    wc.F32: ("f32", "F32", float),
    wc.F64: ("f64", "F64", float),
}


def compile_type(ty: wc.ValType, resources: ResourceIds) -> tuple[Lift, Lower]:
    """The (lift, lower) pair of closures for ``ty``, built once per linker."""
    prim = _PRIMS.get(type(ty))
    if prim is not None:
        return _prim(*prim)
    if isinstance(ty, wc.String):
        return _string()
    if isinstance(ty, wc.Char):
        return _char()
    if isinstance(ty, wc.ListType):
        elem = ty.element
        if isinstance(elem, wc.U8):
            return _bytes_list()
        return _list(compile_type(elem, resources))
    if isinstance(ty, wc.TupleType):
        return _tuple([compile_type(e, resources) for e in ty.elements])
    if isinstance(ty, wc.RecordType):
        return _record([(n, compile_type(t, resources)) for n, t in ty.fields])
    if isinstance(ty, wc.VariantType):
        return _variant({n: None if t is None else compile_type(t, resources) for n, t in ty.cases})
    if isinstance(ty, wc.EnumType):
        return _enum(ty.names)
    if isinstance(ty, wc.OptionType):
        if isinstance(ty.payload, wc.OptionType):
            raise TypeError("option<option<T>> has no unambiguous Python form here")
        return _option(compile_type(ty.payload, resources))
    if isinstance(ty, wc.ResultType):
        ok, err = ty.ok, ty.err
        return _result(
            None if ok is None else compile_type(ok, resources),
            None if err is None else compile_type(err, resources),
        )
    if isinstance(ty, wc.FlagsType):
        return _flags(ty.names)
    if isinstance(ty, (wc.OwnType, wc.BorrowType)):
        host_id = resources.find(ty.ty)
        if host_id is None:
            raise TypeError("a resource type that is not defined by the host")
        h = _Handle(host_id, isinstance(ty, wc.OwnType))
        return h.lift, h.lower
    raise TypeError(f"unsupported component value type {type(ty).__name__}")


# -- host functions -----------------------------------------------------------------------

HostFn = Callable[..., Any]

#: Callbacks and their closures must outlive the linker's C side: the C function pointer is
#: kept in this list for the life of the process (one per import per linker; a server builds
#: one linker per component).
_KEEP: list[object] = []
_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _data: None)


def _error_ptr(exc: BaseException) -> int:
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    err = wasmtime.WasmtimeError(message)
    value: int = ctypes.cast(err._consume(), ctypes.c_void_p).value or 0
    return value


def add_func(
    instance: wc.LinkerInstance, name: str, fty: wc.FuncType, fn: HostFn, resources: ResourceIds
) -> None:
    """Define ``name`` in ``instance`` as ``fn(*args)``, with conversions compiled from
    ``fty`` now, once. An exception from ``fn`` traps the guest; the exception is kept on
    the current :class:`CallContext` (the first one wins: later ones are consequences)."""
    params = [compile_type(t, resources)[0] for _, t in fty.params]
    result = fty.result
    lower = None if result is None else compile_type(result, resources)[1]
    nparams = len(params)

    def call(_data: Any, ctx: Any, _ty: Any, args: Any, nargs: int, results: Any, nres: int) -> int:
        try:
            # Lifts copy: wasmtime owns ``args`` (and frees them after the call), and frees
            # ``results`` after reading them.
            pyargs = [params[i](args[i], ctx) for i in range(nparams)]
            value = fn(*pyargs)
            if lower is not None:
                lower(value, results, ctx)
            return 0
        except BaseException as exc:
            try:
                c = current()
                if c.error is None:
                    c.error = exc
            except AttributeError:
                pass
            return _error_ptr(exc)

    callback = ffi.wasmtime_component_func_callback_t(call)
    _KEEP.append(callback)
    encoded = name.encode()
    err = ffi.wasmtime_component_linker_instance_add_func(
        instance.ptr(),
        ctypes.create_string_buffer(encoded),
        len(encoded),
        callback,
        None,
        _NO_FINALIZER,
    )
    if err:
        raise wasmtime.WasmtimeError._from_ptr(err)
