"""``prismatic.chaos``: the chaos suite runner (``prismatic chaos run``).

Breaks a live node on purpose and proves the invariants held. Scenarios are modules here
(one per scenario: a fault generator plus the invariants it checks), invariants live in
:mod:`._invariants`, the fault schedule in :mod:`._schedule`, the runner in :mod:`._runner`.
See ``chaos/README.md``.
"""

from ._report import RunReport, ScenarioReport, Violation
from ._runner import RunSettings, run
from ._scenarios import SCENARIOS

__all__ = ["RunReport", "RunSettings", "SCENARIOS", "ScenarioReport", "Violation", "run"]
