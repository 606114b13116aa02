"""Crashes in the node's log: the operator's first place to look, not only the event log.

The node feeds every lifecycle event it receives to :meth:`CrashLog.observe`. An abnormal
exit, a failed start or an unexpected stop reason is logged with the child's path and a
one-line summary of the reason (``RuntimeError: boom``); the full traceback stays in the
event log. A child that crash-loops is throttled per child: the first crash is logged, then
at most one line per interval that says how many crashes were held back. A supervisor that
gives up (restart intensity reached) is always logged, naming the child whose restart broke
the intensity and that child's last exit; :meth:`culprit` hands the same words to the node
for its "root supervisor exited" line.
"""

from __future__ import annotations

import logging
import time

from ._exit import ExitReason, describe, is_abnormal
from .transports._frames import LifecycleFrame

__all__ = ["CrashLog", "CRASH_LOG_INTERVAL_S"]

CRASH_LOG_INTERVAL_S = 10.0


class _Throttle:
    """Invariant: ``held`` counts this child's lines swallowed since the last one logged."""

    __slots__ = ("logged_at", "held")

    def __init__(self) -> None:
        self.logged_at = float("-inf")
        self.held = 0


class CrashLog:
    def __init__(self, log: logging.Logger, interval: float = CRASH_LOG_INTERVAL_S) -> None:
        self.log = log
        self.interval = interval
        self._throttles: dict[str, _Throttle] = {}
        self._last_exit: dict[str, ExitReason] = {}  # a child's last exit or start error
        self._culprits: dict[str, str] = {}  # supervisor path -> why it gave up

    def observe(self, frame: LifecycleFrame) -> None:
        path = "/".join((*frame.path, frame.key))
        sup = "/".join(frame.path) or "root"
        reason = frame.reason
        if frame.kind == "child_exited" and reason is not None:
            self._last_exit[path] = reason
            if is_abnormal(reason):
                self._throttled(path, "%s crashed: %s", path, describe(reason))
        elif frame.kind == "start_error" and reason is not None:
            self._last_exit[path] = reason
            self._throttled(path, "%s failed to start: %s", path, describe(reason))
        elif frame.kind == "shutdown_error" and reason is not None:
            self._throttled(path, "%s stopped with an unexpected reason: %s", path,
                            describe(reason))
        elif frame.kind == "intensity_exceeded":
            last = self._last_exit.get(path)
            below = self._culprits.get(path)  # a supervisor child that gave up itself
            why = f"child {path} broke the restart intensity" + (
                f" (it gave up: {below})" if below is not None
                else f" (last exit: {describe(last)})" if last is not None else "")
            self._culprits[sup] = why
            self.log.error("supervisor %s gave up (reached_max_restart_intensity): %s", sup,
                           why, extra={"path": sup})
        elif frame.kind == "child_deleted":  # a job pool must not grow these tables
            self._throttles.pop(path, None)
            self._last_exit.pop(path, None)

    def culprit(self, sup: str = "root") -> str | None:
        """Why supervisor ``sup`` gave up, if it did: the child and its last exit."""
        return self._culprits.get(sup)

    def _throttled(self, path: str, msg: str, *args: object) -> None:
        t = self._throttles.setdefault(path, _Throttle())
        now = time.monotonic()
        if now - t.logged_at < self.interval:
            t.held += 1
            return
        if t.held:
            msg += " (%d more from this child since its last line)"
            args = (*args, t.held)
        self.log.error(msg, *args, extra={"path": path})
        t.logged_at, t.held = now, 0
