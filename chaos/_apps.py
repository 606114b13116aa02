"""Processes the chaos scenarios add to the tree under test, and a tree built for storms.

The crash-loop and hang scenarios do not need the user's app to contain anything special:
they add what they break with ``start_child`` under the root (as ``temporary`` children,
whose exit costs the root no restart) and take it away afterwards. ``storm_tree`` is a tree
for long kill storms (``--app prismatic.chaos._apps:storm_tree``): three levels of
supervisors of every strategy, restart intensities high enough for tens of kills a second.
"""

from __future__ import annotations

import time
from pathlib import Path

from .._childspec import ChildSpec, SupervisorSpec, SupFlags
from .._worker import Worker

__all__ = ["Crasher", "Sleeper", "Slowpoke", "Idle", "crash_loop_tree", "CRASH_LOOP_INTENSITIES",
           "storm_tree"]

# The crash loop's supervisors, bottom-up: the crasher's own supervisor, then the one above.
CRASH_LOOP_INTENSITIES = (1, 3)
_PERIOD_S = 60.0


class Crasher(Worker):
    """Fails in ``init`` while the number in ``counter_file`` is above zero, counting it down
    (so a crash loop ends after exactly that many failed starts)."""

    def init(self, counter_file: str) -> None:
        path = Path(counter_file)
        left = int(path.read_text() or "0") if path.exists() else 0
        if left > 0:
            path.write_text(str(left - 1))
            raise RuntimeError(f"chaos crash loop: failing on start ({left - 1} more)")


def crash_loop_tree(counter_file: str) -> SupervisorSpec:
    """``outer`` (intensity 3) > ``inner`` (intensity 1) > ``crasher``, one_for_one."""
    inner = SupervisorSpec(
        flags=SupFlags(intensity=CRASH_LOOP_INTENSITIES[0], period=_PERIOD_S),
        children=[ChildSpec(id="crasher", start=Crasher, args=(counter_file,))])
    return SupervisorSpec(
        flags=SupFlags(intensity=CRASH_LOOP_INTENSITIES[1], period=_PERIOD_S),
        children=[ChildSpec(id="inner", start=inner)])


class Sleeper(Worker):
    """Registered as ``name``. ``ping`` -> ``pong``; ``slow`` answers after 0.3 s (time to
    freeze it mid-call); ``hang`` never answers (a handler that never returns)."""

    def init(self, name: str) -> None:
        self.register(name)

    def handle_call(self, msg: object, caller: object) -> object:
        if msg == "slow":
            time.sleep(0.3)
        elif msg == "hang":
            while True:
                time.sleep(1.0)
        return "pong"


class Idle(Worker):
    """Does nothing; a storm's target."""

    def handle_call(self, msg: object, caller: object) -> object:
        return msg


def _leaf(strategy: str, prefix: str) -> SupervisorSpec:
    return SupervisorSpec(
        flags=SupFlags(strategy=strategy, intensity=200, period=1.0),
        children=[ChildSpec(id=f"{prefix}{i}", start=Idle) for i in range(3)])


def storm_tree() -> SupervisorSpec:
    """root (one_for_one) > 3 branches (one_for_one, one_for_all, rest_for_one) > 2 leaf
    supervisors each > 3 workers each, plus a worker on the two upper levels: 32 processes."""
    branches = []
    for b, strategy in enumerate(("one_for_one", "one_for_all", "rest_for_one")):
        branches.append(ChildSpec(id=f"b{b}", start=SupervisorSpec(
            flags=SupFlags(strategy=strategy, intensity=200, period=1.0),
            children=[ChildSpec(id="s0", start=_leaf("one_for_one", "w")),
                      ChildSpec(id="s1", start=_leaf("rest_for_one", "w")),
                      ChildSpec(id="solo", start=Idle)])))
    return SupervisorSpec(flags=SupFlags(intensity=500, period=1.0),
                          children=[*branches, ChildSpec(id="solo", start=Idle)])


class Slowpoke(Worker):
    """Registered as ``name``; a small mailbox (``mailbox_limit`` 50) and a slow
    ``handle_cast`` (10 ms): a flood fills it. ``call(name, "handled")`` says how many casts
    it handled."""

    mailbox_limit = 50

    def init(self, name: str) -> None:
        self.handled = 0
        self.register(name)

    def handle_cast(self, msg: object) -> None:
        time.sleep(0.01)
        self.handled += 1

    def handle_call(self, msg: object, caller: object) -> object:
        return self.handled
