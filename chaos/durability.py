"""Durability: the node SIGKILLed again and again while clients emit acknowledged events,
then restarted on the same data directory.

Two client threads emit ``chaos.durability`` events, each with a key of its own
(``<client>-<n>``), and remember the sequence number each acknowledgement returned. An
emit that fails (the node died under it) is never retried under the same key, so a key
logged twice is a duplicate the node made. Each fault SIGKILLs the node process; its tree
must die with it (nothing of it left a second later: PDEATHSIG), and the node is
started again on the same data directory.

Checks: nothing left of the killed node's tree (:func:`~._invariants.nothing_left`); the
restarted tree converges within the deadline (timed from the kill: the restart included);
at the end every acknowledged event is in the log exactly once, at the sequence number its
ack returned (:func:`~._invariants.acked_events_intact`).
Runs only on a node the runner starts (it restarts the node).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from .._client import connect
from .._errors import ChaosError, PrismaticError
from ._invariants import acked_events_intact, nothing_left, tree_converged
from ._schedule import Fault, arrivals, scenario_rng
from ._target import OwnedNode

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "durability"
SUMMARY = ("SIGKILLs the node while clients emit acked events, restarts it on the same data "
           "dir; checks no acked event lost or duplicated, no process left")
REQUIRES = frozenset({"node", "owned"})  # it restarts the node

TOPIC = "chaos.durability"
_CLIENTS = 2
_MAX_RATE = 0.5  # a restart takes a second or two


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    rng = scenario_rng(seed, NAME)
    return [Fault(i + 1, round(t, 4), "node_kill", "node", "SIGKILL")
            for i, t in enumerate(arrivals(rng, duration, min(rate, _MAX_RATE)))]


class Emitter(threading.Thread):
    """One client: emit, remember the ack; on any error reconnect and go on with the next
    key (never the same one again). ``pad`` bytes ride in each event (to fill a disk);
    ``errors`` keeps the first errors seen (type and message), ``last_ack`` when the latest
    ack came (monotonic)."""

    def __init__(self, data_dir: Any, client: int, stop: threading.Event,
                 pad: bytes = b"", topic: str = TOPIC) -> None:
        super().__init__(name=f"chaos-emitter-{client}", daemon=True)
        self.data_dir = data_dir
        self.client = client
        self.stop = stop
        self.pad = pad
        self.topic = topic
        self.acked: dict[str, int] = {}
        self.failed = 0
        self.errors: list[tuple[float, str]] = []
        self.last_ack = 0.0

    def run(self) -> None:
        conn = None
        n = 0
        while not self.stop.is_set():
            key = f"{self.client}-{n}"
            n += 1
            try:
                if conn is None:
                    conn = connect(self.data_dir, timeout=2.0)
                payload = {"key": key, "pad": self.pad} if self.pad else {"key": key}
                self.acked[key] = conn.emit(self.topic, payload)
                self.last_ack = time.monotonic()
            except PrismaticError as exc:
                self.failed += 1
                if len(self.errors) < 1000:
                    self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                if conn is not None:
                    conn.close()
                    conn = None
                self.stop.wait(0.02)
        if conn is not None:
            conn.close()


def _in_shape(ctx: ScenarioContext, deadline: float) -> str | None:
    """Wait until the restarted node's tree is in its spec shape; what is missing if not by
    ``deadline``."""
    while True:
        try:
            problem = tree_converged(ctx.shape, ctx.conn.tree())
        except PrismaticError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None or time.monotonic() > deadline:
            return problem and f"not converged after the node's restart: {problem}"
        time.sleep(0.01)


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    target = ctx.target
    if not isinstance(target, OwnedNode):
        raise ChaosError("the durability scenario restarts the node: it needs --app")
    stop_emitting = threading.Event()
    emitters = [Emitter(target.data_dir, i, stop_emitting) for i in range(_CLIENTS)]
    for e in emitters:
        e.start()
    try:
        for fault in faults:
            if not ctx.wait_offset(fault.offset):
                break
            ctx.probe.pause()
            killed_at = time.monotonic()
            target.kill()
            ctx.injected(fault)
            ctx.tally.check("nothing_left", nothing_left(target.reap_leftovers(1.0)))
            target.start()
            ctx.reconnect()
            ctx.probe.resume()
            # Timed here, not by the probe: its request to the killed node may still be
            # waiting out its timeout, which is the probe's delay, not the tree's.
            problem = _in_shape(ctx, killed_at + ctx.settings.deadline)
            if ctx.tally.check("converged", problem):
                ctx.tally.convergence_s.append(time.monotonic() - killed_at)
        ctx.wait_offset(ctx.settings.duration)
    finally:
        stop_emitting.set()
        for e in emitters:
            e.join(timeout=40)
    check_acked(ctx, emitters, TOPIC)
    ctx.tally.notes.append(f"{sum(e.failed for e in emitters)} emits failed while the node "
                           f"was down (not acked, never retried)")


def check_acked(ctx: ScenarioContext, emitters: list[Emitter], topic: str) -> None:
    """Every event an emitter saw acknowledged is in the log under ``topic``, once, at the
    seq it was acknowledged with (``acked_events_intact``), counted in the report."""
    acked: dict[str, int] = {}
    for e in emitters:
        acked.update(e.acked)
    logged = [(str(r.payload.get("key")), int(r.seq)) for r in ctx.log(topic)
              if isinstance(r.payload, dict)]
    ctx.tally.acked_written = len(acked)
    where = dict(logged)
    ctx.tally.acked_verified = sum(1 for k, s in acked.items() if where.get(k) == s)
    ctx.tally.check("acked_events_intact", acked_events_intact(acked, logged))
