#!/usr/bin/env python3
"""Fetch containerd of newer Debian suites (and the CRI ``api.proto``) into a private cache.

Debian bookworm ships containerd 1.6.20; the test matrix also needs 1.7.x (Debian trixie) and
2.x (Debian sid). Nothing here installs anything system-wide: apt runs with a temporary sources
list that points at the machine's own configured Debian mirror, and with private state and
cache directories. The ``.deb`` files are only unpacked (``dpkg-deb -x``) into a cache:

    <cache>/<series>/            e.g. .cache/containerd/1.7/
        bin/                     containerd, ctr, containerd-shim-runc-v2, … (and runc when usable)
        containerd/  runc/       the unpacked packages
        manifest.json            exact package versions, suite, and the checks that were run
    <cache>/cri-api/api.proto    CRI runtime v1 api.proto from golang-k8s-cri-api-dev
    <cache>/apt/<suite>/         private apt state (package lists), reused between runs

The cache root is ``$CONTAINERD_CACHE``, by default ``<repo>/.cache/containerd``. A cached
version is returned without touching the network; ``--refresh`` fetches again.

Usage:
    python scripts/fetch_containerd.py 1.7          # prints the version dir
    python scripts/fetch_containerd.py 2.1 1.7
    python scripts/fetch_containerd.py sid          # whatever sid has (dir named by its series)
    python scripts/fetch_containerd.py --cri-api    # prints the path of api.proto
    python scripts/fetch_containerd.py --list       # candidate versions per suite (network)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / ".cache" / "containerd"
# The series Debian bookworm itself ships; it is used from /usr/bin, never fetched.
SYSTEM_SERIES = "1.6"
SYSTEM_BIN = Path("/usr/bin")
LISTS_MAX_AGE = 6 * 3600.0  # seconds
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
CRI_API_PACKAGE = "golang-k8s-cri-api-dev"
CRI_API_PATH = "usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto"

# Debian release names, used to tell a Debian mirror apart from third-party repositories
# (nodesource, Google Cloud SDK…) that may also be listed in the machine's apt sources.
DEBIAN_CODENAMES = frozenset(
    {
        "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
        "oldoldstable", "oldstable", "stable", "testing", "unstable", "experimental",
    }
)  # fmt: skip

# Suites searched for newer containerd, oldest first: a requested series is taken from the
# first suite that carries it. "archive" and "security" name which configured mirror serves it.
CHANNELS: dict[str, list[tuple[str, str]]] = {
    "trixie": [
        ("archive", "trixie"),
        ("archive", "trixie-updates"),
        ("security", "trixie-security"),
    ],
    "sid": [("archive", "sid")],
}


class FetchError(RuntimeError):
    """A fetch step failed; the message says which and why."""


# --------------------------------------------------------------------------- apt sources


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` entry of the machine's apt configuration."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None


def parse_one_line_sources(text: str) -> list[AptSource]:
    """Parse the classic ``deb [opts] uri suite comp…`` format (``sources.list``, ``*.list``)."""
    out: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        opts: dict[str, str] = {}
        m = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m or m.group(1) != "deb":
            continue
        for opt in (m.group(2) or "").split():
            key, _, value = opt.partition("=")
            opts[key] = value
        out.append(
            AptSource(
                uri=m.group(3).rstrip("/"),
                suites=(m.group(4),),
                components=tuple(m.group(5).split()),
                signed_by=opts.get("signed-by"),
            )
        )
    return out


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse the deb822 format (``*.sources``): stanzas of ``Key: value`` separated by blanks."""
    out: list[AptSource] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0].isspace() and key:  # continuation line (e.g. an inline Signed-By key)
                fields[key] += "\n" + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if not fields or "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by")
        if signed_by and "\n" in signed_by:
            signed_by = None  # an inline armored key; we fall back to the system keyring
        for uri in fields.get("uris", "").split():
            out.append(
                AptSource(
                    uri=uri.rstrip("/"),
                    suites=tuple(fields.get("suites", "").split()),
                    components=tuple(fields.get("components", "").split()),
                    signed_by=signed_by,
                )
            )
    return out


def read_system_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """All ``deb`` entries apt itself would read (files with other suffixes are ignored by apt)."""
    out: list[AptSource] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        out += parse_one_line_sources(main.read_text())
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for p in sorted(parts.iterdir()):
            if p.suffix == ".list":
                out += parse_one_line_sources(p.read_text())
            elif p.suffix == ".sources":
                out += parse_deb822_sources(p.read_text())
    return out


@dataclass(frozen=True)
class DebianMirrors:
    """The Debian archive and security mirrors configured on this machine."""

    archive: str
    security: str | None
    keyring: str


def find_debian_mirrors(sources: list[AptSource]) -> DebianMirrors:
    """Pick the configured Debian archive (and security) mirror out of the apt sources."""
    archive: AptSource | None = None
    security: AptSource | None = None
    for src in sources:
        codenames = {s.split("-", 1)[0].split("/", 1)[0] for s in src.suites}
        if not codenames & DEBIAN_CODENAMES:
            continue  # a third-party repository (its suite is not a Debian release)
        if any(s.endswith(("-security", "/updates")) for s in src.suites):
            security = security or src
        else:
            archive = archive or src
    if archive is None:
        raise FetchError(
            "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d/"
        )
    keyring = archive.signed_by or DEFAULT_KEYRING
    return DebianMirrors(archive.uri, security.uri if security else None, keyring)


def channel_sources_list(channel: str, mirrors: DebianMirrors) -> str:
    """The one-line sources.list for one channel (a suite plus its updates/security suites)."""
    lines = []
    for which, suite in CHANNELS[channel]:
        uri = mirrors.archive if which == "archive" else mirrors.security
        if uri is None:
            continue
        lines.append(f"deb [signed-by={mirrors.keyring}] {uri} {suite} main")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- private apt


class PrivateApt:
    """apt-get/apt-cache with their own sources list, state and cache under ``root``.

    The system's package lists, status file and archives are never read or written, so this
    neither changes nor depends on what is installed. ``/etc/apt/apt.conf.d`` is still read on
    purpose: it carries machine settings such as proxies and clock checks.
    """

    def __init__(self, root: Path, sources_text: str) -> None:
        self.root = root
        for d in ("etc/sources.list.d", "etc/preferences.d", "state/lists/partial",
                  "cache/archives/partial"):  # fmt: skip
            (root / d).mkdir(parents=True, exist_ok=True)
        self.sources_text = sources_text
        (root / "etc" / "sources.list").write_text(sources_text)
        status = root / "state" / "status"
        if not status.exists():
            status.touch()  # an empty dpkg status: nothing counts as installed

    def options(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::Etc::sourcelist={r}/etc/sources.list",
            "-o", f"Dir::Etc::sourceparts={r}/etc/sources.list.d",
            "-o", f"Dir::Etc::preferences={r}/etc/preferences",
            "-o", f"Dir::Etc::preferencesparts={r}/etc/preferences.d",
            "-o", f"Dir::State={r}/state",
            "-o", f"Dir::State::status={r}/state/status",
            "-o", f"Dir::Cache={r}/cache",
            # The private dirs are root-owned; without this apt drops to _apt and warns.
            "-o", "APT::Sandbox::User=root",
            # A private state dir needs no lock against the system's apt.
            "-o", "Debug::NoLocking=1",
            "-o", "Acquire::Languages=none",
            "-o", "APT::Default-Release=",
        ]  # fmt: skip

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        cmd = [tool, *self.options(), *args]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise FetchError(f"{' '.join([tool, *args])} failed:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def update(self) -> None:
        self._run("apt-get", "-q", "update")
        (self.root / "state" / "updated").write_text(self.sources_text)

    def lists_fresh(self, max_age: float) -> bool:
        """Whether an update for the current sources ran less than ``max_age`` seconds ago."""
        stamp = self.root / "state" / "updated"
        try:
            return (
                stamp.read_text() == self.sources_text
                and time.time() - stamp.stat().st_mtime < max_age
            )
        except OSError:
            return False

    def candidate(self, package: str) -> str | None:
        """The version apt would pick (the ``apt-cache policy`` Candidate), or None."""
        out = self._run("apt-cache", "policy", package)
        return parse_policy_candidate(out)

    def download(self, specs: list[str], dest: Path) -> list[Path]:
        """``apt-get download pkg=version…`` into ``dest``; returns the .deb files."""
        dest.mkdir(parents=True, exist_ok=True)
        self._run("apt-get", "-q", "download", *specs, cwd=dest)
        return sorted(dest.glob("*.deb"))


def parse_policy_candidate(policy_output: str) -> str | None:
    """Extract the candidate version from ``apt-cache policy`` output."""
    m = re.search(r"^\s*Candidate:\s*(\S+)", policy_output, re.M)
    if not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def series_of(debian_version: str) -> str:
    """``1.7.24~ds1-6+deb13u1`` → ``1.7``; ``2.1.9+ds1-5`` → ``2.1`` (epoch dropped)."""
    upstream = debian_version.split(":", 1)[-1]
    m = re.match(r"^(\d+)\.(\d+)", upstream)
    if not m:
        raise FetchError(f"cannot read a version series from {debian_version!r}")
    return f"{m.group(1)}.{m.group(2)}"


# --------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """``$CONTAINERD_CACHE`` or ``<repo>/.cache/containerd``."""
    env = os.environ.get("CONTAINERD_CACHE")
    return Path(env).resolve() if env else DEFAULT_CACHE


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialize fetches (parallel test workers may ask for the same version at once)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_version(argv: list[str]) -> tuple[bool, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return False, str(exc)
    text = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0, text


def _extract(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)


def _manifest_ok(vdir: Path) -> bool:
    mf = vdir / "manifest.json"
    if not mf.is_file():
        return False
    try:
        data = json.loads(mf.read_text())
    except ValueError:
        return False
    return all((vdir / "bin" / b).exists() for b in data.get("binaries", ["containerd", "ctr"]))


@dataclass
class Resolver:
    """Finds the Debian mirror once and keeps one updated private apt per channel."""

    root: Path
    #: Update the package lists even when they are fresh (``--refresh``).
    force_update: bool = False
    _mirrors: DebianMirrors | None = None
    _apts: dict[str, PrivateApt] = field(default_factory=dict)

    def mirrors(self) -> DebianMirrors:
        if self._mirrors is None:
            self._mirrors = find_debian_mirrors(read_system_sources())
        return self._mirrors

    def apt(self, channel: str) -> PrivateApt:
        if channel not in self._apts:
            apt = PrivateApt(
                self.root / "apt" / channel, channel_sources_list(channel, self.mirrors())
            )
            # Package lists younger than LISTS_MAX_AGE are reused: a second fetch (another
            # series, or the CRI proto) then costs no index download.
            if self.force_update or not apt.lists_fresh(LISTS_MAX_AGE):
                apt.update()
            self._apts[channel] = apt
        return self._apts[channel]


def _cached(root: Path, series: str) -> Path | None:
    """The cached dir of ``series`` (or of the series a suite name last resolved to)."""
    if series in CHANNELS:
        # A suite name is remembered as the series it had when fetched (<cache>/sid.json),
        # so that asking for "sid" again needs no network either.
        try:
            series = json.loads((root / f"{series}.json").read_text())["series"]
        except (OSError, ValueError, KeyError):
            return None
    return root / series if _manifest_ok(root / series) else None


def ensure_containerd(series: str, root: Path | None = None, *, refresh: bool = False) -> Path:
    """Return the cache dir of containerd ``series`` (``1.7``, ``2.1``, or a suite name).

    Fetches and unpacks containerd and runc from the first suite whose containerd belongs to
    the series, unless the cache already has it (then no network is used). A suite name
    (``trixie``, ``sid``) takes whatever that suite has; the dir is named by its series.
    """
    root = root or cache_root()
    if series == SYSTEM_SERIES:
        return SYSTEM_BIN
    if not refresh and (hit := _cached(root, series)):
        return hit
    with _locked(root):
        if not refresh and (hit := _cached(root, series)):
            return hit  # another process fetched it while we waited
        resolver = Resolver(root, force_update=refresh)
        channels = [series] if series in CHANNELS else list(CHANNELS)
        seen: dict[str, str | None] = {}
        for channel in channels:
            version = resolver.apt(channel).candidate("containerd")
            seen[channel] = version
            if version is None:
                continue
            got = series_of(version)
            if series not in CHANNELS and got != series:
                continue
            vdir = root / got
            cached = _manifest_ok(vdir) and json.loads((vdir / "manifest.json").read_text())
            if not (cached and cached["containerd"]["version"] == version):
                _fetch_into(resolver, channel, version, vdir)
            if series in CHANNELS:
                alias = {"series": got, "version": version}
                (root / f"{series}.json").write_text(json.dumps(alias) + "\n")
            return vdir
        raise FetchError(
            f"no Debian suite has containerd {series}; candidates: "
            + ", ".join(f"{c}={v}" for c, v in seen.items())
        )


def _fetch_into(resolver: Resolver, channel: str, version: str, vdir: Path) -> None:
    apt = resolver.apt(channel)
    runc_version = apt.candidate("runc")
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=vdir.parent))
    try:
        specs = [f"containerd={version}"] + ([f"runc={runc_version}"] if runc_version else [])
        debs = apt.download(specs, tmp / "debs")
        for deb in debs:
            name = deb.name.split("_", 1)[0]
            _extract(deb, tmp / name)
        bindir = tmp / "bin"
        bindir.mkdir()
        binaries = []
        for exe in sorted((tmp / "containerd" / "usr" / "bin").iterdir()):
            (bindir / exe.name).symlink_to(Path("..") / "containerd" / "usr" / "bin" / exe.name)
            binaries.append(exe.name)
        ok, ctd_out = _run_version([str(bindir / "containerd"), "--version"])
        if not ok:
            raise FetchError(f"containerd {version} does not run on this machine: {ctd_out}")
        ok_ctr, ctr_out = _run_version([str(bindir / "ctr"), "--version"])
        if not ok_ctr:
            raise FetchError(f"ctr {version} does not run on this machine: {ctr_out}")
        runc_info: dict[str, object] = {"version": runc_version, "usable": False}
        runc_bin = tmp / "runc" / "usr" / "sbin" / "runc"
        if runc_bin.exists():
            ok_runc, runc_out = _run_version([str(runc_bin), "--version"])
            runc_info["check"] = runc_out
            if ok_runc:
                # Newer runc goes first on containerd's PATH, so the runc shim uses it.
                (bindir / "runc").symlink_to(Path("..") / "runc" / "usr" / "sbin" / "runc")
                runc_info["usable"] = True
            else:
                # Typically "GLIBC_2.38 not found": trixie/sid runc is built against a newer
                # glibc than bookworm's 2.36. The shim then finds bookworm's /usr/sbin/runc.
                runc_info["fallback"] = shutil.which("runc")
                shutil.rmtree(tmp / "runc")
        manifest = {
            "series": series_of(version),
            "suite": channel,
            "containerd": {"version": version, "check": ctd_out, "ctr": ctr_out},
            "runc": runc_info,
            "binaries": binaries,
            "sources": apt.root.joinpath("etc", "sources.list").read_text().splitlines(),
        }
        # The checks ran in the temporary dir; name the final one in what we keep.
        text = json.dumps(manifest, indent=2).replace(str(tmp), str(vdir))
        (tmp / "manifest.json").write_text(text + "\n")
        tmp.chmod(0o755)  # mkdtemp made it 0700
        shutil.rmtree(tmp / "debs")
        if vdir.exists():
            shutil.rmtree(vdir)
        tmp.rename(vdir)  # atomic publish: a half-fetched dir is never seen as cached
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def fetch_cri_api(root: Path | None = None, *, refresh: bool = False) -> Path:
    """Return the path of the CRI ``api.proto`` (runtime v1) from ``golang-k8s-cri-api-dev``.

    The package is only in newer suites (trixie, if it has it, is preferred over sid).
    """
    root = root or cache_root()
    dest_dir = root / "cri-api"
    dest = dest_dir / "api.proto"
    if dest.is_file() and not refresh:
        return dest
    with _locked(root):
        if dest.is_file() and not refresh:
            return dest
        resolver = Resolver(root, force_update=refresh)
        for channel in CHANNELS:
            apt = resolver.apt(channel)
            version = apt.candidate(CRI_API_PACKAGE)
            if version is None:
                continue
            tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
            try:
                (deb,) = apt.download([f"{CRI_API_PACKAGE}={version}"], tmp / "debs")
                _extract(deb, tmp / "x")
                src = tmp / "x" / CRI_API_PATH
                if not src.is_file():
                    raise FetchError(f"{deb.name} has no {CRI_API_PATH}")
                dest_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest_dir / "api.proto.tmp")
                info = {"package": CRI_API_PACKAGE, "version": version, "suite": channel}
                (dest_dir / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
                os.replace(dest_dir / "api.proto.tmp", dest)
                return dest
            finally:
                shutil.rmtree(tmp)
        raise FetchError(f"{CRI_API_PACKAGE} is in none of: {', '.join(CHANNELS)}")


def list_candidates(root: Path | None = None) -> dict[str, dict[str, str | None]]:
    """Candidate versions of containerd, runc and the CRI API package in each channel."""
    resolver = Resolver(root or cache_root())
    out: dict[str, dict[str, str | None]] = {}
    for channel in CHANNELS:
        apt = resolver.apt(channel)
        out[channel] = {p: apt.candidate(p) for p in ("containerd", "runc", CRI_API_PACKAGE)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("series", nargs="*", help="1.6 (system), 1.7, 2.1, … or a suite: trixie, sid")
    ap.add_argument("--cri-api", action="store_true", help="fetch the CRI api.proto")
    ap.add_argument("--list", action="store_true", help="show candidate versions per suite")
    ap.add_argument("--refresh", action="store_true", help="fetch even when cached")
    args = ap.parse_args(argv)
    if not (args.series or args.cri_api or args.list):
        ap.error("name a series, --cri-api or --list")
    try:
        if args.list:
            print(json.dumps(list_candidates(), indent=2))
        for series in args.series:
            vdir = ensure_containerd(series, refresh=args.refresh)
            if vdir == SYSTEM_BIN:
                print(f"containerd {series} is the system package", file=sys.stderr)
            else:
                mf = json.loads((vdir / "manifest.json").read_text())
                print(
                    f"containerd {mf['containerd']['version']} ({mf['suite']}), "
                    f"runc {mf['runc']['version']} usable={mf['runc']['usable']}",
                    file=sys.stderr,
                )
            print(vdir)
        if args.cri_api:
            print(fetch_cri_api(refresh=args.refresh))
    except FetchError as exc:
        print(f"fetch_containerd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
