"""The worker runtime's queue in real processes: handled one at a time in arrival order
(also when backed up), the mailbox_limit pause and resume, and its failure paths."""

from __future__ import annotations

import pytest

import prismatic as p
from tests.conftest import module_node, wait_until

node = module_node("tests.messaging_apps:queues")


def _pid(n, path: str) -> p.Pid:
    ospid = wait_until(lambda: n.conn.pid_of(path), 10, f"{path} to run")
    return p.Pid(n.conn.status().node, ospid)


def _mixed_burst(conn, dest: p.Pid, n: int) -> tuple[list, list]:
    """From one sender: casts, sends and (pipelined) calls interleaved; the log the
    worker must show, and the requests in flight."""
    want, reqs = [], []
    for i in range(n):
        kind = ("cast", "info", "call")[i % 3]
        if kind == "cast":
            assert conn.cast(dest, i)
        elif kind == "info":
            assert conn.send(dest, i)
        else:
            reqs.append((i, conn.send_request(dest, i)))
        want.append([kind, i])
    return want, reqs


def test_a_backed_up_plain_worker_handles_one_senders_messages_in_order(node):
    rec = _pid(node, "rec")
    before = len(node.conn.call(rec, "log"))
    node.conn.cast(rec, ["block", 0.3])  # nothing is read meanwhile: all of it queues up
    want, reqs = _mixed_burst(node.conn, rec, 300)
    assert [node.conn.receive_response(r, 10) for _, r in reqs] == [i for i, _ in reqs]
    assert node.conn.call(rec, "log")[before:] == want


def test_a_backed_up_async_worker_handles_one_senders_messages_in_order(node, tmp_path):
    """While an async handler awaits, the worker reads on and queues: the queue is served
    first in, first out."""
    arec = _pid(node, "arec")
    before = len(node.conn.call(arec, "log"))
    gate = tmp_path / "gate"
    node.conn.cast(arec, ["hold", str(gate)])
    want, reqs = _mixed_burst(node.conn, arec, 45)  # below its mailbox_limit of 50
    wait_until(lambda: _depth(node, "arec") >= 40, 10, "the queue to fill")
    gate.touch()
    assert [node.conn.receive_response(r, 10) for _, r in reqs] == [i for i, _ in reqs]
    assert node.conn.call(arec, "log")[before:] == want


def _depth(n, path: str) -> float:
    for line in n.conn.metrics().splitlines():
        if line.startswith(f'prismatic_mailbox_depth{{path="{path}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_mailbox_limit_pauses_reading_then_resumes_in_order(node, tmp_path):
    """An async worker holding its queue at mailbox_limit stops reading: the kernel buffer
    fills and the sender gets MailboxFull. Once the queue drains below half the limit it
    reads again, and every message accepted is handled, in order, by the same process."""
    arec = _pid(node, "arec")
    before = len(node.conn.call(arec, "log"))
    gate = tmp_path / "gate"
    node.conn.cast(arec, ["hold", str(gate)])
    accepted = 0
    with pytest.raises(p.MailboxFull):
        for accepted in range(20_000):  # without the pause the worker would read them all
            node.conn.cast(arec, accepted, timeout=0.2)
    assert accepted > 50  # the queue (the limit) and the kernel buffer took the others
    gate.touch()
    log = wait_until(lambda: (got := node.conn.call(arec, "log", timeout=10)[before:])
                     and len(got) >= accepted and got, 20, "the backlog handled")
    assert log == [["cast", i] for i in range(accepted)]
    assert _pid(node, "arec") == arec


def test_a_mailbox_limit_of_one_still_reads_every_message(node):
    """At limit 1 the mailbox pauses at each message; it must resume once it is handled."""
    one = _pid(node, "one")
    for i in range(5):
        assert node.conn.call(one, ["x", i], timeout=5) == ["x", i]
