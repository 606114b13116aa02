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
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from prismatic.cli import cli
from prismatic.cli._progress import progress


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


def read_until(master: int, pred, timeout: float = 10.0) -> str:
    """What the spinner drew, read until ``pred`` holds for it (a deadline, no fixed wait)."""
    out = ""
    deadline = time.monotonic() + timeout
    while not pred(out):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; drawn so far: {out!r}"
        if select.select([master], [], [], left)[0]:
            out += os.read(master, 4096).decode()
    return out


def test_slow_block_draws_the_label_then_erases_it(pty):
    master, stream = pty
    # delay=0: "slow" from the start, so the test waits for what is drawn, not for a second
    with progress("starting child 'pool'", stream=stream, delay=0) as p:
        out = read_until(master, lambda o: "starting child 'pool'" in o)
        p.count = 7
        out += read_until(master, lambda o: "7 records" in o)  # the next refresh shows it
    assert _no_spinner_thread()  # joined before the block returned
    out += drain(master)
    assert re.search(r"[|/\-\\] starting child 'pool' \d+\.\ds", out)  # elapsed seconds
    assert out.endswith("\r\x1b[K")  # erased: the line is left empty
    assert "\n" not in out


def test_erased_on_error_and_nothing_after(pty):
    master, stream = pty
    with pytest.raises(RuntimeError), progress("failing", stream=stream, delay=0):
        read_until(master, lambda o: "failing" in o)
        raise RuntimeError("boom")
    assert _no_spinner_thread()  # so nothing can be drawn after this
    assert drain(master).endswith("\r\x1b[K")
    assert drain(master) == ""


def test_stop_ends_the_spinner_early(pty):
    master, stream = pty
    with progress("streaming", stream=stream, delay=0) as p:
        drawn = read_until(master, lambda o: "streaming" in o)
        p.stop()
        assert _no_spinner_thread()
        drawn += drain(master)
        assert drawn.endswith("\r\x1b[K") and drain(master) == ""


def test_nothing_unless_a_terminal_and_enabled(pty, monkeypatch):
    """Off: no spinner thread is even started, so there is nothing to wait for."""
    master, stream = pty
    not_tty = io.StringIO()
    with progress("piped", stream=not_tty, delay=0):
        assert _no_spinner_thread()
    assert not_tty.getvalue() == ""
    with progress("json output", stream=stream, enabled=False, delay=0):
        assert _no_spinner_thread()
    monkeypatch.setenv("PRISMATIC_NO_PROGRESS", "1")
    with progress("switched off", stream=stream, delay=0):
        assert _no_spinner_thread()
    assert drain(master) == ""


def test_long_label_is_cut_to_the_terminal_width(pty):
    master, stream = pty
    fcntl.ioctl(stream.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
    with progress("x" * 100, stream=stream, delay=0):
        out = read_until(master, lambda o: "\x1b[K" in o)
    lines = [s for s in (out + drain(master)).split("\r") if s and s != "\x1b[K"]
    assert lines and all(len(s.removesuffix("\x1b[K")) < 40 for s in lines)


def test_cli_no_progress_option():
    result = CliRunner().invoke(cli, ["--no-progress", "--help"])
    assert result.exit_code == 0 and "--no-progress" in result.stdout
