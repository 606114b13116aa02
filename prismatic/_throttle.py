"""Warnings that a peer can trigger at any rate: at most one per interval, per source kind.

Bad input from the network, refused requests and dead letters are each counted in a metric
as they happen; the log gets the first one, then at most one line per interval, which says
how many were held back since the line before. A flood cannot flood the log.

The throttle belongs to a *source kind* (``control``, ``hub``, ``mailbox``, ``pub/sub``...),
not to a connection: :func:`throttle_for` hands every receiver of one kind in the process
the same :class:`ThrottledWarning`, so a peer that opens a new connection per bad message
still gets one line per interval, not one per connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

__all__ = ["ThrottledWarning", "throttle_for", "INTERVAL_S", "MAX_KINDS"]

INTERVAL_S = 10.0
MAX_KINDS = 256  # kinds named after peers (``connection to <pid>``) must not grow forever


class ThrottledWarning:
    """Invariant: ``held`` counts the warnings swallowed since the last one logged."""

    __slots__ = ("log", "interval", "logged_at", "held")

    def __init__(self, log: logging.Logger, interval: float = INTERVAL_S) -> None:
        self.log = log
        self.interval = interval
        self.logged_at = -interval
        self.held = 0

    def warn(self, msg: str, *args: object, exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        if now - self.logged_at < self.interval:
            self.held += 1
            return
        if self.held:
            msg += f" ({self.held} more like it in the last {now - self.logged_at:.0f} s)"
        self.log.warning(msg, *args, exc_info=exc_info)
        self.logged_at, self.held = now, 0


_shared: OrderedDict[tuple[str, str], ThrottledWarning] = OrderedDict()
_shared_lock = threading.Lock()  # the metrics thread and the loop may both warn


def throttle_for(log: logging.Logger, kind: str) -> ThrottledWarning:
    """The process-wide throttle of ``kind`` on ``log`` (made on first use)."""
    key = (log.name, kind)
    with _shared_lock:
        warning = _shared.get(key)
        if warning is None:
            warning = _shared[key] = ThrottledWarning(log)
            if len(_shared) > MAX_KINDS:
                _shared.popitem(last=False)
        else:
            _shared.move_to_end(key)
        return warning
