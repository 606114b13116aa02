"""``prismatic logs CHILD_PATH [-f] [--lines N]``: a child's captured output (a program's
stdout and stderr, a Python worker's ``print()``).

Reads ``<data dir>/logs/<path>.log`` (see ``supervisors/_logfile.py``) straight from the
file, so it works while the node runs and after it stopped (supervisorctl's ``tail``).
``-f`` follows the file as the supervisor appends to it, and across its rotation (a new
file at the path, or the file truncated): Ctrl-C ends it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO

import click

from ..supervisors._logfile import log_path
from ._format import CliError, ExitCode
from ._main import CliState, cli

_FOLLOW_POLL_S = 0.1


def tail_bytes(f: BinaryIO, lines: int) -> bytes:
    """The last ``lines`` lines of the open file ``f`` (read from its end, in blocks); ``f``
    is left at the end it saw, where following goes on from."""
    end = f.seek(0, os.SEEK_END)
    data = b""
    pos = end
    while pos > 0 and data.count(b"\n") <= lines:
        step = min(65536, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    f.seek(end)
    kept = data.split(b"\n")
    trailing = kept[-1] == b""
    body = kept[:-1] if trailing else kept
    return b"\n".join(body[-lines:]) + (b"\n" if trailing and body else b"") if lines else b""


@cli.command()
@click.argument("child_path")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the child writes.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the last lines to print first.")
@click.pass_obj
def logs(state: CliState, child_path: str, follow: bool, lines: int) -> None:
    """A child's output (a program's stdout and stderr, a worker's print()): CHILD_PATH =
    SUPERVISOR/CHILD_ID (a child of the root: its id)."""
    file = log_path(state.data_dir(), child_path)
    if not file.exists():
        raise CliError(f"no output captured for {child_path!r} (looked for {file}: no such "
                       "child, or it wrote nothing yet)", ExitCode.REFUSED)
    out = sys.stdout.buffer
    f = open(file, "rb")  # noqa: SIM115 - reopened on rotation
    out.write(tail_bytes(f, lines))
    out.flush()
    if not follow:
        f.close()
        return
    try:
        while True:
            chunk = f.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            time.sleep(_FOLLOW_POLL_S)
            try:
                st = os.stat(file)
            except FileNotFoundError:
                continue  # between the rename and the new file
            if st.st_ino != os.fstat(f.fileno()).st_ino or st.st_size < f.tell():
                rest = f.read()  # what was written before the rotation
                if rest:
                    out.write(rest)
                f.close()
                f = open(file, "rb")  # noqa: SIM115
    except KeyboardInterrupt:
        pass
    finally:
        f.close()
