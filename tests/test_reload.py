"""A supervisor's reload (``supervisors/_reload.py`` and its job in ``decide``): examples, and
a property over random tables and new specs driven through ``decide`` as the I/O loop would
(stops answered by exits, starts by a new pid or a failure)."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from prismatic._childspec import ChildSpec, SupervisorSpec, SupFlags, spec_to_wire
from prismatic._exit import Crashed, Shutdown
from prismatic.supervisors._events import (
    ChildStatus, Exited, Op, LifecycleKind, Reload, Reply, Report, StartDynamic, StartFailed,
    StartProc, Started, StopProc, TerminateChild,
)
from prismatic.supervisors._reload import plan_reload, same_spec
from tests.test_decide import Sup, spec, trace


def reload_op(*specs: ChildSpec, **flags: Any) -> Reload:
    """The op as the supervisor gets it: across the wire."""
    op = Reload(SupFlags(**flags), tuple(spec_to_wire(s) for s in specs))
    return msgspec.msgpack.Decoder(Op).decode(msgspec.msgpack.encode(op))


def drive(sup: Sup, acts: list[Any], fail: frozenset[str] = frozenset()) -> list[Any]:
    """Play the loop: every stop ends in a clean exit, every start succeeds (or fails for
    the keys in ``fail``), until nothing is awaited."""
    out = list(acts)
    while True:
        stops = [a for a in acts if isinstance(a, StopProc)]
        starts = [a for a in acts if isinstance(a, StartProc)]
        if stops:
            acts = sup.exited(stops[0].pid, Shutdown())
        elif starts:
            key = starts[0].key
            acts = sup.feed(StartFailed(key, Crashed("x.Boom", "no"), sup.now)) if key in fail \
                else sup.started(key)
        else:
            return out
        out += acts


def test_only_what_changed_is_touched_in_the_new_order():
    a, b, c = spec("a"), spec("b"), spec("c")
    sup = Sup(a, b, c, strategy="rest_for_one")
    sup.boot()
    pids = dict(sup.pid)
    b2 = spec("b", args=(1,))
    acts = drive(sup, sup.request(reload_op(spec("d"), a, b2, intensity=7,
                                            strategy="one_for_all")))
    # c removed (stopped, deleted), b restarted with its new spec, d new, a untouched; the
    # stops first (reverse order), then the starts in the new order
    assert trace(acts) == ["stop:c", "stop:b", "start:d", "start:b", "reply"]
    assert [r.key for r in acts if isinstance(r, Report)
            and r.kind is LifecycleKind.CHILD_DELETED] == ["c"]
    assert [c.key for c in sup.state.children] == ["d", "a", "b"]
    assert sup.row("a").pid == pids["a"] and sup.row("b").pid != pids["b"]
    assert sup.row("b").spec == b2
    assert sup.state.flags == SupFlags(strategy="one_for_all", intensity=7)
    reply = next(x for x in acts if isinstance(x, Reply)).result.value
    assert reply == {"added": ["d"], "removed": ["c"], "restarted": ["b"], "updated": [],
                     "nested": [], "flags": True, "failed": []}
    # nothing changed: nothing done
    acts = sup.request(reload_op(spec("d"), a, b2, intensity=7, strategy="one_for_all"))
    assert trace(acts) == ["reply"]


def test_a_failed_start_is_named_and_the_reload_goes_on():
    sup = Sup(spec("a"))
    sup.boot()
    acts = drive(sup, sup.request(reload_op(spec("a", args=(2,)), spec("b"))),
                 fail=frozenset({"a"}))
    assert trace(acts) == ["stop:a", "start:a", "start:b", "reply"]
    assert sup.row("a").status is ChildStatus.UNDEFINED and sup.row("a").spec.args == (2,)
    assert next(x for x in acts if isinstance(x, Reply)).result.value["failed"] == ["a"]


def test_a_bad_spec_or_a_pool_change_is_refused_touching_nothing():
    sup = Sup(spec("a"))
    sup.boot()
    before = sup.state
    assert sup.call(Reload(SupFlags(), (spec_to_wire(spec("a")),) * 2)).reason \
        == "bad_child_spec"
    assert sup.call(reload_op(spec("a"), strategy="simple_one_for_one")).reason == "badarg"
    assert sup.state == before


def test_a_pool_restarts_its_children_with_the_new_template_and_their_args():
    sup = Sup(spec("w", args=("x",)), strategy="simple_one_for_one")
    sup.boot()
    for extra in ("1", "2"):
        sup.request(StartDynamic((extra,)))
        sup.started(f"w-{int(extra) - 1}")
    acts = drive(sup, sup.request(reload_op(spec("w", args=("y",)),
                                            strategy="simple_one_for_one")))
    assert trace(acts) == ["stop:w-1", "stop:w-0", "start:w-0", "start:w-1", "reply"]
    assert [c.spec.args for c in sup.state.children] == [("y",), ("y", "1"), ("y", "2")]


def test_a_nested_supervisor_keeps_running_with_its_new_spec():
    inner = ChildSpec(id="s", start=SupervisorSpec(
        children=[spec("x")]))
    sup = Sup(inner)
    sup.boot()
    pid = sup.pid["s"]
    new = ChildSpec(id="s", start=SupervisorSpec(
        flags=SupFlags(intensity=5), children=[spec("x"), spec("y")]))
    acts = drive(sup, sup.request(reload_op(new)))
    assert trace(acts) == ["reply"]
    assert sup.row("s").pid == pid and same_spec(sup.row("s").spec, new)
    assert next(x for x in acts if isinstance(x, Reply)).result.value["nested"] == ["s"]


# ---- the property -----------------------------------------------------------------------------

IDS = ("a", "b", "c", "d", "e")
specs_st = st.lists(st.tuples(st.sampled_from(IDS), st.integers(0, 2),
                              st.sampled_from(["permanent", "transient", "temporary"])),
                    max_size=5, unique_by=lambda t: t[0])


def _specs(rows: list[tuple[str, int, str]]) -> list[ChildSpec]:
    return [spec(i, restart=r, args=(n,)) for i, n, r in rows]


@settings(max_examples=300, deadline=None)
@given(old=specs_st, new=specs_st, gone=st.sets(st.sampled_from(IDS)),
       fail=st.frozensets(st.sampled_from(IDS)))
def test_reload_property(old, new, gone, fail):
    sup = Sup(*_specs(old), intensity=100)
    sup.boot()
    for key in sorted(gone & {k for k, _, _ in old}):  # some children terminated first
        drive(sup, sup.request(TerminateChild(key)))
    before = {c.key: c for c in sup.state.children}
    plan = plan_reload(sup.state.children, tuple(_specs(new)), False)
    acts = drive(sup, sup.request(reload_op(*_specs(new), intensity=100)), fail)
    new_specs = {s.id: s for s in _specs(new)}
    # the table is the new config, in its order, each row with its new spec
    assert [c.key for c in sup.state.children] == [s.id for s in _specs(new)]
    assert all(c.spec == new_specs[c.key] or same_spec(c.spec, new_specs[c.key])
               for c in sup.state.children)
    stopped = [a.key for a in acts if isinstance(a, StopProc)]
    started = [a.key for a in acts if isinstance(a, StartProc)]
    for c in sup.state.children:
        old_row = before.get(c.key)
        if old_row is not None and same_spec(old_row.spec, c.spec):
            # unchanged: untouched, same process (or none) as before
            assert c.key not in stopped and c.key not in started
            assert (c.status, c.pid) == (old_row.status, old_row.pid)
        elif old_row is None or old_row.status is ChildStatus.RUNNING:
            assert c.key in started  # new, or changed while running: started anew
            assert c.status is (ChildStatus.UNDEFINED if c.key in fail
                                else ChildStatus.RUNNING)
        else:
            assert c.key not in started and c.status is ChildStatus.UNDEFINED
    # only removed or changed running children were stopped, each once, in reverse order
    assert sorted(stopped) == sorted(set(stopped))
    assert set(stopped) == {k for k, c in before.items() if c.status is ChildStatus.RUNNING
                            and (k not in new_specs or not same_spec(c.spec, new_specs[k]))}
    order = [c.key for c in before.values()]
    assert stopped == sorted(stopped, key=order.index, reverse=True)
    reply = next(x for x in acts if isinstance(x, Reply)).result.value
    assert reply["failed"] == [k for k in started if k in fail]
    assert reply["added"] == list(plan.added) and reply["removed"] == list(plan.removed)
    assert not [e for e in sup.state.deferred if isinstance(e, Exited | Started)]
