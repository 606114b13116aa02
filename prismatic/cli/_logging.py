"""Structured logging for the entry points (``prismatic node start``, ``python -m
prismatic.node``); nothing configures logging at import time.

Each line names the node, the pid and the supervisor path where known: a record's ``path``
extra if the emitter gave one, else the process name the framework gives every supervisor
and worker (``prism-sup:<path>``), read once per process. Formats: ``text`` (one line) or
``json`` (one object per line). The destination is stderr by default or ``--log-file``,
opened with ``O_APPEND`` and reopened in each forked process (fork closes inherited
descriptors, see :mod:`._process`), so every process appends whole lines to the same file;
reopened on SIGHUP and when the file was renamed (log rotation).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import msgspec

from .._config import LogFormat

__all__ = ["setup_logging"]

_TEXT = "%(asctime)s %(levelname)s %(node)s pid=%(pid)d path=%(sup_path)s %(name)s: %(message)s"


class _Context(logging.Filter):
    """Adds ``node``, ``pid`` and ``sup_path`` to every record."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node
        self._pid = -1
        self._path = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        pid = os.getpid()
        if pid != self._pid:  # a forked process: learn its place in the tree once
            self._pid, self._path = pid, _process_path()
        record.node = self.node
        record.pid = pid
        record.sup_path = getattr(record, "path", None) or self._path
        return True


def _process_path() -> str:
    try:
        with open("/proc/self/comm") as f:
            comm = f.read().strip()
    except OSError:
        return "-"
    kind, sep, path = comm.partition(":")
    return path if sep and kind.startswith("prism") else "node"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = record.__dict__  # node, pid and sup_path: set by _Context, as %(node)s reads them
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
               + f".{int(record.msecs):03d}", "level": record.levelname,
               "node": ctx["node"], "pid": ctx["pid"], "path": ctx["sup_path"],
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # msgspec, not json: it is in every process's image already (see prismatic._node)
        return msgspec.json.encode(doc).decode()


class _AppendFileHandler(logging.Handler):
    """Appends whole lines to a file; reopens after fork (the old fd was closed there), on
    :meth:`reopen` (the node's SIGHUP) and, as ``WatchedFileHandler`` does, when the path no
    longer names the open file (logrotate renamed it): every process of the tree follows a
    rotation, not only the one that got the signal."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._pid = -1
        self._fd = -1
        self._ident: tuple[int, int] = (-1, -1)

    def reopen(self) -> None:
        self._pid = -1  # the next line opens the path again

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._pid == os.getpid() and self._moved():
                os.close(self._fd)  # ours (opened in this process): safe to close
                self._pid = -1
            if self._pid != os.getpid():
                # Never close an inherited number: fork_child closed it, it may be reused.
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                   | os.O_CLOEXEC, 0o644)
                st = os.fstat(self._fd)
                self._ident = (st.st_dev, st.st_ino)
                self._pid = os.getpid()
            os.write(self._fd, (self.format(record) + "\n").encode())
        except Exception:  # noqa: BLE001 - logging's own contract: report, don't raise
            self.handleError(record)

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ident


def setup_logging(node: str, fmt: LogFormat = LogFormat.TEXT, file: str | None = None,
                  level: int | str = logging.INFO) -> None:
    """Configure the root logger for a node (``level``: a number or a name like ``"INFO"``).
    With ``file``, SIGHUP makes this process reopen it (logrotate's ``postrotate``)."""
    handler: logging.Handler = (_AppendFileHandler(Path(file)) if file
                                else logging.StreamHandler(sys.stderr))
    handler.addFilter(_Context(node))
    handler.setFormatter(_JsonFormatter() if fmt is LogFormat.JSON else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    if isinstance(handler, _AppendFileHandler):
        reopen = handler.reopen
        signal.signal(signal.SIGHUP, lambda _sig, _frame: reopen())
