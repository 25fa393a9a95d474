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


def _key_dir(root: Path) -> Path:
    (key_dir,) = [p for p in root.rglob("*") if p.is_dir()]
    return key_dir


def test_a_key_directory_others_can_write_is_not_used(tmp_path: Path) -> None:
    cache = NodeCache(str(tmp_path))
    cache.store(KEY, DIGEST, b"ARTIFACT")
    _key_dir(tmp_path).chmod(0o777)
    assert cache.load(KEY, DIGEST) is None
    cache.store(KEY, "sha256:" + "cd" * 32, b"OTHER")  # nor written to
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_a_symlinked_key_directory_is_not_followed(tmp_path: Path) -> None:
    cache = NodeCache(str(tmp_path / "cache"))
    cache.store(KEY, DIGEST, b"ARTIFACT")
    key_dir = _key_dir(tmp_path / "cache")
    key_dir.rename(tmp_path / "moved")
    key_dir.symlink_to(tmp_path / "moved")
    assert cache.load(KEY, DIGEST) is None


def test_an_empty_entry_is_a_miss(tmp_path: Path) -> None:
    cache = NodeCache(str(tmp_path))
    cache.store(KEY, DIGEST, b"ARTIFACT")
    (entry,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    entry.write_bytes(b"")  # what a crash between create and write leaves
    assert cache.load(KEY, DIGEST) is None


def test_a_load_from_a_cache_it_cannot_touch_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = NodeCache(str(tmp_path))
    cache.store(KEY, DIGEST, b"ARTIFACT")

    def read_only(*_: object, **__: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "utime", read_only)
    assert cache.load(KEY, DIGEST) == b"ARTIFACT"


def test_eviction_leaves_files_being_written_alone(tmp_path: Path) -> None:
    cache = NodeCache(str(tmp_path), max_bytes=5)
    cache.store(KEY, DIGEST, b"x")
    partial = _key_dir(tmp_path) / "sha256_other.1234.tmp"
    partial.write_bytes(b"y" * 100)  # another process's artifact, half written
    cache.store(KEY, "sha256:" + "cd" * 32, b"z")
    assert partial.exists()


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
