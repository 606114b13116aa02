"""``with progress("starting child 'pool'"):`` a one-line spinner for slow CLI operations.

Nothing for a block under :data:`DELAY_S`; after that a daemon thread draws
``| LABEL 1.4s`` (plus ``N records`` once :attr:`Progress.count` is set) on stderr about ten
times a second, and the line is erased (carriage return, clear line) when the block ends, by
success or error. Only when the stream is a terminal, ``enabled`` is true and
``$PRISMATIC_NO_PROGRESS`` is unset: pipes, logs and ``--json`` get no control characters,
and stdout is never written. The thread is joined before the block returns (and by
:meth:`Progress.stop`, for a command about to print on the same terminal), so nothing is
drawn afterwards.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from typing import IO, Any

__all__ = ["progress", "Progress", "DELAY_S"]

DELAY_S = 1.0
INTERVAL_S = 0.1
_CLEAR = "\r\x1b[K"


class Progress:
    """The context manager :func:`progress` returns; ``count`` is shown when not None."""

    def __init__(self, label: str, stream: IO[str] | None = None, enabled: bool = True,
                 delay: float = DELAY_S) -> None:
        self.label = label
        self.count: int | None = None
        self._stream = stream if stream is not None else sys.stderr
        self._delay = delay
        self._on = enabled and not os.environ.get("PRISMATIC_NO_PROGRESS") and _isatty(
            self._stream)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False
        self._start = 0.0

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self._on:
            self._thread = threading.Thread(target=self._spin, name="prismatic-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End the spinner now (idempotent): join the thread, erase the line if drawn."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._drawn:
            self._drawn = False
            self._write(_CLEAR)

    def _spin(self) -> None:
        if self._done.wait(self._delay):
            return
        width = _width(self._stream)
        for frame in itertools.cycle("|/-\\"):
            line = f"{frame} {self.label}"
            if self.count is not None:
                line += f" {self.count} records"
            line += f" {time.monotonic() - self._start:.1f}s"
            self._drawn = True
            if not self._write("\r" + line[:width - 1] + "\x1b[K"):
                return
            if self._done.wait(INTERVAL_S):
                return

    def _write(self, text: str) -> bool:
        try:
            self._stream.write(text)
            self._stream.flush()
            return True
        except (OSError, ValueError):  # the terminal went away, or the stream was closed
            return False


def progress(label: str, *, stream: IO[str] | None = None, enabled: bool = True,
             delay: float = DELAY_S) -> Progress:
    """A spinner with ``label`` on ``stream`` (default stderr) for a block slower than
    ``delay`` seconds."""
    return Progress(label, stream, enabled, delay)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _width(stream: Any) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):
        return 80
