"""Subscriber flood: pub/sub events published far faster than a subscriber takes them.

Each fault adds a subscriber under the root (``chaos_sub_<n>``, temporary,
:class:`~._apps.Listener`: a worker subscribed to ``chaos.flood.<n>``, a slow consumer) and
floods it in two phases:

* ``slow``: a client publishes ``FLOOD_EVENTS`` events of 1 KiB (32 MiB) at 32 MiB/s, twice
  what the subscriber takes (and well under what a node forwards, so that what piles up is
  the subscriber's backlog, not the node's own lag). The subscriber runs; its SUB socket
  has no receive limit, so the backlog is pulled into the *subscriber's* memory as fast as
  the node forwards it: the node's memory must stay bounded (its RSS, sampled every 10 ms,
  grows by under ``NODE_MEMORY_BOUND``, half the flood: a node that kept the backlog would
  grow by all of it) and the subscriber must get every event, in order, none lost;
* ``stalled``: the subscriber is SIGSTOPped while ``STALLED_FACTOR`` times the node's
  per-subscriber high-water mark (``prismatic_pubsub_subscriber_hwm``, docs/pubsub.md)
  in messages of one 8 KiB event each is published at 32 MiB/s, then resumed. The node
  queues at most its high-water mark for it and drops the rest *for that subscriber only*:
  its RSS must grow by under half the flood (it holds an eighth of it; the rest is the
  allocator's and the other queues' slack), and once the subscriber runs again (a marker
  published after it reveals a loss at the flood's end) it must have counted exactly the
  events it lost (its ``lost``, from the topic's sequence stamps, against the gaps it
  finds in the payloads' own sequence). A node run with ``subscriber_hwm = 0``
  (unbounded) drops nothing and grows by the whole backlog: reported, not bounded.

Checks (:func:`~._invariants.subscriber_flood_accounted`,
:func:`~._invariants.drops_counted_exactly`, :func:`~._invariants.memory_bounded`): every
event published either reached the subscriber in order or was counted as dropped (the
subscriber's ``lost`` and undecodable counts, the forwarder's ``prismatic_pubsub_dropped_*``
counters): never silent, and the drops counted exactly; the node's RSS bounded under a slow
and under a stalled subscriber. The figures (node and subscriber memory, drain time, events
lost) are in the notes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from .._errors import PrismaticError
from ._invariants import drops_counted_exactly, memory_bounded, subscriber_flood_accounted
from ._observe import metric_sum, rss_bytes
from ._schedule import Fault, arrivals, scenario_rng

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "subscriber-flood"
SUMMARY = ("floods a slow pub/sub subscriber with 32 MiB, and a SIGSTOPped one past the node's "
           "high-water mark; checks every event delivered in order or counted as dropped "
           "(exactly), node RSS bounded")
REQUIRES = frozenset({"node"})  # any single node, owned or not

FLOOD_EVENTS = 32_768  # 1 KiB each
STALLED_FACTOR = 8  # the stalled flood, in high-water marks' worth of messages
STALLED_PAD = b"x" * 8192
UNBOUNDED_EVENTS = 16_384  # the stalled flood (1 KiB events) of a node with no high-water mark
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


def _hwm(ctx: ScenarioContext) -> int:
    return int(metric_sum(ctx.conn.metrics(), "prismatic_pubsub_subscriber_hwm"))


def _count(ctx: ScenarioContext, name: str) -> list[int]:
    """The Listener's [received, out_of_order, undecodable, lost, gaps, next_seq]."""
    return list(ctx.conn.call(name, "count", timeout=5.0))


def _publish(ctx: ScenarioContext, topic: str, first: int, count: int,
             single: bool) -> None:
    """Publish seq ``first`` onwards at PUBLISH_RATE (1 KiB events), or, ``single``, as one
    message of one 8 KiB event each (a publish on another topic closes each run)."""
    conn = ctx.conn
    t0 = time.monotonic()
    if single:
        pace = f"chaos.flood_pace.{topic}"  # no subscriber: only splits the runs
        for k, seq in enumerate(range(first, first + count)):
            conn.publish(topic, [seq, STALLED_PAD])
            conn.publish(pace, None)
            if k % 64 == 63 and (ahead := t0 + (k + 1) * 8 / PUBLISH_RATE
                                 - time.monotonic()) > 0:
                time.sleep(ahead)
    else:
        for i in range(first, first + count, _BATCH):
            conn.publish_many(topic, [[j, _PAD] for j in range(i, min(first + count, i + _BATCH))])
            # Paced at PUBLISH_RATE: faster than the subscriber takes them, slower than a
            # node forwards (else the backlog is the node's own lag, held by the publisher
            # and node queues' high-water marks: bounded, but by ~1,000 messages of 64 KiB).
            ahead = t0 + (i + _BATCH - first) / PUBLISH_RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    conn.flush(30.0)


def _settle(peak: _Peak) -> None:
    """Let the node take the whole backlog while its subscriber is frozen."""
    deadline = time.monotonic() + 5.0
    last = -1
    while peak.peak != last and time.monotonic() < deadline:
        last = peak.peak
        time.sleep(0.2)


def _phase(ctx: ScenarioContext, name: str, pid: int, topic: str, first: int, count: int,
           stalled: bool, single: bool = False) -> tuple[int, int, float, int]:
    """Publish ``count`` events from seq ``first`` (``stalled``: with the subscriber
    SIGSTOPped, then resumed, and markers published after until one reaches it); wait until
    the subscriber has each event or counted it lost (or the deadline). Returns (node RSS
    peak growth, subscriber RSS, drain seconds, next seq: the events published)."""
    conn = ctx.conn
    peak = _Peak(ctx.target.node_pid)
    peak.start()
    if stalled:
        os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    end = first + count
    try:
        _publish(ctx, topic, first, count, single)
        if stalled:
            _settle(peak)
    finally:
        if stalled:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + ctx.settings.deadline
    if stalled:  # a loss shows once a later message of the topic arrives: send markers
        marker = end
        while _count(ctx, name)[5] <= end and time.monotonic() < deadline:
            conn.publish(topic, [marker, b""])
            conn.flush(5.0)
            marker += 1
            time.sleep(0.05)
        end = marker
    while sum(_count(ctx, name)[i] for i in (0, 3)) < end and time.monotonic() < deadline:
        time.sleep(0.02)
    drained = time.monotonic() - t0
    grown = peak.stop() - peak.base
    return grown, rss_bytes(pid), drained, end


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    conn = ctx.conn
    for fault in faults:
        if not ctx.wait_offset(fault.offset):
            break
        name = fault.target
        topic = f"chaos.flood.{fault.seq}"
        pid = ctx.start_subject(name, "Listener", (name, topic),
                                lambda n: _count(ctx, n) == [0, 0, 0, 0, 0, 0])
        if pid is None:
            continue
        dropped_before = _dropped(ctx)
        try:
            hwm = _hwm(ctx)
            slow = _phase(ctx, name, pid, topic, 0, FLOOD_EVENTS, stalled=False)
            ctx.injected(fault)
            ctx.tally.check("node_memory_bounded", memory_bounded(0, slow[0],
                                                                  NODE_MEMORY_BOUND))
            stalled_events = STALLED_FACTOR * hwm if hwm else UNBOUNDED_EVENTS
            stalled = _phase(ctx, name, pid, topic, FLOOD_EVENTS, stalled_events,
                             stalled=True, single=bool(hwm))
            received, out_of_order, undecodable, lost, gaps, _ = _count(ctx, name)
        except PrismaticError as exc:
            ctx.tally.check("subscriber_flood", f"{name}: {type(exc).__name__}: {exc}")
            continue
        published = stalled[3]
        if hwm:
            flood = stalled_events * len(STALLED_PAD)
            ctx.tally.check("node_memory_bounded", memory_bounded(0, stalled[0], flood // 2))
            ctx.tally.check("subscriber_drops_counted_exactly", drops_counted_exactly(
                published, received, lost, gaps))
        dropped = _dropped(ctx) - dropped_before + undecodable + lost
        ctx.tally.check("subscriber_flood_accounted", subscriber_flood_accounted(
            published, received, out_of_order, dropped))
        stalled_mib = stalled_events * (len(STALLED_PAD) if hwm else 1024) / 2**20
        held = (f"the node's high-water mark {hwm} messages" if hwm else
                "no high-water mark (subscriber_hwm 0): the node keeps the whole backlog")
        ctx.tally.notes.append(
            f"{name}: slow subscriber, {FLOOD_EVENTS >> 10} MiB published: node RSS "
            f"+{slow[0] / 2**20:.1f} MiB, subscriber RSS {slow[1] >> 20} MiB, drained in "
            f"{slow[2]:.1f}s; stalled (SIGSTOP), {stalled_mib:.0f} MiB, {held}: node RSS "
            f"+{stalled[0] / 2**20:.1f} MiB, drained {stalled[2]:.1f}s after; {received} "
            f"events received, {lost} counted lost by the subscriber ({gaps} missing from "
            f"its sequence), {dropped:.0f} counted dropped in all")
        try:
            conn.terminate_child("", name)
        except PrismaticError as exc:
            ctx.tally.check("subscriber_flood_cleanup", f"terminate {name}: {exc}")
