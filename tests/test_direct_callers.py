"""The bookkeeping of a direct listener's callers' connections (``prismatic._direct_callers``):
random runs of callers connecting, sending, blipping (a connection that goes and comes back
at once), going, batches read late and descriptor numbers reused, driven as the listener
drives it (looks scheduled ``rejoin_s`` later; a caller looked for is gone if no connection
has its routing id). Checked: no caller is taken for gone while a connection has its id or
within ``rejoin_s`` of a blip, and none that went is left unlooked-for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from prismatic._direct_callers import EARLY_S, UNPLACED, CallerConnections

REJOIN_S = 2.0
TOKENS = [bytes([1, i]) for i in range(4)]

events = st.lists(st.one_of(
    st.tuples(st.just("connect"), st.integers(0, 3)),
    st.tuples(st.just("send"), st.integers(0, 3)),
    st.tuples(st.just("close"), st.integers(0, 3)),
    st.tuples(st.just("blip"), st.integers(0, 3)),
    st.tuples(st.just("fence"), st.integers(0, 3)),
    st.just(("read",)), st.just(("read",)),
    st.tuples(st.just("wait"), st.floats(0, 3))), max_size=120)


@dataclass
class World:
    """The connections as they are, what the listener has not read yet, and its timers."""

    book: CallerConnections = field(default_factory=lambda: CallerConnections(REJOIN_S))
    now: float = 0.0
    open_fd: dict[bytes, int] = field(default_factory=dict)  # a token's open connection
    unread: list[tuple[bytes, int]] = field(default_factory=list)  # batches, in order
    looks: list[tuple[float, list[bytes]]] = field(default_factory=list)
    held: set[bytes] = field(default_factory=set)  # read before their fence
    fenced: set[bytes] = field(default_factory=set)
    protected: dict[bytes, float] = field(default_factory=dict)  # blipped: not gone before
    gone: list[bytes] = field(default_factory=list)

    def connect(self, token: bytes) -> None:
        if token in self.open_fd or token in self.gone:
            return
        used = set(self.open_fd.values())
        fd = min(n for n in range(10, 20) if n not in used)  # the kernel reuses the lowest
        self.open_fd[token] = fd
        self.book.accepted(fd)

    def close(self, token: bytes) -> None:
        fd = self.open_fd.pop(token, None)
        if fd is None:
            return
        tokens = self.book.disconnected(fd, self.now, sorted(self.held))
        if tokens:
            self.looks.append((self.now + REJOIN_S, tokens))

    def read(self) -> None:
        if not self.unread:
            return
        token, fd = self.unread.pop(0)
        if self.book.fd_of.get(token) != fd and self.book.moved(token, fd, self.now):
            self.looks.append((self.now + REJOIN_S, [token]))
        if token not in self.fenced:
            self.held.add(token)

    def wait(self, dt: float) -> None:
        end = self.now + dt
        while True:
            due = sorted((when, i) for i, (when, _) in enumerate(self.looks) if when <= end)
            if not due:
                break
            when, i = due[0]
            _, tokens = self.looks.pop(i)
            self.now = max(self.now, when)
            for token in self.book.due(tokens, self.now):
                assert token in self.book.fd_of
                if token in self.open_fd:  # a connection has its routing id: kept
                    continue
                assert self.now >= self.protected.get(token, 0.0), "gone within a blip"
                self.book.forget(token)
                self.held.discard(token)
                self.gone.append(token)
        self.now = end


def play(script: list[Any]) -> World:
    w = World()
    for kind, *args in script:
        token = TOKENS[args[0]] if args and kind != "wait" else b""
        if kind == "connect":
            w.connect(token)
        elif kind == "send" and token in w.open_fd:
            w.unread.append((token, w.open_fd[token]))
        elif kind == "close":
            w.close(token)
        elif kind == "blip" and token in w.open_fd and w.book.fd_of.get(token) == \
                w.open_fd[token] and all(t != token for t, _ in w.unread):
            w.close(token)  # its DEALER is back within ~100 ms, nothing of it unread
            w.protected[token] = w.now + REJOIN_S - EARLY_S
            w.wait(0.1)
            w.connect(token)
        elif kind == "fence":
            w.fenced.add(token)
            w.held.discard(token)
        elif kind == "read":
            w.read()
        elif kind == "wait":
            w.wait(args[0])
    return w


@settings(max_examples=400, deadline=None)
@given(events)
# u goes; t blips just before u's look: t is not looked for in its blip
@example([("connect", 0), ("send", 0), ("read",), ("connect", 1), ("send", 1), ("read",),
          ("close", 1), ("wait", 1.95), ("blip", 0)])
def test_no_caller_is_taken_for_gone_while_connected_or_blipping(script: list[Any]) -> None:
    play(script)  # the checks are in World.wait


@settings(max_examples=400, deadline=None)
@given(events)
# t, fenced, blips, is found back, then goes on the connection it never sent on
@example([("connect", 0), ("send", 0), ("read",), ("fence", 0), ("blip", 0), ("wait", 2.5)])
# t's batch is read after its connection went and its number went to u's connection
@example([("connect", 0), ("send", 0), ("close", 0), ("connect", 1), ("read",),
          ("fence", 0), ("wait", 2.5)])
def test_every_caller_that_went_is_looked_for(script: list[Any]) -> None:
    """Once every connection went and what they brought is read, every caller is taken
    for gone within two REJOIN_S: none stays known for ever."""
    w = play(script)
    for token in list(w.open_fd):
        w.close(token)
    while w.unread:
        w.read()
    w.wait(2 * REJOIN_S + 1)
    assert w.book.fd_of == {} and w.book.went == {}


@settings(max_examples=200, deadline=None)
@given(events)
def test_a_caller_that_went_is_looked_for_rejoin_s_after_it_was_seen_going(
        script: list[Any]) -> None:
    """A caller whose connection's going was matched to it (its last batch came on it,
    read in time) is taken for gone REJOIN_S after, not later, if it does not come back."""
    w = play(script)
    while w.unread:
        w.read()
    for token, fd in list(w.open_fd.items()):
        if w.book.fd_of.get(token) == fd:
            w.close(token)
            w.wait(REJOIN_S)
            assert token not in w.book.fd_of and token in w.gone


def test_a_batch_read_after_its_connection_went_is_looked_for_then() -> None:
    book = CallerConnections(REJOIN_S)
    book.accepted(10)
    assert book.disconnected(10, 1.0, []) == []  # nothing read from it yet
    assert book.moved(b"t", 10, 1.5)  # its batch, read late: look for it REJOIN_S from now
    assert book.fd_of[b"t"] == UNPLACED
    assert book.due([b"t"], 3.0) == [] and book.due([b"t"], 3.5) == [b"t"]
