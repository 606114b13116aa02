"""Warnings that a peer can trigger at any rate: at most one per interval.

Bad input from the network, refused requests and dead letters are each counted in a metric
as they happen; the log gets the first one, then at most one line per interval, which says
how many were held back since the line before. A flood cannot flood the log.
"""

from __future__ import annotations

import logging
import time

__all__ = ["ThrottledWarning", "INTERVAL_S"]

INTERVAL_S = 10.0


class ThrottledWarning:
    """Invariant: ``held`` counts the warnings swallowed since the last one logged."""

    __slots__ = ("log", "interval", "logged_at", "held")

    def __init__(self, log: logging.Logger, interval: float = INTERVAL_S) -> None:
        self.log = log
        self.interval = interval
        self.logged_at = -interval
        self.held = 0

    def warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.logged_at < self.interval:
            self.held += 1
            return
        self.log.warning(msg + " (%d more since the last warning)", *args, self.held)
        self.logged_at, self.held = now, 0
