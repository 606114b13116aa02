"""When a pair of processes leaves the node path for a direct route: a pure state machine.

One :class:`Switch` per process of another node that this process sends to. The caller's
routes (:mod:`._remote_routes`) tell it what they observed (the hello's answer, whether the
route's connection is up, the callee's exit) and do, for each message, the :class:`Hop`
it returns. No I/O here, so its invariants are checked by property tests
(``tests/test_pair_switch.py``):

* the ``SWITCH_AFTER``-th message asks for a route (``HELLO``: a ``d_hello`` on the node
  path, the message after it there too); the pair keeps the node path until the answer
  came *and* the route's connection is up;
* then exactly one ``FENCE`` (a ``d_fence`` on the node path, the message on the route),
  and every later message on the route (``ROUTE``): nothing goes on the node path between
  the fence and the callee's exit, which is what lets the callee hold the route's messages
  until the fence and keep the pair's order;
* a hello not answered within ``5 * connect_wait`` (a callee busy in a long handler, or a
  process that answers no hello) or a route that does not connect within ``connect_wait``
  is dropped (``GIVE_UP``: the message on the node path), and so is a hello or a fence
  the node path did not take (this process's link to the callee's node full: the caller
  says so, :meth:`Switch.not_sent`); each is asked for again after
  ``64 * SWITCH_AFTER * failures`` more messages, ``tries`` times in all; a callee that
  offers no route or the callee's exit ends the switching for good (``OFF``).
"""

from __future__ import annotations

import enum
import os

__all__ = ["PairState", "Hop", "Switch", "SWITCH_AFTER", "SWITCH_AFTER_PROBLEM", "CONNECT_WAIT_S",
           "CONNECT_TRIES", "parse_switch_after"]

# Messages to one Pid of another node before the pair asks for a direct route (0: never).
# A route costs a TCP connection and a CurveZMQ handshake (~1-2 ms of CPU on both sides),
# and the callee a listener (a ZeroMQ context and its I/O thread); each message on it saves
# the node's hop (~50-100 us of round trip here): a pair pays that back after ~10-20
# messages, and one that exchanges a handful never pays it.
SWITCH_ENV = "PRISMATIC_DIRECT_SWITCH_AFTER"


def parse_switch_after(text: str | None) -> tuple[int, str]:
    """``PRISMATIC_DIRECT_SWITCH_AFTER`` as a count (default 16), and why it was not taken
    ("" if it was): a value that is not a whole number >= 0 leaves the default."""
    if text is None or not text.strip():
        return 16, ""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        return 16, f"{SWITCH_ENV}={text[:40]!r} is not a whole number >= 0: using 16"
    return n, ""


SWITCH_AFTER, SWITCH_AFTER_PROBLEM = parse_switch_after(os.environ.get(SWITCH_ENV))
CONNECT_WAIT_S = 2.0  # a route's connection not up by then: dropped, asked for again later
CONNECT_TRIES = 3  # routes asked for at most, per pair


class PairState(enum.Enum):
    NODE = "node"  # on the node path, counting messages
    ASKED = "asked"  # d_hello sent, its answer not read yet
    CONNECTING = "connecting"  # the route's handshake is under way
    DIRECT = "direct"  # d_fence sent: everything goes on the route
    OFF = "off"  # stays on the node path (no listener, no connection, callee gone)


class Hop(enum.Enum):
    """Where one message goes (and what goes before it)."""

    NODE = "node"  # on the node path
    HELLO = "hello"  # a d_hello on the node path, then the message there
    FENCE = "fence"  # a d_fence on the node path, then the message on the route
    ROUTE = "route"  # on the route
    GIVE_UP = "give_up"  # the route is dropped (not connected in time); on the node path


class Switch:
    """One pair's state (see the module docstring)."""

    __slots__ = ("state", "sent", "failures", "deadline", "switch_after", "connect_wait",
                 "tries")

    def __init__(self, switch_after: int = SWITCH_AFTER, connect_wait: float = CONNECT_WAIT_S,
                 tries: int = CONNECT_TRIES) -> None:
        self.state = PairState.NODE if switch_after > 0 else PairState.OFF
        self.sent = 0
        self.failures = 0  # routes that did not connect in time
        self.deadline = 0.0
        self.switch_after = switch_after
        self.connect_wait = connect_wait
        self.tries = tries

    def hop(self, now: float, connected: bool) -> Hop:
        """The next message's hop at ``now`` (monotonic); ``connected``: the route's
        connection is up (read only while CONNECTING)."""
        state = self.state
        if state is PairState.DIRECT:
            return Hop.ROUTE
        if state is PairState.NODE:
            self.sent += 1
            if self.sent >= self.switch_after:
                self.state = PairState.ASKED
                self.deadline = now + self.connect_wait * 5
                return Hop.HELLO
            return Hop.NODE
        if state is PairState.CONNECTING and connected:
            self.state = PairState.DIRECT
            return Hop.FENCE
        if state in (PairState.ASKED, PairState.CONNECTING) and now >= self.deadline:
            self.retry_later()
            return Hop.GIVE_UP
        return Hop.NODE

    def retry_later(self) -> None:
        """This try failed: asked again after more messages, ``tries`` times in all."""
        self.failures += 1
        self.state = PairState.NODE if self.failures < self.tries else PairState.OFF
        self.sent = -64 * self.switch_after * self.failures

    def not_sent(self) -> None:
        """The ``HELLO`` or ``FENCE`` just returned did not go (the node path stayed full):
        nothing was asked, or nothing goes on the route; a try that failed."""
        if self.state in (PairState.ASKED, PairState.DIRECT):
            self.retry_later()

    def answered(self, offered: bool, now: float) -> bool:
        """The hello's answer came (``offered``: a port). True: open the route now."""
        if self.state is not PairState.ASKED:
            return False
        if not offered:
            self.state = PairState.OFF
            return False
        self.state = PairState.CONNECTING
        self.deadline = now + self.connect_wait
        return True

    def failed(self) -> None:
        """The callee exited or its node is lost: no route any more (what follows goes on
        the node path)."""
        self.state = PairState.OFF
