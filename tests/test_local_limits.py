"""Caps of the hub and the mailboxes (prismatic/_local_limits.py): reading them from the
environment, and the admission of connections as a state machine (hypothesis). The caps at
work against a real node are in tests/test_hub.py and tests/test_mailbox.py."""

from __future__ import annotations

import os
import resource

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prismatic._errors import NodeError
from prismatic import _local_limits
from prismatic._local_limits import (
    Admissions, LocalLimits, fix_mailbox_limits, hub_limits, mailbox_limits, tree_mailbox_limits,
)


def test_defaults_and_overrides_come_from_the_environment():
    assert hub_limits({}).max_connections == 16384
    assert mailbox_limits({}).max_connections == 4096
    got = mailbox_limits({"PRISMATIC_MAILBOX_MAX_CONNECTIONS": "10",
                          "PRISMATIC_HUB_MAX_CONNECTIONS": "99",
                          "PRISMATIC_MAX_CONNECTIONS_PER_PID": "3", "PRISMATIC_FD_RESERVE": "0",
                          "PRISMATIC_MAX_FRAME_BYTES": "4096",
                          "PRISMATIC_MAX_BUFFERED_BYTES": "8192"})
    assert got == LocalLimits(10, 3, 0, 4096, 8192)


def test_a_tree_keeps_the_mailbox_caps_its_node_read_before_the_fork(monkeypatch):
    # Outside a node, each mailbox reads the environment as it is now.
    monkeypatch.setattr(_local_limits, "_tree_mailbox", None)
    monkeypatch.setenv("PRISMATIC_MAILBOX_MAX_CONNECTIONS", "7")
    assert tree_mailbox_limits().max_connections == 7
    monkeypatch.setenv("PRISMATIC_MAILBOX_MAX_CONNECTIONS", "8")
    assert tree_mailbox_limits().max_connections == 8
    # The node fixes them once before it forks its tree: its workers do not read them again.
    assert fix_mailbox_limits().max_connections == 8
    monkeypatch.setenv("PRISMATIC_MAILBOX_MAX_CONNECTIONS", "9")
    assert tree_mailbox_limits().max_connections == 8
    monkeypatch.setenv("PRISMATIC_MAILBOX_MAX_CONNECTIONS", "none")
    with pytest.raises(NodeError, match="PRISMATIC_MAILBOX_MAX_CONNECTIONS"):
        fix_mailbox_limits()  # the node's check: a bad value is one line before any fork


@pytest.mark.parametrize("var,value", [
    ("PRISMATIC_HUB_MAX_CONNECTIONS", "0"), ("PRISMATIC_MAX_CONNECTIONS_PER_PID", "many"),
    ("PRISMATIC_FD_RESERVE", "-1"), ("PRISMATIC_MAX_FRAME_BYTES", str(2 ** 40)),
    ("PRISMATIC_MAX_BUFFERED_BYTES", "1.5")])
def test_a_bad_value_is_one_clear_error_naming_the_variable(var, value):
    with pytest.raises(NodeError, match=var):
        hub_limits({var: value})


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 4)), max_size=60),
       st.integers(1, 8), st.integers(1, 4))
def test_admissions_never_exceed_the_caps(steps, total, per_pid):
    """Connect (True) or disconnect (False) a peer pid, in any order: the open count stays
    within both caps, and equals the sum over pids of what each holds."""
    adm = Admissions(LocalLimits(total, per_pid, fd_reserve=0))
    held: dict[int, int] = {}
    for connect, pid in steps:
        if connect:
            if adm.admit(pid, 3) is None:
                held[pid] = held.get(pid, 0) + 1
        elif held.get(pid):
            adm.release(pid)
            held[pid] -= 1
        else:
            adm.release(pid)  # a pid with nothing open: a no-op
        assert adm.open == sum(held.values()) <= total
        assert all(n <= per_pid for n in adm.by_pid.values())
        assert {k: v for k, v in held.items() if v} == adm.by_pid


def test_a_descriptor_within_the_reserve_is_refused():
    adm = Admissions(LocalLimits(100, 100, fd_reserve=10))
    limit = os.sysconf("SC_OPEN_MAX")
    assert adm.admit(1, limit - 11) is None
    assert "reserve" in (adm.admit(1, limit - 10) or "")
    assert adm.open == 1


def test_the_reserve_is_at_most_a_quarter_of_the_limit():
    """A process started with a low descriptor limit still accepts connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        adm = Admissions(LocalLimits(100, 100, fd_reserve=256))
        assert adm.admit(1, 149) is None
        assert adm.admit(1, 150) is not None
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_peer_of_another_user_is_refused_and_not_counted():
    adm = Admissions(LocalLimits(100, 100, fd_reserve=0))
    assert adm.admit_peer(7, os.getuid() + 1, 3) == ("uid", f"uid {os.getuid() + 1} (another user)")
    assert adm.open == 0
    assert adm.admit_peer(7, os.getuid(), 3) is None and adm.by_pid == {7: 1}
    full = Admissions(LocalLimits(1, 1, fd_reserve=0))
    assert full.admit_peer(7, os.getuid(), 3) is None
    kind, why = full.admit_peer(8, os.getuid(), 3) or ("", "")
    assert kind == "capacity" and "cap" in why
