"""The pure switch between the node path and a direct route (``prismatic._pair_switch``):
random runs of messages, answers, connections coming up, time passing and callee exits,
checked against what keeps a pair's order and bounds what it costs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prismatic._pair_switch import Hop, PairState, Switch, parse_switch_after

SWITCH_AFTER = 4
TRIES = 3

events = st.lists(st.one_of(
    st.just(("send",)), st.just(("send",)), st.just(("send",)),
    st.tuples(st.just("answer"), st.booleans()),
    st.just(("connect",)), st.just(("disconnect",)),
    st.tuples(st.just("wait"), st.floats(0, 3)),
    st.just(("full",)), st.just(("drained",)),  # the caller's link to the node
    st.just(("exit",))), max_size=300)


def run(script: list[Any], asks: list[int] | None = None) -> list[Hop]:
    """Drive a Switch as the caller's routes do: an answer is read only while it was
    asked for, the route's connection is looked at only while it connects; a hello or a
    fence while the link to the node is full does not go (recorded as the GIVE_UP it is:
    the message on the node path, the route dropped). ``asks``: where hellos were due."""
    sw = Switch(SWITCH_AFTER, connect_wait=2.0, tries=TRIES)
    now, connected, hops = 0.0, False, []
    route_open = full = False
    for event in script:
        kind = event[0]
        if kind == "send":
            hop = sw.hop(now, connected and route_open)
            if hop is Hop.HELLO and asks is not None:
                asks.append(len(hops))
            if hop in (Hop.HELLO, Hop.FENCE) and full:
                sw.not_sent()
                hop, route_open, connected = Hop.GIVE_UP, False, False
            hops.append(hop)
            if hop is Hop.FENCE:  # the route must take what follows the fence at once
                assert connected and route_open, "a fence before the route's connection"
            if hop is Hop.GIVE_UP:
                route_open, connected = False, False
        elif kind == "answer" and sw.state is PairState.ASKED:
            route_open = sw.answered(event[1], now)
        elif kind == "connect":
            connected = True
        elif kind == "disconnect":
            connected = False
        elif kind in ("full", "drained"):
            full = kind == "full"
        elif kind == "wait":
            now += event[1]
        elif kind == "exit":
            sw.failed()
            route_open = False
    return hops


@settings(max_examples=400, deadline=None)
@given(events)
def test_the_node_path_and_the_route_never_interleave(script: list[Any]) -> None:
    hops = run(script)
    # What a pair sends after its fence all goes on the route, until the callee is gone:
    # a NODE after a FENCE only follows an exit (then nothing more on the route).
    fenced = False
    for i, hop in enumerate(hops):
        if hop is Hop.FENCE:
            assert not fenced, "two fences"
            fenced = True
        elif hop is Hop.ROUTE:
            assert fenced, "on the route before its fence"
        elif fenced:
            assert hop is Hop.NODE
            assert Hop.ROUTE not in hops[i:], "back on the route after the node path"
    # A fence comes after a hello, and a route is given up only before a fence.
    if Hop.FENCE in hops:
        assert Hop.HELLO in hops[:hops.index(Hop.FENCE)]
    for i, hop in enumerate(hops):
        if hop is Hop.GIVE_UP:
            assert Hop.FENCE not in hops[:i]


@settings(max_examples=400, deadline=None)
@given(events)
def test_a_pair_asks_late_and_rarely(script: list[Any]) -> None:
    asks: list[int] = []
    hops = run(script, asks)
    hellos = [i for i, hop in enumerate(hops) if hop is Hop.HELLO]
    if asks:
        assert asks[0] == SWITCH_AFTER - 1  # the SWITCH_AFTER-th message asks
    assert len(asks) <= TRIES and set(hellos) <= set(asks)
    assert hops.count(Hop.GIVE_UP) <= TRIES
    # after each give-up, the next hello waits for many more messages
    for i, hop in enumerate(hops):
        if hop is Hop.GIVE_UP:
            later = [j for j in asks if j > i]
            assert not later or later[0] - i >= 64 * SWITCH_AFTER


def test_an_exit_ends_switching_for_good() -> None:
    sw = Switch(SWITCH_AFTER)
    assert [sw.hop(0, False) for _ in range(SWITCH_AFTER)][-1] is Hop.HELLO
    assert sw.answered(True, 0.0)
    assert sw.hop(0.1, True) is Hop.FENCE
    assert sw.hop(0.2, True) is Hop.ROUTE
    sw.failed()
    assert {sw.hop(t, True) for t in range(1000)} == {Hop.NODE}
    assert not sw.answered(True, 0.0)
    assert Switch(0).state is PairState.OFF  # PRISMATIC_DIRECT_SWITCH_AFTER=0: never


def test_a_route_that_never_connects_is_asked_again_later_then_given_up() -> None:
    sw = Switch(SWITCH_AFTER, connect_wait=2.0, tries=TRIES)
    now, hellos, give_ups, sent = 0.0, [], [], 0
    while sw.state is not PairState.OFF:
        hop = sw.hop(now, False)
        sent += 1
        if hop is Hop.HELLO:
            hellos.append(sent)
            assert sw.answered(True, now)
        elif hop is Hop.GIVE_UP:
            give_ups.append(sent)
        now += 0.5
        assert sent < 10_000, "never given up"
    assert len(hellos) == len(give_ups) == TRIES
    for gave_up, asked in zip(give_ups[:-1], hellos[1:], strict=True):
        assert asked - gave_up > 64 * SWITCH_AFTER  # each try waits longer
    assert {sw.hop(now, True) for _ in range(100)} == {Hop.NODE}


def test_a_hello_never_answered_is_given_up_in_time() -> None:
    sw = Switch(SWITCH_AFTER, connect_wait=2.0, tries=TRIES)
    assert [sw.hop(0.0, False) for _ in range(SWITCH_AFTER)][-1] is Hop.HELLO
    assert sw.hop(9.9, False) is Hop.NODE  # still waiting for the answer
    assert sw.hop(10.0, False) is Hop.GIVE_UP
    assert sw.state is PairState.NODE and not sw.answered(True, 10.0)  # a late one: dropped
    hops = [sw.hop(11.0, False) for _ in range(64 * SWITCH_AFTER + SWITCH_AFTER)]
    assert hops[-1] is Hop.HELLO and hops.count(Hop.HELLO) == 1


@pytest.mark.parametrize("lost", ["hello", "fence"])
def test_a_hello_or_fence_the_node_path_did_not_take_is_tried_again_later(lost: str) -> None:
    """The caller's link to the callee's node stayed full when its hello or its fence was
    due: a busy moment, not a callee without a route. The pair asks again later, like a
    route that did not connect, ``tries`` times in all."""
    sw = Switch(SWITCH_AFTER, connect_wait=2.0, tries=TRIES)
    for attempt in range(TRIES):
        due = SWITCH_AFTER + 64 * SWITCH_AFTER * attempt - (attempt > 0)  # one below: NODE
        hops = [sw.hop(0.0, True) for _ in range(due)]
        assert hops[-1] is Hop.HELLO and hops.count(Hop.HELLO) == 1
        if lost == "fence":
            assert sw.answered(True, 0.0) and sw.hop(0.0, True) is Hop.FENCE
        sw.not_sent()
        assert sw.state is (PairState.NODE if attempt < TRIES - 1 else PairState.OFF)
        assert sw.hop(0.0, True) is Hop.NODE
    assert {sw.hop(0.0, True) for _ in range(1000)} == {Hop.NODE}


def test_the_setting_takes_whole_numbers_and_says_why_not() -> None:
    assert parse_switch_after(None) == (16, "") and parse_switch_after("0") == (0, "")
    assert parse_switch_after(" 40 ") == (40, "")
    for bad in ("x", "-3", "1.5"):
        n, why = parse_switch_after(bad)
        assert n == 16 and "PRISMATIC_DIRECT_SWITCH_AFTER" in why
