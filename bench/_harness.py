"""What every bench shares: a real node to measure, percentiles, and the result table."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_names = itertools.count(1)


def start_node(app: str, data: Path) -> subprocess.Popen:
    """A node running ``app`` with data directory ``data``, once its tree has started.

    Each gets a name of its own: two nodes of one name cannot run on one host."""
    proc = subprocess.Popen([sys.executable, "-m", "prismatic.node", "--app", app,
                             "--data-dir", str(data), "--quiet",
                             "--name", f"bench-{os.getpid()}-{next(_names)}"], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # type: ignore[union-attr]
        if "tree started" in line:
            return proc
    raise SystemExit(f"the bench node for {app} did not start")


def stop_node(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def pct(xs: Sequence[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """The first column left-aligned, the last free text, the rest right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in (list(headers), *cells):
        middle = [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1], strict=True)]
        print("  ".join([row[0].ljust(widths[0]), *middle, row[-1]]))
