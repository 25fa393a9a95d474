"""How ``start`` talks to each containerd version (the only module that knows).

- 1.6–2.2 send the runtime options ``Any`` (or nothing) on stdin and read a plain
  ``unix://`` address from stdout. 1.7 would also take JSON with version 2, and 2.0–2.2
  version 3; we print the plain address, which every version accepts.
- 2.3+ send a binary ``BootstrapParams`` and prefer a binary ``BootstrapResult`` back.

A legacy ``Any{type_url=1, value=2}`` can parse as ``BootstrapParams`` (fields 1 and 2 are
strings in both), so, like containerd's own ``parseBootstrapParams``, stdin is taken as
BootstrapParams only when its ``instance_id`` and ``namespace`` equal ``-id`` and
``-namespace``.

Version policy: we report task API version 2. With version 3, containerd 2.x would group a
pod's containers itself and skip ``start``/``delete`` for app containers; our grouping by the
``io.kubernetes.cri.sandbox-id`` annotation already yields one daemon per pod on every
version, so version 2 keeps one behaviour from 1.6 to 2.3.
"""

from __future__ import annotations

from .flags import Flags
from .start import DEFAULT_SOCKET_DIR
from .wire import WireError, decode_bootstrap_params, encode_bootstrap_result

TASK_API_VERSION = 2


class StartRequest:
    """What ``start`` learned from stdin."""

    __slots__ = ("bootstrap", "options", "socket_dir")

    def __init__(
        self,
        bootstrap: bool,
        socket_dir: str = DEFAULT_SOCKET_DIR,
        options: tuple[str, bytes] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.socket_dir = socket_dir
        #: The runtime options ``(type_url, value)``, when containerd sent any.
        self.options = options

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StartRequest) and (
            (self.bootstrap, self.socket_dir, self.options)
            == (other.bootstrap, other.socket_dir, other.options)
        )

    def __repr__(self) -> str:
        return f"StartRequest({self.bootstrap!r}, {self.socket_dir!r}, {self.options!r})"


def parse_stdin(stdin: bytes, flags: Flags) -> StartRequest:
    """Tell a 2.3+ ``BootstrapParams`` from a legacy options ``Any`` (or nothing)."""
    if not stdin:
        return StartRequest(bootstrap=False)
    try:
        params = decode_bootstrap_params(stdin)
    except WireError:
        params = None
    if params and params.instance_id == flags.id and params.namespace == flags.namespace:
        options = params.extensions[0] if params.extensions else None
        return StartRequest(True, params.socket_dir or DEFAULT_SOCKET_DIR, options)
    return StartRequest(False, DEFAULT_SOCKET_DIR, _legacy_any(stdin))


def _legacy_any(stdin: bytes) -> tuple[str, bytes] | None:
    from .wire import iter_fields

    try:
        fields = iter_fields(stdin)
    except WireError:
        return None
    type_url = next((v for n, t, v in fields if n == 1 and isinstance(v, bytes)), b"")
    value = next((v for n, t, v in fields if n == 2 and isinstance(v, bytes)), b"")
    return (type_url.decode("utf-8", "replace"), value) if type_url else None


def render(request: StartRequest, address: str) -> bytes:
    """``start``'s stdout for this caller."""
    if request.bootstrap:
        return encode_bootstrap_result(address, TASK_API_VERSION)
    return address.encode()
