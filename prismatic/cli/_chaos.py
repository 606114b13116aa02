"""``prismatic chaos list|run``: break a node on purpose and check the invariants held.

The runner is :mod:`prismatic.chaos`; this module parses options, shows a progress line on
stderr (a terminal only), turns Ctrl-C into "stop injecting, settle, check, report", and
prints the report (text, or ``--json``; ``--report FILE`` writes the JSON too). Exit codes:
0 every invariant held, 1 one failed (the last line names the seed and the first offending
fault), 2 usage, 3 the node could not be started or reached.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
import msgspec

from ._format import CliError, ExitCode, print_json
from ._main import CliState, cli, json_option

__all__ = ["chaos"]


@cli.group()
def chaos() -> None:
    """Break a node on purpose (kills, crash loops, hangs, floods, a full disk; with
    --cluster, node kills and stops and partitions) and check that the tree converged,
    nothing was orphaned, no acked event was lost, the node kept answering.

    \b
    prismatic chaos list
    prismatic chaos run                      # the demo tree, every scenario
    prismatic chaos run --app myapp:tree --scenario kill-storm --duration 60 --rate 20
    """


@chaos.command("list")
@json_option
def list_scenarios(as_json: bool) -> None:
    """Each scenario, with what it does and what it checks."""
    from ..chaos import SCENARIOS

    if as_json:
        print_json([{"name": s.NAME, "summary": s.SUMMARY, "requires": sorted(s.REQUIRES)}
                    for s in SCENARIOS.values()])
        return
    width = max(len(n) for n in SCENARIOS)
    for name, s in SCENARIOS.items():
        needs = [w for r, w in _NEEDS.items() if r in s.REQUIRES]
        click.echo(f"{name:<{width}}  {s.SUMMARY}" + (f" [{', '.join(needs)}]" if needs else ""))


# What a scenario's requirements ask of the user (the others every run has).
_NEEDS = {"owned": "--app", "cluster": "--cluster N", "netns": "root: network namespaces",
          "tmpfs": "root: a tmpfs"}


class _Progress:
    """One line on stderr, rewritten in place (only when stderr is a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.width = 0

    def __call__(self, line: str) -> None:
        if not self.enabled:
            return
        pad = max(0, self.width - len(line))
        sys.stderr.write("\r" + line + " " * pad)
        sys.stderr.flush()
        self.width = len(line)

    def done(self) -> None:
        if self.enabled and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0


@chaos.command("run")
@click.option("--app", metavar="MODULE:ATTR",
              help="The tree to break, run on a node the runner starts in a temporary data "
                   "dir (default: the demo tree).")
@click.option("--node", "node_arg", metavar="NAME_OR_DIR",
              help="Break this already running node instead (scenarios that restart the node "
                   "are skipped). Only this option picks it: the group's --node and "
                   "$PRISMATIC_NODE do not, so a run never breaks a node by accident.")
@click.option("--cluster", type=click.IntRange(min=0), default=0, metavar="N",
              help="Run on N nodes of the app the runner starts in one mesh (N >= 2): the "
                   "cluster scenarios (node-loss, node-stop, partition) apply then, the "
                   "single-node ones not.")
@click.option("--scenario", "scenarios", multiple=True, metavar="NAME",
              help="A scenario to run (repeatable; default: all that apply). "
                   "See 'prismatic chaos list'.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds of fault injection per scenario.")
@click.option("--seed", type=int, default=None,
              help="The seed of the fault schedule (default: a random one, printed).")
@click.option("--rate", type=click.FloatRange(min=0.01), default=5.0, show_default=True,
              help="Faults per second (each scenario caps it to what it can play out).")
@click.option("--deadline", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds the tree may take to converge after a fault.")
@json_option
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report as JSON to this file.")
@click.pass_obj
def run_chaos(state: CliState, app: str | None, node_arg: str | None, cluster: int,
              scenarios: tuple[str, ...], duration: float, seed: int | None, rate: float,
              deadline: float, as_json: bool, report_file: Path | None) -> None:
    """Run chaos scenarios and report; exit 1 if any invariant failed."""
    from .._errors import ChaosError
    from ..chaos import SCENARIOS, RunSettings, run
    from ..chaos._report import render_text

    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise CliError(f"no scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}",
                       ExitCode.USAGE)
    if app and node_arg:
        raise CliError("give --app (a node the runner starts) or --node (one that runs), "
                       "not both", ExitCode.USAGE)
    if cluster == 1 or (cluster and node_arg):
        raise CliError("--cluster N needs N >= 2 nodes the runner starts (not --node)",
                       ExitCode.USAGE)
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)
    settings = RunSettings(app=app, node=node_arg, cluster=cluster, scenarios=scenarios,
                           duration=duration,
                           seed=seed, rate=rate, deadline=deadline)
    show = _Progress(sys.stderr.isatty() and not as_json and not state.no_progress)
    stop = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        show.done()
        click.echo("prismatic: stopping: no more faults; letting the tree settle, then "
                   "checking (Ctrl-C again to abort)", err=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        if not as_json:
            click.echo(f"prismatic chaos: seed {seed}", err=True)
        report = run(settings, stop=stop, progress=show)
    except ChaosError as exc:
        raise CliError(str(exc), ExitCode.USAGE if "scenario" in str(exc)
                       else ExitCode.UNREACHABLE) from None
    finally:
        signal.signal(signal.SIGINT, previous)
        show.done()
    if report_file is not None:
        report_file.write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    if as_json:
        print_json(report)
    else:
        click.echo(render_text(report))
    if not report.ok:
        bad = next(s for s in report.scenarios if not s.ok)
        first = bad.violations[0]
        raise CliError(f"{sum(len(s.violations) for s in report.scenarios)} invariant "
                       f"violation(s); reproduce with --seed {seed} --scenario {bad.scenario}"
                       + (f" (first after {first.fault})" if first.fault else ""),
                       ExitCode.REFUSED)
