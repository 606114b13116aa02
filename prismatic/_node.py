"""A node: the process that owns the root supervisor and serves the tree to the outside.

Start-up order is what keeps forks clean and cheap: the node resolves the app (so every
module the tree needs is imported into the image all processes are forked from), makes sure
the data directory is its own and private (:func:`prepare_data_dir`), takes its lock,
binds its hub address (a second node of the same name fails here), forks the root
supervisor, and only then imports and starts what serves the outside
(:mod:`._node_loop`: ZeroMQ, LMDB, Prometheus). None of those is in the tree's image, so
no ZeroMQ context or LMDB environment can cross a fork, and every fork and every exit in
the tree has fewer pages to copy and free. From then on the node never forks again.

If the root supervisor exits on its own (restart intensity exceeded all the way up), the
node exits with code 1, as an OTP node does when its permanent application's top
supervisor dies.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any, TextIO

from ._address import default_node_name, new_creation
from ._childspec import SupervisorSpec, import_ref
from ._cookie import ensure_cookie
from ._errors import ChildSpecError, EventLogError, NodeError
from ._nodeinfo import NodeInfo, open_hub_socket, set_current
from ._process import fork_child, raise_fd_limit, trim_heap
from ._pubsub_wire import events_address, publish_address
from ._tree_cgroup import enter_cgroup, open_tree_cgroup, start_sweeper
from .supervisors._procs import check_spare_idle
from .supervisors._runtime import SupervisorRuntime
from .supervisors._warm_start import warm_start_path
from .transports._channel import Channel, open_channel_pair

log = logging.getLogger(__name__)

METRICS_PORT_AUTO = -1  # run_node's metrics_port for "any free port" (read back from status)

__all__ = ["run_node", "METRICS_PORT_AUTO", "load_app", "default_data_dir", "control_address",
           "events_address", "publish_address", "prepare_data_dir"]


def default_data_dir(name: str) -> Path:
    return Path(os.environ.get("PRISMATIC_HOME", "~/.prismatic")).expanduser() / name


def control_address(data_dir: Path | str) -> str:
    return f"ipc://{Path(data_dir).resolve()}/control.sock"


def load_app(ref: str) -> SupervisorSpec:
    """Resolve ``module:attr`` to a SupervisorSpec (or a callable returning one)."""
    try:
        obj = import_ref(ref, "--app")
    except ChildSpecError as exc:
        raise NodeError(f"--app {ref!r}: {exc.problem}") from None
    if not isinstance(obj, SupervisorSpec) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise NodeError(f"--app {ref!r}: calling it raised {exc!r}") from None
    if not isinstance(obj, SupervisorSpec):
        raise NodeError(f"--app {ref!r} is {type(obj).__name__}, not a prismatic.SupervisorSpec")
    return obj


def _check_event_log(log_dir: Path, node: str) -> None:
    """Refuse, before any process of the tree exists, an event log the node's writer would
    refuse after the fork (damaged, truncated, another node's). The check reads the file
    with LMDB, so it runs in a throwaway child: the node's own image, which every process of
    the tree shares, stays free of LMDB."""
    if not (log_dir / "data.mdb").is_file():
        return
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe and its exit code
        code = 0
        try:
            os.close(r)
            from .eventlog._store import check_before_start  # noqa: PLC0415 - see above

            check_before_start(str(log_dir), node)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, then _exit
            os.write(w, (str(exc) or repr(exc)).encode()[:8192])
            code = 2
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise NodeError(message or f"event log {log_dir}: the check before start failed "
                                   f"(wait status {status})")


def run_node(spec: SupervisorSpec, *, name: str | None = None,
             data_dir: Path | str | None = None, show_tree: bool = True,
             out: TextIO = sys.stdout, metrics_port: int = 0,
             metrics_host: str = "127.0.0.1", eventlog_max_bytes: int | None = None,
             eventlog_max_age_s: float | None = None, mesh: Any = None,
             config: Any = None, subscriber_hwm: int | None = None) -> int:
    """Run a node until it is told to stop (exit code 0) or its root supervisor dies (1).

    ``metrics_port`` > 0 serves Prometheus metrics on ``http://<metrics_host>:<port>/metrics``
    (0: no HTTP endpoint, the metrics stay readable over the control endpoint;
    :data:`METRICS_PORT_AUTO`: a port the kernel picks, in ``NodeStatus.metrics_url``).
    ``eventlog_max_bytes`` / ``eventlog_max_age_s``: the event log's retention (None: no
    bound; the command line's default is 1 GiB).
    ``mesh`` (a :class:`prismatic.mesh.MeshSettings`) makes the node a cluster member; its
    secret is checked here, before anything starts.
    ``config`` (a :class:`~._config.NodeConfig` whose tree is ``spec``): ``prismatic
    reload`` re-reads its file and applies the difference (see :mod:`._config_reload`).
    ``subscriber_hwm``: pub/sub messages queued per subscriber before the node drops for it
    (None: the default, 1000; 0: unbounded; ``docs/pubsub.md``).
    """
    name = name or default_node_name()
    if (why := check_spare_idle()) is not None:
        raise NodeError(why)
    if mesh is not None:
        from .mesh import check_settings  # noqa: PLC0415 - only a clustered node needs it

        check_settings(name, mesh)  # a bad secret, address or name: fail before the fork
    data = Path(data_dir) if data_dir is not None else default_data_dir(name)
    try:
        prepare_data_dir(data)
        lock = os.fdopen(os.open(data / "node.lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                                 DATA_FILE_MODE), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NodeError(f"another node is running with data directory {data}") from None
        try:
            cookie = ensure_cookie(data)
        except BaseException:
            lock.close()
            raise
    except OSError as exc:  # read-only filesystem, another user's directory...
        raise NodeError(f"data directory {data}: cannot use {exc.filename or data}: "
                        f"{exc.strerror}") from None
    _check_event_log(data / "eventlog", name)  # a log the node would refuse: before the tree
    cgroup = open_tree_cgroup(data)  # nothing of the tree outlives the node (_tree_cgroup)
    if cgroup is not None:
        start_sweeper(cgroup)
        enter_cgroup(cgroup)
    hub_sock = open_hub_socket(name)  # before the fork: a second node of this name fails here
    # inherited by every process of the tree; a new creation per start (see _address)
    info = NodeInfo(name, data.resolve(), new_creation())
    str(info.data_dir)  # cached in the Path now, not computed (and copied) in every worker
    set_current(info)
    # The children's start path run once here rather than first in each of them (see
    # supervisors/_warm_start.py). Then fork the root before any ZeroMQ context exists in
    # this process; with the heap's free pages given back first, so no process of the tree
    # maps them (see _process). The garbage here is the warm-up's, all of it young: a full
    # collection would also walk every object the imports made (~8 ms of each node's start,
    # for ~16 more objects freed, and no page).
    warm_start_path(name, info.creation)
    trim_heap(generation=1)
    mine, theirs = open_channel_pair()
    root_pid = fork_child((theirs.fileno(),), lambda: _root_main(spec, theirs, name),
                          "prism-sup:root")
    theirs.close()
    # A descriptor per process it watches or talks to, and libzmq aborts the whole process
    # when it cannot get one. Only in the node (after the tree's fork): its processes keep
    # the limit they had.
    raise_fd_limit("node")
    try:
        serve = _import_loop()
        return serve(name, data, mine, root_pid, show_tree, out, cookie, hub_sock,
                     metrics_port, metrics_host, eventlog_max_bytes, eventlog_max_age_s, mesh,
                     config, subscriber_hwm)
    except EventLogError as exc:  # a log that is not ours, corrupt, or newer: never touch it
        os.kill(root_pid, signal.SIGKILL)  # the tree must not run without its node
        os.waitpid(root_pid, 0)
        raise NodeError(str(exc)) from None
    finally:
        hub_sock.close()
        lock.close()


def _import_loop() -> Any:
    """:func:`._node_loop.serve`, imported after the fork (by design: see the module doc)
    with the garbage collector paused, then everything the node holds so far frozen. The
    import makes ~25,000 objects (ZeroMQ, LMDB, Prometheus, asyncio, the loop's modules)
    that live as long as the node: the ~30 young collections it triggered and the full one
    once the tree has started (:mod:`._node_loop`) walked them to free ~400 (~12 ms of CPU
    in every node's start), and each later full collection would walk them again. Those
    ~400 stay, once, frozen with the rest."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        from ._node_loop import serve  # noqa: PLC0415 - after the fork, by design
    finally:
        if enabled:
            gc.enable()
    gc.freeze()
    return serve


DATA_DIR_MODE = 0o700
DATA_FILE_MODE = 0o600


def prepare_data_dir(data: Path) -> None:
    """Create the data directory 0700 (its parents too, if missing), or check an existing
    one: it holds the event log, the cookie and the sockets, so no other user may read it.

    An existing directory of the node's user that others may enter is tightened to 0700,
    with a warning (older versions created it 0755); one owned by another user, or a
    shared directory (sticky bit, as /tmp), is refused: it is not the node's to change."""
    try:
        data.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=False)
        os.chmod(data, DATA_DIR_MODE)  # mkdir's mode is masked by the umask
        return
    except FileExistsError:
        pass
    st = os.stat(data)
    if not stat.S_ISDIR(st.st_mode):
        raise NodeError(f"data directory {data} is not a directory")
    if st.st_uid != os.geteuid():
        raise NodeError(f"data directory {data} belongs to uid {st.st_uid}, not to this "
                        f"node's uid {os.geteuid()}: use a directory of your own (--data-dir)")
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_ISVTX:
        raise NodeError(f"data directory {data} is a shared directory (mode {mode:04o}, "
                        "sticky): use a directory of its own (--data-dir)")
    if mode & 0o077:
        os.chmod(data, DATA_DIR_MODE)
        log.warning("node: data directory %s was mode %04o, now %04o (it holds the event "
                    "log, the cookie and the sockets)", data, mode, DATA_DIR_MODE)
    if not os.access(data, os.W_OK | os.X_OK):
        raise NodeError(f"data directory {data} is not writable by this node's user")


def _root_main(spec: SupervisorSpec, channel: Channel, name: str) -> int:
    # The root leads a process group of its own (as every process of the tree does, see
    # supervisors/_procs.py): a signal sent to the node's group (Ctrl-C in a terminal,
    # `kill -TERM -PGID`) reaches only the node, which stops the tree in order.
    os.setpgid(0, 0)
    return SupervisorRuntime(spec, channel, (), name).run()
