"""The node's loop: everything a running node serves, started after the root's fork.

The loop (uvloop) serves:
* the root supervisor's channel: lifecycle events (folded into a :class:`TreeView`, published
  on ``ipc://<data dir>/events.sock`` with topic ``supervisor.<path>.<key>.<kind>``, told to
  the hub) and replies;
* the hub (:mod:`._hub`): registry, monitors, links, exit reasons, dead letters, ``emit``;
* pub/sub: the forwarder (:mod:`._forwarder`) moves what publishers push to
  ``ipc://<data dir>/publish.sock`` onto ``events.sock`` (``docs/pubsub.md``);
* the control endpoint ``ipc://<data dir>/control.sock`` (see :mod:`._control`), every
  request authenticated by the cookie in ``<data dir>/cookie`` (:mod:`._cookie`); its
  requests are served by :mod:`._control_endpoint`;
* optionally, Prometheus metrics and health over HTTP (:mod:`._metrics`, from a thread);
* every long-lived task and reader above handles each message under a guard
  (:mod:`._node_tasks`): an exception is logged (throttled), counted and dropped, and a task
  that ends anyway turns ``/health`` and ``/ready`` to 503 and is named in ``status``;
* the event log ``<data dir>/eventlog`` (LMDB, :mod:`.eventlog`): every lifecycle event is
  appended under the same topic, group-committed and synced (lazily: nobody waits for it,
  so a burst of starts shares commits, each event at most ``LAZY_COMMIT_S`` late);
* SIGINT/SIGTERM: stop the tree in order (SIGTERM to the root, which stops its children in
  reverse start order), then exit 0;
* with ``--listen``/``--join``, the node mesh (:mod:`prismatic.mesh`): member changes are
  published and logged as ``cluster.node.<name>.up|down|left``; SIGTERM first announces
  the node's departure to the cluster;
* global names (:mod:`prismatic.mesh._global_names`), between the hub and the mesh (a node
  without the mesh is a cluster of one).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TextIO

import msgspec
import uvloop
import zmq
import zmq.asyncio

from ._address import Pid
from ._control import CONTROL_MAX_BYTES
from ._config_reload import ConfigReload
from ._connection_drops import ConnectionDrops
from ._context_term import term_within
from ._control_endpoint import ControlEndpoint
from ._crash_log import CrashLog
from ._errors import PrismaticError
from .eventlog import EventDraft, EventLog, open_event_log
from ._exit import ExitReason, Killed, Normal, Shutdown, describe, reason_from_wait_status
from ._forwarder import SUBSCRIBER_HWM, Forwarder
from ._hub import Hub
from ._mailbox_stats import MailboxStats, collect_stats
from ._metrics import MetricsServer, NodeMetrics, ProcessSample, serve_metrics
from ._node import control_address
from ._node_tasks import NodeTasks
from ._process import send_signal
from ._throttle import throttle_for
from ._topics import validate_topic
from ._tree import TreeView
from .supervisors._events import Err
from .transports._channel import Channel
from .transports._frames import (
    ExitingFrame, LifecycleFrame, ReadyFrame, ReplyFrame, TroubleFrame,
)
from .transports._messages import DeadLetterNote, EmitReq, HubReply

__all__ = ["serve", "NodeLoop"]

log = logging.getLogger(__name__)
MAILBOX_STATS_TIMEOUT_S = 0.25  # a worker busy longer than this is left out of a scrape
_encoder = msgspec.msgpack.Encoder()


def serve(name: str, data: Path, root: Channel, root_pid: int, show_tree: bool, out: TextIO,
          cookie: str, hub_sock: socket.socket, metrics_port: int, metrics_host: str,
          eventlog_max_bytes: int | None = None, eventlog_max_age_s: float | None = None,
          mesh: Any = None, config: Any = None, subscriber_hwm: int | None = None) -> int:
    # Opened only now, after the node's one fork (LMDB must never cross a fork).
    with open_event_log(str(data / "eventlog"), node=name, max_bytes=eventlog_max_bytes,
                        max_age_s=eventlog_max_age_s) as event_log:
        node = NodeLoop(name, data, root, root_pid, show_tree, out, event_log, cookie)
        node.mesh_settings = mesh
        if subscriber_hwm is not None:
            node.subscriber_hwm = subscriber_hwm
        node.reloads = ConfigReload(config, node.ask_supervisor, node.record_event)
        return uvloop.run(node.main(hub_sock, metrics_port, metrics_host))


class NodeLoop(ControlEndpoint):
    def __init__(self, name: str, data: Path, root: Channel, root_pid: int, show_tree: bool,
                 out: TextIO, event_log: EventLog, cookie: str) -> None:
        self.name = name
        self.log = event_log
        self.log_errors = 0
        self.data = data
        self.root = root
        self.root_pid = root_pid
        self.root_pidfd = os.pidfd_open(root_pid)
        self.show_tree = show_tree
        self.out: TextIO | None = out
        self.tree = TreeView(root_pid)
        self.crashes = CrashLog(log)
        self.ready = False
        self.stopping = False
        self.root_reason: ExitReason | None = None
        self.pending: dict[int, tuple[bytes | str, int]] = {}  # str: a node (over the mesh)
        self.remote_pending: dict[int, tuple[bytes, int, str]] = {}  # to another node's
        self.next_ref = 1
        self.started = time.monotonic()
        self.dirty = False
        self.cookie = cookie
        self.bad_requests = 0
        self.control_errors = 0
        self.metrics = NodeMetrics(name, self.process_samples, self.gauges, self.counters,
                                   self.mailbox_stats)
        self.tasks = NodeTasks(self.on_task_error, self.on_task_death)
        self.metrics_server: MetricsServer | None = None
        self.hub = Hub(name, self.on_dead_letter,
                       lambda tag: self.metrics.hub_requests.labels(tag).inc(), self.on_emit)
        self.hub.process_started(root_pid)
        # Global names (prismatic.mesh._global_names): kept alone until the mesh is up.
        from .mesh._global_names import GlobalNames  # noqa: PLC0415

        self.global_names = GlobalNames(name, self.hub.deliver,
                                        lambda pid: self.hub.exit_of(pid) is not None)
        self.hub.on_global = self.global_names.on_request
        self.hub.on_exit = self.global_names.process_exited
        self.mesh_settings: Any = None  # prismatic.mesh.MeshSettings: run the mesh
        self.subscriber_hwm = SUBSCRIBER_HWM  # the forwarder's, per subscriber (pub/sub)
        self.mesh: Any = None
        self.exit_code = 0  # what an orderly stop exits with (2: the mesh refused our name)
        self.asked: dict[int, asyncio.Future[msgspec.Raw]] = {}  # the node's own requests
        self.reloads = ConfigReload(None, self.ask_supervisor, self.record_event)

    async def main(self, hub_sock: socket.socket, metrics_port: int = 0,
                   metrics_host: str = "127.0.0.1") -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.on_loop_exception)
        await self.hub.start(hub_sock)
        self.done: asyncio.Future[int] = loop.create_future()
        ctx = zmq.asyncio.Context()
        self.control = ctx.socket(zmq.ROUTER)
        # Capped before the cookie is checked: libzmq drops a peer whose frame is larger
        # (its connection, not the node) as soon as the frame's header arrives.
        self.control.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX_BYTES)
        (self.data / "control.sock").unlink(missing_ok=True)  # stale: we hold the node lock
        self.control.bind(control_address(self.data))
        # Only the node's user may connect (connect needs write permission on the file),
        # whatever the umask: the cookie is the second lock, not the only one.
        os.chmod(self.data / "control.sock", 0o600)
        self.forwarder = Forwarder(zmq.Context(shadow=ctx), self.data, self.tasks.caught,
                                   self.subscriber_hwm)
        # What libzmq cuts below us (a frame over MAXMSGSIZE): counted, on a thread of its own.
        self.drops = ConnectionDrops()
        for sock, endpoint in ((self.control, "control"), (self.forwarder.pull, "publish"),
                               (self.forwarder.pub, "events")):
            self.drops.watch(sock, endpoint)
        self.metrics.register(self.drops)
        self.forwarder.start(loop, self.tasks.guarded)
        loop.add_reader(self.root.fileno(), self.tasks.guarded("root channel", self.on_root))
        loop.add_reader(self.root_pidfd, self.on_root_exit)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        self.tasks.start("control", self.serve_control())
        if self.show_tree:
            self.tasks.start("tree printer", self.print_tree())
        self.tasks.start("heartbeat", self.beat())
        if self.mesh_settings is not None:
            await self.start_mesh()
        if metrics_port:
            try:
                self.metrics_server = serve_metrics(self.metrics, max(metrics_port, 0),
                                                    metrics_host)  # -1: any free port
            except OSError as exc:
                # Loud, but the tree keeps running: metrics observe it, they are no dependency.
                log.error("metrics endpoint on %s:%d not started: %s", metrics_host,
                          metrics_port, exc)
            else:
                log.info("metrics on %s", self.metrics_server.url)
        try:
            return await self.done
        finally:
            self.drops.close()  # first: closing a socket cuts its peers, not an attack
            self.tasks.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
            self.global_names.close()  # first: its timer sends on the mesh
            if self.mesh is not None:
                if self.mesh.remote is not None:
                    self.mesh.remote.close()
                await self.mesh.close()
            self.hub.close()
            self.control.close(0)
            self.forwarder.close()
            term_within(ctx, f"node {self.name}")  # never hangs the exit: ._context_term

    def say(self, line: str) -> None:
        if self.out is None:
            return
        try:
            print(line, file=self.out, flush=True)
        except OSError as exc:  # a closed pipe must not stop the node: stop printing instead
            log.warning("node output closed (%s); no more tree printing", exc)
            self.out = None

    def stop(self) -> None:
        if self.stopping:
            send_signal(self.root_pidfd, signal.SIGKILL)  # second Ctrl-C: no more waiting
            return
        self.stopping = True
        if self.mesh is not None:
            self.mesh.leave()  # others mark us left at once, not dead after a timeout
        self.say(f"node {self.name}: stopping the tree")
        send_signal(self.root_pidfd, signal.SIGTERM)

    # ---- the root's channel -----------------------------------------------------------------

    def on_root(self) -> None:
        for frame in self.root.receive():
            with self.tasks.guard("root channel"):
                self.on_frame(frame)
        if self.root.closed:
            asyncio.get_running_loop().remove_reader(self.root.fileno())

    def on_frame(self, frame: Any) -> None:
        if isinstance(frame, LifecycleFrame):
            self.metrics.observe(frame, (*frame.path, frame.key) not in self.tree.entries)
            self.crashes.observe(frame)
            self.tell_hub(frame, self.tree.apply(frame))
            self.dirty = True
            topic = ".".join(("supervisor", *(frame.path or ("root",)), frame.key, frame.kind))
            self.forwarder.send(topic.encode(), _encoder.encode((frame,)))  # a run of one
            self.log.submit(topic, msgspec.to_builtins(frame), source="/".join(  # lazy: no
                frame.path) or "root", lazy=True).add_done_callback(self.logged)  # one waits
        elif isinstance(frame, ReplyFrame):
            self.answer(frame.ref, frame.result)
        elif isinstance(frame, ReadyFrame):
            self.ready = self.metrics.ready = True
            # What the start made lives as long as the node (a hub connection, a name, a
            # monitor and a tree entry per process): out of the collector's way, so a full
            # collection does not walk thousands of them in the middle of a call (5,000
            # named workers: a ~25 ms pause, most of tree's p99). Garbage among them that a
            # cycle holds is never collected: bounded by this start's own heap.
            gc.collect()
            gc.freeze()
            self.say(f"node {self.name}: tree started (root pid {self.root_pid}, "
                     f"data {self.data})")
        elif isinstance(frame, ExitingFrame):
            self.root_reason = frame.reason
        elif isinstance(frame, TroubleFrame):  # the supervisor logged the detail
            self.metrics.supervisor_troubles.labels(frame.what[:40]).inc()

    def tell_hub(self, frame: LifecycleFrame, died_with: list[int]) -> None:
        """Starts and exits, for the registry, monitors and links. A supervisor that dies
        abruptly takes its subtree with it (PDEATHSIG): those exits (``died_with``, from the
        tree) are never reported by anyone else."""
        if frame.pid is None:
            return
        if frame.kind == "child_started":
            self.hub.process_started(frame.pid)
            return
        if frame.reason is None or frame.kind not in ("child_exited", "child_stopped",
                                                      "start_error"):
            return
        self.hub.process_exited(frame.pid, frame.reason)
        for pid in died_with:
            self.hub.process_exited(pid, Killed(signal.SIGKILL))

    def on_emit(self, req: EmitReq, reply: Callable[[HubReply], None]) -> None:
        """A process's ``emit``: the reply (its acknowledgement) leaves only once the log's
        transaction is synced; a refused append is answered with the error, never dropped."""
        loop = asyncio.get_running_loop()
        try:
            validate_topic(req.topic)
            if len(req.payloads) == 1:
                done: Future[Any] = self.log.submit(req.topic, req.payloads[0],
                                                    source=req.source,
                                                    correlation_id=req.correlation_id)
            else:
                done = self.log.submit_many([EventDraft(req.topic, p, req.source,
                                                        req.correlation_id)
                                             for p in req.payloads])
        except PrismaticError as exc:
            reply(HubReply(req.ref, None, type(exc).__name__, str(exc)))
            return

        def acknowledge(done: Future[Any]) -> None:  # on the log's writer thread
            exc = done.exception()
            if exc is not None:
                answer = HubReply(req.ref, None, type(exc).__name__, str(exc))
            else:
                seqs = done.result()
                answer = HubReply(req.ref, seqs if isinstance(seqs, int) else seqs[0])
            loop.call_soon_threadsafe(reply, answer)

        done.add_done_callback(self.logged)
        done.add_done_callback(acknowledge)

    def on_dead_letter(self, note: DeadLetterNote) -> None:
        self.metrics.dead_letters.labels(note.reason, note.kind).inc()
        topic = f"deadletter.{note.reason}"
        body = {"dest": note.dest, "reason": note.reason, "kind": note.kind,
                "sender": str(note.sender) if note.sender else None, "size": note.size}
        self.forwarder.send(topic.encode(), _encoder.encode((body,)))
        self.log.submit(topic, body, source=str(note.sender or "client")).add_done_callback(
            self.logged)
        throttle_for(log, "dead letter").warn("dead letter: a %s to %s from %s: %s", note.kind,
                                              note.dest, note.sender or "a client",
                                              note.reason)

    def logged(self, done: Future[int]) -> None:
        # Runs on the writer thread: only count and log here.
        exc = done.exception()
        if exc is not None:
            self.log_errors += 1
            log.error("event log append failed (%d so far): %s", self.log_errors, exc)

    def on_root_exit(self) -> None:
        try:
            self.root_exited()
        except Exception as exc:  # noqa: BLE001 - the node must still end: a hang would hide it
            self.tasks.died("root exit", repr(exc), exc)
            if not self.done.done():
                self.done.set_result(1)

    def root_exited(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.root_pidfd)
        _, status = os.waitpid(self.root_pid, 0)
        for frame in self.root.drain():
            with self.tasks.guard("root channel"):
                self.on_frame(frame)
        reason = self.root_reason or reason_from_wait_status(status)
        self.hub.process_exited(self.root_pid, reason)
        for ref in [*self.pending, *self.asked]:
            self.answer(ref, msgspec.Raw(_encoder.encode(Err("noproc", "root supervisor exited"))))
        if self.stopping and isinstance(reason, (Normal, Shutdown)):
            self.say(f"node {self.name}: stopped")
            self.done.set_result(self.exit_code)
            return
        what = "failed to start" if not self.ready else "exited"
        culprit = self.crashes.culprit("root")
        line = f"root supervisor {what}: {describe(reason)}" + (f"; {culprit}" if culprit else "")
        log.error("%s", line)
        self.say(f"node {self.name}: {line}")
        self.done.set_result(1)

    # ---- the mesh (prismatic.mesh) -----------------------------------------------------------

    async def start_mesh(self) -> None:
        from .mesh._loop import MeshLoop  # noqa: PLC0415 - only a clustered node needs it

        try:
            self.mesh = MeshLoop(self.name, self.mesh_settings, self.on_cluster_event,
                                 self.mesh_fatal, self.drops)
            addr = await self.mesh.start()
        except PrismaticError as exc:
            self.mesh = None
            self.mesh_fatal(str(exc))
            return
        self.metrics.register(self.mesh.collector())
        self.global_names.attach(addr, self.mesh.send_to)
        self.mesh.on_global_frame = self.global_names.received
        self.mesh.on_members = self.global_names.members
        await self.start_distribution()
        self.say(f"node {self.name}: cluster address {addr.removeprefix('tcp://')}")

    async def start_distribution(self) -> None:
        """Messages, monitors and links to processes of other nodes (mesh._remote)."""
        from .mesh._remote import Distribution  # noqa: PLC0415

        mesh = self.mesh
        dist = Distribution(self.name, self.hub, mesh.send_to_node, mesh.node_alive,
                            self.on_dead_letter, mesh.peers)
        await dist.start()
        dist.on_control = self.on_remote_control
        dist.on_lost = self.control_node_lost
        dist.publish_local = self.forwarder.send
        dist.address_of, dist.keys = mesh.member_addr, mesh.keys  # direct links (._direct)
        dist.attach_port(mesh.port)
        self.forwarder.on_published = dist.published
        mesh.remote = self.hub.remote = dist

    def mesh_fatal(self, reason: str) -> None:
        self.say(f"node {self.name}: error: {reason}")
        log.error("node: %s; stopping", reason)
        self.exit_code = 2
        self.stop()

    def on_cluster_event(self, topic: str, body: dict[str, Any]) -> None:
        self.forwarder.send(topic.encode(), _encoder.encode((body,)))
        # Lazy, as the lifecycle events are (nobody waits for it): its synced commit does
        # not compete with what a member's death sets off on this and every other node.
        self.log.submit(topic, body, source="mesh", lazy=True).add_done_callback(self.logged)

    # ---- the node's own tasks (see ._node_tasks) --------------------------------------------

    def on_task_error(self, task: str) -> None:
        self.metrics.task_errors.labels(task).inc()
        if task == "control":
            self.control_errors += 1

    def on_task_death(self, task: str) -> None:
        self.metrics.task_deaths.labels(task).inc()
        self.metrics.dead_tasks = tuple(self.tasks.dead)

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop,
                          context: dict[str, Any]) -> None:
        """What escaped every guard (a callback of the hub's server, a task nobody awaits):
        logged and counted like a guarded message, never silent."""
        exc = context.get("exception")
        self.tasks.caught("loop", exc if exc is not None else
                          RuntimeError(context.get("message", "unknown loop error")))

    # ---- metrics (read from the metrics thread at scrape time) ------------------------------

    def process_samples(self) -> list[ProcessSample]:
        return [ProcessSample("/".join(e.path) or "root", e.type, e.pid)
                for e in tuple(self.tree.entries.values()) if e.pid is not None]

    def mailbox_stats(self) -> tuple[dict[str, MailboxStats], int]:
        workers = {"/".join(e.path): Pid(self.name, e.pid)
                   for e in tuple(self.tree.entries.values())
                   if e.pid is not None and e.type != "supervisor"}
        return collect_stats(workers, MAILBOX_STATS_TIMEOUT_S)

    def gauges(self) -> dict[str, float]:
        return {"node_uptime_seconds": time.monotonic() - self.started,
                "node_ready": float(self.ready),
                "eventlog_lag_seconds": self.log.lag_seconds(),
                "registered_names": len(self.hub.registry.names),
                "monitors": len(self.hub.links.monitors),
                "links": len(self.hub.links.links),
                "pubsub_subscriber_hwm": self.forwarder.subscriber_hwm}

    def counters(self) -> dict[str, int]:
        c = self.log.counters
        return {"eventlog_appends": c.appends, "eventlog_commits": c.commits,
                "eventlog_bytes_written": c.bytes_written,
                # The writer counts each failed commit; the futures it failed are no more
                # failures (adding self.log_errors counted every failure twice).
                "eventlog_errors": c.errors,
                "eventlog_full_errors": c.full_errors,
                "bad_frames_root_channel": self.root.bad_frames,
                "bad_frames_control": self.bad_requests,
                "control_errors": self.control_errors,
                "bad_frames_hub": self.hub.counters["bad_frames"],
                "hub_errors": self.hub.counters["errors"],
                "hub_refused": self.hub.counters["refused_uid"],
                "hub_notices_buffered": self.hub.counters["notice_buffered"],
                "hub_notices_undeliverable": self.hub.counters["notice_undeliverable"],
                "hub_unreported_exits": self.hub.counters["unreported_exits"],
                "hub_watch_failed": self.hub.counters["watch_failed"],
                "hub_probe_failed": self.hub.counters["probe_failed"],
                **self.hub.counted(),
                "pubsub_messages_forwarded": self.forwarder.messages_forwarded,
                "pubsub_events_forwarded": self.forwarder.events_forwarded,
                "pubsub_dropped_bad_frames": self.forwarder.dropped_bad_frames,
                "pubsub_dropped_bad_topic": self.forwarder.dropped_bad_topic,
                "pubsub_topics_evicted": self.forwarder.topics_evicted,
                "global_conflicts": self.global_names.counts["global_conflicts"],
                "global_stale_frames": self.global_names.counts["global_stale_frames"]}

    async def beat(self) -> None:
        while True:  # /health answers 200 while this keeps stamping
            self.metrics.heartbeat = time.monotonic()
            server = self.hub.server
            if server is not None and not server.is_serving():
                self.tasks.died("hub", "its server stopped serving")
            await asyncio.sleep(1.0)

    def record_event(self, topic: str, body: dict[str, Any]) -> None:
        """A node event of its own (a reload's): published and logged."""
        self.forwarder.send(topic.encode(), _encoder.encode((body,)))
        self.log.submit(topic, body, source="node").add_done_callback(self.logged)

    async def print_tree(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            if self.dirty and not self.stopping:
                self.dirty = False
                with self.tasks.guard("tree printer"):
                    stamp = time.strftime("%H:%M:%S")
                    self.say(f"--- {stamp} {self.name}: {self.tree.take_header()}\n"
                             f"{self.tree.render()}")
