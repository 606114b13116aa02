"""Throttled warnings: the first line plain, then one per interval with the count held back,
and one throttle per source kind for the whole process."""

from __future__ import annotations

import logging

import pytest

from prismatic import _throttle
from prismatic._throttle import MAX_KINDS, ThrottledWarning, throttle_for

log = logging.getLogger("tests.throttle")


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def test_first_warning_is_plain_then_one_per_interval_with_the_count(caplog, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(_throttle.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.WARNING)
    w = ThrottledWarning(log, interval=10)
    w.warn("bad %s", "a")
    for _ in range(4):
        w.warn("bad %s", "b")
    now[0] += 11
    w.warn("bad %s", "c")
    w.warn("bad %s", "d")
    now[0] += 11
    w.warn("bad %s", "e")
    assert messages(caplog) == ["bad a", "bad c (4 more like it in the last 11 s)",
                                "bad e (1 more like it in the last 11 s)"]


def test_one_throttle_per_kind_for_every_connection(caplog):
    """A peer that opens a new connection per bad message still gets one line."""
    caplog.set_level(logging.WARNING)
    kind = "test kind"
    for _ in range(100):  # each "connection" asks for its throttle anew
        throttle_for(log, kind).warn("dropped a bad frame")
    throttle_for(log, "another kind").warn("dropped another")
    assert messages(caplog) == ["dropped a bad frame", "dropped another"]
    assert throttle_for(log, kind).held == 99


def test_kinds_named_after_peers_stay_bounded():
    for i in range(MAX_KINDS + 50):
        throttle_for(log, f"connection to {i}")
    assert len(_throttle._shared) <= MAX_KINDS
