"""What a node needs to be a cluster member, checked before the node forks its tree.

``--listen HOST:PORT`` (default ``127.0.0.1:0``: loopback, any port), ``--join HOST:PORT``
(repeatable seeds), ``--cluster-secret FILE`` (default ``$PRISMATIC_HOME/cluster.secret``)
and ``--reap-after SECONDS`` (how long a dead or left member is remembered; the failure
detector's :class:`~._events.DetectorConfig`) become a :class:`MeshSettings`;
:func:`check_settings` fails with one clear line on a bad address, an unsafe or missing
secret, a node name that cannot be a topic word (member events are published as
``cluster.node.<name>.up``), a ``--reap-after`` the detector cannot take, a bad
``PRISMATIC_REMOTE_BACKLOG_BYTES`` (:func:`backlog_limit`) or a bad
``PRISMATIC_DIRECT_SWITCH_AFTER`` (:func:`check_switch_after`). Nothing here imports ZeroMQ.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import msgspec

from .._errors import NodeError, TopicError
from .._pair_switch import SWITCH_ENV, parse_switch_after
from .._topics import validate_topic
from ._events import DetectorConfig
from ._secret import read_secret

__all__ = ["MeshSettings", "parse_hostport", "hostport", "check_settings", "backlog_limit",
           "check_switch_after", "detector_config", "reap_after_problem"]

# What a node holds for one of its mailboxes, from other nodes' processes, when that mailbox
# takes nothing (its process stopped reading): see mesh._backlog.backlog_full.
BACKLOG_ENV = "PRISMATIC_REMOTE_BACKLOG_BYTES"
BACKLOG_DEFAULT = 64 << 20


class MeshSettings(msgspec.Struct, frozen=True):
    listen: str = "127.0.0.1:0"
    join: tuple[str, ...] = ()
    secret_file: str = ""
    reap_after: float | None = None  # seconds; None: the detector's default (600)


def reap_after_problem(value: float) -> str | None:
    """What is wrong with ``value`` as ``reap_after`` (None: nothing). At least the table
    exchange's interval: a member forgotten sooner could come back from a peer's table."""
    least = DetectorConfig().sync_interval
    if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value)
                                       and value >= least):
        return f"expected a number of seconds, at least {least:g}"
    return None


def detector_config(settings: MeshSettings) -> DetectorConfig:
    """The failure detector's parameters these settings give (the defaults otherwise)."""
    if settings.reap_after is None:
        return DetectorConfig()
    return DetectorConfig(reap_after=float(settings.reap_after))


def parse_hostport(text: str, what: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT``, or already ``tcp://...``) as a ZeroMQ TCP endpoint;
    NodeError if malformed."""
    text = text.strip()
    if text.startswith("tcp://"):
        text = text[6:]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise NodeError(f"{what} {text!r}: expected HOST:PORT (e.g. 10.0.0.5:4370)")
    return f"tcp://{host}:{int(port)}"


def hostport(addr: str) -> str:
    """``HOST:PORT`` of a ZeroMQ TCP endpoint, as members are shown (the inverse of
    :func:`parse_hostport`); anything else as it is."""
    return addr[6:] if addr.startswith("tcp://") else addr


def backlog_limit(env: Mapping[str, str] = os.environ) -> int:
    """``PRISMATIC_REMOTE_BACKLOG_BYTES`` (default 64 MiB); NodeError if not a positive
    integer."""
    text = env.get(BACKLOG_ENV)
    if text is None:
        return BACKLOG_DEFAULT
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise NodeError(f"{BACKLOG_ENV}={text!r}: expected a positive number of bytes")
    return value


def check_switch_after(env: Mapping[str, str] = os.environ) -> None:
    """NodeError if ``PRISMATIC_DIRECT_SWITCH_AFTER`` is set to anything but a whole number
    >= 0: the node stops at start with one line, rather than each process falling back to
    the default with a log line nobody asked for."""
    text = env.get(SWITCH_ENV)
    if parse_switch_after(text)[1]:
        raise NodeError(f"{SWITCH_ENV}={text!r}: expected a whole number of messages >= 0 "
                        f"(0: no direct routes)")


def check_settings(name: str, settings: MeshSettings) -> None:
    try:
        validate_topic(f"cluster.node.{name}.up")
    except TopicError:
        raise NodeError(f"node name {name!r} cannot join a cluster: a member's name must be "
                        f"one topic word (letters, digits and _-:@/+=$, no dots)") from None
    parse_hostport(settings.listen, "--listen")
    if settings.reap_after is not None \
            and (why := reap_after_problem(settings.reap_after)) is not None:
        raise NodeError(f"--reap-after {settings.reap_after!r}: {why}")
    backlog_limit()
    check_switch_after()
    for seed in settings.join:
        parse_hostport(seed, "--join")
    from pathlib import Path  # noqa: PLC0415

    read_secret(Path(settings.secret_file))
