"""The chaos report (``prismatic.chaos._report``): figures, verdicts, the text form."""

from __future__ import annotations

import math

import msgspec

from prismatic.chaos._report import RunReport, ScenarioTally, percentile, render_text


def test_percentile_is_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_a_violation_fails_the_scenario_and_names_the_fault_and_seed() -> None:
    t = ScenarioTally("kill-storm", 42)
    t.faults_planned = t.faults_injected = 2
    t.check("converged", None)
    t.last_fault = "fault #2 at +0.500s: kill a/w (SIGKILL)"
    t.check("no_orphans", "1 process(es) outside the node's tree: [123]")
    t.convergence_s = [0.001, 0.003]
    s = t.freeze(3.0)
    assert not s.ok and s.checks_passed == {"converged": 1} and s.checks_failed == {
        "no_orphans": 1}
    assert s.violations[0].fault == "fault #2 at +0.500s: kill a/w (SIGKILL)"
    assert s.convergence_ms == {"n": 2.0, "p50": 1.0, "p99": 3.0, "max": 3.0}
    report = RunReport.of(42, "app x:y", (s,))
    text = render_text(report)
    assert "kill-storm: FAILED (1 violations)" in text
    assert "VIOLATION no_orphans: 1 process(es)" in text and "[after fault #2" in text
    assert text.splitlines()[-1].startswith("FAILED: reproduce with --seed 42 --scenario "
                                            "kill-storm")
    assert msgspec.json.decode(msgspec.json.encode(report))["ok"] is False


def test_a_clean_run_says_so() -> None:
    t = ScenarioTally("hang", 7)
    t.check("call_timed_out", None)
    report = RunReport.of(7, "app x:y", (t.freeze(1.0),))
    assert report.ok
    assert render_text(report).splitlines()[-1] == "all invariants held (seed 7)"
