"""The runner's watch on the node: a thread that asks ``status`` and ``tree`` over and over
(every 10 ms), timing each request, and tells when the tree is back in its spec shape after
each fault.

The control latency it reports is the slowest answer seen; a request that fails is a
failure of the node's promise to answer throughout (except while the scenario has the node
down on purpose: :meth:`Probe.pause`). A fault registered with :meth:`Probe.expect` is
converged at the end of the first request that started after it and found every permanent
child running with a live pid; one still pending ``deadline`` seconds after its injection
did not converge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .._client import NodeConnection
from .._errors import PrismaticError
from ._invariants import tree_converged
from ._shape import TreeShape

__all__ = ["Probe"]

_INTERVAL_S = 0.01


class Probe:
    def __init__(self, connect: Callable[[], NodeConnection], shape: TreeShape,
                 deadline_s: float, alive: Callable[[], bool] = lambda: True) -> None:
        self._connect = connect
        self._alive = alive  # whether the node process still runs: no point waiting if not
        self.shape = shape
        self.deadline_s = deadline_s
        self.lock = threading.Lock()
        # (fault description, injected at, the path it hit, the pid it killed there)
        self.pending: list[tuple[str, float, str, int | None]] = []
        self.converged: list[float] = []  # seconds, per fault
        self.late: list[tuple[str, str]] = []  # (fault, what was not running)
        self.failures: list[str] = []
        self.max_latency_s = 0.0
        self.requests = 0
        self.last_problem: str | None = "not probed yet"
        self.rows: dict[str, int | None] = {}  # path -> pid, as last seen
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._epoch = 0  # bumped by pause/resume: a request that spans one is not judged
        self._thread = threading.Thread(target=self._loop, name="chaos-probe", daemon=True)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        # A request to a node that died waits out its timeout: not worth waiting for (the
        # thread is a daemon and closes its connection when the request gives up).
        self._thread.join(timeout=15 if self._alive() else 0.5)

    def pause(self) -> None:
        """The scenario takes the node down on purpose: stop asking until :meth:`resume`; a
        request already in flight that fails then is not the node's fault. Pending faults
        stay pending: their convergence includes the node's restart."""
        self._epoch += 1
        self._paused.set()

    def resume(self) -> None:
        self._epoch += 1
        self._paused.clear()

    def expect(self, fault: str, injected_at: float, path: str = "",
               killed: int | None = None) -> None:
        """Time how long the subtree at ``path`` takes to run again in full (``killed``
        replaced) after ``injected_at``."""
        with self.lock:
            self.pending.append((fault, injected_at, path, killed))

    def in_shape(self) -> bool:
        return self.last_problem is None

    def wait_converged(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Until nothing is pending and the last look found the tree in shape."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive():
            with self.lock:
                idle = not self.pending
            if idle and self.last_problem is None:
                return True
            time.sleep(0.01)
        return False

    def _loop(self) -> None:
        conn: NodeConnection | None = None
        while not self._stop.is_set():
            if self._paused.is_set():
                if conn is not None:
                    conn.close()
                    conn = None
                time.sleep(0.02)
                continue
            epoch = self._epoch
            try:
                if conn is None:
                    conn = self._connect()
                t0 = time.monotonic()
                conn.status()
                t1 = time.monotonic()
                rows = conn.tree()
                t2 = time.monotonic()
            except PrismaticError as exc:
                if epoch == self._epoch and not self._paused.is_set():
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                    conn = None
                time.sleep(0.05)
                continue
            self.requests += 2
            self.max_latency_s = max(self.max_latency_s, t1 - t0, t2 - t1)
            self.rows = {r.path: r.pid for r in rows}
            problem = tree_converged(self.shape, rows)
            self.last_problem = problem
            with self.lock:
                keep = []
                for item in self.pending:
                    fault, at, path, killed = item
                    left = problem if not path else tree_converged(
                        self.shape, rows, under=path, replaced=killed)
                    if left is None and t0 >= at:
                        self.converged.append(t2 - at)
                    elif t2 - at > self.deadline_s:
                        self.late.append((fault, left or "?"))
                    else:
                        keep.append(item)
                self.pending = keep
            time.sleep(_INTERVAL_S)
        if conn is not None:
            conn.close()
