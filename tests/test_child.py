"""The child's side of supervision: which spare may become which child, and how a spare
gets ready to become it."""

from __future__ import annotations

import os
import select

import msgspec

import prismatic as p
from prismatic._process import fork_child
from prismatic.supervisors import _child
from prismatic.supervisors._child import (
    knows, may_become_a_worker, proc_name, spare_main, word_waiting,
)
from prismatic.transports._channel import open_channel_pair
from prismatic.transports._frames import Become, ExitingFrame, ReadyFrame
from tests.apps import FailInit, Idle


def test_a_spare_serves_the_very_spec_it_was_made_with():
    spec = p.ChildSpec(id="db", start=Idle)
    assert knows({"db": spec}, "db", spec)


def test_a_replaced_spec_of_the_same_id_is_not_served():
    old = p.ChildSpec(id="db", start=Idle)
    new = msgspec.structs.replace(old, restart="transient")
    assert not knows({"db": old}, "db", new)
    assert not knows({}, "db", old)


def test_a_dynamic_child_is_served_from_its_template_with_other_args():
    template = p.ChildSpec(id="job", start=Idle)
    child = msgspec.structs.replace(template, args=("x",))
    assert knows({"job": template}, "job-3", child)  # key != id: a dynamic child
    other = p.ChildSpec(id="job", start=p.Worker)
    assert not knows({"job": template}, "job-3", other)  # not the template's start


def test_process_names_say_what_the_process_is():
    assert proc_name(p.ChildSpec(id="db", start=Idle), "db") == "prism:db"
    sup = p.ChildSpec(id="pool", start=p.SupervisorSpec(), type="supervisor")
    assert proc_name(sup, "pool") == "prism-sup:pool"


def test_word_waiting_peeks_without_taking():
    mine, theirs = open_channel_pair()
    try:
        assert not word_waiting(theirs)
        mine.send(Become("w", "w", ()))
        assert word_waiting(theirs) and word_waiting(theirs)  # still there: only peeked
        assert theirs.receive_one() == Become("w", "w", ())
        mine.close()
        assert word_waiting(theirs)  # EOF is a word too: receive_one returns at once
    finally:
        theirs.close()


def _spare_run(monkeypatch, told_first: bool) -> tuple[bool, object]:
    """Run spare_main in a real forked process, told which child to become (a worker whose
    init fails: it reports and exits) before it exists or once it has rehearsed; return
    whether it rehearsed and what it answered."""
    marks_r, marks_w = os.pipe()
    real = _child.rehearse_start

    def rehearse(specs):  # the spare's own copy, after the fork: it marks, then rehearses
        os.write(marks_w, b"r")
        real(specs)

    monkeypatch.setattr(_child, "rehearse_start", rehearse)
    mine, theirs = open_channel_pair()
    specs = {"w": p.ChildSpec(id="w", start=FailInit)}
    if told_first:
        mine.send(Become("w", "w", ()))
    pid = fork_child((theirs.fileno(), marks_w),
                     lambda: spare_main(theirs, specs, (), f"spare-test-{os.getpid()}"),
                     "prism:spare")
    theirs.close()
    os.close(marks_w)
    try:
        if not told_first:
            assert select.select([marks_r], [], [], 10)[0], "the spare never rehearsed"
            mine.send(Become("w", "w", ()))
        mine.sock.settimeout(10)
        frame = mine.receive_one()
        os.waitpid(pid, 0)
        os.set_blocking(marks_r, False)
        try:
            rehearsed = os.read(marks_r, 16) != b""
        except BlockingIOError:
            rehearsed = False
        return rehearsed, frame
    finally:
        os.close(marks_r)
        mine.close()


def test_a_spare_told_at_once_becomes_the_child_without_rehearsing(monkeypatch):
    # A burst of starts sends Become as soon as the spare exists: rehearsing then only
    # delays the child the supervisor waits for.
    rehearsed, frame = _spare_run(monkeypatch, told_first=True)
    assert isinstance(frame, ExitingFrame) and "init refuses" in p.describe(frame.reason)
    assert not rehearsed


def test_a_waiting_spare_rehearses_then_becomes_the_child(monkeypatch):
    rehearsed, frame = _spare_run(monkeypatch, told_first=False)
    assert isinstance(frame, ExitingFrame) and "init refuses" in p.describe(frame.reason)
    assert rehearsed


def test_only_a_spare_that_may_become_a_worker_is_worth_preparing():
    sup = p.ChildSpec(id="s", type="supervisor", start=p.SupervisorSpec())
    assert not may_become_a_worker({"s": sup, "t": msgspec.structs.replace(sup, id="t")})
    assert may_become_a_worker({"s": sup, "w": p.ChildSpec(id="w", start=Idle)})


def test_a_spare_that_can_only_become_a_supervisor_prepares_nothing_for_a_worker(monkeypatch):
    # A root of many small supervisors: its spares all become supervisors, which close a
    # worker's context unused. Made anyway (or rehearsed for), the pages it wrote stayed
    # private to each of them: ~45 each, ~0.17 MiB a supervisor.
    marks_r, marks_w = os.pipe()
    real_context, real_rehearse = _child.WorkerContext, _child.rehearse_start

    def context(*args):  # the spare's own copies, after the fork: they mark, then run
        os.write(marks_w, b"c")
        return real_context(*args)

    def rehearse(specs):
        os.write(marks_w, b"r")
        real_rehearse(specs)

    monkeypatch.setattr(_child, "WorkerContext", context)
    monkeypatch.setattr(_child, "rehearse_start", rehearse)
    mine, theirs = open_channel_pair()
    specs = {"s": p.ChildSpec(id="s", type="supervisor", start=p.SupervisorSpec())}
    pid = fork_child((theirs.fileno(), marks_w),
                     lambda: spare_main(theirs, specs, ("t",), f"spare-test-{os.getpid()}",
                                        may_become_a_worker(specs)),
                     "prism:spare")
    theirs.close()
    os.close(marks_w)
    try:
        mine.sock.settimeout(10)
        mine.send(Become("s", "s", ()))
        frame = mine.receive_one()
        while not isinstance(frame, (ReadyFrame, ExitingFrame)):
            frame = mine.receive_one()
        assert isinstance(frame, ReadyFrame)  # it became the supervisor (no children)
        mine.close()  # its parent gone: it exits
        os.waitpid(pid, 0)
        os.set_blocking(marks_r, False)
        try:
            marks = os.read(marks_r, 16)
        except BlockingIOError:
            marks = b""
        assert marks == b""
    finally:
        os.close(marks_r)
        mine.close()
