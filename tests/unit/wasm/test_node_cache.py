"""NodeCache: compiled module files kept on the node, safely."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from containerd_shim_wasm.node_cache import NodeCache

KEY = "wasmtime-py-50.0.0-0123abcd"
DIGEST = "sha256:" + "ab" * 32


def test_store_then_load(tmp_path: Path) -> None:
    cache = NodeCache(str(tmp_path / "wasmtime"))
    assert cache.load(KEY, DIGEST) is None
    cache.store(KEY, DIGEST, b"ARTIFACT")
    assert cache.load(KEY, DIGEST) == b"ARTIFACT"
    (entry,) = [p for p in (tmp_path / "wasmtime").rglob("*") if p.is_file()]
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
    assert ":" not in str(entry.relative_to(tmp_path))


def test_another_cache_key_or_digest_misses(tmp_path: Path) -> None:
    cache = NodeCache(str(tmp_path))
    cache.store(KEY, DIGEST, b"ARTIFACT")
    assert cache.load(KEY + "-other-engine", DIGEST) is None
    assert cache.load(KEY, "sha256:" + "cd" * 32) is None


def test_an_entry_others_can_write_is_not_loaded(tmp_path: Path) -> None:
    cache = NodeCache(str(tmp_path))
    cache.store(KEY, DIGEST, b"ARTIFACT")
    (entry,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    entry.chmod(0o622)
    assert cache.load(KEY, DIGEST) is None


def test_a_symlinked_entry_is_not_followed(tmp_path: Path) -> None:
    cache = NodeCache(str(tmp_path / "cache"))
    cache.store(KEY, DIGEST, b"ARTIFACT")
    (entry,) = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    (tmp_path / "elsewhere").write_bytes(b"NOT OURS")
    entry.unlink()
    entry.symlink_to(tmp_path / "elsewhere")
    assert cache.load(KEY, DIGEST) is None


def test_oldest_entries_go_past_the_size_limit(tmp_path: Path) -> None:
    cache = NodeCache(str(tmp_path), max_bytes=20)
    digests = [f"sha256:{n:064x}" for n in range(3)]
    for n, digest in enumerate(digests):
        cache.store(KEY, digest, b"x" * 10)
        for entry in tmp_path.rglob("*"):  # make the order of the stores unambiguous
            if entry.is_file() and entry.name.endswith(f"{n:064x}"):
                os.utime(entry, (1000 + n, 1000 + n))
    assert [cache.load(KEY, d) is not None for d in digests] == [False, True, True]


def test_a_store_that_fails_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    NodeCache(str(blocker)).store(KEY, DIGEST, b"ARTIFACT")
    assert "cannot store the compiled module" in caplog.text


@pytest.mark.parametrize(("value", "expected"), [("off", None), ("/srv/cache", "/srv/cache/w")])
def test_from_env(monkeypatch: pytest.MonkeyPatch, value: str, expected: str | None) -> None:
    monkeypatch.setenv("SHIM_COMPILE_CACHE", value)
    cache = NodeCache.from_env("w")
    assert (cache.directory if cache else None) == expected


def test_default_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIM_COMPILE_CACHE", raising=False)
    cache = NodeCache.from_env("wasmtime")
    assert cache is not None
    assert cache.directory == "/var/lib/containerd-shim-wasm/compiled/wasmtime"
