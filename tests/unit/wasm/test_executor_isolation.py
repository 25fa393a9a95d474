"""What the wasm workload does to its container's process before the guest runs (the
kernel filesystems are detached, the shim's environment and the pod's other modules are
dropped, the process is named after the module) and what the zygote keeps of a spawn
request (nothing: its log context is the zygote's again afterwards).

Anything that changes the process runs in a forked child.
"""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from containerd_shim_wasm import executor
from containerd_shim_wasm.context import RuntimeContext
from containerd_shim_wasm.module_cache import ModuleCache
from containerd_shim_wasm.sandbox import Sandbox
from containerd_shim_wasm.shim import Shim
from containerd_shimkit import logs, zygote
from containerd_shimkit.container import ContainerSetup
from tests.support.forked import result_in_child


class AcceptAll(Sandbox):
    def can_handle_blocking(self, ctx: RuntimeContext) -> None:
        pass

    async def run_wasi(self, ctx: RuntimeContext) -> int:
        return 0


class FakeShim(Shim):
    @classmethod
    def name(cls) -> str:
        return "fake"

    @classmethod
    def sandbox(cls) -> type[Sandbox]:
        return AcceptAll


def _setup(args: list[str], tmp_path: Path, mount_ns: str | None = "") -> ContainerSetup:
    """A container with a new mount namespace (``mount_ns=""``), another container's
    (a path) or none (None)."""
    spec: dict[str, Any] = {"process": {"args": args, "env": ["PATH=/usr/bin:/bin"]}}
    if mount_ns is not None:
        spec["linux"] = {"namespaces": [{"type": "mount", "path": mount_ns}]}
    return ContainerSetup("c1", tmp_path, spec, tmp_path)


def test_a_wasm_container_hides_kernel_filesystems_after_dropping_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_hide() -> list[str]:
        seen["env_at_hide"] = dict(os.environ)
        seen["forgot_first"] = seen.get("forgot", False)
        return ["/proc"]

    def forget() -> None:
        seen["forgot"] = True

    def work() -> object:
        os.environ["SHIM_TEST_SECRET"] = "leaked-from-the-shim"
        value = os.environb[b"SHIM_TEST_SECRET"]
        monkeypatch.setattr(executor, "hide_kernel_filesystems", fake_hide)
        workload = executor.WasmWorkload(FakeShim, None, forget=forget)
        workload.prepare(_setup(["/app/missing-module.wasm#run", "a"], tmp_path))
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p
        return {
            **seen,
            "environ": dict(os.environ),
            "getenv": libc.getenv(b"SHIM_TEST_SECRET"),
            "value": value.decode(),
            "comm": Path("/proc/self/comm").read_text().rstrip("\n"),
        }

    result = result_in_child(work)
    assert isinstance(result, dict)
    assert result["env_at_hide"] == {} and result["forgot_first"] is True
    assert result["environ"] == {} and result["getenv"] is None
    assert result["value"] == "\0" * len("leaked-from-the-shim")  # zeroed before dropped
    assert result["comm"] == "missing-module."  # the module file's name, 15 bytes


def test_a_native_executable_keeps_its_kernel_filesystems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def work() -> object:
        def fail() -> list[str]:
            raise AssertionError("a native container must keep /proc")

        monkeypatch.setattr(executor, "hide_kernel_filesystems", fail)
        os.environ["SHIM_TEST_KEEP"] = "1"
        workload = executor.WasmWorkload(FakeShim, None)
        workload.prepare(_setup(["/bin/true"], tmp_path))
        return {"native": workload.native, "env": os.environ.get("SHIM_TEST_KEEP")}

    assert result_in_child(work) == {"native": True, "env": "1"}


def _what_prepare_says(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hide: Callable[[], list[str]],
    mount_ns: str | None = "",
) -> object:
    """Prepare a wasm container (``/m.wasm``, mount namespace as in :func:`_setup`) in a
    forked child whose ``hide_kernel_filesystems`` is ``hide``: the error it fails with,
    or ``"prepared"``."""

    def work() -> object:
        monkeypatch.setattr(executor, "hide_kernel_filesystems", hide)
        workload = executor.WasmWorkload(FakeShim, None)
        try:
            workload.prepare(_setup(["/m.wasm"], tmp_path, mount_ns))
        except Exception as exc:
            return str(exc)
        return "prepared"

    return result_in_child(work)


def test_a_failure_to_hide_fails_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> list[str]:
        raise executor_error("detaching /proc: Invalid argument")

    said = _what_prepare_says(tmp_path, monkeypatch, refuse)
    assert said == "detaching /proc: Invalid argument"


@pytest.mark.parametrize("mount_ns", ["/proc/4242/ns/mnt", None], ids=["joined", "host"])
def test_a_wasm_guest_never_runs_in_a_shared_mount_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mount_ns: str | None
) -> None:
    def fail() -> list[str]:
        raise AssertionError("another container's /proc must stay")

    said = _what_prepare_says(tmp_path, monkeypatch, fail, mount_ns)
    assert "needs a mount namespace of its own" in str(said)


def executor_error(message: str) -> Exception:
    from containerd_shimkit.container import ContainerError

    return ContainerError(message)


def test_module_comm_drops_the_function_and_the_directory() -> None:
    assert executor.module_comm(["/app/hello.wasm#run", "x"]) == "hello.wasm"
    assert executor.module_comm(["hello.wat"]) == "hello.wat"
    assert executor.module_comm([]) == ""


# --- the zygote's log context ------------------------------------------------------------


def _spawn_request(tmp_path: Path, cid: str) -> tuple[dict[str, Any], list[int]]:
    (tmp_path / "config.json").write_text(json.dumps({"process": {"args": ["/m.wasm"]}}))
    request = {"op": "spawn", "id": cid, "bundle": str(tmp_path), "rootfs": str(tmp_path)}
    fds = [os.open("/dev/null", os.O_RDWR) for _ in range(4)]
    return request, fds


@pytest.mark.parametrize("fails", [False, True], ids=["spawned", "failed"])
def test_the_zygote_keeps_no_container_id_after_a_spawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    inside: list[tuple[str, str]] = []

    def fake_spawn_init(*_: object, **__: object) -> int:
        # What the helper and the init inherit at the fork.
        inside.append((logs.instance_id.get(), logs.pod_id.get()))
        if fails:
            raise executor_error("no")
        return 4242

    monkeypatch.setattr(executor, "spawn_init", fake_spawn_init)
    monkeypatch.setattr(zygote, "channel_fd", lambda: -1)
    modules = ModuleCache(FakeShim)
    pod_token = logs.pod_id.set("the-pod")
    try:
        for cid in ("first", "second"):
            request, fds = _spawn_request(tmp_path, cid)
            try:
                if fails:
                    with pytest.raises(Exception, match="no"):
                        executor.spawn(FakeShim, modules, request, fds)
                else:
                    assert executor.spawn(FakeShim, modules, request, fds) == {"pid": 4242}
            finally:
                for fd in fds:
                    os.close(fd)
            # The zygote's own lines: neither this container's id nor the previous one's.
            assert (logs.instance_id.get(), logs.pod_id.get()) == ("", "the-pod")
    finally:
        logs.pod_id.reset(pod_token)
    # The pod is the zygote's (its daemon's group), not the last container's.
    assert inside == [("first", "the-pod"), ("second", "the-pod")]


def test_a_zygote_never_told_its_pod_names_the_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside: list[tuple[str, str]] = []

    def fake_spawn_init(*_: object, **__: object) -> int:
        inside.append((logs.instance_id.get(), logs.pod_id.get()))
        return 1

    monkeypatch.setattr(executor, "spawn_init", fake_spawn_init)
    monkeypatch.setattr(zygote, "channel_fd", lambda: -1)
    request, fds = _spawn_request(tmp_path, "lonely")
    try:
        executor.spawn(FakeShim, ModuleCache(FakeShim), request, fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert inside == [("lonely", "lonely")]
    assert (logs.instance_id.get(), logs.pod_id.get()) == ("", "")


def test_the_init_forgets_the_pods_other_modules(tmp_path: Path) -> None:
    modules = ModuleCache(FakeShim)
    modules._remember("other-digest", None)

    def work() -> object:
        executor._forgetter(modules)()
        return len(modules._entries)

    assert result_in_child(work) == 0
    assert "other-digest" in modules._entries  # the zygote's own cache is untouched
