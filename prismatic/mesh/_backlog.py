"""The rule for a mailbox that takes nothing: when its node drops what comes for it.

Messages from other nodes' processes wait in their destination's node when the mailbox does
not take them at once (:mod:`._remote`'s relay path, :mod:`._direct`'s direct path). What a
node holds for one mailbox is bounded (``PRISMATIC_REMOTE_BACKLOG_BYTES``,
:func:`._settings.backlog_limit`); :func:`backlog_full` is the decision, pure, shared by
both paths.
"""

from __future__ import annotations

__all__ = ["backlog_full"]


def backlog_full(was_full: bool, backlog: int, limit: int) -> bool:
    """Whether messages for a mailbox are dropped, its node holding ``backlog`` bytes for it
    (written but not taken, and on the direct path gathered to be written): from ``limit``
    on (``PRISMATIC_REMOTE_BACKLOG_BYTES``, :func:`._settings.backlog_limit`), until it is
    back under half of it (so a mailbox that stopped reading loses one run of messages, not
    every other one). A dropped call is refused at
    once (``mailbox_full``: its caller raises MailboxFull), a dropped cast or send is a
    dead letter (``mailbox_full``), each counted (``prismatic_cluster_direct_mailbox_full``,
    ``prismatic_cluster_relay_mailbox_full``) and logged, throttled. Not backpressure, as
    OTP's busy distribution port is: one socket carries every process's messages from a
    node and the membership protocol, which must not wait for one mailbox."""
    return backlog >= (limit // 2 if was_full else limit)
