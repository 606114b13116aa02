"""What a supervisor met and carried on from, degraded: each is logged where it happens (the
detail) and sent up the tree as a :class:`~prismatic.transports._frames.TroubleFrame` (the
count), so an operator sees it in ``prismatic_supervisor_troubles_total{what}`` without
reading every supervisor's log. The values are the metric's label: a closed set."""

from __future__ import annotations

import enum

__all__ = ["Trouble"]


class Trouble(enum.Enum):
    ZYGOTE_SPARE_FAILED = "zygote_spare_failed"  # its zygote could not clone a spare
    FORK_FAILED = "fork_failed"  # the zygote or a spare could not be forked (backoff)
    ZYGOTE_DIED = "zygote_died"
    ZYGOTE_GIVEN_UP = "zygote_given_up"  # died too often: spares are forked here from now on
    ZYGOTE_HUNG = "zygote_hung"  # did not answer within its stop's wait: killed
    SWEEP_FAILED = "sweep_failed"  # its child processes could not be listed for orphans
    ORPHANS_KILLED = "orphans_killed"  # processes left by children that are gone
    NO_SUBREAPER = "no_subreaper"  # orphans of its children go to init
    UNENCODABLE_REPLY = "unencodable_reply"
    CHILD_FORK_FAILED = "child_fork_failed"  # a start failure (failed_to_start_child)
    NO_SPARE_IN_TIME = "no_spare_in_time"  # forked directly instead
    SPARE_DIED = "spare_died"
    UNEXPECTED_FRAME = "unexpected_frame"
    LENDER_DIED = "lender_died"  # the node's shared spare's keeper (supervisors/_lender.py)
    LENDER_GIVEN_UP = "lender_given_up"  # died too often: dormant supervisors fork their own
    LENDER_REFUSED = "lender_refused"  # a malformed request or another user's connection
    LENT_EXIT_UNKNOWN = "lent_exit_unknown"  # a lent child's status lost: taken as killed
