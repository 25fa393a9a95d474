"""Linux namespaces named by ``linux.namespaces``: join the ones with a path, create the rest.

Both happen in the helper process that forks the container init (see :mod:`.init`):
``setns``/``unshare`` of a pid or time namespace only affect the caller's *children*, so
the init must be forked afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence

from . import _libc
from .spec import ContainerError, Namespace, step

#: OCI namespace type → CLONE_NEW* flag (<linux/sched.h>).
FLAGS: dict[str, int] = {
    "pid": _libc.CLONE_NEWPID,
    "network": _libc.CLONE_NEWNET,
    "mount": _libc.CLONE_NEWNS,
    "ipc": _libc.CLONE_NEWIPC,
    "uts": _libc.CLONE_NEWUTS,
    "user": _libc.CLONE_NEWUSER,
    "cgroup": _libc.CLONE_NEWCGROUP,
    "time": _libc.CLONE_NEWTIME,
}

# runc's configs.NamespaceTypes() order for joining: user first (it grants the capabilities
# needed for the others), mount late (the other paths may live in the current mount ns).
_JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "mount", "cgroup", "time")


def unshare_flags(namespaces: Sequence[Namespace]) -> int:
    """The ``unshare(2)`` flags for the namespaces to create (those without a path)."""
    flags = 0
    for ns in namespaces:
        if not ns.path:
            flags |= FLAGS[ns.type]
    return flags


def is_new(namespaces: Sequence[Namespace], kind: str) -> bool:
    """Whether the container gets a new namespace of type ``kind`` (listed without a path)."""
    return any(ns.type == kind and not ns.path for ns in namespaces)


def is_shared_with_host(namespaces: Sequence[Namespace], kind: str) -> bool:
    """Whether ``kind`` is not listed at all, i.e. the container stays in the host's one."""
    return not any(ns.type == kind for ns in namespaces)


def check_supported(namespaces: Sequence[Namespace]) -> None:
    """Reject what this runtime cannot do: user namespaces need uid/gid maps written by a
    parent process, which this process model does not have yet."""
    if any(ns.type == "user" for ns in namespaces):
        raise ContainerError("user namespaces are not supported by this runtime")


def join_order(namespaces: Sequence[Namespace]) -> list[Namespace]:
    """The namespaces with a path, in the order runc joins them."""
    joined = [ns for ns in namespaces if ns.path]
    return sorted(joined, key=lambda ns: _JOIN_ORDER.index(ns.type))


def enter(namespaces: Sequence[Namespace], *, defer: Collection[str] = ()) -> None:
    """Join every namespace that has a path, then unshare the others, in this process.

    All paths are opened before the first ``setns``, like runc's nsexec: once this process
    has joined another mount namespace, a path such as ``/run/netns/x`` may no longer
    resolve. New namespaces whose type is in ``defer`` are left for the caller to create
    (the container init creates its cgroup namespace once it is in its cgroup: a new cgroup
    namespace is rooted at its creator's cgroup).
    """
    check_supported(namespaces)
    opened: list[tuple[Namespace, int]] = []
    try:
        for ns in join_order(namespaces):
            with step(f"opening {ns.type} namespace {ns.path}"):
                opened.append((ns, os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)))
        for ns, fd in opened:
            with step(f"joining {ns.type} namespace {ns.path}"):
                _libc.setns(fd, FLAGS[ns.type])
    finally:
        for _, fd in opened:
            os.close(fd)
    created = [ns for ns in namespaces if not ns.path and ns.type not in defer]
    flags = unshare_flags(created)
    if flags:
        kinds = ",".join(ns.type for ns in created)
        with step(f"creating namespaces ({kinds})"):
            _libc.unshare(flags)
