"""A supervisor's zygote and its spares, in real nodes: who owns them, what happens when the
zygote dies or hangs, and that a child added later gets fast restarts too."""

from __future__ import annotations

import os
import signal

import prismatic as p
from prismatic._process import child_pids, process_name
from tests.conftest import alive, process_state, wait_until

def _of_kind(sup: int, comm: str) -> list[int]:
    return [c for c in child_pids(sup) if process_name(c) == comm]


def _zygote_of(sup: int) -> int:
    """The supervisor's zygote (a clone is named after it until it renames itself)."""
    return wait_until(lambda: len(z := _of_kind(sup, "prism:zygote")) == 1 and z[0], 10,
                      "exactly one zygote")


def _restart(n, key: str) -> int:
    old = n.conn.pid_of(key)
    os.kill(old, signal.SIGKILL)
    return wait_until(lambda: (new := n.conn.pid_of(key)) not in (None, old) and new, 10,
                      f"{key} restarted")


def test_spares_and_children_are_the_supervisors_own_children(node_factory):
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    _zygote_of(root)
    wait_until(lambda: _of_kind(root, "prism:spare"), 10, "a spare")
    new = _restart(n, "w1")
    assert new in child_pids(root)  # made by the zygote, parented to the supervisor


def test_a_killed_zygote_is_replaced_and_leaves_no_stray(node_factory):
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    zygote = _zygote_of(root)
    os.kill(zygote, signal.SIGKILL)
    wait_until(lambda: _zygote_of(root) != zygote, 10, "a new zygote")
    for _ in range(3):
        _restart(n, "w2")
    wait_until(lambda: len(_of_kind(root, "prism:spare")) == 1, 10, "exactly one spare")
    assert not [c for c in child_pids(root) if process_state(c) == "Z"]
    assert {c.id for c in n.conn.which_children()} == {"w1", "w2", "w3"}


def test_a_hung_zygote_does_not_hold_up_a_restart(node_factory):
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    zygote = _zygote_of(root)
    wait_until(lambda: _of_kind(root, "prism:spare"), 10, "a spare")
    os.kill(zygote, signal.SIGSTOP)
    try:
        for _ in range(3):  # the first takes the spare; the next ones cannot wait for one
            _restart(n, "w3")
    finally:
        os.kill(zygote, signal.SIGCONT)
    assert alive(zygote)


def test_a_child_added_later_gets_a_new_zygote_that_knows_it(node_factory):
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    zygote = _zygote_of(root)
    n.conn.start_child("", p.ChildSpec(id="late", start="tests.apps:Idle", args=("late",)))
    _restart(n, "late")  # forked directly: the zygote did not know the spec
    wait_until(lambda: _zygote_of(root) != zygote, 10, "the zygote renewed")
    wait_until(lambda: _of_kind(root, "prism:spare"), 10, "a spare of the new zygote")
    spare = _of_kind(root, "prism:spare")[0]
    assert _restart(n, "late") == spare  # the spare became the restarted child


def test_without_a_zygote_the_supervisor_forks_its_own_spares(node_factory, monkeypatch):
    monkeypatch.setenv("PRISMATIC_ZYGOTE", "0")  # read by the node: the fallback path
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    spare = wait_until(lambda: _of_kind(root, "prism:spare"), 10, "a spare")[0]
    assert not _of_kind(root, "prism:zygote")
    assert _restart(n, "w1") == spare
    wait_until(lambda: (s := _of_kind(root, "prism:spare")) and s != [spare], 10,
               "the next spare")
