"""The per-container state file: what ``delete`` needs when the daemon is gone.

containerd runs the shim's ``delete`` action after a daemon crash; it only has the bundle.
The daemon writes ``<bundle>/wasm-shim-state.json`` at Create so that ``delete`` can find
the init pid, the cgroup and the rootfs mount to clean up.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

STATE_FILE = "wasm-shim-state.json"


def write_state(bundle: Path, state: dict[str, Any]) -> None:
    """Write the state file atomically."""
    tmp = bundle / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, bundle / STATE_FILE)


def read_state(bundle: Path) -> dict[str, Any]:
    """Read the state file; an empty dict when there is none."""
    try:
        data = json.loads((bundle / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def remove_state(bundle: Path) -> None:
    """Remove the state file (idempotent)."""
    with contextlib.suppress(FileNotFoundError):
        (bundle / STATE_FILE).unlink()
