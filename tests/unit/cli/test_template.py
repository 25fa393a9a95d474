"""The template's client side (what ``start`` does), its staleness check and proctitle."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from containerd_shimkit.cli import template
from containerd_shimkit.cli.flags import Flags
from containerd_shimkit.cli.start import StartError

PROGRAM = "/usr/local/bin/containerd-shim-test-v1"


@pytest.fixture
def flags(tmp_path: Path) -> Flags:
    # A unique containerd address per test: the template's name derives from it.
    return Flags(namespace="ns", id="c1", address=str(tmp_path / "containerd.sock"))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    yield sock
    sock.close()


def serve_once(
    name: str, answer: Callable[[socket.socket], None], as_uid: int | None = None
) -> int:
    """A stand-in template in a child process: accept one request, ``answer`` it.

    The child listens itself, as the real template does: the client learns the template's
    pid from the listening socket's credentials (``SO_PEERCRED``).
    """
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            if as_uid is not None:
                os.setuid(as_uid)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            server.bind(name)
            server.listen(1)
            os.write(ready_w, b"x")
            conn, _ = server.accept()
            answer(conn)
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    return pid


def reply(message: dict[str, object]) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        data, ancdata, _, _ = conn.recvmsg(1 << 20, socket.CMSG_LEN(16))
        request = json.loads(data)
        assert request["argv"][0] == PROGRAM and request["cwd"] == os.getcwd()
        assert ancdata, "no listener fd passed"
        conn.send(json.dumps(message).encode())

    return answer


def test_name_depends_on_binary_and_containerd() -> None:
    a = template.template_name(PROGRAM, "/run/containerd/containerd.sock")
    assert a.startswith("\0containerd-shim-template-")
    assert a == template.template_name(PROGRAM, "/run/containerd/containerd.sock")
    assert a != template.template_name(PROGRAM, "/run/other/containerd.sock")
    assert a != template.template_name("/usr/bin/other-shim", "/run/containerd/containerd.sock")


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("on", True), ("off", False)])
def test_enabled_by_default_and_switched_off_by_env(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    if value is None:
        monkeypatch.delenv("SHIM_TEMPLATE", raising=False)
    else:
        monkeypatch.setenv("SHIM_TEMPLATE", value)
    assert template.enabled() is expected


def test_no_template_means_exec(flags: Flags, listener: socket.socket) -> None:
    assert template.fork_from_template(flags, listener, PROGRAM) is None
    assert listener.fileno() != -1  # still ours, for the exec'd daemon


def test_forked_daemon_pid_is_returned_and_the_listener_handed_over(
    flags: Flags, listener: socket.socket
) -> None:
    child = serve_once(template.template_name(PROGRAM, flags.address), reply({"pid": 4242}))
    try:
        assert template.fork_from_template(flags, listener, PROGRAM) == 4242
        assert listener.fileno() == -1
    finally:
        os.waitpid(child, 0)


def test_a_refusal_means_exec(flags: Flags, listener: socket.socket) -> None:
    name = template.template_name(PROGRAM, flags.address)
    child = serve_once(name, reply({"error": "the shim was upgraded"}))
    try:
        assert template.fork_from_template(flags, listener, PROGRAM) is None
        assert listener.fileno() != -1
    finally:
        os.waitpid(child, 0)


def test_a_silent_template_fails_start_and_is_killed(
    flags: Flags, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(template, "REQUEST_TIMEOUT", 0.3)
    child = serve_once(template.template_name(PROGRAM, flags.address), lambda conn: time.sleep(30))
    with pytest.raises(StartError, match="did not answer"):
        template.fork_from_template(flags, listener, PROGRAM)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_changed_sources_are_detected(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("x = 1\n")
    loaded = {str(source): source.stat().st_mtime_ns}
    assert not template._changed(loaded)
    os.utime(source, ns=(0, source.stat().st_mtime_ns + 1))
    assert template._changed(loaded)
    source.unlink()
    assert template._changed(loaded)


def test_set_cmdline_rewrites_argv_in_place() -> None:
    code = (
        "import sys\n"
        "from containerd_shimkit.proctitle import set_cmdline\n"
        "fits = set_cmdline(['shim', '-id', 'c1'])\n"
        "too_long = set_cmdline(['x' * 4096])\n"
        "raw = open('/proc/self/cmdline', 'rb').read()\n"
        "print(fits, too_long, raw.rstrip(b'\\0').split(b'\\0'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, " " * 64], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "True False [b'shim', b'-id', b'c1']"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
def test_a_template_name_taken_by_another_user_gets_nothing(
    flags: Flags, listener: socket.socket
) -> None:
    """Abstract socket names are first come, first served: a squatter must not receive the
    listener (it would serve containerd) or start's environment."""

    def squat(conn: socket.socket) -> None:
        if conn.recv(1 << 20):
            os._exit(3)  # it got the request

    child = serve_once(template.template_name(PROGRAM, flags.address), squat, as_uid=65534)
    assert template.fork_from_template(flags, listener, PROGRAM) is None
    assert listener.fileno() != -1
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the squatter received the request"


def test_a_spare_that_keeps_dying_is_forked_less_and_less_often(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Whatever kills a spare before it is handed over would kill the next one too: the
    template backs off instead of forking spares in a tight loop."""
    from containerd_shimkit.cli.main import ShimSpec

    forks: list[float] = []

    def fork_a_dead_spare(self: template._Server) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.close()  # the spare is gone at once
        forks.append(time.monotonic())
        self.spare = template._Spare(0, ours)
        self.poller.register(ours, 0)

    async def identify(argv: list[str]) -> None:
        pass

    monkeypatch.setattr(template._Server, "_fork_spare", fork_a_dead_spare)
    monkeypatch.setattr(template, "SPARE_DELAY", 0.01)
    monkeypatch.setattr(template, "MAX_SPARE_DELAY", 0.08)
    monkeypatch.setattr(template, "IDLE_SECONDS", 0.6)  # then the loop ends
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(str(tmp_path / "template.sock"))
    server.listen(1)
    pidfd = os.pidfd_open(os.getpid())  # never readable while this test runs
    spec = ShimSpec("shim", lambda: ("0", "0"), lambda: object, identify_daemon=identify)  # type: ignore[arg-type, return-value]
    try:
        assert template._Server(server, pidfd, spec, {}, []).serve() == 0
    finally:
        os.close(pidfd)
    # 0.01 + 0.02 + 0.04 + 0.08 + 0.08… s apart: about ten in 0.6 s, not thousands.
    assert 3 <= len(forks) <= 20, len(forks)
    assert server.fileno() == -1  # closed, so that the next template can bind the name
