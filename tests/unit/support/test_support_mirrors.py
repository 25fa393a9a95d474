"""scripts/fetch_containerd.py: reading the machine's apt sources and apt's answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.containerd import load_fetch_module

fetch = load_fetch_module()

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

NODESOURCE = """\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/nodesource.gpg
"""

ONE_LINE = "\n".join(
    [
        "# a comment",
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main",
        "deb-src http://mirror.example/debian bookworm main",
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/debian.gpg] "
        "http://mirror.example/debian/ bookworm main contrib",
        "deb http://mirror.example/debian-security bookworm-security main   # trailing comment",
    ]
)


def test_parse_deb822() -> None:
    sources = fetch.parse_deb822_sources(DEB822)
    assert [(s.uri, s.suites) for s in sources] == [
        ("http://deb.debian.org/debian", ("bookworm", "bookworm-updates")),
        ("http://deb.debian.org/debian-security", ("bookworm-security",)),
    ]
    assert sources[0].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert sources[0].components == ("main",)


def test_parse_deb822_skips_disabled_and_deb_src() -> None:
    text = "Types: deb-src\nURIs: http://a/debian\nSuites: sid\nComponents: main\n\n"
    text += "Types: deb\nURIs: http://b/debian\nSuites: sid\nComponents: main\nEnabled: no\n"
    assert fetch.parse_deb822_sources(text) == []


def test_parse_deb822_inline_key_falls_back_to_keyring() -> None:
    text = (
        "Types: deb\nURIs: http://a/debian\nSuites: trixie\nComponents: main\n"
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n xyz\n"
    )
    (src,) = fetch.parse_deb822_sources(text)
    assert src.signed_by is None


def test_parse_one_line() -> None:
    sources = fetch.parse_one_line_sources(ONE_LINE)
    assert [(s.uri, s.suites[0]) for s in sources] == [
        ("https://packages.cloud.google.com/apt", "cloud-sdk-bookworm"),
        ("http://mirror.example/debian", "bookworm"),
        ("http://mirror.example/debian-security", "bookworm-security"),
    ]
    assert sources[1].signed_by == "/etc/apt/keyrings/debian.gpg"
    assert sources[1].components == ("main", "contrib")


def test_find_mirrors_ignores_third_party_repositories() -> None:
    sources = fetch.parse_deb822_sources(NODESOURCE) + fetch.parse_one_line_sources(ONE_LINE)
    mirrors = fetch.find_debian_mirrors(sources)
    assert mirrors.archive == "http://mirror.example/debian"
    assert mirrors.security == "http://mirror.example/debian-security"
    assert mirrors.keyring == "/etc/apt/keyrings/debian.gpg"


def test_find_mirrors_deb822_machine_layout() -> None:
    mirrors = fetch.find_debian_mirrors(
        fetch.parse_deb822_sources(NODESOURCE) + fetch.parse_deb822_sources(DEB822)
    )
    assert mirrors == fetch.DebianMirrors(
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
        "/usr/share/keyrings/debian-archive-keyring.gpg",
    )


def test_find_mirrors_needs_a_debian_source() -> None:
    with pytest.raises(fetch.FetchError):
        fetch.find_debian_mirrors(fetch.parse_deb822_sources(NODESOURCE))


def test_read_system_sources_reads_only_list_and_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "x.list.disabled-by-farm").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "y.list").write_text("deb http://y/debian sid main\n")
    uris = [s.uri for s in fetch.read_system_sources(tmp_path)]
    assert uris == [
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
        "http://y/debian",
    ]


def test_channel_sources_list() -> None:
    mirrors = fetch.DebianMirrors("http://m/debian", "http://m/debian-security", "/k.gpg")
    assert fetch.channel_sources_list("trixie", mirrors).splitlines() == [
        "deb [signed-by=/k.gpg] http://m/debian trixie main",
        "deb [signed-by=/k.gpg] http://m/debian trixie-updates main",
        "deb [signed-by=/k.gpg] http://m/debian-security trixie-security main",
    ]
    no_security = fetch.DebianMirrors("http://m/debian", None, "/k.gpg")
    assert fetch.channel_sources_list("trixie", no_security).count("\n") == 2
    assert fetch.channel_sources_list("sid", mirrors) == (
        "deb [signed-by=/k.gpg] http://m/debian sid main\n"
    )


def test_parse_policy_candidate() -> None:
    out = """containerd:
  Installed: (none)
  Candidate: 2.1.9+ds1-5
  Version table:
     2.1.9+ds1-5 500
"""
    assert fetch.parse_policy_candidate(out) == "2.1.9+ds1-5"
    assert fetch.parse_policy_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n") is None
    assert fetch.parse_policy_candidate("") is None


@pytest.mark.parametrize(
    ("version", "series"),
    [("1.7.24~ds1-6+deb13u1", "1.7"), ("2.1.9+ds1-5", "2.1"), ("1:2.2.0-1", "2.2")],
)
def test_series_of(version: str, series: str) -> None:
    assert fetch.series_of(version) == series


def test_cached_version_needs_no_network(tmp_path: Path) -> None:
    # A complete cache entry is returned as is: no apt, no mirror lookup.
    vdir = tmp_path / "9.9"
    (vdir / "bin").mkdir(parents=True)
    for b in ("containerd", "ctr"):
        (vdir / "bin" / b).touch()
    (vdir / "manifest.json").write_text('{"binaries": ["containerd", "ctr"]}')
    assert fetch.ensure_containerd("9.9", tmp_path) == vdir
    assert fetch.ensure_containerd("1.6", tmp_path) == fetch.SYSTEM_BIN


def test_cache_root_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONTAINERD_CACHE", str(tmp_path))
    assert fetch.cache_root() == tmp_path
    monkeypatch.delenv("CONTAINERD_CACHE")
    assert fetch.cache_root() == fetch.REPO / ".cache" / "containerd"


def test_cached_suite_alias_needs_no_network(tmp_path: Path) -> None:
    # "sid" resolves through <cache>/sid.json to the series it had when fetched.
    vdir = tmp_path / "2.1"
    (vdir / "bin").mkdir(parents=True)
    for b in ("containerd", "ctr"):
        (vdir / "bin" / b).touch()
    (vdir / "manifest.json").write_text('{"binaries": ["containerd", "ctr"]}')
    (tmp_path / "sid.json").write_text('{"series": "2.1", "version": "2.1.9+ds1-5"}')
    assert fetch.ensure_containerd("sid", tmp_path) == vdir
