"""Crashes in the node's log (prismatic/_crash_log.py): path and summary, throttled per
child, and the child that made a supervisor give up."""

from __future__ import annotations

import logging

import prismatic as p
from prismatic._crash_log import CrashLog
from tests.test_tree import frame

BOOM = p.Crashed("builtins.RuntimeError", "boom", "Traceback ...")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_crashes_are_logged_with_path_and_summary_throttled_per_child(caplog, monkeypatch):
    clock = Clock()
    monkeypatch.setattr("prismatic._crash_log.time.monotonic", clock)
    crashes = CrashLog(logging.getLogger("crash-test"), interval=10)
    with caplog.at_level(logging.ERROR, "crash-test"):
        for _ in range(5):
            crashes.observe(frame("pipe/t", "child_exited", 5, BOOM))
        crashes.observe(frame("other", "child_exited", 6, p.Killed(9)))
        crashes.observe(frame("quiet", "child_exited", 7, p.Normal()))  # not a crash
        crashes.observe(frame("quiet2", "child_stopped", 8, p.Shutdown()))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["pipe/t crashed: RuntimeError: boom", "other crashed: killed by SIGKILL"]
    assert "Traceback" not in caplog.text
    assert caplog.records[0].path == "pipe/t"  # the log line's path field
    caplog.clear()
    clock.now += 11
    with caplog.at_level(logging.ERROR, "crash-test"):
        crashes.observe(frame("pipe/t", "child_exited", 9, BOOM))
        crashes.observe(frame("bad", "start_error", None, p.Crashed("x.ValueError", "no")))
    assert [r.getMessage() for r in caplog.records] == [
        "pipe/t crashed: RuntimeError: boom (4 more from this child since its last line)",
        "bad failed to start: ValueError: no"]


def test_a_give_up_names_the_child_down_the_tree(caplog):
    crashes = CrashLog(logging.getLogger("crash-test"))
    with caplog.at_level(logging.ERROR, "crash-test"):
        crashes.observe(frame("mid/leaf/w", "child_exited", 5, BOOM))
        crashes.observe(frame("mid/leaf/w", "intensity_exceeded"))
        crashes.observe(frame("mid/leaf", "child_exited", 4,
                              p.Shutdown("reached_max_restart_intensity"), "supervisor"))
        crashes.observe(frame("mid/leaf", "intensity_exceeded"))
    assert crashes.culprit("mid/leaf") == (
        "child mid/leaf/w broke the restart intensity (last exit: RuntimeError: boom)")
    assert crashes.culprit("mid") == (
        "child mid/leaf broke the restart intensity (it gave up: child mid/leaf/w broke the "
        "restart intensity (last exit: RuntimeError: boom))")
    assert crashes.culprit("root") is None
    assert "supervisor mid/leaf gave up (reached_max_restart_intensity)" in caplog.text
    assert "mid/leaf/w" in crashes._throttles
    crashes.observe(frame("mid/leaf/w", "child_deleted"))  # forgotten with its row
    assert "mid/leaf/w" not in crashes._throttles and "mid/leaf/w" not in crashes._last_exit
