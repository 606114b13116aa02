"""What the ``prismatic`` CLI prints, and how it fails.

Role: :class:`CliError` carries an :class:`ExitCode` and prints one line on stderr (click
shows it; the group in :mod:`.cli` turns Prismatic's own errors into it). Read commands print
aligned tables for people, or ``--json`` for programs (msgspec encodes Structs and Enums).
Slow operations show a spinner on stderr (:mod:`._progress`).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Sequence
from typing import Any

import click
import msgspec

__all__ = ["ExitCode", "CliError", "OneLineErrors", "print_table", "print_json", "human_bytes",
           "human_seconds"]


class ExitCode(enum.IntEnum):
    """The CLI's exit codes (documented in docs/operator.md)."""

    OK = 0
    REFUSED = 1  # the supervisor refused the operation (OTP error), or a child failed to start
    USAGE = 2  # bad arguments, bad config, no/ambiguous node selection
    UNREACHABLE = 3  # no node there, or it did not answer in time
    AUTH = 4  # the node refused our cookie
    TIMEOUT = 5  # a process did not reply, or its mailbox stayed full, within the timeout
    INTERNAL = 70  # a bug (EX_SOFTWARE): rerun with --verbose for the traceback


class CliError(click.ClickException):
    """One clear line on stderr and a documented exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = int(code)  # type: ignore[misc]  # click's ClassVar, per instance here

    def show(self, file: Any = None) -> None:
        click.echo(f"prismatic: error: {self.format_message()}", err=True)


_NO_ARGS_HELP: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError",
                                                type("_Never", (click.UsageError,), {}))


class OneLineErrors:
    """A click command mixin: usage errors too are one line with the one prefix,
    ``prismatic: error: ...``, pointing at ``--help`` (click's own format is a usage
    block and ``Error: ...``)."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        main = super().main  # type: ignore[misc]
        if not standalone_mode:
            return main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS_HELP as exc:  # no command given: the help, as click shows it
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"prismatic: error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("prismatic: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def print_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value).decode(), indent=2))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def human_bytes(n: float | None) -> str | None:
    if n is None:
        return None
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float | None) -> str | None:
    if s is None:
        return None
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"

