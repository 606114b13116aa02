"""Subscriber flood: pub/sub events published far faster than a subscriber takes them.

Each fault adds a subscriber under the root (``chaos_sub_<n>``, temporary,
:class:`~._apps.Listener`: a worker subscribed to ``chaos.flood.<n>``, a slow consumer) and
a client publishes ``FLOOD_EVENTS`` events of 1 KiB (32 MiB) to it at 32 MiB/s, twice what
the subscriber takes (and well under what a node forwards, so that what piles up is the
subscriber's backlog, not the node's own lag), in two phases:

* ``slow``: the subscriber runs but consumes slowly. Its SUB socket has no receive limit,
  so the backlog is pulled into the *subscriber's* memory as fast as the node forwards it:
  the node's memory must stay bounded (its RSS, sampled every 10 ms, grows by under
  ``NODE_MEMORY_BOUND``, half the flood: a node that kept the backlog would grow by all of
  it) and the subscriber must get every event, in order;
* ``stalled``: the subscriber is SIGSTOPped for the flood (``STALLED_EVENTS``, 16 MiB) and
  resumed. Nothing may be lost: every event arrives once it runs again. The node's XPUB
  keeps a stalled subscriber's backlog without limit by design (docs/pubsub.md: it never
  drops for a slow subscriber), so the node's growth here is *measured and reported*, not
  held to a bound: a bound needs the forwarder to drop (and count) for a subscriber past a
  limit, which it does not do.

Checks (:func:`~._invariants.subscriber_flood_accounted`,
:func:`~._invariants.memory_bounded`): every event published either reached the subscriber
in order or was counted as dropped (the forwarder's ``prismatic_pubsub_dropped_*``
counters, the subscriber's undecodable count): never silent; the node's RSS bounded under a
slow subscriber. The figures (node and subscriber memory, drain time) are in the notes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from .._childspec import ChildSpec
from .._errors import PrismaticError
from ._invariants import memory_bounded, subscriber_flood_accounted
from ._observe import metric_sum, rss_bytes
from ._schedule import Fault, arrivals, scenario_rng

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "subscriber-flood"
SUMMARY = ("floods a slow pub/sub subscriber with 32 MiB, and a SIGSTOPped one; checks every "
           "event delivered in order or counted as dropped, node RSS bounded (slow)")
REQUIRES = frozenset({"node"})  # any single node, owned or not

FLOOD_EVENTS = 32_768  # 1 KiB each
STALLED_EVENTS = 16_384
PUBLISH_RATE = 32_768.0  # events a second: 32 MiB/s, twice what the subscriber takes
NODE_MEMORY_BOUND = 16 << 20  # half the flood: a node that kept the backlog grows by all of it
_PAD = b"x" * 1024
_BATCH = 512
_MAX_RATE = 0.5  # each fault floods two phases and drains them: a few seconds


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    rng = scenario_rng(seed, NAME)
    return [Fault(i + 1, round(t, 4), "subscriber_flood", f"chaos_sub_{i + 1}", FLOOD_EVENTS)
            for i, t in enumerate(arrivals(rng, duration, min(rate, _MAX_RATE)))]


class _Peak(threading.Thread):
    """The highest RSS of ``pid`` seen while it runs (every 10 ms)."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="chaos-rss", daemon=True)
        self.pid = pid
        self.base = self.peak = rss_bytes(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def _dropped(ctx: ScenarioContext) -> float:
    text = ctx.conn.metrics()
    return sum(metric_sum(text, n) for n in ("prismatic_pubsub_dropped_bad_frames_total",
                                             "prismatic_pubsub_dropped_bad_topic_total"))


def _phase(ctx: ScenarioContext, name: str, pid: int, topic: str, first: int, count: int,
           stalled: bool) -> tuple[int, int, float]:
    """Publish ``count`` events from seq ``first``; wait until the subscriber has them all
    (or the deadline). Returns (node RSS peak growth, subscriber RSS, drain seconds)."""
    conn = ctx.conn
    node_pid = ctx.target.node_pid
    peak = _Peak(node_pid)
    peak.start()
    if stalled:
        os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        for i in range(first, first + count, _BATCH):
            conn.publish_many(topic, [[j, _PAD] for j in range(i, min(first + count, i + _BATCH))])
            # Paced at PUBLISH_RATE: faster than the subscriber takes them, slower than a
            # node forwards (else the backlog is the node's own lag, held by the publisher
            # and node queues' high-water marks: bounded, but by ~1,000 messages of 64 KiB).
            ahead = t0 + (i + _BATCH - first) / PUBLISH_RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        conn.flush(30.0)
        if stalled:  # let the node take the whole backlog while its subscriber is frozen
            deadline = time.monotonic() + 5.0
            last = -1
            while peak.peak != last and time.monotonic() < deadline:
                last = peak.peak
                time.sleep(0.2)
    finally:
        if stalled:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + ctx.settings.deadline
    while conn.call(name, "count", timeout=5.0)[0] < first + count and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    drained = time.monotonic() - t0
    grown = peak.stop() - peak.base
    return grown, rss_bytes(pid), drained


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    conn = ctx.conn
    for fault in faults:
        if not ctx.wait_offset(fault.offset):
            break
        name = fault.target
        topic = f"chaos.flood.{fault.seq}"
        pid = conn.start_child("", ChildSpec(id=name, start="prismatic.chaos._apps:Listener",
                                             args=(name, topic), restart="temporary"))
        if pid is None or conn.call(name, "count", timeout=5.0) != [0, 0, 0]:
            ctx.tally.check("subscriber_flood_setup", f"{name} did not start and answer")
            continue
        dropped_before = _dropped(ctx)
        try:
            slow = _phase(ctx, name, pid, topic, 0, FLOOD_EVENTS, stalled=False)
            ctx.injected(fault)
            ctx.tally.check("node_memory_bounded", memory_bounded(0, slow[0],
                                                                  NODE_MEMORY_BOUND))
            stalled = _phase(ctx, name, pid, topic, FLOOD_EVENTS, STALLED_EVENTS,
                             stalled=True)
            received, out_of_order, undecodable = conn.call(name, "count", timeout=5.0)
        except PrismaticError as exc:
            ctx.tally.check("subscriber_flood", f"{name}: {type(exc).__name__}: {exc}")
            continue
        dropped = _dropped(ctx) - dropped_before + undecodable
        ctx.tally.check("subscriber_flood_accounted", subscriber_flood_accounted(
            FLOOD_EVENTS + STALLED_EVENTS, received, out_of_order, dropped))
        ctx.tally.notes.append(
            f"{name}: slow subscriber, {FLOOD_EVENTS >> 10} MiB published: node RSS "
            f"+{slow[0] / 2**20:.1f} MiB, subscriber RSS {slow[1] >> 20} MiB, drained in "
            f"{slow[2]:.1f}s; stalled (SIGSTOP), {STALLED_EVENTS >> 10} MiB: node RSS "
            f"+{stalled[0] / 2**20:.1f} MiB (the node keeps a stalled subscriber's backlog, "
            f"unbounded by design), drained {stalled[2]:.1f}s after; {received} events "
            f"received, {dropped:.0f} counted dropped")
        try:
            conn.terminate_child("", name)
        except PrismaticError as exc:
            ctx.tally.check("subscriber_flood_cleanup", f"terminate {name}: {exc}")
