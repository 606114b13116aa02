"""Opening, validating and sharing the LMDB environment behind an event log.

Protocol: an existing ``data.mdb`` is first checked page by page without LMDB
(:mod:`._verify`: a truncated or damaged file would crash or be written through by LMDB),
then validated through a *read-only, lock-free* LMDB handle that cannot create or modify any
file; only a valid log (or an empty or missing directory, which becomes a new log) is then
opened for writing. Anything else raises :class:`EventLogFormatError` naming the path and
leaves every byte untouched. A writer keeps the directory 0700 and its files 0600 (only the
node's user may read events) and refuses an environment that would not sync each commit.

LMDB forbids opening one environment twice in a process, so open handles are shared per
real path and per process (read-only handles join a writer's environment). An environment
must be opened *after* any ``fork()``: a child must never use one inherited from its parent
(its locks and memory map belong to the parent); :meth:`LogStore.check_pid` enforces it.

Growing the map (``set_mapsize``) is only legal with no transaction open in the process,
so every read transaction holds :class:`MapResizeLock` shared and growth holds it exclusive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Iterator

import lmdb
import msgspec

from prismatic._errors import EventLogError, EventLogFormatError
from prismatic.eventlog._record import FORMAT_VERSION, MAGIC, EventRecord
from prismatic.eventlog._verify import check_at_open

__all__ = ["LogStore", "MapResizeLock", "check_before_start", "open_store", "release_store"]

log = logging.getLogger(__name__)

MAX_DBS = 8
DB_NAMES = (b"meta", b"events", b"by_time", b"by_topic", b"by_source")
WRITER_LOCK_FILE = "writer.lock"
DIR_MODE = 0o700
FILE_MODE = 0o600


class MapResizeLock:
    """A writer-preferring readers/writer lock: transactions shared, map growth exclusive."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    def acquire_shared(self) -> None:
        with self._cond:
            while self._exclusive or self._waiting_exclusive:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_exclusive += 1
            while self._exclusive or self._readers:
                self._cond.wait()
            self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class LogStore:
    """One LMDB environment of one log in one process, shared by that process's handles.

    Invariants: ``pid`` is the process that opened ``env``; at most one store per real
    path per process; ``writable`` stores hold the directory's ``writer.lock``.
    """

    def __init__(self, path: str, env: lmdb.Environment, writable: bool, node: str) -> None:
        self.path = path
        self.env = env
        self.writable = writable
        self.node = node
        self.pid = os.getpid()
        self.refcount = 1
        self.resize_lock = MapResizeLock()
        self.meta, self.events, self.by_time, self.by_topic, self.by_source = (
            env.open_db(name, create=False) for name in DB_NAMES
        )
        # Notified by an in-process writer after each commit, so followers need not poll.
        self.commit_cond = threading.Condition(threading.Lock())
        self.committed_seq = 0
        self.writer_lock_fd: int | None = None

    def check_pid(self) -> None:
        if os.getpid() != self.pid:
            raise EventLogError(
                f"event log {self.path} was opened in pid {self.pid} and used in pid "
                f"{os.getpid()}: open the log after fork(), never before"
            )

    @contextlib.contextmanager
    def read_txn(self) -> Iterator[lmdb.Transaction[bytes]]:
        """A short read transaction; adopts a map grown by another process if needed."""
        self.check_pid()
        self.resize_lock.acquire_shared()
        try:
            try:
                txn = self.env.begin(buffers=False)
            except lmdb.MapResizedError:
                self.resize_lock.release_shared()
                with self.resize_lock.exclusive():
                    # 0 adopts the size the writing process recorded in the file.
                    self.env.set_mapsize(0)
                self.resize_lock.acquire_shared()
                txn = self.env.begin(buffers=False)
            try:
                yield txn
            finally:
                txn.abort()
        except lmdb.CorruptedError as exc:
            raise EventLogFormatError(f"event log {self.path} is corrupted: {exc}") from exc
        finally:
            self.resize_lock.release_shared()

    def grow_map(self, new_size: int) -> None:
        with self.resize_lock.exclusive():
            self.env.set_mapsize(new_size)


_stores: dict[str, LogStore] = {}
_stores_lock = threading.Lock()


def _format_error(path: str, problem: str) -> EventLogFormatError:
    return EventLogFormatError(f"{path}: {problem} (left untouched)")


def _read_meta(path: str, env: lmdb.Environment) -> dict[bytes, bytes]:
    with env.begin(buffers=False) as txn:
        for name in DB_NAMES:
            try:
                env.open_db(name, txn=txn, create=False)
            except lmdb.NotFoundError:
                raise _format_error(
                    path, f"not a Prismatic event log (LMDB environment without DB {name!r})"
                ) from None
        meta_db = env.open_db(b"meta", txn=txn, create=False)
        meta = {bytes(k): bytes(v) for k, v in txn.cursor(meta_db)}
        events_db = env.open_db(b"events", txn=txn, create=False)
        cursor = txn.cursor(events_db)
        # Decoding the newest and oldest record catches gross corruption cheaply.
        for positioned in (cursor.last(), cursor.first()):
            if positioned:
                try:
                    msgspec.msgpack.decode(cursor.value(), type=EventRecord)
                except (ValueError, RecursionError) as exc:  # DecodeError, bad UTF-8...
                    raise _format_error(
                        path, f"corrupted record at key {cursor.key()!r}: {exc}"
                    ) from None
    return meta


def _validate_meta(path: str, meta: dict[bytes, bytes]) -> str:
    if meta.get(b"magic") != MAGIC:
        raise _format_error(path, f"not a Prismatic event log (magic={meta.get(b'magic')!r})")
    raw_version = meta.get(b"format_version", b"")
    try:
        version = int(raw_version)
    except ValueError:
        raise _format_error(path, f"format_version={raw_version!r} is not an integer") from None
    if version > FORMAT_VERSION:
        raise _format_error(
            path, f"format_version={version} is newer than this code reads ({FORMAT_VERSION})"
        )
    return meta.get(b"node", b"").decode()


def _check_existing(path: str) -> str:
    """Validate a directory holding data.mdb without creating or writing any file."""
    try:
        env = lmdb.open(path, readonly=True, lock=False, max_dbs=MAX_DBS, create=False)
    except lmdb.Error as exc:
        raise _format_error(path, f"not a valid LMDB environment: {exc}") from exc
    try:
        return _validate_meta(path, _read_meta(path, env))
    except lmdb.Error as exc:
        raise _format_error(path, f"unreadable or corrupted: {exc}") from exc
    finally:
        env.close()


def _writer_is_running(path: str) -> bool:
    """Whether another process holds the log's writer lock (without creating the file)."""
    try:
        fd = os.open(os.path.join(path, WRITER_LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock
    return False


def _check_file(path: str, readonly: bool) -> None:
    """Check ``data.mdb`` with pread before LMDB maps it (see :mod:`._verify`). A file that
    another process is writing can only have its meta pages and size checked: its pages
    change under the reader."""
    if readonly and _writer_is_running(path):
        check_at_open(path, structure=False)
        return
    try:
        check_at_open(path)
    except EventLogFormatError:
        if not _writer_is_running(path):
            raise
        if not readonly:  # a writer started meanwhile: what the page walk saw was its work
            raise EventLogError(
                f"{path}: event log already open for writing by another process"
            ) from None


def check_before_start(path: str, node: str) -> None:
    """What the node's writer would refuse at open, checked before the node starts its tree
    (nothing is created or written): a truncated or damaged ``data.mdb``, or a log of
    another node. Nothing to check where there is no log yet."""
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        return
    _check_file(path, readonly=False)
    stored_node = _check_existing(path)
    if stored_node != node:
        raise EventLogError(f"{path}: event log belongs to node {stored_node!r}, not "
                            f"node={node!r}")


def _tighten_modes(path: str) -> None:
    """Make the log's directory 0700 and its files 0600 (only the node's user reads the
    events); a log written by an older version may have been left readable by others."""
    uid = os.geteuid()
    for name, mode in ((".", DIR_MODE), ("data.mdb", FILE_MODE), ("lock.mdb", FILE_MODE),
                       (WRITER_LOCK_FILE, FILE_MODE)):
        target = os.path.normpath(os.path.join(path, name))
        try:
            st = os.stat(target)
        except FileNotFoundError:
            continue
        if st.st_uid == uid and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(target, mode)
            log.warning("event log: %s was mode %04o, now %04o (others must not read events)",
                        target, stat.S_IMODE(st.st_mode), mode)


def _acquire_writer_lock(path: str) -> int:
    fd = os.open(os.path.join(path, WRITER_LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise EventLogError(
                f"{path}: event log already open for writing by another process"
            ) from None
        raise
    return fd


def _open_new_store(path: str, *, node: str, readonly: bool, map_size: int) -> LogStore:
    try:
        return _open_environment(path, node=node, readonly=readonly, map_size=map_size)
    except OSError as exc:  # unwritable or unreadable directory: one line, not a traceback
        where = exc.filename or path
        raise EventLogError(f"event log {path}: cannot use {where}: {exc.strerror}") from None


def _check_durable(path: str, env: lmdb.Environment) -> None:
    """Acknowledged means synced: refuse an environment that would not sync each commit."""
    flags = env.flags()
    if not (flags["sync"] and flags["metasync"]) or flags.get("map_async"):
        raise EventLogError(f"event log {path}: environment opened without synced commits "
                            f"({flags}); acknowledgements would not be durable")


def _open_environment(path: str, *, node: str, readonly: bool, map_size: int) -> LogStore:
    fresh = False
    if not os.path.exists(path):
        if readonly:
            raise EventLogFormatError(f"{path}: no event log here (missing directory)")
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        fresh = True
    elif not os.path.isdir(path):
        raise _format_error(path, "not a directory, so not a Prismatic event log")
    else:
        entries = os.listdir(path)
        if not entries:
            if readonly:
                raise EventLogFormatError(f"{path}: no event log here (empty directory)")
            fresh = True
        elif "data.mdb" not in entries:
            shown = ", ".join(sorted(entries)[:5])
            raise _format_error(path, f"not a Prismatic event log (no data.mdb; holds {shown})")
        else:
            _check_file(path, readonly)
            stored_node = _check_existing(path)
            if not readonly and stored_node != node:
                raise EventLogError(
                    f"{path}: event log belongs to node {stored_node!r}, not node={node!r}"
                )
            node = stored_node
    if readonly:
        try:
            env = lmdb.open(path, readonly=True, max_dbs=MAX_DBS, create=False)
        except lmdb.Error as exc:
            raise _format_error(path, f"cannot open read-only: {exc}") from exc
        return LogStore(path, env, False, node)
    _tighten_modes(path)
    lock_fd = _acquire_writer_lock(path)
    try:
        try:
            env = lmdb.open(path, map_size=map_size, max_dbs=MAX_DBS, sync=True,
                            metasync=True, mode=FILE_MODE)
        except lmdb.Error as exc:  # EACCES, EROFS...: LMDB says which in its message
            raise EventLogError(f"event log {path}: cannot open it for writing: {exc}") from None
        try:
            _check_durable(path, env)
        except EventLogError:
            env.close()
            raise
        if fresh:
            with env.begin(write=True) as txn:
                for name in DB_NAMES:
                    env.open_db(name, txn=txn)
                meta = env.open_db(b"meta", txn=txn)
                txn.put(b"magic", MAGIC, db=meta)
                txn.put(b"format_version", str(FORMAT_VERSION).encode(), db=meta)
                txn.put(b"node", node.encode(), db=meta)
        env.reader_check()  # clear reader slots left by killed processes
        store = LogStore(path, env, True, node)
    except BaseException:
        os.close(lock_fd)
        raise
    store.writer_lock_fd = lock_fd
    return store


def open_store(path: str, *, node: str, readonly: bool, map_size: int) -> LogStore:
    """Open (or join this process's already open) store of the log at ``path``."""
    real = os.path.realpath(path)
    with _stores_lock:
        existing = _stores.get(real)
        if existing is not None and existing.pid != os.getpid():
            # Inherited through fork: not ours to use or close.
            del _stores[real]
            existing = None
        if existing is not None:
            if readonly:
                existing.refcount += 1
                return existing
            raise EventLogError(f"{path}: event log already open in this process")
        store = _open_new_store(real, node=node, readonly=readonly, map_size=map_size)
        _stores[real] = store
        return store


def release_store(store: LogStore) -> None:
    """Drop one reference; the last one closes the environment and the writer lock."""
    with _stores_lock:
        store.refcount -= 1
        if store.refcount:
            return
        if _stores.get(store.path) is store:
            del _stores[store.path]
    if store.pid != os.getpid():
        return
    store.env.close()
    if store.writer_lock_fd is not None:
        os.close(store.writer_lock_fd)
        store.writer_lock_fd = None
