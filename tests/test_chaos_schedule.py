"""The chaos runner's fault schedule (``prismatic.chaos._schedule`` and each scenario's
``plan``): pure, reproducible from the seed, within the tree's restart intensity."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prismatic._demo import demo_tree
from prismatic.chaos import SCENARIOS
from prismatic.chaos._schedule import Fault, IntensityBudget, arrivals, scenario_rng
from prismatic.chaos._shape import shape_of_spec
from prismatic.chaos import kill_storm

DEMO = shape_of_spec(demo_tree())


def test_the_demo_shape() -> None:
    assert DEMO.killable() == ("clock", "frontends", "frontends/flaky_cache",
                               "frontends/listener", "frontends/sessions", "pipeline",
                               "pipeline/sink", "pipeline/source", "pipeline/transform")
    assert DEMO.supervisor_flags() == {"": (10, 60.0), "frontends": (5, 30.0),
                                       "pipeline": (5, 30.0)}


def test_every_plan_is_reproducible_from_its_seed() -> None:
    for scenario in SCENARIOS.values():
        a = scenario.plan(42, 20.0, 5.0, DEMO)
        assert a == scenario.plan(42, 20.0, 5.0, DEMO), scenario.NAME
        assert a != scenario.plan(43, 20.0, 5.0, DEMO), scenario.NAME
        assert a, scenario.NAME
        assert [f.seq for f in a] == list(range(1, len(a) + 1))
        assert all(0 <= f.offset < 20.0 for f in a)
        assert [f.offset for f in a] == sorted(f.offset for f in a)


def test_a_fixed_seed_gives_fixed_faults() -> None:
    """The same faults on every machine and Python: string seeds hash with SHA-512."""
    first = kill_storm.plan(1, 10.0, 5.0, DEMO)[:2]
    assert first == [Fault(1, first[0].offset, "kill", first[0].target, "SIGKILL"),
                     Fault(2, first[1].offset, "kill", first[1].target, "SIGKILL")]
    assert kill_storm.plan(1, 10.0, 5.0, DEMO)[:2] == first
    assert "fault #1 at +" in first[0].describe()


@given(st.integers(0, 2**31), st.floats(0.1, 50), st.floats(0.1, 60))
def test_arrivals_stay_in_the_duration_and_never_come_empty(seed: int, rate: float,
                                                            duration: float) -> None:
    ts = list(arrivals(scenario_rng(seed, "x"), duration, rate))
    assert ts and all(0 <= t < duration for t in ts)
    assert ts == sorted(ts)


@given(st.integers(0, 2**31), st.floats(1, 100))
def test_a_storm_stays_within_each_supervisors_budget(seed: int, rate: float) -> None:
    """No window of ``period`` seconds holds more kills under a supervisor than half its
    intensity (at least one): the storm never pushes the tree past what it is built for."""
    faults = kill_storm.plan(seed, 60.0, rate, DEMO)
    flags = DEMO.supervisor_flags()
    for sup, (intensity, period) in flags.items():
        times = [f.offset for f in faults if f.target.rpartition("/")[0] == sup]
        for i, t in enumerate(times):
            in_window = [u for u in times[:i + 1] if u > t - period]
            assert len(in_window) <= max(1, intensity // 2), (sup, t)


def test_budget_unknown_supervisor_gets_otp_defaults() -> None:
    b = IntensityBudget({})
    assert b.allow("x", 0.0)
    b.spend("x", 0.0)
    assert not b.allow("x", 4.9) and b.allow("x", 5.1)


def test_the_ci_seed_covers_every_case() -> None:
    """tests/test_chaos.py runs every scenario for 1 s at --rate 8 with seed 293: a crash
    loop of each depth, both hangs, every resource."""
    from prismatic.chaos import crash_loop, hang, resources
    from prismatic.chaos._apps import CRASH_LOOP_INTENSITIES
    from prismatic.chaos._invariants import expected_escalation

    levels = {expected_escalation(CRASH_LOOP_INTENSITIES, int(f.arg or 0))
              for f in crash_loop.plan(293, 1.0, 8, DEMO)}
    assert levels == {-1, 0, 1}
    assert {f.arg for f in hang.plan(293, 1.0, 8, DEMO)} == {"sigstop", "stuck"}
    assert {f.arg for f in resources.plan(293, 1.0, 8, DEMO)} == {"memory", "fds", "fork",
                                                                 "cgroup"}
