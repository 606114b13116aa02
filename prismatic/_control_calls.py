"""A client's calls on a node's control endpoint: OTP's supervisor API and the node's own.

:class:`ControlCalls` is a base of :class:`~._client.NodeConnection`: it works on the
connection's control socket (a DEALER on ``control.sock``, declared in its body) and keeps
no state of its own. A call is one request carrying the node's cookie and a ref; the answer
with that ref is awaited up to the timeout (answers to earlier calls that timed out are
passed over); an ``Err`` becomes the error it names (:class:`~._cookie.CookieRefused`,
:class:`~._errors.StartError`, :class:`~._errors.SupervisorError`, ...). A supervisor is
named by path (``""`` the root, ``"a/b"``) or registered name (``"@pool"``,
``"@pool/sub"``); ``node=`` carries the request to another member of the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import zmq

from ._childspec import ChildSpec, spec_from_wire
from ._control import (
    CONTROL_MAX_BYTES, METRICS_FAILED, UNAUTHORIZED, ControlReply, MetricsCall, NodeStatus,
    ReloadCall, StatusCall, SupervisorCall, TreeCall, TreeRow,
)
from ._cookie import CookieRefused
from ._errors import ChildSpecError, ControlError, StartError, SupervisorError
from ._program import Program
from .supervisors._events import (
    ChildInfo, CountChildren, DeleteChild, Err, GetChildSpec, Ok, RestartChild, StartChild,
    StartDynamic, TerminateChild, WhichChild, WhichChildren,
)

__all__ = ["ControlCalls"]

_encoder = msgspec.msgpack.Encoder()
_reply_decoder = msgspec.msgpack.Decoder(ControlReply)
_result_decoder = msgspec.msgpack.Decoder(Ok | Err)


class ControlCalls:
    """Requests and answers on the control endpoint (see the module's docstring)."""

    data_dir: Path
    timeout: float
    _cookie: str
    _sock: zmq.Socket[bytes]
    _refs: Iterator[int]

    def _call(self, make: Callable[[int, str], Any], timeout: float | None = None) -> Any:
        return self._call_ok(make, timeout).value

    def _call_ok(self, make: Callable[[int, str], Any], timeout: float | None = None) -> Ok:
        ref = next(self._refs)
        request = _encoder.encode(make(ref, self._cookie))
        if len(request) > CONTROL_MAX_BYTES:  # the node would drop the connection unanswered
            raise ControlError(f"request of {len(request)} bytes, over the control limit of "
                               f"{CONTROL_MAX_BYTES}")
        self._sock.send(request)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1):
                raise ControlError(f"node at {self.data_dir} did not answer within "
                                   f"{timeout or self.timeout:.1f}s")
            reply = _reply_decoder.decode(self._sock.recv())
            if reply.ref != ref:
                continue  # the answer to an earlier call that timed out
            result = _result_decoder.decode(reply.result)
            if isinstance(result, Err):
                if result.reason == UNAUTHORIZED:
                    raise CookieRefused(f"node at {self.data_dir} refused the request: "
                                        f"{result.detail}")
                if result.reason == "failed_to_start_child":
                    raise StartError(result.detail, result.exit_reason)
                if result.reason == METRICS_FAILED:
                    raise ControlError(f"node at {self.data_dir} could not produce its "
                                       f"metrics: {result.detail}")
                raise SupervisorError(result.reason, result.detail)
            return result

    def _sup(self, sup: str, op: Any, timeout: float | None = None,
             node: str | None = None) -> Any:
        return self._sup_ok(sup, op, timeout, node).value

    def _sup_ok(self, sup: str, op: Any, timeout: float | None = None,
                node: str | None = None) -> Ok:
        """``sup`` is a path (``"a/b"``, ``""`` the root) or ``"@name"``, optionally with a
        path below the named supervisor (``"@pool/sub"``); ``node``: another member of the
        cluster, where the request is carried out."""
        name = ""
        if sup.startswith("@"):
            name, _, sup = sup[1:].partition("/")
            if not name:
                raise SupervisorError("badarg", "'@' must be followed by a supervisor name")
        path = tuple(p for p in sup.split("/") if p)
        raw = msgspec.Raw(_encoder.encode(op))
        return self._call_ok(lambda ref, cookie: SupervisorCall(ref, path, raw, cookie,
                                                                name=name, node=node or ""),
                             timeout)

    # ---- OTP's supervisor API -----------------------------------------------------------------
    # ``node=``: a member of this node's cluster, where the operation is carried out (this
    # node forwards it over the mesh); None is this node.

    def which_children(self, sup: str = "", *, node: str | None = None) -> list[ChildInfo]:
        return msgspec.convert(self._sup(sup, WhichChildren(), node=node), list[ChildInfo])

    def count_children(self, sup: str = "", *, node: str | None = None) -> dict[str, int]:
        return msgspec.convert(self._sup(sup, CountChildren(), node=node), dict[str, int])

    def which_child(self, sup: str, child: str | int) -> ChildInfo:
        """OTP 26's ``which_child``: the row ``which_children`` has for ``child`` (an id, or
        the pid of a simple_one_for_one child); ``SupervisorError('not_found')`` if none."""
        return msgspec.convert(self._sup(sup, WhichChild(child)), ChildInfo)

    def get_childspec(self, sup: str, child: str | int) -> ChildSpec:
        """OTP's ``get_childspec``: the validated spec the supervisor holds for ``child``
        (an id, or a simple_one_for_one child's pid). A ``start`` that was a class or a
        function comes back as the ``"module:qualname"`` naming it."""
        return spec_from_wire(self._sup(sup, GetChildSpec(child)))

    def start_child(self, sup: str, spec_or_args: ChildSpec | tuple[Any, ...] | list[Any],
                    timeout: float | None = None, *, node: str | None = None) -> int | None:
        """Start a child from a spec, or (simple_one_for_one) from extra args; its pid, or
        None if its ``init`` raised Ignore. With ``node=``, ``start`` must be importable
        there (a ``module:attr`` reference: code does not travel)."""
        return self.start_child_info(sup, spec_or_args, timeout, node=node)[0]

    def start_child_info(self, sup: str,
                         spec_or_args: ChildSpec | tuple[Any, ...] | list[Any],
                         timeout: float | None = None, *,
                         node: str | None = None) -> tuple[int | None, Any]:
        """As :meth:`start_child`, with what the worker's ``init`` returned beside the pid
        (OTP's ``{ok, Pid, Info}``; None when it returned nothing)."""
        if isinstance(spec_or_args, ChildSpec):
            ok = self._sup_ok(sup, StartChild(_wire_spec(spec_or_args)), timeout, node)
        else:
            ok = self._sup_ok(sup, StartDynamic(tuple(spec_or_args)), timeout, node)
        return msgspec.convert(ok.value, int | None), ok.info

    def terminate_child(self, sup: str, child: str | int, timeout: float | None = None, *,
                        node: str | None = None) -> None:
        self._sup(sup, TerminateChild(child), timeout, node)

    def restart_child(self, sup: str, child: str, timeout: float | None = None, *,
                      node: str | None = None) -> int | None:
        return self.restart_child_info(sup, child, timeout, node=node)[0]

    def restart_child_info(self, sup: str, child: str, timeout: float | None = None, *,
                           node: str | None = None) -> tuple[int | None, Any]:
        """As :meth:`restart_child`, with the new process's start info (as
        :meth:`start_child_info`)."""
        ok = self._sup_ok(sup, RestartChild(child), timeout, node)
        return msgspec.convert(ok.value, int | None), ok.info

    def delete_child(self, sup: str, child: str, *, node: str | None = None) -> None:
        self._sup(sup, DeleteChild(child), node=node)

    # ---- the node -----------------------------------------------------------------------------

    def tree(self, *, node: str | None = None) -> list[TreeRow]:
        """The node's picture of the tree, depth-first; ``last_exit`` decoded to a typed
        exit reason (never the wire's dict). ``node=``: another member's tree."""
        return msgspec.convert(self._call(lambda ref, cookie: TreeCall(ref, cookie, node or "")),
                               list[TreeRow])

    def status(self, *, node: str | None = None) -> NodeStatus:
        return msgspec.convert(
            self._call(lambda ref, cookie: StatusCall(ref, cookie, node or "")), NodeStatus)

    def reload(self, timeout: float | None = None) -> dict[str, Any]:
        """Re-read the node's config file and apply its tree (``prismatic reload``, see
        ``prismatic._config_reload``): what was started, stopped, restarted... A file that
        does not load is refused whole: ``SupervisorError('reload_refused', line)``."""
        return dict(self._call(lambda ref, cookie: ReloadCall(ref, cookie), timeout))

    def metrics(self) -> str:
        """The node's metrics in Prometheus text format (also without an HTTP endpoint)."""
        return self._call(MetricsCall)

    def pid_of(self, path: str) -> int | None:
        """The pid of the process at ``path`` in the tree (``""`` is the root)."""
        for row in self.tree():
            if row.path == path:
                return row.pid
        return None



def _wire_spec(spec: ChildSpec) -> ChildSpec:
    start = spec.start
    if isinstance(start, Program):
        return spec  # plain data: it crosses the wire as it is
    if not isinstance(start, str):
        module = getattr(start, "__module__", None)
        qualname = getattr(start, "__qualname__", None)
        if not module or not qualname or "<" in qualname or module == "__main__":
            raise ChildSpecError("start", start, "must be importable by the node "
                                 "(a module-level class or function, or 'module:attr')")
        start = f"{module}:{qualname}"
    return msgspec.structs.replace(spec, start=start)

