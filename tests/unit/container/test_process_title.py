"""A container process's title: its own args in ``/proc/<pid>/cmdline``, its name in
``comm`` (``containerd_shimkit.proctitle``), set in forked children of the test."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from containerd_shimkit import proctitle
from tests.support.forked import result_in_child


def _own_title() -> dict[str, object]:
    cmdline = Path("/proc/self/cmdline").read_bytes()
    return {
        "argv": [a.decode() for a in cmdline.split(b"\0") if a],
        "comm": Path("/proc/self/comm").read_text().rstrip("\n"),
    }


def test_comm_is_the_basename_cut_to_15_bytes() -> None:
    assert proctitle.comm_for("/hello.wasm") == "hello.wasm"
    assert proctitle.comm_for("/app/a-rather-long-module-name.wasm") == "a-rather-long-m"
    assert proctitle.comm_for("sleep") == "sleep"
    assert proctitle.comm_for("/dir/") == "dir"
    assert proctitle.comm_for("") == ""


def test_the_process_shows_the_given_args_and_name() -> None:
    def work() -> object:
        proctitle.set_process_title(["/hello.wasm", "arg1"])
        return _own_title()

    before = _own_title()
    assert "/hello.wasm" not in before["argv"]  # type: ignore[operator]
    assert result_in_child(work) == {"argv": ["/hello.wasm", "arg1"], "comm": "hello.wasm"}
    assert _own_title() == before  # the test process itself is untouched


def test_args_too_long_for_the_argv_area_are_truncated_not_skipped() -> None:
    def work() -> object:
        start, end = proctitle._argv_area()
        long_arg = "x" * (end - start + 100)
        assert not proctitle.set_cmdline(["/m.wasm", long_arg])  # refused by default
        refused = _own_title()["argv"]
        assert proctitle.set_cmdline(["/m.wasm", long_arg], truncate=True)
        return {"refused": refused, "truncated": _own_title()["argv"], "room": end - start}

    result = result_in_child(work)
    assert isinstance(result, dict)
    assert "/m.wasm" not in result["refused"]
    argv = result["truncated"]
    assert argv[0] == "/m.wasm" and set(argv[1]) == {"x"}
    assert len("\0".join(argv)) + 1 <= result["room"]


def test_an_explicit_comm_wins() -> None:
    def work() -> object:
        proctitle.set_process_title(["/m.wasm#run", "a"], "m.wasm")
        return _own_title()

    assert result_in_child(work) == {"argv": ["/m.wasm#run", "a"], "comm": "m.wasm"}


# --- what an exec would inherit ----------------------------------------------------------


def test_every_fd_above_2_becomes_close_on_exec_with_or_without_close_range() -> None:
    from containerd_shimkit.container.init import set_cloexec_from

    def work(use_close_range: bool) -> object:
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
        for fd in fds:
            os.set_inheritable(fd, True)
        os.set_inheritable(2, True)
        set_cloexec_from(3, use_close_range=use_close_range)
        return [os.get_inheritable(fd) for fd in (2, *fds)]

    for use_close_range in (True, False):
        result = result_in_child(functools.partial(work, use_close_range))
        assert result == [True, False, False, False]
