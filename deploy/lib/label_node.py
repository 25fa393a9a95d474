#!/usr/bin/env python3
"""Set or remove a label on this pod's node, with the pod's service account (stdlib only).

    label_node.py NODE KEY=VALUE     # set
    label_node.py NODE KEY-          # remove

Used by ``daemonset-entrypoint.sh`` after the installer succeeded, so that the RuntimeClass's
``scheduling.nodeSelector`` only places wasm pods on nodes that have the handler. Needs RBAC
``get`` and ``patch`` on ``nodes`` (``daemonset.yaml`` has the ClusterRole).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def parse_label(arg: str) -> tuple[str, str | None]:
    """``key=value`` → (key, value); ``key-`` → (key, None), i.e. remove."""
    if "=" in arg:
        key, value = arg.split("=", 1)
        return key, value
    if arg.endswith("-"):
        return arg[:-1], None
    raise ValueError(f"expected KEY=VALUE or KEY-, not {arg!r}")


def patch_body(key: str, value: str | None) -> bytes:
    # A JSON merge patch: null deletes the key.
    return json.dumps({"metadata": {"labels": {key: value}}}).encode()


def label_node(
    api: str,
    node: str,
    key: str,
    value: str | None,
    token: str | None,
    context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> None:
    req = urllib.request.Request(
        f"{api.rstrip('/')}/api/v1/nodes/{node}",
        data=patch_body(key, value),
        method="PATCH",
        headers={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
        resp.read()


def in_cluster() -> tuple[str, str, ssl.SSLContext]:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise RuntimeError("not in a pod (no KUBERNETES_SERVICE_HOST)")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    token = (SA_DIR / "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
    return f"https://{host}:{port}", token, context


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    node, label = args
    try:
        key, value = parse_label(label)
        api, token, context = in_cluster()
        label_node(api, node, key, value, token, context)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        print(f"label_node: {node}: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"label_node: {node}: {exc}", file=sys.stderr)
        return 1
    action = f"labelled {key}={value}" if value is not None else f"removed label {key}"
    print(f"label_node: {node}: {action}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
