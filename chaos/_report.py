"""What a chaos run found: per scenario, the faults, the checks, the figures; as text for
people and as JSON (``--json``) for CI.

Pure: the runner fills :class:`ScenarioTally` as it goes and freezes it into a
:class:`ScenarioReport`; rendering reads only the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

__all__ = ["Violation", "ScenarioReport", "RunReport", "ScenarioTally", "percentile",
           "render_text"]


class Violation(msgspec.Struct, frozen=True):
    """One failed invariant check, with the fault that preceded it (to reproduce it, rerun
    with the run's seed)."""

    invariant: str
    detail: str
    fault: str | None = None  # Fault.describe() of the last fault before the check


class ScenarioReport(msgspec.Struct, frozen=True):
    scenario: str
    seed: int
    duration_s: float
    faults_planned: int
    faults_injected: int
    faults_skipped: int  # nothing ran at the fault's path then (it was being restarted)
    checks_passed: dict[str, int]
    checks_failed: dict[str, int]
    violations: tuple[Violation, ...]
    convergence_ms: dict[str, float]  # p50, p99, max (ms), n
    max_control_latency_ms: float
    control_requests: int
    acked_events_written: int = 0
    acked_events_verified: int = 0
    orphans_found: int = 0
    notes: tuple[str, ...] = ()
    stopped_early: bool = False  # Ctrl-C
    ok: bool = True  # no violation


class RunReport(msgspec.Struct, frozen=True):
    seed: int
    target: str  # "app prismatic._demo:demo_tree", "node /path"
    scenarios: tuple[ScenarioReport, ...]
    ok: bool = True  # every scenario's
    # Scenarios that apply to the target but could not run here: name -> why (a partition
    # without network namespaces). Not a failure; said in the report.
    skipped: dict[str, str] = msgspec.field(default_factory=dict)

    @classmethod
    def of(cls, seed: int, target: str, scenarios: tuple[ScenarioReport, ...],
           skipped: dict[str, str] | None = None) -> RunReport:
        return cls(seed, target, scenarios, all(s.ok for s in scenarios), dict(skipped or {}))


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (0 < q <= 100) of ``values``; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class ScenarioTally:
    """The mutable counts of one scenario while it runs."""

    def __init__(self, scenario: str, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self.faults_planned = 0
        self.faults_injected = 0
        self.skipped = 0
        self.passed: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.violations: list[Violation] = []
        self.convergence_s: list[float] = []
        self.max_latency_s = 0.0
        self.control_requests = 0
        self.acked_written = 0
        self.acked_verified = 0
        self.orphans = 0
        self.notes: list[str] = []
        self.stopped_early = False
        self.last_fault: str | None = None

    def check(self, invariant: str, problem: str | None, fault: str | None = None) -> bool:
        """Record one check of ``invariant``: ``problem`` None means it held."""
        if problem is None:
            self.passed[invariant] = self.passed.get(invariant, 0) + 1
            return True
        self.failed[invariant] = self.failed.get(invariant, 0) + 1
        self.violations.append(Violation(invariant, problem, fault or self.last_fault))
        return False

    def freeze(self, duration_s: float) -> ScenarioReport:
        conv = [c * 1000 for c in self.convergence_s]
        figures = {"n": float(len(conv))}
        if conv:
            figures.update(p50=round(percentile(conv, 50), 2), p99=round(percentile(conv, 99), 2),
                           max=round(max(conv), 2))
        return ScenarioReport(
            scenario=self.scenario, seed=self.seed, duration_s=round(duration_s, 2),
            faults_planned=self.faults_planned, faults_injected=self.faults_injected,
            faults_skipped=self.skipped,
            checks_passed=dict(self.passed), checks_failed=dict(self.failed),
            violations=tuple(self.violations), convergence_ms=figures,
            max_control_latency_ms=round(self.max_latency_s * 1000, 2),
            control_requests=self.control_requests,
            acked_events_written=self.acked_written, acked_events_verified=self.acked_verified,
            orphans_found=self.orphans, notes=tuple(self.notes),
            stopped_early=self.stopped_early, ok=not self.violations)


def _ms(figures: dict[str, float], key: str) -> str:
    return f"{figures[key]:.1f}" if key in figures else "-"


def render_text(report: RunReport) -> str:
    lines = [f"chaos run, seed {report.seed}, against {report.target}"]
    for s in report.scenarios:
        verdict = "ok" if s.ok else f"FAILED ({len(s.violations)} violations)"
        early = " (stopped early)" if s.stopped_early else ""
        lines.append(f"\n{s.scenario}: {verdict}{early}")
        skipped = (f" ({s.faults_skipped} found nothing running at their path)"
                   if s.faults_skipped else "")
        lines.append(f"  faults injected     {s.faults_injected} of {s.faults_planned} planned"
                     f" in {s.duration_s:.1f}s{skipped}")
        names = sorted(set(s.checks_passed) | set(s.checks_failed))
        for name in names:
            ok, bad = s.checks_passed.get(name, 0), s.checks_failed.get(name, 0)
            pad = "" if len(name) < 20 else " "
            lines.append(f"  {name:<20}{pad}{ok} passed, {bad} failed")
        c = s.convergence_ms
        lines.append(f"  convergence (ms)    p50 {_ms(c, 'p50')}  p99 {_ms(c, 'p99')}  "
                     f"max {_ms(c, 'max')}  (n={int(c.get('n', 0))})")
        lines.append(f"  max control latency {s.max_control_latency_ms:.1f} ms over "
                     f"{s.control_requests} requests")
        if s.acked_events_written:
            lines.append(f"  acked events        {s.acked_events_written} written, "
                         f"{s.acked_events_verified} verified")
        lines.append(f"  orphans found       {s.orphans_found}")
        for note in s.notes:
            lines.append(f"  note: {note}")
        for v in s.violations[:20]:
            lines.append(f"  VIOLATION {v.invariant}: {v.detail}"
                         + (f" [after {v.fault}]" if v.fault else ""))
        if len(s.violations) > 20:
            lines.append(f"  (+{len(s.violations) - 20} more violations)")
    for name, why in report.skipped.items():
        lines.append(f"\n{name}: skipped ({why})")
    failed = [s for s in report.scenarios if not s.ok]
    if failed:
        first = failed[0].violations[0]
        lines.append(f"\nFAILED: reproduce with --seed {report.seed} --scenario "
                     f"{failed[0].scenario}" + (f"; first offending {first.fault}"
                                                if first.fault else ""))
    else:
        lines.append(f"\nall invariants held (seed {report.seed})")
    return "\n".join(lines)
