"""The mesh's Prometheus series: membership, probes, links, relay, direct links, bytes.

:class:`MeshCollector` is registered with the node's metrics registry
(:meth:`MeshLoop.collector <._loop.MeshLoop.collector>`) and read at scrape time, on the
metrics thread: it only reads counters and one reference to the frozen membership state,
through the few attributes of the mesh loop it names (:class:`MeshCounters`). The relay's
counters are :class:`~._remote.Distribution`'s, the direct links' those of
:class:`~._direct.DirectPort`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ..transports._mesh_frames import MemberState
from ._events import MeshState
from ._membership import table
from ._settings import hostport

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["MeshCollector", "MeshCounters"]


class MeshCounters(Protocol):
    """What the collector reads of the mesh loop (see :class:`~._loop.MeshLoop`)."""

    state: MeshState | None
    counts: Counter[str]
    refusals: Counter[str]
    links_refused: Counter[str]
    sent_bytes: Counter[str]
    received_bytes: Counter[str]
    remote: Any  # ._remote.Distribution, or None outside a cluster's distribution
    port: Any  # ._direct.DirectPort (a collector is made only once the mesh started)


class MeshCollector:
    """The mesh's Prometheus series, read at scrape time (from the metrics thread: it only
    reads counters and one reference to the frozen state)."""

    def __init__(self, mesh: MeshCounters) -> None:
        self.mesh = mesh

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        # Imported at the first scrape, not on the way to a node's start (prismatic._metrics).
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily, GaugeMetricFamily,
        )

        m = self.mesh
        state = m.state
        members = GaugeMetricFamily("prismatic_cluster_members",
                                    "Cluster members as this node sees them, by state",
                                    labels=["state"])
        rows = table(state) if state is not None else []
        for s in MemberState:
            members.add_metric([s.value], sum(1 for r in rows if r.state is s))
        yield members
        health = GaugeMetricFamily("prismatic_cluster_local_health",
                                   "Lifeguard's local health multiplier (0: healthy)")
        health.add_metric([], state.health if state is not None else 0)
        yield health
        yield from _counters("prismatic_cluster_", m.counts, (
                ("probes_sent", "Direct probes started"),
                ("probes_failed", "Probes without any ack, direct or indirect"),
                ("indirect_probes", "Probes that needed indirect probes through k members"),
                ("suspicions_raised", "Members this node came to suspect"),
                ("suspicions_refuted", "Suspicions of others cleared by their refutation"),
                ("refutations", "Suspicions of this node it refuted (false positives)"),
                ("bad_frames", "Frames from peers dropped as malformed"),
                ("frames_dropped", "Frames dropped because a peer's queue was full"),
                ("dist_frames_dropped", "Distribution frames from a non-member, dropped"),
                ("handshake_failures", "Our handshakes a peer refused"),
                ("errors", "Frames and link events whose handling raised (a bug; logged)"),
                ("frames_sent", "Frames sent to peers"),
                ("frames_received", "Frames received from peers (well-formed)")))
        dist = m.remote.counters if m.remote is not None else Counter()
        yield from _counters("prismatic_cluster_relay_", dist, (
                ("bad_frames", "Malformed frames from this node's processes to its relay"),
                ("unreachable", "Messages and calls to processes of unreachable nodes"),
                ("answers_lost", "Call answers whose caller's node was unreachable"),
                ("mailbox_full", "Messages dropped: their mailbox's backlog here was full"),
                ("errors", "Relay frames whose handling raised (a bug; logged)")))
        port = m.port.counters if getattr(m, "port", None) is not None else Counter()
        yield from _counters("prismatic_cluster_direct_", port, (
                ("messages", "Messages from other nodes' processes on their direct links"),
                ("bad_frames", "Direct batches dropped as malformed"),
                ("answers_lost", "Call answers for a direct link that was gone"),
                ("mailbox_full", "Messages dropped: their mailbox's backlog here was full"),
                ("errors", "Direct messages whose handling raised (a bug; logged)")))
        # Direct routes to processes' own listeners (prismatic._direct_counts), as this
        # node's processes reported them.
        yield from _counters("prismatic_cluster_", dist, (
                ("direct_switched", "Pairs of processes that switched to a direct route"),
                ("direct_not_offered", "Pairs that stayed on the node path: no listener"),
                ("direct_connect_failures", "Pairs that stayed on the node path: the route's "
                 "connection did not come up"),
                ("direct_listeners_opened", "Processes that opened their own listener"),
                ("direct_listener_failures", "Listeners that could not be opened"),
                ("direct_listener_messages", "Messages taken by processes' own listeners"),
                ("direct_listener_bad_frames", "Batches a listener dropped as malformed"),
                ("direct_listener_refused_unknown_key", "Connections a listener refused: "
                 "not the cluster's key"),
                ("direct_listener_refused_bad_handshake", "Connections a listener refused: "
                 "no CurveZMQ handshake with the cluster's keys"),
                ("direct_listener_answers_lost", "Answers whose caller's route was gone"),
                ("direct_listener_mailbox_full", "Messages a listener dropped: what it held "
                 "before a fence reached the backlog bound"),
                ("direct_listener_dead_letters", "Casts and sends a listener could not "
                 "deliver (a stale Pid, a name not held)"),
                ("direct_listener_released", "Messages a listener held for a caller whose "
                 "route went before its fence came: dropped")))
        watchers = GaugeMetricFamily("prismatic_cluster_direct_route_watchers",
                                     "Routes to this node's processes whose callers it tells "
                                     "of their callee's exit")
        watchers.add_metric([], m.port.watching)
        yield watchers
        received = CounterMetricFamily("prismatic_cluster_events_received",
                                       "Pub/sub messages from other members, published here")
        received.add_metric([], dist["events_received"])
        yield received
        dropped = CounterMetricFamily("prismatic_cluster_events_dropped",
                                      "Pub/sub messages not sent to a member (unreachable: "
                                      "dead or partitioned away; or its link was full)",
                                      labels=["peer"])
        if m.remote is not None:
            for peer, n in list(m.remote.events_dropped.items()):
                dropped.add_metric([peer], n)
        yield dropped
        links = CounterMetricFamily(
            "prismatic_cluster_links_refused", "Lost links whose address refused a connect "
            "(nothing listens: a dead node, confirmed at once), by who found out first: our "
            "knock or the link's reconnect", labels=["by"])
        for by in ("knock", "reconnect"):
            links.add_metric([by], m.links_refused[by])
        yield links
        refusals = CounterMetricFamily("prismatic_cluster_auth_refusals",
                                       "Connections refused admission, by reason",
                                       labels=["reason"])
        for reason in ("bad_handshake", "unknown_key"):
            refusals.add_metric([reason], m.refusals[reason])
        yield refusals
        names = {r.addr: r.name for r in rows}
        sent = CounterMetricFamily("prismatic_cluster_bytes_sent", "Bytes sent to each peer",
                                   labels=["peer"])
        for addr, n in list(m.sent_bytes.items()):
            sent.add_metric([names.get(addr, hostport(addr))], n)
        yield sent
        received = CounterMetricFamily("prismatic_cluster_bytes_received",
                                       "Bytes received from each peer", labels=["peer"])
        for addr, n in list(m.received_bytes.items()):
            received.add_metric([names.get(addr, hostport(addr))], n)
        yield received


def _counters(prefix: str, counts: Counter[str],
              rows: tuple[tuple[str, str], ...]) -> Iterator[Metric]:
    """One unlabelled counter per (name, help) row, read from ``counts``."""
    from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415 - see collect

    for what, help_ in rows:
        c = CounterMetricFamily(prefix + what, help_)
        c.add_metric([], counts[what])
        yield c
