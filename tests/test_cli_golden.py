"""Golden text of every read command, on a known tree whose children have exited in every
way (crash, kill, exit code, normal, shutdown, ignore, a temporary child and pool jobs that
finished). Volatile fields (pids, times, uptime, memory, seqs, the node's name and data
directory) are normalised; everything else, including column order and the tree's
indentation, must match exactly."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from prismatic.cli import cli
from tests.conftest import module_node, wait_until

node = module_node("tests.cli_apps:golden")


def run(n, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--node", str(n.data_dir), *args])
    assert result.exit_code == code, (result.exit_code, result.output)
    return result.stdout


def table(text: str, volatile: dict[int, str]) -> str:
    """A table as ``indent + cell | cell``, cells split on runs of 2+ spaces; the columns in
    ``volatile`` (by index) replaced by their placeholder unless empty (``-``)."""
    out = []
    for i, line in enumerate(text.splitlines()):
        indent = line[:len(line) - len(line.lstrip(" "))]
        cells = re.split(r" {2,}", line.strip())
        if i:  # not the header
            cells = [volatile[j] if j in volatile and c != "-" else c
                     for j, c in enumerate(cells)]
        out.append(indent + " | ".join(cells))
    return "\n".join(out)


@pytest.fixture(scope="module")
def settled(node):
    """The tree once every planned exit happened: two pool jobs that finished, a child
    terminated by the operator, one restart after each abnormal exit."""
    for _ in range(2):
        run(node, "children", "start", "pool", "--args", "[]")
    run(node, "children", "terminate", "stopped")

    def done() -> bool:
        rows = {r.path: r for r in node.conn.tree()}
        return (all(rows[k].restarts == 1 and rows[k].pid for k in ("crashy", "killy", "coded"))
                and rows["finished"].last_exit is not None and rows["stopped"].pid is None
                and "temp" not in rows and not any(p.startswith("pool/") for p in rows)
                and not node.conn.which_children("pool"))

    wait_until(done, 15, "the golden tree to settle")
    wait_until(lambda: len(run(node, "events", "query", "--pattern",
                               "supervisor.root.crashy.#").splitlines()) == 3, 10,
               "the crash to reach the event log")
    return node


TREE = """\
PATH | PID | TYPE | STATE | RESTARTS | UPTIME | USS | LAST EXIT
root | <pid> | supervisor | running | 0 | <up> | <mem> | -
  steady | <pid> | worker | running | 0 | <up> | <mem> | -
  crashy | <pid> | worker | running | 1 | <up> | <mem> | RuntimeError: golden crash
  killy | <pid> | worker | running | 1 | <up> | <mem> | killed by SIGKILL
  coded | <pid> | worker | running | 1 | <up> | <mem> | exit code 3
  finished | - | worker | stopped | 0 | - | - | normal
  stopped | - | worker | stopped | 0 | - | - | shutdown
  pool | <pid> | supervisor | running | 0 | <up> | <mem> | -
  sub | <pid> | supervisor | running | 0 | <up> | <mem> | -
    leaf | <pid> | worker | running | 0 | <up> | <mem> | -"""


def test_tree_text(settled):
    assert table(run(settled, "tree"), {1: "<pid>", 5: "<up>", 6: "<mem>"}) == TREE


def test_tree_json_has_every_exit_described(settled):
    rows = {r["path"]: r for r in json.loads(run(settled, "tree", "--json"))}
    assert {k: r["last_exit"] for k, r in rows.items() if r["last_exit"]} == {
        "crashy": "RuntimeError: golden crash", "killy": "killed by SIGKILL",
        "coded": "exit code 3", "finished": "normal", "stopped": "shutdown"}
    assert [r["state"] for r in rows.values()].count("stopped") == 2
    # the Python API: typed exit reasons, never the wire's dicts
    import prismatic as p
    reasons = {r.path: r.last_exit for r in settled.conn.tree() if r.last_exit}
    assert isinstance(reasons["crashy"], p.Crashed) and reasons["killy"] == p.Killed(9)


STATUS = """\
node | <name>
ready | yes
pid | <pid>
root pid | <root>
uptime | <up>
processes | 8 (3 supervisors, 5 workers)
restarts | 3
data dir | <data>
metrics | off (prismatic metrics)"""


def test_status_text(settled):
    text = run(settled, "status")
    st = json.loads(run(settled, "status", "--json"))
    lines = [re.split(r" {2,}", ln, maxsplit=1) for ln in text.splitlines()]
    values = dict(lines)
    assert values["pid"] == str(st["pid"]) != values["root pid"] == str(st["root_pid"])
    assert values["data dir"] == str(settled.data_dir.resolve())  # absolute
    subst = {"node": "<name>", "pid": "<pid>", "root pid": "<root>", "uptime": "<up>",
             "data dir": "<data>"}
    assert "\n".join(f"{k} | {subst.get(k, v)}" for k, v in lines) == STATUS
    # aligned: every value starts in the same column
    assert len({len(ln) - len(ln.split("  ")[-1].lstrip()) for ln in text.splitlines()}) == 1


WHICH = """\
ID | PID | TYPE | RESTARTING
sub | <pid> | supervisor
pool | <pid> | supervisor
ignored | - | worker
stopped | - | worker
finished | - | worker
coded | <pid> | worker
killy | <pid> | worker
crashy | <pid> | worker
steady | <pid> | worker"""


def test_children_which_and_count_text(settled):
    assert table(run(settled, "children", "which"), {1: "<pid>"}) == WHICH
    assert run(settled, "children", "which", "pool") == "ID  PID  TYPE  RESTARTING\n"
    assert table(run(settled, "children", "count"), {}) == (
        "SPECS | ACTIVE | SUPERVISORS | WORKERS\n9 | 6 | 2 | 7")
    assert table(run(settled, "children", "count", "sub"), {}) == (
        "SPECS | ACTIVE | SUPERVISORS | WORKERS\n1 | 1 | 0 | 1")


EVENTS = """\
<seq> <time> supervisor.root.crashy.child_started pid=<pid>
<seq> <time> supervisor.root.crashy.child_exited pid=<pid> \
reason=crashed(builtins.RuntimeError: golden crash)
<seq> <time> supervisor.root.crashy.child_started pid=<pid>"""

_STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"  # with its UTC offset


def events_text(text: str) -> str:
    text = re.sub(rf"^ *\d+ {_STAMP} ", "<seq> <time> ", text, flags=re.M)
    return re.sub(r"pid=\d+", "pid=<pid>", text).rstrip("\n")


def test_events_query_text(settled):
    text = run(settled, "events", "query", "--pattern", "supervisor.root.crashy.#")
    assert events_text(text) == EVENTS
    seqs = [int(ln.split()[0]) for ln in text.splitlines()]
    assert seqs == sorted(seqs)


def test_whereis_and_metrics_text(settled):
    assert re.fullmatch(r"<[^.<>]+\.\d+>\n", run(settled, "whereis", "golden-steady"))
    assert run(settled, "whereis", "nobody", code=1) == ""
    text = run(settled, "metrics", "--filter", "prismatic_restarts")
    lines = text.splitlines()
    assert re.split(r" {2,}", lines[0]) == ["METRIC", "VALUE"]
    assert sorted(re.split(r" {2,}", ln) for ln in lines[1:]) == [
        [f"prismatic_restarts_total{{child={c},supervisor=root}}", "1"]
        for c in ("coded", "crashy", "killy")]
    # a byte count in full, not 1.97837e+06
    rss = run(settled, "metrics", "--filter", "prismatic_process_resident")
    assert rss and "e+" not in rss


def test_events_since_forms(settled):
    """--since as epoch seconds, an ISO date/time, a relative time; a bad one is exit 2."""
    everything = run(settled, "events", "query", "--pattern", "supervisor.root.crashy.#")
    assert run(settled, "events", "query", "--pattern", "supervisor.root.crashy.#",
               "--since", "0") == everything
    assert run(settled, "events", "query", "--pattern", "supervisor.root.crashy.#",
               "--since", "2000-01-01") == everything
    assert run(settled, "events", "query", "--pattern", "supervisor.root.crashy.#",
               "--since", "1h") == everything
    assert run(settled, "events", "query", "--since", "4000000000") == ""  # year 2096
    assert run(settled, "events", "query", "--since", "2200-01-01T00:00:00+00:00") == ""
    for bad_since in ("last tuesday", "2999-01-01", "-5"):
        bad = CliRunner().invoke(cli, ["--node", str(settled.data_dir), "events", "query",
                                       "--since", bad_since])
        assert bad.exit_code == 2 and bad.stderr.startswith("prismatic: error: --since")
        assert bad.stderr.count("\n") == 1


def test_the_node_output_names_every_exit(settled):
    """The node's own output: the live tree's headers list every exit (not only the last
    event of a batch), and the log has each crash with its path and summary."""
    out_file = settled.log.parent / "node.out"

    def headers() -> str:
        return "\n".join(ln for ln in out_file.read_text().splitlines() if ln.startswith("---"))

    for exit_ in ("crashy: child_exited (RuntimeError: golden crash)",
                  "killy: child_exited (killed by SIGKILL)", "coded: child_exited (exit code 3)"):
        wait_until(lambda e=exit_: e in headers(), 5, exit_)
    text = out_file.read_text()
    for line in ("crashy crashed: RuntimeError: golden crash", "killy crashed: killed by SIGKILL",
                 "coded crashed: exit code 3"):
        assert line in text
    assert "finished crashed" not in text  # a normal exit is no crash
