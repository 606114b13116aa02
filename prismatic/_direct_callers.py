"""Which connection each caller of a direct listener is on, and when to look for one that
went: pure bookkeeping, no I/O.

The listener (:mod:`._direct_listener`) tells :class:`CallerConnections` the descriptor
each caller's batch came on (``ZMQ_SRCFD``) and the connections its ROUTER's monitor saw
accepted and disconnected; it answers which callers to look for, and when. Looking
(whether a connection has the caller's routing id now) and what follows (dropping what was
held for a caller that is gone) are the listener's.

A caller's connection is known by its descriptor's number, which the kernel reuses, and
what the listener reads lags: a batch may be read after the monitor said its connection
went, even after its number went to a new connection. Hence (property tests,
``tests/test_direct_callers.py``):

* a caller whose connection went is looked for ``rejoin_s`` after that was seen, never
  sooner (a live caller's DEALER is back within ~100 ms, under the same routing id);
* no caller that went is left unlooked-for: one whose batch was read after its connection
  went is looked for then; one that came back without sending (its new connection's
  number unknown) is looked for again at each later disconnection; one with messages held
  whose batch came late on a reused number is looked for at each disconnection too;
* a caller whose routing id the ROUTER handed over to a new connection (its old one reset
  on its side only) is one that moved: known on the new one by its next batch, or, if it
  sent none, looked for when the old one ends (and found there).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CallerConnections", "UNPLACED"]

UNPLACED = -1  # a caller whose connection went, not seen on another since
EARLY_S = 0.01  # a timer may fire this much before its time (clock granularity)


class CallerConnections:
    """One listener's callers' connections (see the module docstring). ``fd_of`` is read
    and written by the listener's hot path directly (one dict lookup per batch)."""

    __slots__ = ("rejoin_s", "fd_of", "went", "closed_fds")

    def __init__(self, rejoin_s: float) -> None:
        self.rejoin_s = rejoin_s
        # Each caller's connection: the descriptor its last batch came on, or UNPLACED.
        self.fd_of: dict[bytes, int] = {}
        self.went: dict[bytes, float] = {}  # when each UNPLACED caller's connection went
        self.closed_fds: set[int] = set()  # connections gone, their numbers not reused yet

    def moved(self, token: bytes, fd: int, now: float) -> bool:
        """A batch of ``token`` came on ``fd``, not the connection it was known on. True:
        that connection was seen gone already (the batch was read late): look for
        ``token`` ``rejoin_s`` from ``now``."""
        if fd in self.closed_fds:
            self.fd_of[token] = UNPLACED
            self.went[token] = now
            return True
        self.fd_of[token] = fd
        return False

    def accepted(self, fd: int) -> None:
        """A new connection has the number ``fd``."""
        self.closed_fds.discard(fd)

    def disconnected(self, fd: int, now: float, held: Iterable[bytes]) -> list[bytes]:
        """Connection ``fd`` went (seen at ``now``): the callers to look for ``rejoin_s``
        later. Those on it, and those whose connection went before and who sent nothing
        since (``fd`` may have been their new one), are timed from ``now``; ``held`` (the
        callers with messages held) are looked for too (one may be on a reused number)."""
        self.closed_fds.add(fd)
        tokens = []
        for token, f in self.fd_of.items():
            if f == fd or f == UNPLACED:
                self.fd_of[token] = UNPLACED
                self.went[token] = now
                tokens.append(token)
        placed = set(tokens)
        tokens += [t for t in held if t not in placed]
        return tokens

    def due(self, tokens: Iterable[bytes], now: float) -> list[bytes]:
        """Of ``tokens`` (a look scheduled ``rejoin_s`` ago), those to look for at ``now``:
        still known, and whose own connection did not go again since (a look for that one
        comes later)."""
        edge = now - self.rejoin_s + EARLY_S
        return [t for t in tokens if t in self.fd_of and self.went.get(t, 0.0) <= edge]

    def forget(self, token: bytes) -> None:
        """``token``'s caller is gone."""
        self.fd_of.pop(token, None)
        self.went.pop(token, None)
