"""The template's client side (what ``start`` does), its staleness check and proctitle."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
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
    # A file in containerd's own directory, not an abstract name anyone could bind first.
    assert a.startswith("/run/containerd/shim-template-")
    assert a == template.template_name(PROGRAM, "/run/containerd/containerd.sock")
    assert a != template.template_name(PROGRAM, "/run/containerd/other.sock")
    assert template.template_name(PROGRAM, "/run/other/containerd.sock").startswith(
        "/run/other/shim-template-"
    )
    assert a != template.template_name("/usr/bin/other-shim", "/run/containerd/containerd.sock")
    assert template.template_name(PROGRAM, "containerd.sock") == ""  # no template then


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
    containerd_dir: Path, listener: socket.socket
) -> None:
    """Should containerd's directory let another user bind the template's path, that user
    must not receive the listener (it would serve containerd) or start's environment."""
    containerd_dir.chmod(0o777)  # an unsafe containerd directory
    flags = Flags(namespace="ns", id="c1", address=str(containerd_dir / "containerd.sock"))

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


# --------------------------------------------------------------------------- the real template


@pytest.fixture
def containerd_dir() -> Iterator[Path]:
    """A directory like ``/run/containerd``: root's, 0711, so that other users can reach
    paths in it but create nothing there. Under /run, like containerd's, because pytest's
    ``tmp_path`` is 0700 (another user could not even try there)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    path = Path(tempfile.mkdtemp(prefix="shimtest-", dir="/run"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(action: Callable[[], None]) -> str:
    """Run ``action`` in a child with uid/gid 65534; what it raised (or "ok")."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                action()
                outcome = "ok"
            except OSError as exc:
                outcome = type(exc).__name__
            os.write(w, outcome.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        outcome = f.read().decode()
    os.waitpid(pid, 0)
    return outcome


def _squat(path: str) -> Callable[[], None]:
    def squat() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(path)  # leaked on purpose: a squatter keeps its socket
        sock.listen(1)

    return squat


def _create(path: str) -> Callable[[], None]:
    def create() -> None:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o666))

    return create


class RealTemplate:
    """:func:`template.main_template` in a child process, watching ``watched`` (its
    "containerd", a ``sleep``) as the real one watches containerd."""

    def __init__(self, flags: Flags) -> None:
        from containerd_shimkit.cli.main import ShimSpec

        self.watched = subprocess.Popen(["sleep", "600"])
        self.reaped = False
        spec = ShimSpec("shim", lambda: ("0", "0"), lambda: object)  # type: ignore[arg-type, return-value]
        args = Flags(address=flags.address, action="template", rest=[str(self.watched.pid)])
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            code = 1
            try:
                code = template.main_template(args, spec, PROGRAM)
            except SystemExit as exit:  # SIGTERM's way out, as in the shim binary
                code = exit.code if isinstance(exit.code, int) else 1
            finally:
                os._exit(code)

    def wait_listening(self, path: str) -> None:
        deadline = time.monotonic() + 30.0
        while True:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(path)
                return
            except OSError:
                assert time.monotonic() < deadline, "the template never listened"
                assert os.waitpid(self.pid, os.WNOHANG) == (0, 0), "the template exited"
                time.sleep(0.05)
            finally:
                probe.close()

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        self.reaped = True
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        self.watched.kill()
        self.watched.wait()
        if not self.reaped:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _served(flags: Flags, tpl: RealTemplate) -> None:
    """``start``'s request is answered with a daemon the template forked."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = template.fork_from_template(flags, listener, PROGRAM)
        assert pid is not None, "the template did not serve"
        try:
            assert _parent_of(pid) == tpl.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a daemon of a stand-in shim: nothing to serve
    finally:
        listener.close()


@pytest.mark.parametrize("ending", ["containerd exits", "SIGTERM"])
def test_another_user_cannot_take_the_templates_path_and_the_template_serves(
    containerd_dir: Path, ending: str
) -> None:
    """An unprivileged local user used to bind the template's abstract name first and keep
    every new pod on the slow path. The path now sits in containerd's directory, where only
    root creates files; the template serves there and leaves no file behind."""
    flags = Flags(namespace="ns", id="c1", address=str(containerd_dir / "containerd.sock"))
    path = template.template_name(PROGRAM, flags.address)
    assert os.path.dirname(path) == str(containerd_dir)
    assert _as_nobody(_squat(path)) == "PermissionError"
    assert _as_nobody(_create(f"{path}.lock")) == "PermissionError"
    assert not os.path.exists(path)

    tpl = RealTemplate(flags)
    try:
        tpl.wait_listening(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        _served(flags, tpl)
        _served(flags, tpl)  # and again: it keeps serving
        if ending == "SIGTERM":
            os.kill(tpl.pid, signal.SIGTERM)
        else:
            tpl.watched.kill()
        assert tpl.wait() == 0
    finally:
        tpl.close()
    assert sorted(os.listdir(containerd_dir)) == [], "the template left files behind"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a root-owned directory")
def test_a_dead_templates_files_never_block_a_new_one(containerd_dir: Path) -> None:
    """A template killed outright leaves its socket file (and lock file) behind: the next
    one takes them over, rather than finding the path in use forever."""
    flags = Flags(namespace="ns", id="c1", address=str(containerd_dir / "containerd.sock"))
    path = template.template_name(PROGRAM, flags.address)
    first = RealTemplate(flags)
    try:
        first.wait_listening(path)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        first.close()
    assert os.path.exists(path) and os.path.exists(f"{path}.lock")  # what it left
    # Its socket refuses connections: start falls back to exec (and spawns a template).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        assert template.fork_from_template(flags, listener, PROGRAM) is None

    second = RealTemplate(flags)
    try:
        second.wait_listening(path)
        _served(flags, second)
        second.watched.kill()  # containerd exits
        assert second.wait() == 0
    finally:
        second.close()
    assert sorted(os.listdir(containerd_dir)) == []


def test_one_template_at_a_time_and_its_files_go_with_it(tmp_path: Path) -> None:
    """The lock, taken before the template's imports, keeps a second template from starting
    (a live template binds at once but listens only when warm, so its socket alone cannot
    tell a second one whether it is alive)."""
    path = str(tmp_path / "shim-template-x")
    first = template._claim(path)
    assert first is not None
    assert template._claim(path) is None  # a second template, in another process or not
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as warming:
        warming.bind(path)  # bound, not listening yet: as a template still importing
    template._release(path, first)
    assert os.listdir(tmp_path) == []
    again = template._claim(path)
    assert again is not None
    template._release(path, again)


def test_no_template_in_a_directory_others_can_write(tmp_path: Path) -> None:
    """There another user could create the path first: the template does not run (start
    execs every daemon) rather than serve from a path it cannot own."""
    tmp_path.chmod(0o777)
    assert template._claim(str(tmp_path / "shim-template-x")) is None
    assert os.listdir(tmp_path) == []
