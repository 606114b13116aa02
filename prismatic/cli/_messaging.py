"""``prismatic call|cast|send|whereis|publish|subscribe``: ad-hoc messages to a node.

The same call / cast / send a worker has (through :class:`~prismatic.NodeConnection`), and
the node's pub/sub. ``DEST`` is a registered name, a pid as ``str(Pid)`` prints it
(``<node.1234>``; quote it for the shell), or a bare OS pid (``1234``) on the selected node;
anything else that starts with ``<`` is a usage error (exit 2). ``MSG`` and ``PAYLOAD`` are
JSON; an argument that is not JSON is sent as a plain string (``ping`` is ``"ping"``; the
string ``"42"`` must be written ``'"42"'``).

Exit codes (as :class:`~prismatic.cli._format.ExitCode`): 1 no such process or name, the
callee exited before replying (its exit reason is printed), or a cast/send became a dead
letter; 5 no reply within ``--timeout``, or the mailbox stayed full that long; 3 the node
(or its hub) did not answer; 2 bad DEST, topic or pattern.
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import msgspec

from .._address import Pid
from ._format import CliError, ExitCode, print_json
from .._errors import CallError, CallTimeout, MailboxFull, NodeError, NoProcError, ProcessDown
from .._exit import ExitReason, describe
from ._main import CliState, cli, json_option

__all__ = ["parse_dest", "parse_message", "CallResult", "Delivery"]

_PID = re.compile(r"^<(?P<node>[^<>]+)\.(?P<ospid>\d+)>$")


def parse_dest(value: str) -> Pid | int | str:
    """A Pid from ``<node.1234>``, an OS pid (int, on the selected node) from ``1234``, else a
    registered name. CliError (usage) for an empty DEST or a malformed ``<...>``."""
    if not value:
        raise CliError("DEST is empty: give a registered name, <node.ospid> or an ospid",
                       ExitCode.USAGE)
    if value.isdigit():
        return int(value)
    if value.startswith("<"):
        m = _PID.match(value)
        if m is None:
            raise CliError(f"DEST {value!r} is not a pid: write it as <node.ospid>, e.g. "
                           f"<prismatic@host.1234>", ExitCode.USAGE)
        return Pid(m["node"], int(m["ospid"]))
    return value


def parse_message(value: str) -> Any:
    """JSON, else the text itself as a string."""
    try:
        return msgspec.json.decode(value.encode())
    except msgspec.DecodeError:
        return value


def _label(dest: object) -> str:
    return str(dest) if isinstance(dest, Pid) else repr(dest)


def _target(conn: Any, dest: Pid | int | str) -> Pid | str:
    return Pid(conn.node, dest) if isinstance(dest, int) else dest


def _no_such(dest: object) -> str:
    return f"no process registered as {dest!r}" if isinstance(dest, str) \
        else f"no such process {dest}"


@contextmanager
def _delivery_errors(state: CliState, timeout: float) -> Iterator[None]:
    """CallError and the hub's NodeError as one line and an exit code."""
    try:
        yield
    except (CallError, NodeError) as exc:
        if state.debug:
            traceback.print_exc()
        label = _label(exc.dest) if isinstance(exc, CallError) else ""
        if isinstance(exc, NoProcError):
            raise CliError(_no_such(exc.dest), ExitCode.REFUSED) from None
        if isinstance(exc, ProcessDown):
            why = describe(exc.reason) if isinstance(exc.reason, ExitReason) else exc.reason
            raise CliError(f"{label} exited before replying: {why}",
                           ExitCode.REFUSED) from None
        if isinstance(exc, CallTimeout):
            raise CliError(f"{label}: no reply within {timeout:g}s", ExitCode.TIMEOUT) from None
        if isinstance(exc, MailboxFull):
            raise CliError(f"{label}: mailbox stayed full for {timeout:g}s (the process is "
                           f"not keeping up)", ExitCode.TIMEOUT) from None
        if isinstance(exc, NodeError):  # the node's hub: not running here, or no answer
            raise CliError(str(exc), ExitCode.UNREACHABLE) from None
        raise CliError(str(exc), ExitCode.REFUSED) from None


def _timeout_option(default: float | None, what: str) -> Any:
    return click.option("--timeout", type=click.FloatRange(0, min_open=True), default=default,
                        show_default=True, metavar="SECONDS", help=what)


class CallResult(msgspec.Struct):
    """``prismatic call --json``."""

    dest: str
    pid: str | None
    reply: Any
    rtt_ms: float


class Delivery(msgspec.Struct):
    """``prismatic cast|send --json``."""

    dest: str
    pid: str | None
    delivered: bool


@cli.command()
@click.argument("dest")
@click.argument("msg")
@_timeout_option(5.0, "How long to wait for the reply.")
@json_option
@click.pass_obj
def call(state: CliState, dest: str, msg: str, timeout: float, as_json: bool) -> None:
    """Call DEST with MSG and print the reply as JSON.

    DEST: a registered name, a pid '<node.ospid>' (quoted) or an ospid of this node. MSG:
    JSON, else a plain string. --json adds the callee's pid and the round-trip time.
    """
    where, message = parse_dest(dest), parse_message(msg)
    with state.progress(f"calling {dest}", not as_json), state.connect() as conn, \
            _delivery_errors(state, timeout):
        target = _target(conn, where)
        conn.resolve(target)  # look the name up first: rtt_ms is the call alone
        start = time.perf_counter()
        reply = conn.call(target, message, timeout)
        rtt = time.perf_counter() - start
        pid = conn.resolve(target)
    if as_json:
        print_json(CallResult(dest, str(pid) if pid else None, reply, round(rtt * 1e3, 3)))
    else:
        print_json(reply)


def _deliver(state: CliState, kind: str, dest: str, msg: str, timeout: float,
             as_json: bool) -> None:
    where, message = parse_dest(dest), parse_message(msg)
    with state.progress(f"{kind}ing to {dest}", not as_json), state.connect() as conn, \
            _delivery_errors(state, timeout):
        target = _target(conn, where)
        delivered = getattr(conn, kind)(target, message, timeout)
        pid = conn.resolve(target) if delivered else None
    if as_json:
        print_json(Delivery(dest, str(pid) if pid else None, delivered))
    elif delivered:
        click.echo(f"delivered to {pid}")
    if not delivered:
        raise CliError(f"dead letter: {_no_such(target)} (published on deadletter.#)",
                       ExitCode.REFUSED)


@cli.command(short_help="Cast MSG to DEST (handle_cast).")
@click.argument("dest")
@click.argument("msg")
@_timeout_option(5.0, "How long a full mailbox may hold the message back.")
@json_option
@click.pass_obj
def cast(state: CliState, dest: str, msg: str, timeout: float, as_json: bool) -> None:
    """Cast MSG to DEST (its handle_cast); exit 1 if it became a dead letter.

    DEST and MSG as for call.
    """
    _deliver(state, "cast", dest, msg, timeout, as_json)


@cli.command(short_help="Send MSG to DEST as a plain message (handle_info).")
@click.argument("dest")
@click.argument("msg")
@_timeout_option(5.0, "How long a full mailbox may hold the message back.")
@json_option
@click.pass_obj
def send(state: CliState, dest: str, msg: str, timeout: float, as_json: bool) -> None:
    """Send MSG to DEST as a plain message (its handle_info); exit 1 if it became a dead
    letter.

    DEST and MSG as for call.
    """
    _deliver(state, "send", dest, msg, timeout, as_json)


@cli.command()
@click.argument("name")
@json_option
@click.pass_obj
def whereis(state: CliState, name: str, as_json: bool) -> None:
    """The pid registered as NAME; exit 1 if none."""
    with state.connect() as conn, _delivery_errors(state, 0):
        pid = conn.whereis(name)
    if as_json:
        print_json({"name": name, "pid": str(pid) if pid else None})
    elif pid is not None:
        click.echo(str(pid))
    if pid is None:
        raise CliError(_no_such(name), ExitCode.REFUSED)


@cli.command()
@click.argument("topic")
@click.argument("payload")
@click.pass_obj
def publish(state: CliState, topic: str, payload: str) -> None:
    """Publish PAYLOAD (JSON, else a plain string) under TOPIC (dot-separated words).

    Fire and forget, as pub/sub is: only subscribers already subscribed get it.
    """
    with state.connect() as conn:
        conn.publish(topic, parse_message(payload))  # TopicError: exit 2
        if not conn.flush(10.0):
            raise CliError("the event was not handed to the node within 10s",
                           ExitCode.UNREACHABLE)
    click.echo(f"published on {topic}")


@cli.command()
@click.argument("topic")
@click.argument("payload")
@click.option("--correlation-id", default=None, help="Stored with the event, for queries.")
@json_option
@click.pass_obj
def emit(state: CliState, topic: str, payload: str, correlation_id: str | None,
         as_json: bool) -> None:
    """Append PAYLOAD (JSON, else a plain string) under TOPIC to the node's durable event log.

    Returns once the event is synced to disk, and prints its sequence number.
    """
    with state.connect() as conn:
        seq = conn.emit(topic, parse_message(payload), correlation_id=correlation_id)
    if as_json:
        print_json({"topic": topic, "seq": seq})
    else:
        click.echo(f"logged as #{seq}")


@cli.command()
@click.argument("pattern")
@click.option("-n", "--count", type=click.IntRange(1), default=None,
              help="Exit after this many events.")
@_timeout_option(None, "Stop after this long; with --count, fewer events by then is "
                       "exit 5.")
@json_option
@click.pass_obj
def subscribe(state: CliState, pattern: str, count: int | None, timeout: float | None,
              as_json: bool) -> None:
    """Print events whose topic matches PATTERN as they arrive (Ctrl-C stops).

    PATTERN: '*' one word, '#' zero or more ('deadletter.#'). Each line is the topic and the
    payload as JSON; --json prints one {"topic", "payload"} object per line. 'subscribed to
    PATTERN' on stderr says from when nothing is missed.
    """
    seen = 0
    with state.connect() as conn, conn.subscribe(pattern) as sub:  # TopicError: exit 2
        click.echo(f"prismatic: subscribed to {pattern}", err=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while count is None or seen < count:
                left = None if deadline is None else deadline - time.monotonic()
                event = sub.next(left) if left is None or left > 0 else None
                if event is None:
                    break  # the timeout
                click.echo(msgspec.json.encode(event).decode() if as_json else
                           f"{event.topic} {msgspec.json.encode(event.payload).decode()}")
                seen += 1
        except KeyboardInterrupt:
            return
    if count is not None and seen < count:
        raise CliError(f"{seen} of {count} events on {pattern} within {timeout:g}s",
                       ExitCode.TIMEOUT)
