"""The node's control endpoint: the server side of :mod:`._control`.

A ROUTER socket at ``ipc://<data dir>/control.sock`` (mode 0600, bound by the node loop)
takes one frame per request: a :class:`~._control.ControlCall`, authenticated by the cookie
in ``<data dir>/cookie`` (:mod:`._cookie`; a missing or wrong one is refused and counted).
A malformed request has no ref to answer: it is dropped, counted and logged (throttled).

An authorised call is carried out here: a supervisor operation goes to the root
supervisor's channel as a ``RequestFrame`` under a ref of the node's own, and its reply
(:meth:`ControlEndpoint.answer`, fed by the node loop) goes back to the client; ``tree``
and ``status`` are answered from the node's :class:`~._tree.TreeView`; cluster calls from
the mesh, ``reload`` from :mod:`._config_reload`, ``metrics`` off the loop. A call for
another node (``node=``) travels over the mesh (``ControlRoute``, carried by
:mod:`prismatic.mesh._remote`) and is authorised there by the cluster secret; its answer
comes back as a ``ControlAnswer``, or fails ``no_connection`` when that node is lost.

:class:`ControlEndpoint` is a base of :class:`~._node_loop.NodeLoop`: it works on the
loop's state (declared in its body).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from ._control import (
    METRICS_FAILED, NO_CONNECTION, NO_MESH, UNAUTHORIZED, ClusterJoinCall, ClusterLeaveCall,
    ClusterMembersCall, ControlCall, ControlReply, MetricsCall, NodeStatus, ReloadCall,
    StatusCall, SupervisorCall, TreeCall, TreeRow,
)
from ._cookie import cookie_matches
from ._errors import PrismaticError
from ._multipart import read_rest
from ._throttle import throttle_for
from .supervisors._events import Err, Ok
from .supervisors._names import resolve_name
from .transports._frames import RequestFrame
from .transports._mesh_frames import ControlAnswer, ControlRoute

if TYPE_CHECKING:
    import zmq.asyncio

    from ._config_reload import ConfigReload
    from ._metrics import MetricsServer, NodeMetrics
    from ._node_tasks import NodeTasks
    from ._tree import TreeView
    from .transports._channel import Channel

__all__ = ["ControlEndpoint"]

log = logging.getLogger("prismatic._node_loop")  # the node loop's log: its lines name the node
_encoder = msgspec.msgpack.Encoder()
_call_decoder = msgspec.msgpack.Decoder(ControlCall)
_result_decoder = msgspec.msgpack.Decoder(Ok | Err)


class ControlEndpoint:
    """The control requests a node serves: a base of :class:`~._node_loop.NodeLoop`."""

    if TYPE_CHECKING:  # the node loop's, set by NodeLoop.__init__ and NodeLoop.main
        name: str
        data: Path
        cookie: str
        control: zmq.asyncio.Socket
        root: Channel
        root_pid: int
        tree: TreeView
        tasks: NodeTasks
        metrics: NodeMetrics
        metrics_server: MetricsServer | None
        reloads: ConfigReload
        mesh: Any
        ready: bool
        started: float
        next_ref: int
        pending: dict[int, tuple[bytes | str, int]]  # str: a node (over the mesh)
        remote_pending: dict[int, tuple[bytes, int, str]]  # to another node's
        asked: dict[int, asyncio.Future[msgspec.Raw]]  # the node's own requests
        bad_requests: int
        control_errors: int

    # ---- requests from clients ------------------------------------------------------------

    async def serve_control(self) -> None:
        recv = self.control.recv
        rest: zmq.Socket[bytes] = zmq.Socket.shadow(self.control.underlying)  # read at once
        while True:
            frames = [await recv()]  # [the ROUTER's peer identity, the client's frame]
            parts = read_rest(rest, frames, 2)  # never more than that held: ._multipart
            with self.tasks.guard("control"):
                if parts != 2:
                    self.drop_request(f"{parts - 1} frames instead of 1")
                else:
                    self.on_control(frames[0], frames[1])

    def drop_request(self, why: str) -> None:
        """A request without a ref to answer: counted and logged (throttled, node-wide)."""
        self.bad_requests += 1
        throttle_for(log, "control").warn("control: dropped a malformed request (%d so far): "
                                          "%s", self.bad_requests, why)

    def on_control(self, ident: bytes, body: bytes) -> None:
        try:
            call = _call_decoder.decode(body)
        except (ValueError, RecursionError) as exc:  # undecodable, bad UTF-8, bottomless
            self.drop_request(str(exc))
            return
        self.metrics.control_requests.labels(type(call).__struct_config__.tag).inc()
        if not cookie_matches(self.cookie, call.cookie):
            self.refuse(ident, call.ref, "missing" if not call.cookie else "wrong")
            return
        if getattr(call, "node", "") not in ("", self.name):
            self.forward_control(ident, call)
        else:
            self.carry_out(ident, call)

    def refuse(self, ident: bytes, ref: int, why: str) -> None:
        self.metrics.control_refusals.labels(f"{why}_cookie").inc()
        self.reply(ident, ref, Err(UNAUTHORIZED, f"{why} cookie: the request must carry the "
                                                 f"contents of {self.data / 'cookie'}"))
        throttle_for(log, "control refusal").warn("control: refused a request with a %s cookie",
                                                  why)

    def carry_out(self, ident: bytes | str, call: Any) -> None:
        """Answer an authorised control call here (``ident``: a client, or a node's name for
        a call that came over the mesh)."""
        if isinstance(call, SupervisorCall):
            path = call.path
            if call.name:
                found = self.named_path(call.name)
                if found is None:
                    self.reply(ident, call.ref, Err("noproc", f"no running supervisor is "
                                                              f"registered as {call.name!r}"))
                    return
                path = (*found, *path)
            ref, self.next_ref = self.next_ref, self.next_ref + 1
            self.pending[ref] = (ident, call.ref)
            if not self.root.try_send(RequestFrame(ref, path, call.op)):
                self.answer(ref, msgspec.Raw(_encoder.encode(Err("noproc", "no root"))))
        elif isinstance(call, TreeCall):
            self.reply(ident, call.ref, Ok(self.tree_rows()))
        elif isinstance(call, StatusCall):
            self.reply(ident, call.ref, Ok(self.status()))
        elif isinstance(ident, str):  # the calls below are never carried across nodes
            self.reply(ident, call.ref, Err("badarg", "not available across nodes"))
        elif isinstance(call, (ClusterMembersCall, ClusterJoinCall, ClusterLeaveCall)):
            self.on_cluster_call(ident, call)
        elif isinstance(call, ReloadCall):
            asyncio.get_running_loop().create_task(self.reload_config(ident, call.ref))
        elif isinstance(call, MetricsCall):
            # Off the loop: a scrape asks every worker for its mailbox statistics.
            asyncio.get_running_loop().create_task(self.reply_metrics(ident, call.ref))

    # ---- requests to the root supervisor and their answers ----------------------------------

    async def ask_supervisor(self, path: tuple[str, ...], op: Any) -> Ok | Err:
        """A supervisor operation of the node's own (a reload's), answered like a client's."""
        ref, self.next_ref = self.next_ref, self.next_ref + 1
        self.asked[ref] = answer = asyncio.get_running_loop().create_future()
        if not self.root.try_send(RequestFrame(ref, path, msgspec.Raw(_encoder.encode(op)))):
            del self.asked[ref]
            return Err("noproc", "no root")
        result: Ok | Err = _result_decoder.decode(await answer)
        return result

    def answer(self, ref: int, result: msgspec.Raw) -> None:
        asked = self.asked.pop(ref, None)
        if asked is not None:
            if not asked.done():
                asked.set_result(result)
            return
        target = self.pending.pop(ref, None)
        if target is not None:
            self.send_reply(*target, result)

    def reply(self, ident: bytes | str, ref: int, result: Ok | Err) -> None:
        self.send_reply(ident, ref, msgspec.Raw(_encoder.encode(result)))

    def send_reply(self, ident: bytes | str, ref: int, result: msgspec.Raw) -> None:
        if isinstance(ident, str):  # a call that came from that node over the mesh
            if self.mesh is not None:
                self.mesh.send_to_node(ident, ControlAnswer(self.name, ref, result))
            return
        self.control.send_multipart([ident, _encoder.encode(ControlReply(ref, result))])

    # ---- the calls answered here ------------------------------------------------------------

    def on_cluster_call(self, ident: bytes, call: Any) -> None:
        if self.mesh is None:
            self.reply(ident, call.ref, Err(NO_MESH, f"node {self.name} runs without the "
                                                     "cluster mesh (start it with --listen "
                                                     "or --join)"))
        elif isinstance(call, ClusterMembersCall):
            self.reply(ident, call.ref, Ok(self.mesh.members()))
        elif isinstance(call, ClusterJoinCall):
            try:
                self.mesh.join(call.seeds)
            except PrismaticError as exc:
                self.reply(ident, call.ref, Err("badarg", str(exc)))
                return
            self.reply(ident, call.ref, Ok(None))
        else:
            self.mesh.leave()
            self.reply(ident, call.ref, Ok(None))

    async def reply_metrics(self, ident: bytes, ref: int) -> None:
        try:
            text = await asyncio.get_running_loop().run_in_executor(None,
                                                                    self.metrics.exposition)
        except Exception as exc:  # noqa: BLE001 - answered, logged and counted, never lost
            self.control_errors += 1
            log.exception("control: metrics failed (%d control errors so far)",
                          self.control_errors)
            self.reply(ident, ref, Err(METRICS_FAILED, repr(exc)))
            return
        self.reply(ident, ref, Ok(text.decode()))

    def status(self) -> NodeStatus:
        entries = [e for e in self.tree.entries.values() if e.running]
        return NodeStatus(
            node=self.name, pid=os.getpid(), root_pid=self.root_pid, ready=self.ready,
            uptime=time.monotonic() - self.started, processes=len(entries),
            data_dir=str(self.data.resolve()),
            supervisors=sum(1 for e in entries if e.type == "supervisor"),
            workers=sum(1 for e in entries if e.type != "supervisor"),
            restarts=sum(e.restarts for e in self.tree.entries.values()),
            metrics_url=self.metrics_server.url if self.metrics_server else None,
            dead_tasks=tuple(self.tasks.dead))

    def named_path(self, name: str) -> tuple[str, ...] | None:
        """The tree path of the supervisor registered as ``name`` (supervisors._names)."""
        pid = resolve_name(self.name, name)
        if pid is None:
            return None
        return next((e.path for e in self.tree.entries.values()
                     if e.pid == pid and e.type == "supervisor"), None)

    def tree_rows(self) -> list[TreeRow]:
        now = time.monotonic()
        return [TreeRow(path="/".join(e.path), type=e.type, pid=e.pid, restarts=e.restarts,
                        uptime=(now - e.started_mono) if e.pid else None,
                        last_exit=e.last_exit) for e in self.tree.rows()]

    async def reload_config(self, ident: bytes, ref: int) -> None:
        try:
            result = await self.reloads.run()
        except Exception as exc:  # noqa: BLE001 - answered, logged and counted, never lost
            self.tasks.caught("reload", exc)
            result = Err("reload_failed", repr(exc))
        self.reply(ident, ref, result)

    # ---- control calls across nodes (``node=``; prismatic.mesh._remote carries them) ------

    def forward_control(self, ident: bytes, call: Any) -> None:
        if self.mesh is None or self.mesh.remote is None:
            self.reply(ident, call.ref, Err(NO_MESH, f"node {self.name} runs without the "
                                                     "cluster mesh: no other nodes to ask"))
            return
        ref, self.next_ref = self.next_ref, self.next_ref + 1
        body = _encoder.encode(msgspec.structs.replace(call, ref=ref, cookie="", node=""))
        self.remote_pending[ref] = (ident, call.ref, call.node)
        if not self.mesh.send_to_node(call.node, ControlRoute(self.name, ref,
                                                              msgspec.Raw(body))):
            del self.remote_pending[ref]
            self.reply(ident, call.ref, Err(NO_CONNECTION, f"node {call.node!r} is not a "
                                                           "reachable member of the cluster"))

    def on_remote_control(self, frame: Any) -> None:
        if isinstance(frame, ControlRoute):
            try:
                call = _call_decoder.decode(frame.call)
            except (ValueError, RecursionError) as exc:
                self.drop_request(f"from node {frame.src}: {exc}")
                return
            self.metrics.control_requests.labels(type(call).__struct_config__.tag).inc()
            self.carry_out(frame.src, call)  # authorised by the cluster secret
            return
        target = self.remote_pending.pop(frame.ref, None)
        if target is not None:
            ident, client_ref, _ = target
            self.control.send_multipart([ident, _encoder.encode(ControlReply(client_ref,
                                                                             frame.result))])

    def control_node_lost(self, node: str) -> None:
        for ref, (ident, client_ref, to) in list(self.remote_pending.items()):
            if to == node:
                del self.remote_pending[ref]
                self.reply(ident, client_ref, Err(NO_CONNECTION, f"node {node!r} became "
                                                                 "unreachable"))
