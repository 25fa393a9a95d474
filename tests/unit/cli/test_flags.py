"""Go flag syntax as containerd uses it."""

from __future__ import annotations

import pytest

from containerd_shimkit.cli.flags import UsageError, parse, to_argv


def test_containerd_start_command_line() -> None:
    flags = parse(
        [
            "-namespace",
            "k8s.io",
            "-address",
            "/run/c.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "-debug",
            "start",
        ]
    )
    assert (flags.namespace, flags.address, flags.id, flags.debug) == (
        "k8s.io",
        "/run/c.sock",
        "abc",
        True,
    )
    assert flags.publish_binary == "/usr/bin/containerd"
    assert flags.action == "start"


def test_equals_double_dash_and_bool_values() -> None:
    flags = parse(
        ["--namespace=default", "-id=x", "-debug=false", "-bundle", "/b", "delete", "extra"]
    )
    assert (flags.namespace, flags.id, flags.debug, flags.bundle) == ("default", "x", False, "/b")
    assert (flags.action, flags.rest) == ("delete", ["extra"])


def test_no_action_means_daemon_and_version_flags() -> None:
    assert parse(["-namespace", "n", "-id", "i"]).action == ""
    assert parse(["-v"]).v and parse(["--version"]).version and parse(["-info"]).info


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-bogus"], "flag provided but not defined: -bogus"),
        (["-id"], "flag needs an argument: -id"),
        (["-debug=maybe"], 'invalid boolean value "maybe" for -debug'),
    ],
)
def test_errors_read_like_go(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(argv)


def test_daemon_argv_round_trips() -> None:
    flags = parse(["-namespace", "n", "-id", "i", "-address", "/a", "-debug", "start"])
    again = parse(to_argv(flags))
    assert (again.namespace, again.id, again.address, again.debug, again.action) == (
        "n",
        "i",
        "/a",
        True,
        "",
    )
