"""Wasm-layer images run with ctr, and later containers start from the precompile cache.

containerd 1.6.20 cannot unpack wasm-layer images ("mismatched image rootfs and manifest
layers"); these tests run on 1.7 and 2.x (the test matrix) and skip on 1.6 with that reason.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.wasm.build import build_all
from tests.support.containerd import PrivateContainerd

pytestmark = [pytest.mark.containerd, pytest.mark.root]

if os.geteuid() != 0:
    pytest.skip("a private containerd needs root", allow_module_level=True)

RUNTIME = "io.containerd.wasmtime.v1"
LABEL = re.compile(r"runwasi\.io/precompiled/wasmtime/[0-9a-f]{16}=(sha256:[0-9a-f]{64})")


@pytest.fixture(scope="module")
def ctd() -> Iterator[tuple[PrivateContainerd, str]]:
    image = build_all().images["hello-oci"]
    with PrivateContainerd(extra_path=[Path(sys.executable).parent]) as ctd:
        imported = ctd.ctr("images", "import", "--all-platforms", str(image.path))
        if "mismatched image rootfs and manifest layers" in imported.stderr:
            pytest.skip(f"containerd {ctd.version} cannot unpack wasm-layer images")
        assert imported.returncode == 0, imported.stderr
        yield ctd, image.name
    assert ctd.stop_leftovers == []


def run(ctd: PrivateContainerd, image: str, id: str) -> str:
    result = ctd.ctr("run", "--rm", "--runtime", RUNTIME, image, id, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def compiled_blob(ctd: PrivateContainerd) -> str | None:
    match = LABEL.search(ctd.ctr("content", "ls").stdout)
    return match.group(1) if match else None


def shim_log(ctd: PrivateContainerd, id: str) -> str:
    return "\n".join(line for line in ctd.log_text().splitlines() if f"instance={id}" in line)


def test_first_run_compiles_second_uses_the_cache_and_a_lost_blob_is_recompiled(
    ctd: tuple[PrivateContainerd, str],
) -> None:
    containerd, image = ctd
    assert run(containerd, image, "oci-1") == "hello world\n"
    assert "stored precompiled blob" in shim_log(containerd, "oci-1")
    blob = compiled_blob(containerd)
    assert blob is not None
    assert run(containerd, image, "oci-2") == "hello world\n"
    assert "using precompiled blob" in shim_log(containerd, "oci-2")

    assert containerd.ctr("content", "rm", blob).returncode == 0
    assert run(containerd, image, "oci-3") == "hello world\n"
    assert "stored precompiled blob" in shim_log(containerd, "oci-3")


def test_removing_the_image_lets_gc_drop_the_compiled_blob(
    ctd: tuple[PrivateContainerd, str],
) -> None:
    containerd, image = ctd
    run(containerd, image, "oci-gc")
    blob = compiled_blob(containerd)
    assert blob is not None
    assert containerd.ctr("images", "rm", "--sync", image).returncode == 0
    deadline = time.monotonic() + 15
    while blob in containerd.ctr("content", "ls").stdout and time.monotonic() < deadline:
        time.sleep(0.3)
    assert blob not in containerd.ctr("content", "ls").stdout
