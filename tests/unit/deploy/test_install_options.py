"""install.sh's options and the planning of the virtualenv part, without running pip."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import INSTALL_SH, REPO, Installer

SHIM = "containerd-shim-wasmtime-v1"
DISTS = ("containerd_shimkit", "containerd_shim_wasm", "containerd_shim_wasmtime")


def full_install(
    installer: Installer, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """install.sh with the virtualenv part, everything under the test's tmp dir."""
    return installer.run(
        "--bin-dir", str(installer.tmp / "bin"), "--config", str(installer.tmp / "config.toml"),
        "--containerd=", *args, skip_venv=False, check=check,
    )  # fmt: skip


def test_help() -> None:
    proc = subprocess.run(["sh", str(INSTALL_SH), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    options = "--from --offline --prefix --bin-dir --python --force --config --handler"
    options += " --systemd-cgroup --containerd --skip-venv --skip-config --restart --service"
    for option in (*options.split(), "--uninstall", "--dry-run"):
        assert option in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument: --bogus"),
        (["--bogus=1"], "unknown option: --bogus"),
        (["--systemd-cgroup", "maybe"], "--systemd-cgroup must be true, false or auto"),
        (["--prefix", "relative/dir"], "--prefix must be an absolute path"),
        (["--config"], "--config needs a value"),
    ],
)
def test_bad_options(installer: Installer, args: list[str], message: str) -> None:
    proc = installer.run(*args, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr


def test_python_too_old_is_refused(installer: Installer) -> None:
    fake = installer.tmp / "python3.9"
    fake.write_text('#!/bin/sh\ncase "$*" in *platform*) echo 3.9.2 ;; *) exit 1 ;; esac\n')
    fake.chmod(0o755)
    proc = installer.run("--python", str(fake), "--config", str(installer.tmp / "c"), check=False)
    assert proc.returncode == 1
    assert f"{fake} is Python 3.9.2; the shim needs Python 3.11 or newer" in proc.stderr


def test_missing_python_is_refused(installer: Installer) -> None:
    proc = installer.run("--python", "/nonexistent/python3", check=False)
    assert proc.returncode == 1
    assert "no '/nonexistent/python3' found" in proc.stderr


def test_dry_run_from_a_source_tree_plans_everything(installer: Installer) -> None:
    proc = full_install(installer, "--from", str(REPO / "packages"), "--dry-run")
    err = proc.stderr
    venv = installer.prefix / "venv"
    assert f"would run: {sys.executable} -m venv --clear {venv}\n" in err
    assert "pip --disable-pip-version-check --no-input wheel --quiet --no-deps" in err
    assert f"would run: ln -sfn {venv}/bin/{SHIM} {installer.tmp}/bin/{SHIM}" in err
    assert "adding handler 'wasmtime'" in err
    assert not installer.prefix.exists()
    assert not (installer.tmp / "bin").exists()
    assert not (installer.tmp / "config.toml").exists()
    assert not any((REPO / "packages").glob("*/build"))  # the tree was not built in


def test_dry_run_from_a_wheel_dir(installer: Installer) -> None:
    wheels = installer.tmp / "wheels"
    wheels.mkdir()
    files = [wheels / f"{d}-0.1.0-py3-none-any.whl" for d in DISTS]
    for f in files:
        f.touch()
    (wheels / "wasmtime-50.0.1-py3-none-manylinux1_x86_64.whl").touch()
    proc = full_install(installer, "--from", str(wheels), "--offline", "--dry-run")
    listed = " ".join(str(f) for f in files)
    assert f"install --quiet --no-index --find-links {wheels} {listed}" in proc.stderr
    assert f"install --quiet --no-deps --force-reinstall --no-index {listed}" in proc.stderr


def test_sdists_are_found_too(installer: Installer) -> None:
    wheels = installer.tmp / "dists"
    wheels.mkdir()
    (wheels / "containerd_shimkit-0.1.0.tar.gz").touch()
    (wheels / "containerd-shim-wasm-0.1.0.tar.gz").touch()  # old setuptools' sdist name
    (wheels / "containerd_shim_wasmtime-0.1.0-py3-none-any.whl").touch()
    proc = full_install(installer, "--from", str(wheels), "--dry-run")
    assert "containerd_shimkit-0.1.0.tar.gz" in proc.stderr
    assert "containerd-shim-wasm-0.1.0.tar.gz" in proc.stderr


def test_missing_or_ambiguous_dists(installer: Installer) -> None:
    wheels = installer.tmp / "wheels"
    wheels.mkdir()
    proc = full_install(installer, "--from", str(wheels), "--dry-run", check=False)
    assert proc.returncode == 1
    assert "no containerd_shimkit wheel or sdist" in proc.stderr
    for d in DISTS:
        (wheels / f"{d}-0.1.0-py3-none-any.whl").touch()
    (wheels / "containerd_shim_wasm-0.2.0-py3-none-any.whl").touch()
    proc = full_install(installer, "--from", str(wheels), "--dry-run", check=False)
    assert proc.returncode == 1
    assert "more than one containerd_shim_wasm-*.whl" in proc.stderr
    proc = full_install(installer, "--from", str(installer.tmp / "nope"), check=False)
    assert "is not a directory" in proc.stderr


def test_foreign_shim_in_bin_dir_is_kept(installer: Installer) -> None:
    """A runwasi binary (or anything not ours) of the same name is not replaced."""
    venv = installer.prefix / "venv"
    bin_dir = installer.tmp / "bin"
    bin_dir.mkdir()
    foreign = bin_dir / SHIM
    foreign.write_text("#!/bin/sh\necho rust\n")
    proc = installer.run("--bin-dir", str(bin_dir), "--skip-config", "--uninstall", skip_venv=False)
    assert f"{foreign} is not our link; left alone" in proc.stderr
    assert foreign.read_text() == "#!/bin/sh\necho rust\n"
    foreign.unlink()
    foreign.symlink_to("/usr/bin/true")
    proc = installer.run("--bin-dir", str(bin_dir), "--skip-config", "--uninstall", skip_venv=False)
    assert "points elsewhere (/usr/bin/true); left alone" in proc.stderr
    assert foreign.is_symlink()
    assert not venv.exists()


def test_uninstall_removes_the_compiled_modules(installer: Installer) -> None:
    cache = installer.tmp / "compiled" / "wasmtime" / "key"
    cache.mkdir(parents=True)
    (cache / "sha256_ab").write_bytes(b"artifact")
    other_shim = installer.tmp / "compiled" / "other"
    other_shim.mkdir()
    proc = installer.run("--skip-config", "--uninstall", skip_venv=False)
    assert f"removed {installer.tmp / 'compiled' / 'wasmtime'}" in proc.stderr
    assert not cache.exists() and other_shim.exists()
