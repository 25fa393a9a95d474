"""install.sh --skip-venv against containerd configs: the handler goes in once, nothing else
changes, containerd accepts the result, and --uninstall gives the original bytes back."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path

import pytest

from .conftest import (
    RUNTIME_TYPE,
    SERIES,
    Installer,
    config_dump,
    default_config,
    dump_runtimes,
    handler_table,
    require_containerd,
)

#: Every spelling of a ``[...containerd.runtimes.<name>]`` header (quoted with " or ').
HEADER = r"""^\[plugins\.(?:"[^"]+"|'[^']+'|[\w-]+)\.containerd\.runtimes\.{name}\]"""

DEBIAN_1_6 = """\
version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""


def headers(text: str, name: str = "wasmtime") -> list[str]:
    return re.findall(HEADER.format(name=re.escape(name)), text, flags=re.M)


def schema_of(series: str) -> int:
    return 3 if series.startswith("2.") else 2


def backups(config: Path) -> list[Path]:
    return sorted(config.parent.glob(config.name + ".bak.*"))


# --------------------------------------------------------------------------- default configs


@pytest.mark.parametrize("series", SERIES)
def test_default_config_twice_then_uninstall(installer: Installer, series: str) -> None:
    binary = require_containerd(series)
    original = default_config(series)
    config = installer.tmp / "config.toml"
    config.write_text(original)
    ctd = f"--containerd={binary}"

    first = installer.run("--config", str(config), ctd)
    edited = config.read_text()
    assert "adding handler 'wasmtime'" in first.stderr
    # The original bytes, then our block and nothing else.
    assert edited.startswith(original)
    assert edited[len(original) :].startswith("\n# >>> containerd-shim-wasm: handler wasmtime ")
    assert len(headers(edited)) == 1
    doc = tomllib.loads(edited)
    # The default configs' runc says SystemdCgroup = false; auto follows it.
    assert handler_table(doc, schema_of(series)) == {
        "runtime_type": RUNTIME_TYPE,
        "options": {"SystemdCgroup": False},
    }
    (saved,) = backups(config)
    assert saved.read_text() == original

    second = installer.run("--config", str(config), ctd)
    assert "already in" in second.stderr
    assert config.read_text() == edited
    assert len(backups(config)) == 1  # nothing written, nothing backed up

    runtimes = dump_runtimes(config_dump(binary, config))
    assert runtimes["wasmtime"]["runtime_type"] == RUNTIME_TYPE
    assert runtimes["wasmtime"]["options"]["SystemdCgroup"] is False
    assert runtimes["runc"]["runtime_type"] == "io.containerd.runc.v2"

    installer.run("--config", str(config), ctd, "--uninstall")
    assert config.read_text() == original


@pytest.mark.parametrize("series", SERIES)
def test_dry_run_changes_nothing(installer: Installer, series: str) -> None:
    binary = require_containerd(series)
    original = default_config(series)
    config = installer.tmp / "config.toml"
    config.write_text(original)

    proc = installer.run("--config", str(config), f"--containerd={binary}", "--dry-run")
    assert config.read_text() == original
    assert backups(config) == []
    assert not installer.prefix.exists()
    assert proc.stdout.startswith(f"--- {config}\n+++ {config}\n")
    added = [line[1:] for line in proc.stdout.splitlines() if line.startswith("+[")]
    assert len(added) == 2 and "runtimes.wasmtime]" in added[0]
    assert "would restart" not in proc.stderr  # no --restart asked for

    # And an uninstall dry run of an installed config.
    installer.run("--config", str(config), f"--containerd={binary}")
    edited = config.read_text()
    proc = installer.run("--config", str(config), "--uninstall", "--dry-run")
    assert config.read_text() == edited
    assert "-# >>> containerd-shim-wasm: handler wasmtime" in proc.stdout


# --------------------------------------------------------------------------- handwritten


@pytest.mark.parametrize(
    ("text", "schema"),
    [
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]\n'
            '  runtime_type = "io.containerd.wasmtime.v1"\n',
            2,
        ),
        # 2.x's own quoting: found by parsing, not by matching header text.
        (
            "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime]\n"
            "  runtime_type = 'io.containerd.wasmtime.v1'\n"
            "  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime.options]\n"
            "    SystemdCgroup = true\n",
            3,
        ),
        # Dotted keys under a parent table: no header with "runtimes.wasmtime" at all.
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
            '  runtimes.wasmtime.runtime_type = "io.containerd.wasmtime.v1"\n',
            2,
        ),
    ],
)
def test_handwritten_handler_is_left_alone(installer: Installer, text: str, schema: int) -> None:
    config = installer.tmp / "config.toml"
    config.write_text(text)
    proc = installer.run("--config", str(config), "--containerd=")
    assert "not added by install.sh" in proc.stderr and "left alone" in proc.stderr
    assert config.read_text() == text
    assert backups(config) == []
    proc = installer.run("--config", str(config), "--containerd=", "--uninstall")
    assert "was not added by install.sh; left alone" in proc.stderr
    assert config.read_text() == text
    assert handler_table(tomllib.loads(text), schema)["runtime_type"] == RUNTIME_TYPE


def test_handwritten_handler_with_another_runtime_type_is_reported(installer: Installer) -> None:
    text = (
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]\n'
        '  runtime_type = "io.containerd.spin.v2"\n'
    )
    config = installer.tmp / "config.toml"
    config.write_text(text)
    proc = installer.run("--config", str(config), "--containerd=")
    assert "with runtime_type 'io.containerd.spin.v2', not 'io.containerd.wasmtime.v1'" in (
        proc.stderr
    )
    assert config.read_text() == text


def test_handler_from_an_imported_file_is_left_alone(installer: Installer) -> None:
    binary = require_containerd("1.6")
    extra = installer.tmp / "wasm.toml"
    extra.write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]\n'
        '  runtime_type = "io.containerd.wasmtime.v1"\n'
    )
    config = installer.tmp / "config.toml"
    text = default_config("1.6").replace("imports = []", f'imports = ["{extra}"]')
    assert f'imports = ["{extra}"]' in text
    config.write_text(text)
    proc = installer.run("--config", str(config), f"--containerd={binary}")
    assert "probably through `imports`" in proc.stderr
    assert config.read_text() == text


# --------------------------------------------------------------------------- SystemdCgroup


def test_explicit_systemd_cgroup_and_update_in_place(installer: Installer) -> None:
    binary = require_containerd("2.1")
    original = default_config("2.1")
    config = installer.tmp / "config.toml"
    config.write_text(original)
    installer.run("--config", str(config), f"--containerd={binary}", "--systemd-cgroup", "true")
    assert handler_table(tomllib.loads(config.read_text()), 3)["options"] == {"SystemdCgroup": True}
    proc = installer.run(
        "--config", str(config), f"--containerd={binary}", "--systemd-cgroup=false"
    )
    assert "updating handler 'wasmtime'" in proc.stderr
    edited = config.read_text()
    assert len(headers(edited)) == 1
    assert edited.startswith(original)
    assert handler_table(tomllib.loads(edited), 3)["options"] == {"SystemdCgroup": False}
    installer.run("--config", str(config), "--uninstall", f"--containerd={binary}")
    assert config.read_text() == original


@pytest.mark.parametrize("series", ["1.7", "2.1"])
def test_auto_follows_the_default_runc(installer: Installer, series: str) -> None:
    require_containerd(series)
    text = default_config(series)
    assert text.count("SystemdCgroup = false") == 1
    text = text.replace("SystemdCgroup = false", "SystemdCgroup = true")
    config = installer.tmp / "config.toml"
    config.write_text(text)
    proc = installer.run("--config", str(config), "--containerd=")
    assert "auto: as the default runtime 'runc' (SystemdCgroup = true)" in proc.stderr
    doc = tomllib.loads(config.read_text())
    assert handler_table(doc, schema_of(series))["options"] == {"SystemdCgroup": True}


KATA_DEFAULT = """\
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "kata"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
  runtime_type = "io.containerd.kata.v2"
"""


@pytest.mark.parametrize("systemd", [True, False])
def test_auto_without_runc_looks_for_systemd(installer: Installer, systemd: bool) -> None:
    if systemd:
        installer.no_systemd.mkdir()  # INSTALL_SYSTEMD_DIR now exists
    config = installer.tmp / "config.toml"
    config.write_text(KATA_DEFAULT)
    proc = installer.run("--config", str(config), "--containerd=")
    assert f"auto: {installer.no_systemd} {'exists' if systemd else 'does not exist'}" in (
        proc.stderr
    )
    assert handler_table(tomllib.loads(config.read_text()), 2)["options"] == {
        "SystemdCgroup": systemd
    }


# --------------------------------------------------------------------------- built-in runc


@pytest.mark.parametrize("series", ["1.6", "1.7"])
def test_containerd_1x_drops_builtin_runc_when_a_runtime_is_named(
    tmp_path: Path, series: str
) -> None:
    """Why install.sh restates runc: the hazard itself, shown with containerd 1.x."""
    binary = require_containerd(series)
    config = tmp_path / "config.toml"
    config.write_text(
        DEBIAN_1_6
        + '\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]\n'
        + '  runtime_type = "io.containerd.wasmtime.v1"\n'
    )
    assert set(dump_runtimes(config_dump(binary, config))) == {"wasmtime"}


@pytest.mark.parametrize("series", SERIES)
def test_debian_config_keeps_runc(installer: Installer, series: str) -> None:
    binary = require_containerd(series)
    config = installer.tmp / "config.toml"
    config.write_text(DEBIAN_1_6)
    proc = installer.run("--config", str(config), f"--containerd={binary}")
    assert "restating containerd's default handler 'runc'" in proc.stderr
    edited = config.read_text()
    assert edited.startswith(DEBIAN_1_6)
    assert len(headers(edited)) == 1 and len(headers(edited, "runc")) == 1
    runtimes = dump_runtimes(config_dump(binary, config))
    assert {"runc", "wasmtime"} <= set(runtimes)
    assert runtimes["runc"]["runtime_type"] == "io.containerd.runc.v2"
    assert runtimes["runc"]["options"]["SystemdCgroup"] is False
    installer.run("--config", str(config), f"--containerd={binary}")
    assert config.read_text() == edited
    installer.run("--config", str(config), f"--containerd={binary}", "--uninstall")
    assert config.read_text() == DEBIAN_1_6


def test_two_handlers_share_the_restated_runc(installer: Installer) -> None:
    binary = require_containerd("1.6")
    config = installer.tmp / "config.toml"
    config.write_text(DEBIAN_1_6)
    ctd = f"--containerd={binary}"
    installer.run("--config", str(config), ctd)
    installer.run("--config", str(config), ctd, "--handler", "wasm", "--systemd-cgroup=true")
    text = config.read_text()
    assert len(headers(text, "runc")) == 1
    assert handler_table(tomllib.loads(text), 2, "wasm")["options"] == {"SystemdCgroup": True}
    installer.run("--config", str(config), ctd, "--uninstall")
    runtimes = dump_runtimes(config_dump(binary, config))
    assert set(runtimes) == {"runc", "wasm"}  # runc stays while a handler needs it
    installer.run("--config", str(config), ctd, "--uninstall", "--handler=wasm")
    assert config.read_text() == DEBIAN_1_6


# --------------------------------------------------------------------------- new/odd files


@pytest.mark.parametrize("series", SERIES)
def test_missing_file_is_created_and_removed(installer: Installer, series: str) -> None:
    binary = require_containerd(series)
    config = installer.tmp / "etc" / "containerd" / "config.toml"
    proc = installer.run("--config", str(config), f"--containerd={binary}")
    doc = tomllib.loads(config.read_text())
    schema = schema_of(series)
    assert doc["version"] == schema
    assert f"as config version {schema} (containerd {series[0]}.x)" in proc.stderr
    assert handler_table(doc, schema)["runtime_type"] == RUNTIME_TYPE
    runtimes = dump_runtimes(config_dump(binary, config))
    assert {"runc", "wasmtime"} <= set(runtimes)
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    installer.run("--config", str(config), f"--containerd={binary}", "--uninstall")
    assert not config.exists()
    assert backups(config) == []


def test_missing_file_without_containerd_is_version_2(installer: Installer) -> None:
    config = installer.tmp / "config.toml"
    proc = installer.run("--config", str(config), "--containerd=")
    assert "(no containerd binary to ask)" in proc.stderr
    doc = tomllib.loads(config.read_text())
    assert doc["version"] == 2
    assert set(doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]) == {
        "runc",
        "wasmtime",
    }


@pytest.mark.parametrize("text", ["", "\n", "# nothing configured yet\n"])
def test_empty_file_gets_a_version_and_is_restored(installer: Installer, text: str) -> None:
    binary = require_containerd("1.6")
    config = installer.tmp / "config.toml"
    config.write_text(text)
    installer.run("--config", str(config), f"--containerd={binary}")
    edited = config.read_text()
    assert edited.startswith(text)
    assert tomllib.loads(edited)["version"] == 2
    assert "wasmtime" in dump_runtimes(config_dump(binary, config))
    installer.run("--config", str(config), f"--containerd={binary}", "--uninstall")
    assert config.read_text() == text  # not deleted: install.sh did not create it


def test_no_final_newline_is_restored(installer: Installer) -> None:
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.9"'
    config = installer.tmp / "config.toml"
    config.write_text(text)
    installer.run("--config", str(config), "--containerd=")
    assert tomllib.loads(config.read_text())["plugins"]["io.containerd.grpc.v1.cri"][
        "sandbox_image"
    ] == ("pause:3.9")
    installer.run("--config", str(config), "--containerd=", "--uninstall")
    assert config.read_text() == text


def test_crlf_file_is_restored(installer: Installer) -> None:
    text = 'version = 2\r\n[plugins."io.containerd.grpc.v1.cri"]\r\n  sandbox_image = "p"\r\n'
    config = installer.tmp / "config.toml"
    config.write_bytes(text.encode())
    installer.run("--config", str(config), "--containerd=")
    installer.run("--config", str(config), "--containerd=")
    assert len(headers(config.read_bytes().decode().replace("\r\n", "\n"))) == 1
    installer.run("--config", str(config), "--containerd=", "--uninstall")
    assert config.read_bytes() == text.encode()


@pytest.mark.parametrize("series", ["1.6", "1.7"])
def test_version_1_file_on_containerd_1x(installer: Installer, series: str) -> None:
    binary = require_containerd(series)
    text = '[plugins.cri]\n  sandbox_image = "localhost/pause:1"\n'
    config = installer.tmp / "config.toml"
    config.write_text(text)
    installer.run("--config", str(config), f"--containerd={binary}")
    assert handler_table(tomllib.loads(config.read_text()), 1)["runtime_type"] == RUNTIME_TYPE
    runtimes = dump_runtimes(config_dump(binary, config))  # 1.x migrates it to version 2
    assert {"runc", "wasmtime"} <= set(runtimes)
    installer.run("--config", str(config), f"--containerd={binary}", "--uninstall")
    assert config.read_text() == text


def test_version_1_file_is_refused_for_containerd_2(installer: Installer) -> None:
    binary = require_containerd("2.1")
    text = '[plugins.cri]\n  sandbox_image = "localhost/pause:1"\n'
    config = installer.tmp / "config.toml"
    config.write_text(text)
    proc = installer.run("--config", str(config), f"--containerd={binary}", check=False)
    assert proc.returncode == 1
    assert "containerd config migrate" in proc.stderr
    assert config.read_text() == text


@pytest.mark.parametrize("entry", ["cri", "io.containerd.grpc.v1.cri"])
def test_disabled_cri_plugin_is_an_error(installer: Installer, entry: str) -> None:
    # Docker's containerd.io package ships `disabled_plugins = ["cri"]`.
    text = f'version = 2\ndisabled_plugins = ["{entry}"]\n'
    config = installer.tmp / "config.toml"
    config.write_text(text)
    proc = installer.run("--config", str(config), "--containerd=", check=False)
    assert proc.returncode == 1
    assert "disables the CRI plugin" in proc.stderr
    assert "the containerd config was not changed" in proc.stderr
    assert config.read_text() == text


def test_config_containerd_rejects_is_not_touched(installer: Installer) -> None:
    binary = require_containerd("2.1")
    text = "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\n  enable_cdi = 'maybe'\n"
    config = installer.tmp / "config.toml"
    config.write_text(text)
    proc = installer.run("--config", str(config), f"--containerd={binary}", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "config dump` rejects the current" in proc.stderr
    assert config.read_text() == text


def test_broken_markers_are_an_error(installer: Installer) -> None:
    text = "version = 2\n\n# >>> containerd-shim-wasm: handler wasmtime >>> managed\n"
    config = installer.tmp / "config.toml"
    config.write_text(text)
    for extra in ((), ("--uninstall",)):
        proc = installer.run("--config", str(config), "--containerd=", *extra, check=False)
        assert proc.returncode == 1
        assert "has no closing '# <<< containerd-shim-wasm: handler wasmtime <<<'" in proc.stderr
        assert config.read_text() == text


@pytest.mark.parametrize("name", ["Wasm", "wasm_1", "-wasm", "w" * 64, ""])
def test_handler_must_be_a_dns_label(installer: Installer, name: str) -> None:
    config = installer.tmp / "config.toml"
    proc = installer.run("--config", str(config), "--containerd=", f"--handler={name}", check=False)
    assert proc.returncode == 1
    assert "is not a DNS label" in proc.stderr
    assert not config.exists()


def test_symlinked_config_edits_the_target_and_keeps_its_mode(installer: Installer) -> None:
    target = installer.tmp / "real.toml"
    target.write_text(DEBIAN_1_6)
    target.chmod(0o600)
    link = installer.tmp / "config.toml"
    link.symlink_to(target)
    installer.run("--config", str(link), "--containerd=")
    assert link.is_symlink()
    assert "runtimes.wasmtime" in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    (saved,) = backups(target)
    assert saved.read_text() == DEBIAN_1_6


def test_uninstall_without_file_or_handler(installer: Installer) -> None:
    config = installer.tmp / "config.toml"
    proc = installer.run("--config", str(config), "--containerd=", "--uninstall")
    assert "does not exist; nothing to remove" in proc.stderr
    config.write_text(DEBIAN_1_6)
    proc = installer.run("--config", str(config), "--containerd=", "--uninstall")
    assert "no handler 'wasmtime'" in proc.stderr
    assert config.read_text() == DEBIAN_1_6


# --------------------------------------------------------------------------- restarts


def fake_systemctl(tmp: Path) -> tuple[dict[str, str], Path]:
    """A ``systemctl`` first on PATH that records its arguments."""
    bin_dir = tmp / "fakebin"
    bin_dir.mkdir()
    log = tmp / "systemctl.log"
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, log


def test_restart_runs_systemctl_when_the_config_changed(installer: Installer) -> None:
    env, log = fake_systemctl(installer.tmp)
    installer.no_systemd.mkdir()  # "systemd is running"
    config = installer.tmp / "config.toml"
    config.write_text(DEBIAN_1_6)
    installer.run("--config", str(config), "--containerd=", "--restart", env=env)
    assert log.read_text().splitlines() == [
        "restart containerd",
        "is-active --quiet containerd",
    ]
    assert not (installer.prefix / "restart-pending").exists()
    log.unlink()
    proc = installer.run("--config", str(config), "--containerd=", "--restart", env=env)
    assert not log.exists()  # unchanged config: no restart
    assert "restarting" not in proc.stderr and "restart containerd" not in proc.stderr
    installer.run(
        "--config", str(config), "--containerd=", "--uninstall", "--restart", "--service=ctd",
        env=env,
    )  # fmt: skip
    assert log.read_text().splitlines() == ["restart ctd", "is-active --quiet ctd"]


def test_a_failed_restart_is_remembered(installer: Installer) -> None:
    env, log = fake_systemctl(installer.tmp)
    config = installer.tmp / "config.toml"
    config.write_text(DEBIAN_1_6)
    # No systemd: the config changes, the restart cannot happen.
    proc = installer.run("--config", str(config), "--containerd=", "--restart", check=False)
    assert proc.returncode == 1
    assert "cannot restart containerd here (no systemd)" in proc.stderr
    assert (installer.prefix / "restart-pending").exists()
    # Without --restart the next run reminds; with it (systemd back) it restarts, although the
    # config does not change any more.
    proc = installer.run("--config", str(config), "--containerd=")
    assert "containerd has not been restarted since the handler was added" in proc.stderr
    installer.no_systemd.mkdir()
    installer.run("--config", str(config), "--containerd=", "--restart", env=env)
    assert log.read_text().splitlines()[0] == "restart containerd"
    assert not (installer.prefix / "restart-pending").exists()


def test_dry_run_restart_only_says_so(installer: Installer) -> None:
    env, log = fake_systemctl(installer.tmp)
    installer.no_systemd.mkdir()
    config = installer.tmp / "config.toml"
    config.write_text(DEBIAN_1_6)
    proc = installer.run(
        "--config", str(config), "--containerd=", "--restart", "--dry-run", env=env
    )
    assert "would restart containerd" in proc.stderr
    assert not log.exists()
    assert config.read_text() == DEBIAN_1_6
