"""start and delete run for every container: they must not import heavy modules.

Heavy means the runtime libraries (asyncio, protobuf, grpc, wasmtime) and also the standard
library modules that cost 3–15 ms each to import (typing, dataclasses with inspect, pathlib,
re with enum, json, socket, hashlib with OpenSSL): containerd runs two of these processes
per container, and their CPU time bounds how many containers a node starts per second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAVY = (
    "asyncio",
    "google.protobuf",
    "wasmtime",
    "grpc",
    "typing",
    "dataclasses",
    "inspect",
    "pathlib",
    "re",
    "enum",
    "json",
    "socket",
    "hashlib",
    "array",
)

REPORT = f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"


def heavy_after(code: str, cwd: Path | None = None) -> str:
    # Bytes: the delete action writes a binary DeleteResponse before the report line.
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code + REPORT],
        capture_output=True,
        check=True,
        cwd=cwd,
    )
    return result.stdout.rsplit(b"\n", 2)[-2].decode()


def test_start_path_imports_nothing_heavy() -> None:
    code = (
        "import containerd_shim_wasmtime.__main__\n"
        "import containerd_shimkit.cli.start, containerd_shimkit.cli.bootstrap\n"
        "import containerd_shimkit.cli.main\n"
    )
    assert heavy_after(code) == ""


def test_delete_action_imports_nothing_heavy(tmp_path: Path) -> None:
    """The whole ``delete`` action, as containerd runs it in a bundle with no state left."""
    code = (
        "from containerd_shim_wasmtime.__main__ import main\n"
        "import containerd_shimkit.cli.main as cli_main\n"
        "cli_main.exit_now = sys.exit  # come back here rather than os._exit\n"
        "sys.argv = ['shim', '-namespace', 'ns', '-id', 'c1', '-address', '/x', 'delete']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "sys.stdout.write('\\n')\n"
    )
    assert heavy_after(code, cwd=tmp_path) == ""


def test_handing_the_listener_to_the_template_imports_nothing_heavy(tmp_path: Path) -> None:
    """``start``'s template path, to the template's answer (a stub here: this process)."""
    import json
    import socket
    import threading

    from containerd_shimkit.cli.template import template_name

    program, address = "/nonexistent/shim", str(tmp_path / "containerd.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(template_name(program, address))
    server.listen(1)
    received: list[int] = []

    def stub_template() -> None:
        conn, _ = server.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1 << 16, 4)
            received.extend(fds)
            conn.send(json.dumps({"pid": 4242}).encode())

    thread = threading.Thread(target=stub_template, daemon=True)
    thread.start()
    code = (
        "import _socket\n"
        "from containerd_shimkit.cli.flags import Flags\n"
        "from containerd_shimkit.cli.template import fork_from_template\n"
        "listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
        f"flags = Flags(namespace='ns', id='c1', address={address!r}, action='start')\n"
        f"assert fork_from_template(flags, listener, {program!r}) == 4242\n"
    )
    try:
        assert heavy_after(code) == ""
    finally:
        thread.join(5)
        server.close()
        for fd in received:
            os.close(fd)
    assert len(received) == 1  # the listener arrived as one descriptor
