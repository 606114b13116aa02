"""``prismatic events tail|query|replay|verify|salvage``: the node's durable event log.

Reads ``<data dir>/eventlog`` through a read-only handle (:mod:`.eventlog`), so it works
while the node runs (and after it stopped). Topics are ``supervisor.<path>.<child>.<kind>``
(``root`` for the root's path); ``--pattern`` takes topic patterns (``*`` one word, ``#``
any words), e.g. ``supervisor.#.child_exited``. ``--json`` prints one JSON object per line.
``verify`` and ``salvage`` (implemented in :mod:`.eventlog`) read a stopped node's log.
"""

from __future__ import annotations

import collections
import datetime as dt
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import msgspec

from ._format import CliError, ExitCode, print_json
from .._replay import open_log_reader
from .._topics import compile_pattern
from ..eventlog import EventLog, EventRecord, salvage_log, verify_log
from ._main import CliState, cli, json_option

__all__ = ["parse_time"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


_MAX_NS = (1 << 63) - 1  # the log's timestamps are 64-bit nanoseconds (till 2262)


def parse_time(value: str, option: str) -> int:
    ns = _parse_time(value, option)
    if not 0 <= ns <= _MAX_NS:
        raise CliError(f"{option} {value!r} is out of range (1970 to 2262)", ExitCode.USAGE)
    return ns


def _parse_time(value: str, option: str) -> int:
    """Nanoseconds since the epoch from ``10m`` (ago), an ISO date/time (local time unless
    it has an offset), or epoch seconds."""
    if m := _RELATIVE.match(value):
        return time.time_ns() - int(float(m[1]) * _UNIT_S[m[2]] * 1e9)
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CliError(f"{option} {value!r}: use 10s/5m/2h/1d (ago), an ISO date/time or "
                       f"epoch seconds", ExitCode.USAGE) from None
    return int(when.timestamp() * 1e9)


@contextmanager
def _event_log(state: CliState) -> Iterator[EventLog]:
    path = state.data_dir() / "eventlog"
    if not path.is_dir():
        raise CliError(f"no event log at {path}", ExitCode.UNREACHABLE)
    with open_log_reader(path.parent) as log:
        yield log


def _summary(rec: EventRecord) -> str:
    p: Any = rec.payload if isinstance(rec.payload, dict) else {}
    bits = [f"pid={p['pid']}"] if p.get("pid") is not None else []
    reason = p.get("reason")
    if isinstance(reason, dict):
        bits.append("reason=" + str(reason.get("kind")) + (
            f"({reason['type']}: {reason.get('message', '')})" if "type" in reason else ""))
    return " ".join(bits)


def _stamp(rec: EventRecord) -> str:
    # Local time with its UTC offset: unambiguous when pasted elsewhere.
    return dt.datetime.fromtimestamp(rec.wall_ns / 1e9).astimezone().isoformat(
        timespec="milliseconds")


def _print(rec: EventRecord, as_json: bool, full: bool = False) -> None:
    if as_json:
        click.echo(msgspec.json.encode(msgspec.structs.asdict(rec)).decode())
    elif full:
        click.echo(f"#{rec.seq} {_stamp(rec)} {rec.topic} (source {rec.source})")
        click.echo("    " + msgspec.json.format(msgspec.json.encode(rec.payload).decode(),
                                                indent=2).replace("\n", "\n    "))
    else:
        click.echo(f"{rec.seq:>7} {_stamp(rec)} {rec.topic} {_summary(rec)}".rstrip())


def _pattern(value: str | None) -> Any:
    return compile_pattern(value) if value else None  # TopicError -> exit 2


@cli.group()
def events() -> None:
    """The node's durable lifecycle event log."""


@events.command("tail")
@click.option("-n", "--lines", "count", type=click.IntRange(0), default=10, show_default=True,
              help="How many of the latest events to print first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events (Ctrl-C stops).")
@click.option("--pattern", help="Topic pattern, e.g. 'supervisor.#.child_exited'.")
@click.option("--max-events", type=click.IntRange(1), default=None,
              help="With -f: exit after this many new events.")
@json_option
@click.pass_obj
def events_tail(state: CliState, count: int, follow: bool, pattern: str | None,
                max_events: int | None, as_json: bool) -> None:
    """The latest events, and with -f the ones that follow."""
    pat = _pattern(pattern)
    with _event_log(state) as log:
        last = log.last_seq
        if pat is None:
            latest: Any = log.query(start_seq=max(1, last - count + 1), end_seq=last)
        else:
            latest = collections.deque(log.query(pattern=pat, end_seq=last), maxlen=count)
        for rec in latest if count else ():
            _print(rec, as_json)
        if not follow:
            return
        stop = threading.Event()
        seen = 0
        try:
            for rec in log.follow(last + 1, stop=stop):
                if pat is not None and not pat.matches(rec.topic):
                    continue
                _print(rec, as_json)
                seen += 1
                if max_events is not None and seen >= max_events:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()


def _query_options(f: Any) -> Any:
    for option in reversed([
        click.option("--pattern", help="Topic pattern ('*' one word, '#' any words)."),
        click.option("--since", help="From this time: 10m (ago), ISO date/time, epoch s."),
        click.option("--until", help="Up to this time (same forms as --since)."),
        click.option("--source", help="Only events from this supervisor path ('root', "
                                      "'pipeline'...)."),
        click.option("--from", "start_seq", type=click.IntRange(1), help="First seq."),
        click.option("--to", "end_seq", type=click.IntRange(1), help="Last seq."),
        click.option("--limit", type=click.IntRange(1), default=None),
        json_option,
    ]):
        f = option(f)
    return f


@events.command("query")
@_query_options
@click.pass_obj
def events_query(state: CliState, as_json: bool, **filters: Any) -> None:
    """Events matching every given filter, one line each, oldest first."""
    with state.progress("querying events", not as_json) as p, _event_log(state) as log:
        for rec in log.query(**_query_kwargs(**filters)):
            _counted(p)
            _print(rec, as_json)


@events.command("replay")
@_query_options
@click.option("--republish", is_flag=True,
              help="Publish the payloads again on pub/sub, under PREFIX.<topic>, instead of "
                   "printing them.")
@click.option("--prefix", default="replay", show_default=True,
              help="With --republish: the topic prefix, so live subscribers never mistake "
                   "history for news.")
@click.pass_obj
def events_replay(state: CliState, as_json: bool, republish: bool, prefix: str,
                  **filters: Any) -> None:
    """Whole records of a range, with payloads.

    Select a range as for query (for instance --from 100 --to 200); with --republish the
    events are published again under PREFIX.<topic> instead of printed."""
    if republish:
        with state.progress("republishing events", not as_json), state.connect() as conn:
            n = conn.republish(prefix=prefix, **_query_kwargs(**filters))
        if as_json:
            print_json({"republished": n, "prefix": prefix})
        else:
            click.echo(f"republished {n} events under {prefix}.<topic>")
        return

    def each(rec: EventRecord) -> None:
        _counted(p)
        _print(rec, as_json, full=True)

    with state.progress("replaying events", not as_json) as p, _event_log(state) as log:
        n = log.replay(each, **_query_kwargs(**filters))
    if not as_json:
        click.echo(f"({n} records)", err=True)


def _counted(p: Any) -> None:
    """Count a record about to be printed; on a terminal stdout the records are the progress,
    and the spinner (on the same screen) stops before the first one."""
    p.count = (p.count or 0) + 1
    if p.count == 1 and sys.stdout.isatty():
        p.stop()


def _query_kwargs(pattern: str | None, since: str | None, until: str | None,
                  source: str | None, start_seq: int | None, end_seq: int | None,
                  limit: int | None) -> dict[str, Any]:
    return dict(start_seq=start_seq, end_seq=end_seq,
                since_ns=parse_time(since, "--since") if since else None,
                until_ns=parse_time(until, "--until") if until else None,
                pattern=_pattern(pattern), source=source, limit=limit)


@events.command("verify")
@json_option
@click.pass_obj
def events_verify(state: CliState, as_json: bool) -> None:
    """Check every page and every record of a stopped node's log: exit 0 sound, 1 damaged."""
    path = state.data_dir() / "eventlog"
    with state.progress("verifying the event log", not as_json):
        report = verify_log(str(path))
    if as_json:
        print_json(report)
    elif report.problem is None:
        click.echo(f"{report.path}: sound, {report.records} records (seqs "
                   f"{report.first_seq}..{report.last_seq}), {report.pages} pages")
    if report.problem is not None:
        raise CliError(f"event log {report.path} is damaged: {report.problem}; copy what is "
                       f"readable with `prismatic --node {path.parent} events salvage --to "
                       "NEWDIR`", ExitCode.REFUSED)


@events.command("salvage")
@click.option("--to", "target", required=True, type=click.Path(file_okay=False),
              help="A new directory for the salvaged log (missing or empty).")
@json_option
@click.pass_obj
def events_salvage(state: CliState, target: str, as_json: bool) -> None:
    """Copy every readable record of a stopped node's log into a fresh log at --to."""
    path = state.data_dir() / "eventlog"
    with state.progress("salvaging the event log", not as_json):
        report = salvage_log(str(path), target)
    if as_json:
        print_json(report)
        return
    click.echo(f"salvaged {report.copied} records (seqs {report.first_seq}..{report.last_seq})"
               f" of node {report.node} into {report.target}; {report.undecodable} unreadable"
               f" records, {len(report.damage)} damaged subtrees skipped")
    for problem in report.damage:
        click.echo(f"  damaged: {problem}")
    click.echo(f"to use it: mv {path} {path}.damaged && mv {report.target} {path}")
