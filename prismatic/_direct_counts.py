"""What a process counts of its direct routes and its direct listener, and how its node
learns it.

A process's switches to direct routes (:mod:`._remote_routes`) and its own listener
(:mod:`._direct_listener`) count here; :func:`report` sends what changed since the last
report to the process's node in one ``direct_counts`` note, where it adds up into the
``prismatic_cluster_direct_*`` series (:mod:`prismatic.mesh._mesh_metrics`). Reports go on
rare events (a switch, a listener opened or refused a peer, a bad batch) and at most every
``REPORT_S`` while messages flow, never per message.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from .transports._messages import DirectCountsNote

__all__ = ["counts", "report", "KNOWN", "REPORT_S"]

REPORT_S = 5.0
# The names a node takes (anything else in a note is dropped as a malformed frame).
KNOWN = frozenset({
    "switched", "not_offered", "connect_failures",  # a caller's pairs
    "listeners_opened", "listener_failures", "listener_messages", "listener_bad_frames",
    "listener_refused_unknown_key", "listener_refused_bad_handshake",
    "listener_answers_lost", "listener_mailbox_full", "listener_dead_letters",
    "listener_released",
})
counts: collections.Counter[str] = collections.Counter()
_reported: collections.Counter[str] = collections.Counter()
_last = 0.0


def report(hub: Any, force: bool = True) -> None:
    """Send ``hub`` (a :class:`~._hubclient.HubClient`) what changed since the last
    report; unless ``force``, only if REPORT_S passed since."""
    global _last
    now = time.monotonic()
    if not force and now - _last < REPORT_S:
        return
    delta = {k: n - _reported[k] for k, n in counts.items() if n != _reported[k]}
    if not delta:
        return
    _last = now
    _reported.update(delta)
    hub.note(DirectCountsNote(delta))
