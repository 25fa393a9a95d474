"""A CRI client that drives containerd the way kubelet does, and CNI helpers for pod networks.

No crictl exists for these machines, so the tests speak CRI gRPC themselves. The CRI
``api.proto`` is taken at test time from Debian's ``golang-k8s-cri-api-dev`` (fetched by
``scripts/fetch_containerd.py``; ``$CRI_API_PROTO`` may name a file instead), compiled with
grpcio-tools into ``<repo>/.cache/cri-api/<hash>/`` and imported from there: generated code of
a proto this project did not write is never committed.

Messages are dynamic (``api.pb.PodSandboxConfig`` …), so they are typed ``Any`` here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

import grpc  # type: ignore[import-untyped, unused-ignore]

from .containerd import NETNS_DIR, load_fetch_module, mount_points, unmount

REPO = Path(__file__).resolve().parents[2]
COMPILED_CACHE = REPO / ".cache" / "cri-api"
#: The generated modules are imported under these names (unique, unlike ``api_pb2``).
PROTO_STEM = "cri_runtime_v1"
DEFAULT_TIMEOUT = 30.0

Message = Any


# --------------------------------------------------------------------------- proto


def strip_gogoproto(text: str) -> str:
    """Remove gogoproto imports and options, which protoc cannot resolve without gogo.proto.

    Older cri-api releases annotate fields with ``[(gogoproto.xxx) = yyy]`` and files with
    ``option (gogoproto.xxx) = yyy;``; current ones have none (then this is a no-op).
    """
    text = re.sub(
        r'^\s*import\s+(weak\s+)?"github\.com/gogo/protobuf/[^"]*";\s*\n', "", text, flags=re.M
    )
    text = re.sub(r"^\s*option\s+\(gogoproto\.[^;]*;\s*\n", "", text, flags=re.M)

    # Field options: drop gogoproto entries inside [...]; drop the brackets if left empty.
    def _fix_options(m: re.Match[str]) -> str:
        opts = [o for o in m.group(1).split(",") if o.strip() and "gogoproto." not in o]
        return f" [{', '.join(o.strip() for o in opts)}]" if opts else ""

    return re.sub(r"\s*\[([^\[\]]*gogoproto\.[^\[\]]*)\]", _fix_options, text)


def cri_api_proto() -> Path:
    """The CRI ``api.proto`` to compile: ``$CRI_API_PROTO`` or the one fetched from Debian."""
    env = os.environ.get("CRI_API_PROTO")
    if env:
        return Path(env)
    return Path(load_fetch_module().fetch_cri_api())


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # The _grpc module does "import cri_runtime_v1_pb2": it must already be in sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class CriApi:
    """The generated CRI modules: ``pb`` (messages, enums) and ``grpc`` (stubs)."""

    pb: ModuleType
    grpc: ModuleType
    proto: Path

    @property
    def has_pod_sandbox_stats(self) -> bool:
        """PodSandboxStats arrived in cri-api 0.23 (Kubernetes 1.23)."""
        return hasattr(self.pb, "PodSandboxStatsRequest")


@functools.cache
def load_cri_api(proto: Path | None = None) -> CriApi:
    """Compile (once per proto and tool version) and import the CRI API.

    The generated files go to ``<repo>/.cache/cri-api/<hash>/``; compiling into a temporary
    dir and renaming it makes parallel first uses safe.
    """
    proto = proto or cri_api_proto()
    source = strip_gogoproto(proto.read_text())
    tools = importlib.metadata.version("grpcio-tools")
    runtime = importlib.metadata.version("protobuf")
    key = hashlib.sha256(f"{tools}\0{runtime}\0{source}".encode()).hexdigest()[:16]
    out = COMPILED_CACHE / key
    if not (out / f"{PROTO_STEM}_pb2_grpc.py").is_file():
        COMPILED_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = COMPILED_CACHE / f".tmp-{key}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            (tmp / f"{PROTO_STEM}.proto").write_text(source)
            spec = importlib.util.find_spec("grpc_tools")
            assert spec is not None and spec.submodule_search_locations
            include = Path(next(iter(spec.submodule_search_locations))) / "_proto"
            cmd = [
                sys.executable, "-m", "grpc_tools.protoc",
                f"-I{tmp}", f"-I{include}",
                f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                f"{PROTO_STEM}.proto",
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"protoc failed on {proto}:\n{proc.stderr}")
            (tmp / "SOURCE").write_text(f"{proto}\ngrpcio-tools {tools}, protobuf {runtime}\n")
            try:
                tmp.rename(out)
            except OSError:
                if not out.is_dir():  # only "another process won the race" is fine
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    pb = _load_module(f"{PROTO_STEM}_pb2", out / f"{PROTO_STEM}_pb2.py")
    stubs = _load_module(f"{PROTO_STEM}_pb2_grpc", out / f"{PROTO_STEM}_pb2_grpc.py")
    return CriApi(pb, stubs, proto)


# --------------------------------------------------------------------------- config builders


def pod_config(
    api: CriApi,
    name: str,
    *,
    log_directory: Path,
    namespace: str = "default",
    uid: str | None = None,
    attempt: int = 0,
    host_network: bool = True,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    cgroup_parent: str | None = None,
    systemd_cgroup: bool = False,
) -> Message:
    """A ``PodSandboxConfig`` as kubelet builds it for a plain pod.

    ``host_network`` pods share the node's network namespace and need no CNI; their hostname
    stays empty (kubelet never sets one there: runc refuses a hostname without a private UTS
    namespace). Pod-network pods get the pod name as hostname and need a CNI conflist.

    ``cgroup_parent`` None gives the besteffort pod cgroup kubelet would use (containerd needs
    one for PodSandboxStats): ``/kubepods/besteffort/pod<uid>`` for the cgroupfs driver, or
    ``kubepods-besteffort-pod<uid>.slice`` with ``systemd_cgroup``; "" gives none.
    """
    pb = api.pb
    uid = uid or secrets.token_hex(8)
    if cgroup_parent is None:
        cgroup_parent = kubelet_cgroup_parent(uid, systemd=systemd_cgroup)
    ns_opts = pb.NamespaceOption(
        network=pb.NODE if host_network else pb.POD,
        pid=pb.CONTAINER,
        ipc=pb.POD,
    )
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=attempt),
        hostname="" if host_network else name,
        log_directory=str(log_directory),
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns_opts),
        ),
    )


def kubelet_cgroup_parent(uid: str, *, systemd: bool = False, qos: str = "besteffort") -> str:
    """The pod cgroup kubelet would create for a pod of ``qos`` class."""
    if systemd:
        # systemd unit names cannot contain "-" inside a component: kubelet escapes it as "_".
        return f"kubepods-{qos}-pod{uid.replace('-', '_')}.slice"
    return f"/kubepods/{qos}/pod{uid}"


def container_config(
    api: CriApi,
    name: str,
    image: str,
    *,
    command: Sequence[str] = (),
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: str | None = None,
    host_network: bool = True,
    working_dir: str = "",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    attempt: int = 0,
) -> Message:
    """A ``ContainerConfig``; ``log_path`` is relative to the pod's log directory.

    The namespace options repeat the pod's, as kubelet does.
    """
    pb = api.pb
    ns_opts = pb.NamespaceOption(
        network=pb.NODE if host_network else pb.POD, pid=pb.CONTAINER, ipc=pb.POD
    )
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=attempt),
        image=pb.ImageSpec(image=image),
        command=list(command),
        args=list(args),
        envs=[pb.KeyValue(key=k, value=v) for k, v in (env or {}).items()],
        log_path=log_path if log_path is not None else f"{name}_{attempt}.log",
        working_dir=working_dir,
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(namespace_options=ns_opts)
        ),
    )


# --------------------------------------------------------------------------- client


class CriClient:
    """RuntimeService and ImageService over containerd's gRPC socket.

    Every call takes the default deadline unless ``timeout`` is given; errors surface as
    ``grpc.RpcError`` with the CRI plugin's message.
    """

    def __init__(self, address: Path | str, api: CriApi | None = None) -> None:
        self.api = api or load_cri_api()
        self.address = str(address)
        self.channel = grpc.insecure_channel(f"unix://{self.address}")
        self.runtime = self.api.grpc.RuntimeServiceStub(self.channel)
        self.images = self.api.grpc.ImageServiceStub(self.channel)

    @property
    def pb(self) -> ModuleType:
        return self.api.pb

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- runtime

    def version(self, timeout: float = DEFAULT_TIMEOUT) -> Message:
        return self.runtime.Version(self.pb.VersionRequest(), timeout=timeout)

    def status(self, verbose: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Message:
        return self.runtime.Status(self.pb.StatusRequest(verbose=verbose), timeout=timeout)

    def run_pod_sandbox(
        self, config: Message, handler: str = "", timeout: float = DEFAULT_TIMEOUT
    ) -> str:
        """RunPodSandbox; returns the sandbox id. ``handler`` selects the runtime handler."""
        req = self.pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
        return str(self.runtime.RunPodSandbox(req, timeout=timeout).pod_sandbox_id)

    def stop_pod_sandbox(self, pod_id: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.runtime.StopPodSandbox(
            self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=timeout
        )

    def remove_pod_sandbox(self, pod_id: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.runtime.RemovePodSandbox(
            self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=timeout
        )

    def pod_sandbox_status(
        self, pod_id: str, verbose: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> Message:
        req = self.pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        return self.runtime.PodSandboxStatus(req, timeout=timeout)

    def list_pod_sandboxes(self, timeout: float = DEFAULT_TIMEOUT) -> list[Message]:
        return list(
            self.runtime.ListPodSandbox(self.pb.ListPodSandboxRequest(), timeout=timeout).items
        )

    def create_container(
        self,
        pod_id: str,
        config: Message,
        sandbox_config: Message,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> str:
        """CreateContainer; returns the container id."""
        req = self.pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config
        )
        return str(self.runtime.CreateContainer(req, timeout=timeout).container_id)

    def start_container(self, container_id: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.runtime.StartContainer(
            self.pb.StartContainerRequest(container_id=container_id), timeout=timeout
        )

    def stop_container(
        self, container_id: str, grace: int = 0, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        """StopContainer with ``grace`` seconds between SIGTERM and SIGKILL."""
        req = self.pb.StopContainerRequest(container_id=container_id, timeout=grace)
        self.runtime.StopContainer(req, timeout=timeout + grace)

    def remove_container(self, container_id: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.runtime.RemoveContainer(
            self.pb.RemoveContainerRequest(container_id=container_id), timeout=timeout
        )

    def container_status(
        self, container_id: str, verbose: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> Message:
        """The ``ContainerStatus`` message (``.status``) of ContainerStatusResponse."""
        req = self.pb.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self.runtime.ContainerStatus(req, timeout=timeout).status

    def list_containers(
        self, pod_id: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> list[Message]:
        flt = self.pb.ContainerFilter(pod_sandbox_id=pod_id or "")
        req = self.pb.ListContainersRequest(filter=flt)
        return list(self.runtime.ListContainers(req, timeout=timeout).containers)

    def wait_container_exit(self, container_id: str, timeout: float = 30.0) -> Message:
        """Poll ContainerStatus until the container has exited; returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.container_status(container_id)
            if st.state == self.pb.CONTAINER_EXITED:
                return st
            if time.monotonic() >= deadline:
                raise TimeoutError(f"container {container_id} still {st.state} after {timeout}s")
            time.sleep(0.05)

    def exec_sync(self, container_id: str, cmd: Sequence[str], timeout: float = 10.0) -> Message:
        """ExecSync (served by containerd directly, no streaming server needed)."""
        req = self.pb.ExecSyncRequest(
            container_id=container_id, cmd=list(cmd), timeout=int(timeout)
        )
        return self.runtime.ExecSync(req, timeout=timeout + 5)

    def container_stats(self, container_id: str, timeout: float = DEFAULT_TIMEOUT) -> Message:
        req = self.pb.ContainerStatsRequest(container_id=container_id)
        return self.runtime.ContainerStats(req, timeout=timeout).stats

    def list_container_stats(self, timeout: float = DEFAULT_TIMEOUT) -> list[Message]:
        req = self.pb.ListContainerStatsRequest()
        return list(self.runtime.ListContainerStats(req, timeout=timeout).stats)

    def pod_sandbox_stats(self, pod_id: str, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """PodSandboxStats (``.stats``); raises NotImplementedError if the API lacks it."""
        if not self.api.has_pod_sandbox_stats:
            raise NotImplementedError("this CRI api.proto has no PodSandboxStats")
        req = self.pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)
        return self.runtime.PodSandboxStats(req, timeout=timeout).stats

    # ----------------------------------------------------------------- images

    def list_images(self, timeout: float = DEFAULT_TIMEOUT) -> list[Message]:
        return list(self.images.ListImages(self.pb.ListImagesRequest(), timeout=timeout).images)

    def image_status(self, image: str, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """The ``Image`` message, or None-like empty message when CRI does not know it."""
        req = self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=image))
        return self.images.ImageStatus(req, timeout=timeout).image

    # ----------------------------------------------------------------- teardown

    def remove_all(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Stop and remove every container and pod sandbox (what a test left running)."""
        for c in self.list_containers(timeout=timeout):
            with contextlib.suppress(grpc.RpcError):
                self.stop_container(c.id, timeout=timeout)
            with contextlib.suppress(grpc.RpcError):
                self.remove_container(c.id, timeout=timeout)
        for p in self.list_pod_sandboxes(timeout=timeout):
            with contextlib.suppress(grpc.RpcError):
                self.stop_pod_sandbox(p.id, timeout=timeout)
            with contextlib.suppress(grpc.RpcError):
                self.remove_pod_sandbox(p.id, timeout=timeout)


# --------------------------------------------------------------------------- CRI logs


@dataclass(frozen=True)
class CriLogLine:
    """One record of a CRI container log (the format ``kubectl logs`` reads)."""

    timestamp: str
    stream: str
    partial: bool
    content: str


_CRI_LOG_RE = re.compile(r"^(\S+) (stdout|stderr) ([PF]) ?(.*)$")


def parse_cri_log(text: str) -> list[CriLogLine]:
    """Parse ``<RFC3339Nano> <stdout|stderr> <P|F> <content>`` records; bad lines raise."""
    out = []
    for line in text.splitlines():
        m = _CRI_LOG_RE.match(line)
        if not m:
            raise ValueError(f"not a CRI log line: {line!r}")
        out.append(CriLogLine(m.group(1), m.group(2), m.group(3) == "P", m.group(4)))
    return out


def cri_log_messages(text: str, stream: str | None = None) -> list[str]:
    """Full messages (partial records joined), optionally of one stream only."""
    out: list[str] = []
    pending: dict[str, str] = {}
    for rec in parse_cri_log(text):
        if stream is not None and rec.stream != stream:
            continue
        pending[rec.stream] = pending.get(rec.stream, "") + rec.content
        if not rec.partial:
            out.append(pending.pop(rec.stream))
    return out


# --------------------------------------------------------------------------- CNI


#: RFC 5737 ranges: never routed, so pod traffic cannot reach anything real.
DOCUMENTATION_SUBNETS = tuple(
    ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)


def host_ipv4_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of this machine's interfaces (``ip -4 -json addr``)."""
    proc = subprocess.run(
        ["ip", "-4", "-json", "addr"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return []
    nets = []
    for link in json.loads(proc.stdout or "[]"):
        for info in link.get("addr_info", []):
            if "local" in info and "prefixlen" in info:
                iface = ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
                nets.append(iface.network)
    return nets


def pick_documentation_subnet(used: Sequence[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first RFC 5737 /24 that no local interface uses.

    Some machines put their own uplink on a documentation range (this one has 192.0.2.2/24 on
    eth0), so a fixed choice could shadow the host's network.
    """
    for net in DOCUMENTATION_SUBNETS:
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("every documentation subnet is in use on this machine")


class BridgeNetwork:
    """A CNI bridge + host-local conflist on a documentation subnet, and its cleanup.

    The bridge has no gateway address and no masquerading, and the subnet is an RFC 5737
    documentation range not used by any local interface (picked automatically by default):
    nothing a pod sends can leave the machine. IPAM state lives in a private ``data_dir``
    rather than /var/lib/cni.
    """

    def __init__(
        self,
        conf_dir: Path,
        data_dir: Path,
        *,
        subnet: str | None = None,
        name: str | None = None,
        bridge: str | None = None,
    ) -> None:
        used = host_ipv4_networks()
        if subnet is None:
            subnet = str(pick_documentation_subnet(used))
        net = ipaddress.IPv4Network(subnet)
        if not any(net.subnet_of(d) for d in DOCUMENTATION_SUBNETS):
            raise ValueError(f"{subnet} is not a documentation subnet")
        clash = [u for u in used if net.overlaps(u)]
        if clash:
            raise ValueError(f"{subnet} overlaps this machine's own network {clash[0]}")
        self.conf_dir = conf_dir
        self.data_dir = data_dir
        self.subnet = subnet
        suffix = secrets.token_hex(3)
        self.name = name or f"ctrtest-{suffix}"
        # Interface names are limited to 15 bytes.
        self.bridge = bridge or f"ctrt{suffix}"
        self.conflist_path = conf_dir / f"10-{self.name}.conflist"
        self._netns_before = _listdir(NETNS_DIR)
        self._netns_dir_existed = NETNS_DIR.exists()
        self._netns_dir_mounted = any(mp == str(NETNS_DIR) for mp, _ in mount_points())

    def conflist(self) -> dict[str, Any]:
        return {
            "cniVersion": "0.4.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": False,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.data_dir),
                        "ranges": [[{"subnet": self.subnet}]],
                    },
                }
            ],
        }

    def write(self) -> Path:
        """Write the conflist (containerd picks it up within a second or so)."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.conflist_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.conflist(), indent=2) + "\n")
        os.replace(tmp, self.conflist_path)
        return self.conflist_path

    def leftovers(self) -> list[str]:
        """Pod netns created since this network was set up (each is a leak once pods are gone)."""
        return [f"netns {NETNS_DIR / n}" for n in sorted(_listdir(NETNS_DIR) - self._netns_before)]

    def cleanup(self) -> list[str]:
        """Remove the bridge, the conflist, IPAM state and leftover pod netns.

        Returns the netns leftovers found (the bridge itself is expected to outlive pods:
        the bridge plugin never deletes it).
        """
        found = self.leftovers()
        for name in sorted(_listdir(NETNS_DIR) - self._netns_before):
            path = NETNS_DIR / name
            # A netns file is an nsfs bind mount; unlinking a mount point fails with EBUSY.
            for mp, _ in mount_points():
                if mp == str(path):
                    with contextlib.suppress(OSError):
                        unmount(mp)
            with contextlib.suppress(OSError):
                path.unlink()
        if Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "delete", self.bridge], check=False, capture_output=True)
        with contextlib.suppress(FileNotFoundError):
            self.conflist_path.unlink()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if not self._netns_dir_mounted and not _listdir(NETNS_DIR):
            _release_netns_dir()
            if not self._netns_dir_existed:
                with contextlib.suppress(OSError):
                    NETNS_DIR.rmdir()
        return found


def _listdir(path: Path) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def _release_netns_dir() -> None:
    """Undo the shared self bind mount CRI puts on /run/netns when it creates the first netns."""
    for mp, _ in mount_points():
        if mp == str(NETNS_DIR):
            with contextlib.suppress(OSError):
                unmount(mp)
