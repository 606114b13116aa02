"""A child's captured output: one log file per child in the data directory, rotated by size.

A program child's stdout and stderr are pipes its supervisor reads (never the node's
terminal); what arrives is appended, as it arrives, to ``<data_dir>/logs/<path>.log``,
where ``<path>`` is the child's tree path with ``.`` between ids (ids cannot contain a
dot, so the name maps back to one path). When a write would take the file past
``max_bytes`` it is rotated first: ``x.log`` becomes ``x.log.1``, ``x.log.1`` becomes
``x.log.2``, and so on; ``keep`` old files are kept (0: the file is truncated instead).

A Python worker writes its own: descriptor 1 becomes its file (appending), ``sys.stdout``
is line-buffered over it and ``sys.stderr`` is the same stream, so ``print()``,
``print(file=sys.stderr)``, an uncaught exception's traceback and what a C extension or a
subprocess writes to stdout all land there. Descriptor 2 is left as it was: the tree's
logging handlers write there (the node's stderr, or its ``--log-file``), so a worker's log
lines stay with the node's. No pipe, no Python wrapper, and no ``open`` on the restart's
path: a spare, while it waits (:func:`prepare_prints`), points descriptor 1 at an anonymous
file (``O_TMPFILE``); becoming a worker (:func:`capture_prints`) only names its file; once
the worker is ready, or its ``init`` ended it (:func:`settle_prints`), what ``init``
printed is copied to the file and the file becomes descriptor 1. A child forked for its
spec (no spare) opens its file before ``init``. Measured: the same restart latency within
noise, ~0.15-0.25 MiB more private memory per idle worker (the pages of the code that does
this). The worker does not rotate its file: its supervisor looks at its workers' log sizes
every ``WORKER_LOG_CHECK_S`` seconds and rotates one past ``WORKER_LOG_MAX_BYTES`` by
:func:`copy_truncate` (lines written during the copy are lost, as with logrotate's
``copytruncate``).

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

__all__ = ["RotatingLog", "log_path", "capture_prints", "prepare_prints", "unprepare_prints",
           "settle_prints",
           "copy_truncate",
           "WORKER_LOG_MAX_BYTES", "WORKER_LOG_KEEP", "WORKER_LOG_CHECK_S"]

WORKER_LOG_MAX_BYTES = 10 * 1024 * 1024  # a Program's defaults
WORKER_LOG_KEEP = 5
WORKER_LOG_CHECK_S = 5.0  # how often a supervisor looks at its workers' log sizes

log = logging.getLogger(__name__)


def log_path(data_dir: Path | str, path: tuple[str, ...] | str) -> Path:
    """Where the output of the child at ``path`` (a tuple of ids, or ``a/b``) goes."""
    parts = path if isinstance(path, tuple) else tuple(p for p in path.split("/") if p)
    return Path(data_dir) / "logs" / (".".join(parts) + ".log")


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






class _Prints:
    """This process's print capture (a worker's): the logs prefix, the spool a spare points
    descriptor 1 at until it knows its file, and that file; ``pid``, the process they are
    of (a child forked later inherits the values, not the descriptors); what descriptor 1
    and the streams were before (a spare that becomes a supervisor gets them back)."""

    pid = 0
    prefix = ""
    spool = -1
    file = ""
    saved = -1
    streams: tuple[object, object] = (None, None)


_prints = _Prints()
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def prepare_prints(data_dir: Path | str) -> None:
    """In a spare, while it waits: sys.stdout line-buffered, sys.stderr the same stream,
    and descriptor 1 an anonymous file (``O_TMPFILE``) that holds what ``init`` prints
    until :func:`settle_prints` moves it to the worker's own file, once ready."""
    _prints.pid = os.getpid()
    _prints.prefix = f"{os.fspath(data_dir)}/logs/"
    _prints.streams = (sys.stdout, sys.stderr)
    sys.stdout = sys.stderr = _stdout()
    try:
        os.makedirs(_prints.prefix, mode=0o700, exist_ok=True)
        spool = os.open(_prints.prefix, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        _prints.saved = os.dup(1)
    except OSError:
        return  # no O_TMPFILE here: capture_prints opens the file itself
    os.dup2(spool, 1)
    _prints.spool = spool


def unprepare_prints() -> None:
    """A prepared spare that becomes a supervisor: its descriptor 1 and streams back."""
    if _prints.pid != os.getpid():
        return
    if _prints.spool >= 0:
        os.dup2(_prints.saved, 1)
        os.close(_prints.saved)
        os.close(_prints.spool)
    sys.stdout, sys.stderr = _prints.streams  # type: ignore[assignment]
    _prints.pid, _prints.prefix, _prints.spool, _prints.saved = 0, "", -1, -1


def _stdout() -> io.TextIOWrapper:
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper) and out.fileno() == 1:
        out.reconfigure(line_buffering=True)  # a file is block-buffered: `logs -f` at once
        return out
    # closed, or replaced before the fork
    return open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                closefd=False)


def capture_prints(data_dir: Path | str, path: tuple[str, ...]) -> None:
    """In a worker's process, before its ``init``: its output goes to its log file (see the
    module doc). A spare prepared for it: only the file's name now (its output is spooled
    until :func:`settle_prints`); else the file is opened and made descriptor 1 at once."""
    if _prints.pid != os.getpid():  # not prepared here (values a fork inherited)
        _prints.pid, _prints.spool, _prints.saved = os.getpid(), -1, -1
        _prints.prefix = f"{os.fspath(data_dir)}/logs/"
        sys.stdout = sys.stderr = _stdout()
    _prints.file = _prints.prefix + ".".join(path) + ".log"
    if _prints.spool < 0:
        fd = _open_log(path)
        if fd >= 0:
            os.dup2(fd, 1)
            os.close(fd)


def settle_prints(path: tuple[str, ...]) -> None:
    """Once the worker is ready (or its ``init`` ended it): what it printed so far moves
    from the spool to its log file, which becomes descriptor 1. Off the restart's path."""
    spool = _prints.spool
    if spool < 0 or not _prints.file or _prints.pid != os.getpid():
        return
    _prints.spool = -1
    os.close(_prints.saved)
    _prints.saved = -1
    fd = _open_log(path)
    try:
        if fd >= 0:
            sys.stdout.flush()
            offset = 0
            while chunk := os.pread(spool, 1 << 16, offset):  # (sendfile: not to O_APPEND)
                offset += len(chunk)
                while chunk:
                    chunk = chunk[os.write(fd, chunk):]
            os.dup2(fd, 1)
    except OSError as exc:  # never the worker's end: its output stays where it was
        log.error("child %s: moving its output to %s failed: %s", "/".join(path),
                  _prints.file, exc)
    finally:
        if fd >= 0:
            os.close(fd)
        os.close(spool)


def _open_log(path: tuple[str, ...]) -> int:
    try:
        try:
            return os.open(_prints.file, _FLAGS, 0o600)
        except FileNotFoundError:  # the first log of this data directory
            os.makedirs(_prints.prefix, mode=0o700, exist_ok=True)
            return os.open(_prints.file, _FLAGS, 0o600)
    except OSError as exc:
        log.error("child %s: cannot open its log %s, its output is not captured: %s",
                  "/".join(path), _prints.file, exc)
        return -1

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
            with open(file, "rb") as src, open(f"{file}.1", "wb") as dst:
                os.chmod(dst.fileno(), 0o600)
                while os.sendfile(dst.fileno(), src.fileno(), None, 1 << 20):
                    pass
        os.truncate(file, 0)
        return True
    except OSError as exc:
        log.error("child log %s: cannot rotate: %s", file, exc)
        return False
