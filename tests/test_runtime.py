"""The supervisor loop's request forwarding (``supervisors/_runtime.py``): OTP's supervisor
API on a supervisor two levels down, in a real node. A request for ``mid/leaf`` goes root ->
mid -> leaf over the children's channels and its reply comes back the same way."""

from __future__ import annotations

import pytest

import prismatic as p
from tests.conftest import alive, module_node, wait_until

node = module_node("tests.apps:nested")  # root > mid > leaf (one_for_all) > a, b

LEAF = "mid/leaf"


def _reason(call, *args) -> str:
    with pytest.raises(p.SupervisorError) as info:
        call(*args)
    return info.value.reason


def test_the_api_on_a_supervisor_two_levels_down(node):
    c = node.conn
    a, b = c.pid_of(f"{LEAF}/a"), c.pid_of(f"{LEAF}/b")
    assert c.which_children(LEAF) == [p.ChildInfo("b", b, False, "worker"),
                                      p.ChildInfo("a", a, False, "worker")]
    assert c.count_children(LEAF) == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}

    spec = p.ChildSpec(id="x", start="tests.apps:Idle", args=("x",))
    x = c.start_child(LEAF, spec)
    assert x == c.pid_of(f"{LEAF}/x") and alive(x)
    assert _reason(c.start_child, LEAF, spec) == "already_started"
    assert c.which_children(LEAF)[0] == p.ChildInfo("x", x, False, "worker")
    assert c.count_children(LEAF) == {"specs": 3, "active": 3, "supervisors": 0, "workers": 3}
    assert _reason(c.restart_child, LEAF, "x") == "running"
    assert _reason(c.delete_child, LEAF, "x") == "running"

    c.terminate_child(LEAF, "x")
    wait_until(lambda: not alive(x), 10, "x to exit")
    assert c.which_children(LEAF)[0] == p.ChildInfo("x", None, False, "worker")
    assert c.count_children(LEAF)["active"] == 2
    assert _reason(c.start_child, LEAF, spec) == "already_present"
    # terminating a child of a one_for_all supervisor is not a restart of the others
    assert (c.pid_of(f"{LEAF}/a"), c.pid_of(f"{LEAF}/b")) == (a, b)

    x2 = c.restart_child(LEAF, "x")
    assert x2 not in (None, x) and x2 == c.pid_of(f"{LEAF}/x") and alive(x2)
    c.terminate_child(LEAF, "x")
    c.delete_child(LEAF, "x")
    assert [i.id for i in c.which_children(LEAF)] == ["b", "a"]
    assert _reason(c.delete_child, LEAF, "x") == "not_found"
    assert _reason(c.terminate_child, LEAF, "nobody") == "not_found"
    assert _reason(c.restart_child, LEAF, "nobody") == "not_found"


def test_a_stopped_nested_supervisor_is_not_found_until_restarted(node):
    c = node.conn
    leaf = c.pid_of(LEAF)
    assert p.ChildInfo("leaf", leaf, False, "supervisor") in c.which_children("mid")
    c.terminate_child("mid", "leaf")
    assert _reason(c.which_children, LEAF) == "not_found"  # no running supervisor there
    assert _reason(c.count_children, f"{LEAF}/deeper") == "not_found"
    assert c.restart_child("mid", "leaf") == c.pid_of(LEAF)
    assert [i.id for i in c.which_children(LEAF)] == ["b", "a"]
    assert c.count_children("mid") == {"specs": 2, "active": 2, "supervisors": 1,
                                       "workers": 1}


def test_a_supervisor_whose_parent_is_gone_takes_its_subtree_down(node_factory):
    """The supervisor gave up its PDEATHSIG (in its start callable): when its parent is
    SIGKILLed, the parent channel's EOF alone must make it kill its children and exit."""
    import os
    import signal

    n = node_factory("tests.failure_apps:orphaned")
    sup, worker = n.conn.pid_of("s"), n.conn.pid_of("s/w")
    assert f"outliving supervisor {sup}" in n.lines()
    os.kill(n.conn.status().root_pid, signal.SIGKILL)
    wait_until(lambda: not alive(sup) and not alive(worker), 10, "s and its worker to exit")
