"""Transports: wire frames and the channels that carry them.

Installed as ``prismatic.transports``. The supervision plane runs on :class:`Channel`
(a framed socketpair per supervisor/child); process messaging runs on ZeroMQ.
"""

from ._channel import Channel, open_channel_pair
from ._frames import WIRE_VERSION, Frame

__all__ = ["Channel", "open_channel_pair", "WIRE_VERSION", "Frame"]
