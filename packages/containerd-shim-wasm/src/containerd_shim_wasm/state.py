"""The per-container state file: what ``delete`` needs when the daemon is gone.

containerd runs the shim's ``delete`` action after a daemon crash; it only has the bundle.
The daemon writes ``<bundle>/wasm-shim-state.json`` at Create so that ``delete`` can find
the init pid, the cgroup and the rootfs mount to clean up. Light on purpose (``delete`` runs
for every container): paths are strings or path-likes, and ``json`` loads only when needed.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

    from _typeshed import StrPath

STATE_FILE = "wasm-shim-state.json"


def write_state(bundle: StrPath, state: dict[str, Any]) -> None:
    """Write the state file atomically."""
    import json

    tmp = os.path.join(bundle, f".{STATE_FILE}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(state))
    os.replace(tmp, os.path.join(bundle, STATE_FILE))


def read_state(bundle: StrPath) -> dict[str, Any]:
    """Read the state file; an empty dict when there is none."""
    try:
        with open(os.path.join(bundle, STATE_FILE), "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    import json

    data = json.loads(text)
    return data if isinstance(data, dict) else {}


def remove_state(bundle: StrPath) -> None:
    """Remove the state file (idempotent)."""
    try:  # noqa: SIM105 - contextlib is an import start/delete skip
        os.unlink(os.path.join(bundle, STATE_FILE))
    except FileNotFoundError:
        pass
