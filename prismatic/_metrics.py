"""The node's Prometheus metrics and its HTTP endpoint (``/metrics``, ``/health``, ``/ready``).

Role: :class:`NodeMetrics` owns one :class:`~prometheus_client.CollectorRegistry` per node
(never the global one, so several nodes, or tests, in one interpreter do not mix). Two kinds
of series:

* event counters, bumped by the node loop as lifecycle frames and control requests arrive
  (restarts, exits by reason kind, escalations, control requests and refusals, bad frames);
* a collector read at scrape time (:class:`_SnapshotCollector`): processes up, per-process
  memory (USS, ``/proc/<pid>/smaps_rollup``) and CPU (``/proc/<pid>/stat`` utime+stime),
  event-log counters, the node's uptime and readiness. It reads the node's TreeView through
  a snapshot callable, so a scrape never walks a dict the loop is changing.

The counters are plain numbers (:class:`LabelledCounter`) until something reads them: the
registry, ``prometheus_client`` and the HTTP server's modules it brings are imported at the
first scrape (or when the endpoint starts), never on the way to a node's start. Their import
took ~16 ms of the ~190 ms of CPU a node's start takes (~40 ms in an interpreter that
imports them with its garbage collector on), paid by every node a test starts and by every
node launched at once with others on shared CPUs before any of them forms a cluster
(``bench/bench_mesh.py``).

Protocol: :func:`serve_metrics` runs a WSGI server in a daemon thread of the node process,
started after the node's fork like everything else in it, on ``--metrics-bind`` (default
loopback). ``/health`` is 200 while the node's loop beats (it stamps
:attr:`NodeMetrics.heartbeat` every second) and none of its long-lived tasks has died
(:attr:`NodeMetrics.dead_tasks`, see :mod:`._node_tasks`); ``/ready`` is 200 once the tree
has started and the node is healthy; else 503, with the reason in the body. Any other path
is 404. The exposition text comes from ``prometheus_client`` only, without the ``*_created``
series (a counter's creation time is noise to a scraper and doubles the series count).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from ._latency import BUCKETS
from ._mailbox_stats import MailboxStats
from ._throttle import throttle_for

from ._process import uss_bytes
from .transports._frames import LifecycleFrame

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

__all__ = ["NodeMetrics", "MetricsServer", "serve_metrics", "ProcessSample", "cpu_seconds",
           "reason_kind", "LabelledCounter"]

log = logging.getLogger(__name__)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
HEALTH_STALE_S = 5.0  # the loop beats every second; five missed beats is not alive


class ProcessSample(msgspec.Struct, frozen=True):
    """One process of the tree as a scrape sees it."""

    path: str
    type: str
    pid: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def reason_kind(reason: Any) -> str:
    """The tag of an ExitReason (``normal``, ``crashed``, ``killed``...)."""
    if reason is None:
        return "none"
    return str(type(reason).__struct_config__.tag)


class LabelledCounter:
    """A counter per set of label values, as ``prometheus_client.Counter`` counts one
    (``labels(*values).inc(amount)``; exported as ``<name>_total``), kept as plain numbers
    and read at scrape time (see the module doc). Thread-safe: the metrics thread counts
    its failed scrapes in one."""

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = labelnames
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def labels(self, *values: object) -> _LabelledValue:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected label values for {self.labelnames}, "
                             f"got {values!r}")
        return _LabelledValue(self, tuple(str(v) for v in values))

    def inc(self, key: tuple[str, ...], amount: float) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up (inc by {amount})")
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def values(self) -> dict[tuple[str, ...], float]:
        with self._lock:
            return dict(self._values)


class _LabelledValue:
    __slots__ = ("counter", "key")

    def __init__(self, counter: LabelledCounter, key: tuple[str, ...]) -> None:
        self.counter = counter
        self.key = key

    def inc(self, amount: float = 1) -> None:
        self.counter.inc(self.key, amount)


class _CounterCollector:
    """The node's event counters as Prometheus series."""

    def __init__(self, counters: list[LabelledCounter]) -> None:
        self.counters = counters

    def describe(self) -> Iterable[Metric]:
        """Their names, for the registry (as Counters registered their own): a scrape for
        some names only (``?name[]=``) finds them by these, and a clash is refused."""
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415 - module doc

        return [CounterMetricFamily(c.name, c.doc, labels=c.labelnames) for c in self.counters]

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415 - module doc

        for c in self.counters:
            family = CounterMetricFamily(c.name, c.doc, labels=c.labelnames)
            for key, value in c.values().items():
                family.add_metric(key, value)
            yield family


class NodeMetrics:
    """Every metric of one node, in its own registry (made at the first read)."""

    def __init__(self, node: str, processes: Callable[[], list[ProcessSample]],
                 gauges: Callable[[], dict[str, float]],
                 counters: Callable[[], dict[str, int]],
                 mailboxes: Callable[[], tuple[dict[str, MailboxStats], int]] = lambda: ({}, 0),
                 ) -> None:
        self.node = node
        self.heartbeat = time.monotonic()
        self.ready = False
        self.dead_tasks: tuple[str, ...] = ()  # replaced whole, never mutated: thread-safe
        self.restarts = LabelledCounter("prismatic_restarts",
                                        "Child restarts (a start after the first)",
                                        ("supervisor", "child"))
        self.exits = LabelledCounter("prismatic_child_exits",
                                     "Unexpected child exits by reason kind", ("reason",))
        self.escalations = LabelledCounter(
            "prismatic_intensity_exceeded",
            "Supervisors that gave up: restart intensity exceeded", ("supervisor",))
        self.supervisor_troubles = LabelledCounter(
            "prismatic_supervisor_troubles",
            "What supervisors carried on from, degraded (each logged by the supervisor): a "
            "zygote that died or hung, a failed fork, orphans killed, ...", ("what",))
        self.control_requests = LabelledCounter("prismatic_control_requests",
                                                "Control requests received, by call",
                                                ("call",))
        self.control_refusals = LabelledCounter("prismatic_control_refusals",
                                                "Control requests refused, by reason",
                                                ("reason",))
        self.dead_letters = LabelledCounter(
            "prismatic_dead_letters", "Messages that could not be delivered, by reason and kind",
            ("reason", "kind"))
        self.hub_requests = LabelledCounter(
            "prismatic_hub_requests", "Registry, monitor and link requests to the hub, by type",
            ("type",))
        self.task_errors = LabelledCounter("prismatic_node_task_errors",
                                           "Exceptions a long-lived task of the node caught "
                                           "while handling one message (dropped, logged)",
                                           ("task",))
        self.task_deaths = LabelledCounter("prismatic_node_task_deaths",
                                           "Long-lived tasks of the node that ended (the node "
                                           "is then unhealthy)", ("task",))
        self._collectors: list[Any] = [
            _CounterCollector([self.restarts, self.exits, self.escalations,
                               self.supervisor_troubles, self.control_requests,
                               self.control_refusals, self.dead_letters, self.hub_requests,
                               self.task_errors, self.task_deaths]),
            _SnapshotCollector(processes, gauges, counters),
            _MailboxCollector(mailboxes)]
        self._registry: CollectorRegistry | None = None
        self._registry_lock = threading.Lock()

    def register(self, collector: Any) -> None:
        """Add a collector (an object with ``describe`` and ``collect``) to the registry."""
        with self._registry_lock:
            if self._registry is None:
                self._collectors.append(collector)
                return
        self._registry.register(collector)

    @property
    def registry(self) -> CollectorRegistry:
        """The node's Prometheus registry, made (and ``prometheus_client`` imported) on the
        first read: see the module doc."""
        with self._registry_lock:
            if self._registry is None:
                from prometheus_client import (  # noqa: PLC0415 - see the module doc
                    CollectorRegistry, disable_created_metrics,
                )

                disable_created_metrics()  # process-wide; the node's is the only one served
                registry = CollectorRegistry(auto_describe=True)
                for collector in self._collectors:
                    registry.register(collector)
                self._registry = registry
            return self._registry

    def observe(self, frame: LifecycleFrame, first_start: bool) -> None:
        """Count one lifecycle event (called on the node loop)."""
        sup = "/".join(frame.path) or "root"
        if frame.kind == "child_started" and not first_start:
            self.restarts.labels(sup, frame.key).inc()
        elif frame.kind == "child_exited":
            self.exits.labels(reason_kind(frame.reason)).inc()
        elif frame.kind == "intensity_exceeded":
            self.escalations.labels(sup).inc()

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest  # noqa: PLC0415 - see the module doc

        return generate_latest(self.registry)

    def alive(self) -> bool:
        return not self.health_problem()

    def health_problem(self) -> str:
        """Why the node is unhealthy, or "" if it is healthy."""
        if self.dead_tasks:
            return "dead node tasks: " + ", ".join(self.dead_tasks)
        stale = time.monotonic() - self.heartbeat
        if stale >= HEALTH_STALE_S:
            return f"the node's loop has not beaten for {stale:.0f} s"
        return ""


class _SnapshotCollector:
    """Series computed at scrape time from the node's state and /proc."""

    def __init__(self, processes: Callable[[], list[ProcessSample]],
                 gauges: Callable[[], dict[str, float]],
                 counters: Callable[[], dict[str, int]]) -> None:
        self.processes = processes
        self.gauges = gauges
        self.counters = counters

    def describe(self) -> Iterable[Metric]:
        return []  # series depend on the live tree; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (  # noqa: PLC0415 - see the module doc
            CounterMetricFamily, GaugeMetricFamily,
        )

        procs = self.processes()
        up = GaugeMetricFamily("prismatic_processes_up", "Live processes in the tree, by type",
                               labels=["type"])
        for kind in ("supervisor", "worker"):
            up.add_metric([kind], sum(1 for p in procs if p.type == kind))
        yield up
        uss = GaugeMetricFamily("prismatic_process_memory_uss_bytes",
                                "Memory private to each process of the tree (USS)",
                                labels=["path", "type"])
        cpu = CounterMetricFamily("prismatic_process_cpu_seconds",
                                  "User+system CPU time of each process of the tree",
                                  labels=["path", "type"])
        for p in procs:
            try:
                uss.add_metric([p.path, p.type], uss_bytes(p.pid))
                cpu.add_metric([p.path, p.type], cpu_seconds(p.pid))
            except (OSError, ValueError, IndexError):
                continue  # exited between the snapshot and now: its next start is a new row
        yield uss
        yield cpu
        for name, value in self.gauges().items():
            g = GaugeMetricFamily(f"prismatic_{name}", name.replace("_", " "))
            g.add_metric([], value)
            yield g
        for name, value in self.counters().items():
            c = CounterMetricFamily(f"prismatic_{name}", name.replace("_", " "))
            c.add_metric([], value)
            yield c


class _MailboxCollector:
    """Per-worker messaging series, asked of every mailbox at scrape time."""

    def __init__(self, mailboxes: Callable[[], tuple[dict[str, MailboxStats], int]]) -> None:
        self.mailboxes = mailboxes

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (  # noqa: PLC0415 - see the module doc
            CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString  # noqa: PLC0415

        stats, missed = self.mailboxes()
        depth = GaugeMetricFamily("prismatic_mailbox_depth",
                                  "Messages read by a worker but not yet handled", labels=["path"])
        received = CounterMetricFamily("prismatic_messages_received",
                                       "Messages received by each worker", labels=["path"])
        sent = CounterMetricFamily("prismatic_messages_sent",
                                   "Messages sent by each worker", labels=["path"])
        bad = CounterMetricFamily("prismatic_bad_frames_mailbox",
                                  "Frames each worker's mailbox dropped as malformed",
                                  labels=["path"])
        refused = CounterMetricFamily("prismatic_mailbox_refused",
                                      "Connections each worker's mailbox refused (another uid)",
                                      labels=["path"])
        latency = HistogramMetricFamily("prismatic_call_latency_seconds",
                                        "Round trip of the calls each worker made",
                                        labels=["path"])
        for path, s in sorted(stats.items()):
            depth.add_metric([path], s.queue)
            received.add_metric([path], s.received)
            sent.add_metric([path], s.sent)
            bad.add_metric([path], s.bad_frames)
            refused.add_metric([path], s.refused)
            counts, total, _ = s.call_latency
            cumulative, buckets = 0, []
            for bound, count in zip((*BUCKETS, float("inf")), counts, strict=False):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([path], buckets, total)
        unanswered = GaugeMetricFamily("prismatic_mailbox_stats_missed",
                                       "Workers that did not answer this scrape's stats request "
                                       "in time (busy in a long handler)")
        unanswered.add_metric([], missed)
        yield from (depth, received, sent, bad, refused, latency, unanswered)


class MetricsServer:
    """A running endpoint; :meth:`close` stops it and joins its thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET(6) address
        self.port = port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(metrics: NodeMetrics, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``/metrics``, ``/health`` and ``/ready`` from a daemon thread (404 elsewhere)."""
    # Imported only for a node that serves them (see the module doc).
    from socketserver import ThreadingMixIn  # noqa: PLC0415
    from wsgiref.simple_server import (  # noqa: PLC0415
        WSGIRequestHandler, WSGIServer, make_server,
    )

    from prometheus_client import make_wsgi_app  # noqa: PLC0415

    class ThreadingServer(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's
            log.debug("metrics http: " + format, *args)

    prom = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            try:
                return prom(environ, start_response)
            except Exception as exc:  # noqa: BLE001 - a failed scrape must not go unseen
                metrics.task_errors.labels("metrics http").inc()
                throttle_for(log, "metrics http").warn("metrics http: a scrape failed: %r",
                                                       exc, exc_info=exc)
                return _plain(start_response, "500 Internal Server Error", repr(exc))
        if path in ("/health", "/ready"):
            problem = metrics.health_problem()
            if not problem and path == "/ready" and not metrics.ready:
                problem = "the tree has not started"
            status = "503 Service Unavailable" if problem else "200 OK"
            return _plain(start_response, status, problem)
        return _plain(start_response, "404 Not Found", "only /metrics, /health and /ready")

    server = make_server(host, port, app, ThreadingServer, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"metrics:{metrics.node}",
                              daemon=True)
    thread.start()
    return MetricsServer(server, thread)


def _plain(start_response: Callable[..., Any], status: str, detail: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [(status + ("\n" + detail if detail else "") + "\n").encode()]
