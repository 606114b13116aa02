"""A worker's own child processes die with it (issue: no process outlives its supervisor,
for the whole subtree of each child), in real nodes.

Each child leads a process group its supervisor kills when the child exits; supervisors are
child subreapers that kill orphans whose child is gone; a forked child of a worker does not
hold the worker's mailbox, so a message to a dead worker is a dead letter at once.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import prismatic as p
from tests.conftest import alive, module_node, wait_until

node = module_node("tests.process_apps:spawners")


def _pid(n, path: str) -> int:
    return wait_until(lambda: n.conn.pid_of(path), 10, f"{path} to run")


def _restarted(n, path: str, old: int) -> int:
    return wait_until(lambda: (new := n.conn.pid_of(path)) not in (None, old) and new, 10,
                      f"{path} restarted")


def _descendants(n, path: str) -> list[int]:
    """Every kind of process a worker can leave behind, made by the worker at ``path``."""
    w = _pid(n, path)
    made = [*n.conn.call(p.Pid(n.conn.status().node, w), ["fork", 3]),
            *n.conn.call(p.Pid(n.conn.status().node, w), ["popen", 2])]
    made.append(n.conn.call(p.Pid(n.conn.status().node, w), ["session"]))
    made.append(n.conn.call(p.Pid(n.conn.status().node, w), ["daemon"]))
    assert all(alive(d) for d in made)
    return made


def _assert_dead_letters(n, ospid: int) -> None:
    dead = p.Pid(n.conn.status().node, ospid)
    started = time.monotonic()
    with pytest.raises(p.NoProcError):
        n.conn.call(dead, ["echo", 1], timeout=5)
    assert n.conn.cast(dead, "lost", timeout=5) is False
    assert time.monotonic() - started < 1.0  # refused at once, not a timeout


def test_a_sigkilled_workers_children_die_with_it(node):
    made = _descendants(node, "s")
    old = _pid(node, "s")
    os.kill(old, signal.SIGKILL)
    _restarted(node, "s", old)
    wait_until(lambda: not [d for d in made if alive(d)], 5, "the worker's children to die")
    _assert_dead_letters(node, old)


def test_an_orderly_stopped_workers_children_die_with_it(node):
    made = _descendants(node, "s")
    old = _pid(node, "s")
    node.conn.terminate_child("", "s")
    try:
        wait_until(lambda: not [d for d in made if alive(d)], 5, "the worker's children to die")
        _assert_dead_letters(node, old)
    finally:
        node.conn.restart_child("", "s")


def test_children_of_a_killed_supervisors_worker_die_too(node):
    """mid is SIGKILLed: s2 dies by PDEATHSIG and its children are orphaned into the root
    supervisor (a subreaper), which kills them."""
    made = _descendants(node, "mid/s2")
    old_mid, old_s2 = _pid(node, "mid"), _pid(node, "mid/s2")
    os.kill(old_mid, signal.SIGKILL)
    _restarted(node, "mid", old_mid)
    wait_until(lambda: not [d for d in made if alive(d)], 5, "s2's children to die")
    _assert_dead_letters(node, old_s2)
    # and the orphans were reaped, not left as zombies of the root supervisor
    root = node.conn.status().root_pid
    from prismatic._process import child_pids
    from tests.conftest import process_state
    wait_until(lambda: not [c for c in child_pids(root) if process_state(c) == "Z"], 5,
               "no zombie under the root")


def test_a_forked_child_does_not_hold_the_workers_mailbox(node):
    w = p.Pid(node.conn.status().node, _pid(node, "s"))
    held, still = node.conn.call(w, ["mailbox_in_fork"])
    assert held and all(fd >= 0 for fd in held)  # the listener and our connection
    assert still == []


def test_a_live_workers_daemon_lives_as_long_as_the_worker(node):
    """A daemon a live worker started (double fork, new session: out of the worker's group)
    is orphaned into the worker, a subreaper, not into the supervisor: the supervisor's
    sweeps (one runs on every death among its children) leave it alone; it dies with the
    worker, as the other tests show."""
    from prismatic._process import child_pids, process_name

    w = _pid(node, "s")
    daemon = node.conn.call(p.Pid(node.conn.status().node, w), ["daemon"])
    assert daemon in child_pids(w)
    root = node.conn.status().root_pid
    spare = wait_until(lambda: [c for c in child_pids(root)
                                if process_name(c) == "prism:spare"], 10, "a spare")[0]
    os.kill(spare, signal.SIGKILL)  # a death the root supervisor hears of: it sweeps
    wait_until(lambda: spare not in child_pids(root), 10, "the spare reaped")
    assert alive(daemon) and _pid(node, "s") == w


def _anonymous_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Anonymous:"))


def test_trim_heap_unmaps_what_malloc_holds_free():
    """What the node does before it forks the tree: pages that malloc holds free stop being
    mapped, so no process of the tree copies or unmaps them (a fork and an exit cost per
    mapped page)."""
    from prismatic._process import trim_heap

    if not trim_heap():
        pytest.skip("no malloc_trim in this C library")
    blocks = [bytes(2000) for _ in range(20_000)]  # ~40 MiB from malloc (not Python's arenas)
    above = bytes(2000)  # keeps the freed blocks off the top of the heap: free() keeps them
    del blocks
    before = _anonymous_kib()
    assert trim_heap()
    assert before - _anonymous_kib() > 20 * 1024, "free heap pages are still mapped"
    del above
