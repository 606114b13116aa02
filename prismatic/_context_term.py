"""Ending a ZeroMQ context without hanging the process that owns it.

``zmq.Context.term()`` blocks until every socket of the context is closed. A socket a code
path forgot (a monitor socket made on a thread that never ran, say) then holds the node in
its exit forever, its tree already gone, and ``prismatic node stop`` waits on it: the worst
way to fail, silently. :func:`term_within` waits for the term a bounded time on a thread of
its own and says so loudly when it does not return; the process then exits regardless (the
kernel closes what libzmq still holds). Only a log line: the node's metrics end with it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

__all__ = ["TERM_WAIT_S", "term_within"]

log = logging.getLogger(__name__)

TERM_WAIT_S = 5.0  # libzmq's linger is 0 on the node's sockets: a healthy term is instant

def term_within(ctx: zmq.Context[Any], what: str, seconds: float = TERM_WAIT_S) -> bool:
    """Terminate ``ctx``, waiting at most ``seconds``; False (logged) if a socket held it."""
    done = threading.Thread(target=ctx.term, name=f"term {what}", daemon=True)
    done.start()
    done.join(seconds)
    if done.is_alive():
        log.error("%s: its ZeroMQ context did not terminate within %.0f s: a socket was left "
                  "open (a bug; exiting regardless)", what, seconds)
        return False
    return True
