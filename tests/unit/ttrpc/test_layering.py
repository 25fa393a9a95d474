"""The package's layering rules, checked on the source: sans-I/O modules stay sans-I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import containerd_shimkit.ttrpc as ttrpc

PACKAGE = Path(ttrpc.__file__).parent


def imported_modules(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


@pytest.mark.parametrize("module", ["errors", "framing", "deadline", "service"])
def test_sans_io_modules_do_not_import_asyncio_or_socket(module: str) -> None:
    imports = imported_modules(module)
    assert not {"asyncio", "socket", "selectors"} & imports


def test_server_and_client_do_not_import_each_other() -> None:
    assert ".client" not in imported_modules("server")
    assert ".server" not in imported_modules("client")


def test_public_api_is_sorted_and_importable() -> None:
    assert ttrpc.__all__ == sorted(ttrpc.__all__, key=lambda n: (not n.isupper(), n))
    for name in ttrpc.__all__:
        assert getattr(ttrpc, name) is not None
