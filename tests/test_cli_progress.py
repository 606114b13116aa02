"""The CLI's spinner (``prismatic.cli._progress``) against a pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import termios
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from prismatic.cli._progress import progress
from prismatic.cli import cli


@pytest.fixture
def pty() -> Iterator[tuple[int, io.TextIOWrapper]]:
    """(master fd, the slave as a text stream): what is written to the stream is read from
    the master."""
    master, slave = os.openpty()
    stream = open(slave, "w", encoding="utf-8", closefd=True)
    try:
        yield master, stream
    finally:
        stream.close()
        os.close(master)


def drain(master: int) -> str:
    """Everything written so far (the writer flushed and its thread was joined)."""
    out = b""
    while select.select([master], [], [], 0.05)[0]:
        chunk = os.read(master, 4096)
        if not chunk:
            break
        out += chunk
    return out.decode()


@pytest.fixture(autouse=True)
def _progress_on(monkeypatch):
    monkeypatch.delenv("PRISMATIC_NO_PROGRESS", raising=False)


def _no_spinner_thread() -> bool:
    return not any(t.name == "prismatic-progress" for t in threading.enumerate())


def test_fast_block_writes_nothing(pty):
    master, stream = pty
    with progress("quick", stream=stream):
        pass
    assert drain(master) == "" and _no_spinner_thread()


def test_slow_block_draws_the_label_then_erases_it(pty):
    master, stream = pty
    with progress("starting child 'pool'", stream=stream) as p:
        threading.Event().wait(1.5)  # the work being timed
        p.count = 7
        threading.Event().wait(0.5)  # several refresh periods: the count is drawn
    assert _no_spinner_thread()  # joined before the block returned
    out = drain(master)
    assert "starting child 'pool'" in out and "7 records" in out
    assert re.search(r"[|/\-\\] starting child 'pool' \d+\.\ds", out)  # elapsed seconds
    assert out.endswith("\r\x1b[K")  # erased: the line is left empty
    assert "\n" not in out


def test_erased_on_error_and_nothing_after(pty):
    master, stream = pty
    with pytest.raises(RuntimeError), progress("failing", stream=stream):
        threading.Event().wait(1.5)
        raise RuntimeError("boom")
    out = drain(master)
    assert "failing" in out and out.endswith("\r\x1b[K")
    threading.Event().wait(0.25)  # more than a refresh period: the thread is gone
    assert drain(master) == ""


def test_stop_ends_the_spinner_early(pty):
    master, stream = pty
    with progress("streaming", stream=stream) as p:
        threading.Event().wait(1.5)
        p.stop()
        drawn = drain(master)
        threading.Event().wait(0.3)
    assert "streaming" in drawn and drawn.endswith("\r\x1b[K") and drain(master) == ""


def test_nothing_unless_a_terminal_and_enabled(pty, monkeypatch):
    not_tty = io.StringIO()
    with progress("piped", stream=not_tty):
        threading.Event().wait(1.5)
    assert not_tty.getvalue() == ""
    master, stream = pty
    with progress("json output", stream=stream, enabled=False):
        threading.Event().wait(1.5)
    monkeypatch.setenv("PRISMATIC_NO_PROGRESS", "1")
    with progress("switched off", stream=stream):
        threading.Event().wait(1.5)
    assert drain(master) == "" and _no_spinner_thread()


def test_long_label_is_cut_to_the_terminal_width(pty):
    master, stream = pty
    fcntl.ioctl(stream.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
    with progress("x" * 100, stream=stream):
        threading.Event().wait(1.5)
    lines = [s for s in drain(master).split("\r") if s and s != "\x1b[K"]
    assert lines and all(len(s.removesuffix("\x1b[K")) < 40 for s in lines)


def test_cli_no_progress_option():
    result = CliRunner().invoke(cli, ["--no-progress", "--help"])
    assert result.exit_code == 0 and "--no-progress" in result.stdout
