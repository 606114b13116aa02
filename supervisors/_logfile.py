"""A child's captured output: one log file per child in the data directory, rotated by size.

A program child's stdout and stderr are pipes its supervisor reads (never the node's
terminal); what arrives is appended, as it arrives, to ``<data_dir>/logs/<path>.log``,
where ``<path>`` is the child's tree path with ``.`` between ids (ids cannot contain a
dot, so the name maps back to one path). When a write would take the file past
``max_bytes`` it is rotated first: ``x.log`` becomes ``x.log.1``, ``x.log.1`` becomes
``x.log.2``, and so on; ``keep`` old files are kept (0: the file is truncated instead).

A Python worker writes its own. Becoming a worker (:func:`capture_prints`) makes
``sys.stdout`` and ``sys.stderr`` one small placeholder (made at import, before the
fork): nothing is opened on the restart's path. At the worker's first
write to either, its file is opened (appending) and made descriptor 1, and both become a
line-buffered stream over it; so ``print()``, ``print(file=sys.stderr)``, an uncaught
exception's traceback, and from then on what a C extension or a subprocess writes to
stdout, land there (descriptor-level output before the first print still goes where the
node's stdout goes). A worker that never prints opens nothing and has no file. Descriptor
2 is left as it was: the tree's logging handlers write there (the node's stderr, or its
``--log-file``), so a worker's log lines stay with the node's. (Measured against the
alternatives: opening the file for every worker before or after ``init`` cost 25% more CPU
per worker started and ~0.2 MiB of private memory each; a text stream over a rotating
writer, ~0.3 MiB.) The worker does not rotate its file: its supervisor looks at its
workers' log sizes every ``WORKER_LOG_CHECK_S`` seconds and rotates one past
``WORKER_LOG_MAX_BYTES`` by :func:`copy_truncate` (lines written during the copy are lost,
as with logrotate's ``copytruncate``).

Back-pressure, not loss: the supervisor reads a pipe only as fast as it writes the file,
so a program that writes faster than the disk blocks in ``write`` (the pipe is full)
until the supervisor catches up; it is never blocked for longer than the disk takes. A
write that fails (disk full, the directory removed) drops that chunk: the bytes dropped
are counted and logged once per failure spell, the program is never stopped for it.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["RotatingLog", "log_path", "log_file", "capture_prints", "copy_truncate",
           "WORKER_LOG_MAX_BYTES", "WORKER_LOG_KEEP", "WORKER_LOG_CHECK_S"]

WORKER_LOG_MAX_BYTES = 10 * 1024 * 1024  # a Program's defaults
WORKER_LOG_KEEP = 5
WORKER_LOG_CHECK_S = 5.0  # how often a supervisor looks at its workers' log sizes

log = logging.getLogger(__name__)


def log_path(data_dir: Path | str, path: tuple[str, ...] | str) -> Path:
    """Where the output of the child at ``path`` (a tuple of ids, or ``a/b``) goes."""
    parts = path if isinstance(path, tuple) else tuple(p for p in path.split("/") if p)
    return Path(log_file(data_dir, parts))


def log_file(data_dir: Path | str, path: tuple[str, ...]) -> str:
    """:func:`log_path` as a plain string, for the tree's processes: pathlib's first use
    costs a process ~100 KiB of private memory (copy-on-write pages of the objects it
    touches), a supervisor's as well as a worker's."""
    return f"{os.fspath(data_dir)}/logs/{'.'.join(path)}.log"


class RotatingLog:
    """An append-only file rotated by size; never raises on write. Paths are plain strings
    (no pathlib: in a worker, its first use costs ~100 KiB of private memory)."""

    def __init__(self, file: Path | str, max_bytes: int, keep: int,
                 mirror: int | None = None) -> None:
        self.file = os.fspath(file)
        self.max_bytes = max_bytes
        self.keep = keep
        self.mirror = mirror  # a descriptor kept pointing at the current file (dup2)
        self.dropped = 0
        self._failing = False
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            try:
                self.fd = os.open(self.file, flags, 0o600)
            except FileNotFoundError:  # the first log of this data directory
                os.makedirs(os.path.dirname(self.file), mode=0o700, exist_ok=True)
                self.fd = os.open(self.file, flags, 0o600)
            self.size = os.fstat(self.fd).st_size
            if self.mirror is not None:
                os.dup2(self.fd, self.mirror)
        except OSError as exc:
            self.fd = -1
            self._fail(exc, 0)

    def write(self, data: bytes) -> None:
        if self.fd < 0:
            self._open()
            if self.fd < 0:
                self.dropped += len(data)
                return
        if self.size and self.size + len(data) > self.max_bytes:
            self._rotate()
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.size += n
            if self._failing:
                self._failing = False
                log.warning("child log %s: writing again (%d bytes dropped so far)",
                            self.file, self.dropped)
        except OSError as exc:
            self._fail(exc, len(view))

    def _fail(self, exc: OSError, lost: int) -> None:
        self.dropped += lost
        if not self._failing:
            self._failing = True
            log.error("child log %s: cannot write, output dropped until it can: %s",
                      self.file, exc)

    def _rotate(self) -> None:
        try:
            if self.keep == 0:
                os.ftruncate(self.fd, 0)
                self.size = 0
                return
            for i in range(self.keep - 1, 0, -1):
                older = f"{self.file}.{i}"
                if os.path.exists(older):
                    os.replace(older, f"{self.file}.{i + 1}")
            os.replace(self.file, f"{self.file}.1")
        except OSError as exc:
            log.error("child log %s: cannot rotate: %s", self.file, exc)
        os.close(self.fd)
        self.fd = -1
        self._open()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1






class _FirstWrite:
    """A worker's ``sys.stdout`` and ``sys.stderr`` until it first writes to either: then
    its log file is opened and made descriptor 1, and both become a line-buffered stream
    over it (see the module doc). Until then nothing is opened: a worker that never prints
    costs no file and no system call."""

    def __init__(self) -> None:
        self.data_dir: Path | str = ""
        self.path: tuple[str, ...] = ()
        self.original: Any = None  # the process's sys.stdout before

    # Worked out at the first write, not as the worker starts: every string a fresh fork
    # makes costs it copy-on-write pages, and most workers never print.
    @property
    def file(self) -> str:
        return log_file(self.data_dir, self.path)

    def write(self, text: str) -> int:
        return int(self.open().write(text))

    def flush(self) -> None:
        pass  # nothing written yet

    def fileno(self) -> int:
        return int(self.open().fileno())

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, buffer...: the real stream
        return getattr(self.open(), name)

    def open(self) -> Any:
        """Open the file, make it descriptor 1 and both streams; return the stream."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self.file, flags, 0o600)
            except FileNotFoundError:  # the first log of this data directory
                os.makedirs(os.path.dirname(self.file), mode=0o700, exist_ok=True)
                fd = os.open(self.file, flags, 0o600)
        except OSError as exc:
            log.error("child %s: cannot open its log %s, its output goes where the node's "
                      "does: %s", "/".join(self.path), self.file, exc)
        else:
            os.dup2(fd, 1)
            os.close(fd)
        out = self.original
        if isinstance(out, io.TextIOWrapper) and out.fileno() == 1:
            out.reconfigure(line_buffering=True)  # a file is block-buffered: `logs -f` now
        else:  # closed, or replaced before the fork
            out = open(1, "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                       errors="backslashreplace", closefd=False)
        sys.stdout = sys.stderr = out
        return out


_first = _FirstWrite()  # made at import: shared by every process forked after


def capture_prints(data_dir: Path | str, path: tuple[str, ...]) -> None:
    """In a worker's process, before its ``init``: its output will go to its log file, from
    its first write to ``sys.stdout`` or ``sys.stderr`` (see the module doc)."""
    _first.original = sys.stdout
    _first.path = path
    _first.data_dir = data_dir
    sys.stdout = sys.stderr = _first  # type: ignore[assignment]


def copy_truncate(file: str, keep: int) -> bool:
    """Rotate a log that its writer keeps open (a worker's: descriptor 1, appending): the
    older files move up, the content is copied to ``file.1``, then ``file`` is truncated;
    the writer's next write lands at its new end (O_APPEND). What it writes between the copy
    and the truncation is lost (logrotate's ``copytruncate``). True if rotated."""
    try:
        if keep > 0:
            for i in range(keep - 1, 0, -1):
                older = f"{file}.{i}"
                if os.path.exists(older):
                    os.replace(older, f"{file}.{i + 1}")
            with open(file, "rb") as src, open(f"{file}.tmp", "wb") as dst:
                os.chmod(dst.fileno(), 0o600)
                while os.sendfile(dst.fileno(), src.fileno(), None, 1 << 20):
                    pass
            os.replace(f"{file}.tmp", f"{file}.1")  # whole, or not there
        os.truncate(file, 0)
        return True
    except OSError as exc:
        log.error("child log %s: cannot rotate: %s", file, exc)
        return False
