"""The node's tree picture (prismatic/_tree.py), fed lifecycle frames as a node would be."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

import prismatic as p
from prismatic._tree import TreeView
from prismatic.transports._frames import LifecycleFrame


def frame(path: str, kind: str, pid: int | None = None, reason=None,
          child_type: str = "worker") -> LifecycleFrame:
    *sup, key = path.split("/")
    return LifecycleFrame(path=tuple(sup), kind=kind, key=key, pid=pid, reason=reason,
                          child_type=child_type, mono=0.0, wall=0.0)


def paths(view: TreeView) -> list[str]:
    return ["/".join(e.path) for e in view.rows()]


def test_a_job_pool_leaves_no_rows_behind():
    view = TreeView(1)
    view.apply(frame("pool", "child_started", 2, child_type="supervisor"))
    for i in range(100):
        view.apply(frame(f"pool/job-{i}", "child_started", 100 + i))
        view.apply(frame(f"pool/job-{i}", "child_exited", 100 + i, p.Normal()))
        view.apply(frame(f"pool/job-{i}", "child_deleted", 100 + i))
    assert paths(view) == ["", "pool"]
    assert len(view.entries) == 2


def test_delete_forgets_a_row_and_everything_below_it_keeps_order():
    view = TreeView(1)
    for path, t in (("a", "worker"), ("sub", "supervisor"), ("sub/x", "worker"),
                    ("b", "worker")):
        view.apply(frame(path, "child_started", hash(path) % 1000 + 10, child_type=t))
    view.apply(frame("a", "child_stopped", hash("a") % 1000 + 10, p.Shutdown()))
    assert view.entries[("a",)].last_exit == p.Shutdown()  # stopped: kept with its reason
    assert paths(view) == ["", "a", "sub", "sub/x", "b"]
    view.apply(frame("a", "child_deleted"))
    assert paths(view) == ["", "sub", "sub/x", "b"]
    view.apply(frame("a", "child_started", 77))  # started again later: a new row, at the end
    assert paths(view) == ["", "sub", "sub/x", "b", "a"]
    assert view.entries[("a",)].restarts == 0


def test_the_header_shows_every_exit_of_a_batch():
    view = TreeView(1)
    view.apply(frame("t", "child_started", 5))
    view.apply(frame("t", "child_exited", 5, p.Crashed("builtins.RuntimeError", "boom")))
    view.apply(frame("t", "child_started", 6))
    header = view.take_header()
    assert "t: child_exited (RuntimeError: boom)" in header  # not hidden by the restart
    assert view.take_header() == "t: child_started"  # nothing new: the last event
    view.apply(frame("early", "child_exited", None, p.Crashed("builtins.ValueError", "x")))
    for i in range(8):
        view.apply(frame(f"n{i}", "child_exited", None, p.Normal()))
    view.apply(frame("late", "child_exited", None, p.Killed(9)))
    header = view.take_header()
    # crashes are never the ones left out; normal exits fill up to the limit
    assert header == ("early: child_exited (ValueError: x); n0: child_exited (normal); "
                      "n1: child_exited (normal); n2: child_exited (normal); "
                      "late: child_exited (killed by SIGKILL) (+5 more)")


_PATHS = ["a", "b", "a/x", "a/y", "a/x/k", "b/z"]
_SUPS = {"a", "b", "a/x"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PATHS),
                          st.sampled_from(["child_started", "child_exited", "child_deleted"]),
                          st.integers(10, 11)), max_size=30))
@example([("a", "child_started", 10), ("a/x", "child_started", 11),
          ("a", "child_exited", 10)])  # a supervisor's exit drops the rows below it
def test_rows_kept_between_calls_are_the_rows_of_the_entries(events):
    """rows() keeps its depth-first order until an entry comes or goes: after any events,
    asked between them, it is what the entries give when worked out afresh."""
    view = TreeView(1)
    for path, kind, pid in events:
        view.apply(frame(path, kind, pid, None if kind == "child_started" else p.Normal(),
                         "supervisor" if path in _SUPS else "worker"))
        assert view.rows() == view._depth_first()


class _ScanningView(TreeView):
    """The reference: a supervisor's exit drops every entry whose path starts with its own,
    found by a scan of all of them (what the index below each supervisor replaces)."""

    def _drop_below(self, path: tuple[str, ...]) -> list[int]:
        n = len(path)
        dead = [q for q in self.entries if len(q) > n and q[:n] == path]
        if dead:
            self._order = None
        return [pid for q in dead if (pid := self.entries.pop(q).pid) is not None]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PATHS),
                          st.sampled_from(["child_started", "child_exited", "child_deleted"]),
                          st.integers(10, 11)), max_size=40))
@example([("a/x/k", "child_started", 10), ("a", "child_started", 11),
          ("a", "child_exited", 11)])  # rows below a supervisor not yet reported go too
def test_a_supervisors_exit_drops_what_a_scan_of_every_entry_would(events):
    view, scan = TreeView(1), _ScanningView(1)
    for path, kind, pid in events:
        f = frame(path, kind, pid, None if kind == "child_started" else p.Normal(),
                  "supervisor" if path in _SUPS else "worker")
        assert view.apply(f) == scan.apply(f)
        assert list(view.entries) == list(scan.entries)
