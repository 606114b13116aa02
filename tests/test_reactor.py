"""The plain workers' event loop, on real sockets, signals and timers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from prismatic._reactor import Reactor


def test_callbacks_run_in_order_and_timers_by_due_time():
    r = Reactor()
    seen: list[str] = []
    r.call_later(0.02, seen.append, "late")
    r.call_later(0.01, seen.append, "early")
    r.call_soon(seen.append, "soon-1")
    r.call_soon(seen.append, "soon-2")
    cancelled = r.call_later(0.005, seen.append, "cancelled")
    cancelled.cancel()
    r.run(lambda: len(seen) == 4)
    assert seen == ["soon-1", "soon-2", "early", "late"]
    r.close()
    assert r.is_closed()


def test_a_reader_removed_by_an_earlier_callback_of_the_same_batch_never_fires():
    r = Reactor()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    got: list[str] = []

    def on(name: str, mine: socket.socket, other: socket.socket) -> None:
        got.append(name)
        mine.recv(100)
        r.remove_reader(other.fileno())  # its event is in this same batch

    r.add_reader(a.fileno(), on, "a", a, c)
    r.add_reader(c.fileno(), on, "c", c, a)
    b.send(b"x")
    d.send(b"y")
    r.run(lambda: bool(got))
    assert len(got) == 1
    assert r.remove_reader(a.fileno()) != r.remove_reader(c.fileno())  # exactly one left
    for s in (a, b, c, d):
        s.close()
    r.close()


def test_a_raising_callback_is_counted_and_the_loop_goes_on():
    r = Reactor()
    seen: list[int] = []
    r.call_soon(lambda: 1 / 0)
    r.call_soon(seen.append, 1)
    r.run(lambda: bool(seen))
    assert r.errors == 1 and seen == [1]
    r.close()


def test_a_signal_handler_runs_from_the_loop():
    r = Reactor()
    hits: list[str] = []
    old = signal.getsignal(signal.SIGUSR1)
    try:
        r.add_signal_handler(signal.SIGUSR1, hits.append, "usr1")
        r.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
        r.run(lambda: bool(hits))
        assert hits == ["usr1"]
    finally:
        r.close()
        signal.signal(signal.SIGUSR1, old)


def test_hand_over_moves_readers_timers_and_queued_callbacks_to_asyncio():
    r = Reactor()
    a, b = socket.socketpair()
    got: list[str] = []
    r.add_reader(a.fileno(), lambda: got.append(a.recv(10).decode()))
    r.call_later(0.02, got.append, "timer")
    dropped = r.call_later(0.01, got.append, "cancelled after the move")
    r.call_soon(got.append, "queued")
    loop = asyncio.new_event_loop()
    try:
        r.hand_over(loop)
        dropped.cancel()  # the caller's handle still governs the moved timer
        assert r.is_closed()
        b.send(b"data")
        done = loop.create_future()
        loop.call_later(0.1, done.set_result, None)
        loop.run_until_complete(done)
        assert got[0] == "queued" and set(got) == {"queued", "data", "timer"}
    finally:
        loop.remove_reader(a.fileno())
        loop.close()
        a.close()
        b.close()


def test_run_returns_false_once_handed_over():
    r = Reactor()
    loop = asyncio.new_event_loop()
    try:
        r.call_soon(r.hand_over, loop)
        assert r.run(lambda: False) is False
    finally:
        loop.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["soon", "later", "cancelled"]),
                          st.integers(min_value=0, max_value=4)), min_size=1, max_size=12))
def test_callbacks_run_soon_ones_first_in_order_then_timers_by_due_time(ops):
    """Whatever is scheduled: call_soon callbacks run first, in call order; timers run by due
    time, ties in call order; a cancelled one never runs."""
    r = Reactor()
    ran: list[int] = []
    expected_soon, expected_timers = [], []
    for i, (kind, ms) in enumerate(ops):
        if kind == "soon":
            r.call_soon(ran.append, i)
            expected_soon.append(i)
        else:
            handle = r.call_later(ms / 1000, ran.append, i)
            if kind == "cancelled":
                handle.cancel()
            else:
                expected_timers.append((handle.when(), i))
    expected = expected_soon + [i for _, i in sorted(expected_timers)]
    r.call_later(0.006, lambda: ran.append(-1))  # after every timer above
    r.run(lambda: bool(ran) and ran[-1] == -1)
    r.close()
    assert ran[:-1] == expected
