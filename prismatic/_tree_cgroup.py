"""Nothing of a node's tree outlives the node: a cgroup per node, and its sweeper.

Inside the tree, PDEATHSIG, process groups and child subreapers (:mod:`._process`) make
every process die with its supervisor: each relies on a living ancestor. When the node
itself is SIGKILLed, every supervisor dies at once, and a process that left its worker's
process group (``setsid``, a daemon's double fork) is reparented past them all, to init.
So a node that can create a cgroup (v2) does three things before it forks its tree:

* **A cgroup per node.** It creates ``prismatic-<hash of its data directory>-<its pid>``
  below its own cgroup and moves itself in: every process of the tree is forked into it and stays
  there however it detaches (leaving a cgroup takes write access to another cgroup's
  ``cgroup.procs``, which only root has by default).
* **The sweeper.** A child of the node forked first, outside the cgroup, in a session of
  its own (no signal to the node's group reaches it) and without PDEATHSIG, waits for the
  node to exit (a pidfd), whatever the way, then kills every process left in the cgroup
  (``cgroup.kill``), waits for it to empty, removes it and exits. It stays the node's
  child while the node lives, so it counts among the node's descendants (as the chaos
  runner's orphan check wants every process of a node to be).
* **The next start on the same data directory** (holding its lock: the old node is dead)
  kills whatever is still in its predecessors' cgroups (say a sweeper was killed too), logs
  how many, and removes them, before its own tree starts. Each start has a cgroup of its
  own, so a predecessor's sweeper still at work never touches the new tree. Any start also
  removes the *empty* cgroups of dead nodes of other data directories (a temporary one never
  sees a next start), and cgroups a process of the tree made below its node's are killed and
  removed with it.

Where the node cannot create a cgroup (no cgroup v2, or not root and no delegated subtree,
such as systemd gives a user's session), it runs without all three and says so once in its
log: then the guarantees of :mod:`._process` hold while any supervisor of a process lives,
and a process that left its worker's process group survives a SIGKILL of the node itself.

Imported before the tree forks: nothing heavy here (no hashlib: the name's hash is FNV-1a).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from pathlib import Path

__all__ = ["open_tree_cgroup", "enter_cgroup", "kill_cgroup", "start_sweeper",
           "tree_cgroups", "own_cgroup_dir"]

log = logging.getLogger(__name__)
EMPTY_WAIT_S = 5.0  # killed processes leave the cgroup within ms; this bounds a stuck one


def own_cgroup_dir() -> Path | None:
    """This process's cgroup v2 directory, or None without a cgroup v2 mount."""
    mount = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                head, _, tail = line.partition(" - ")
                if tail.split(" ", 1)[0] == "cgroup2":
                    mount = head.split()[4]
                    break
        with open("/proc/self/cgroup") as f:
            own = next((ln.strip()[3:] for ln in f if ln.startswith("0::")), None)
    except OSError:
        return None
    if mount is None or own is None:
        return None
    return Path(mount) / own.lstrip("/")


def _fnv1a(text: str) -> str:
    h = 0xcbf29ce484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def tree_cgroups(data_dir: Path) -> tuple[Path, str] | None:
    """The cgroup directory the nodes of ``data_dir`` make theirs in, and the prefix of
    their names (one per start); None: no cgroup v2."""
    base = own_cgroup_dir()
    return None if base is None else (base, f"prismatic-{_fnv1a(str(data_dir.resolve()))}-")


def open_tree_cgroup(data_dir: Path) -> Path | None:
    """This start's cgroup, created, once what dead predecessors left in theirs is killed.
    None (logged) where no cgroup can be created. Call only while holding the data
    directory's lock (every other node of ``data_dir`` is dead)."""
    where = tree_cgroups(data_dir)
    if where is None:
        log.info("no cgroup v2 here: a process that leaves its worker's process group "
                 "would survive a SIGKILL of this node")
        return None
    base, prefix = where
    for old in base.glob(prefix + "*"):
        left = kill_cgroup(old)
        if left:
            log.warning("killed %d process(es) a dead predecessor of this node left "
                        "behind (cgroup %s)", left, old)
        _remove(old)
    _remove_abandoned(base)
    path = base / f"{prefix}{os.getpid()}"
    try:
        path.mkdir()
    except OSError as exc:
        log.info("cannot create a cgroup for this node's tree (%s: %s): a process that "
                 "leaves its worker's process group would survive a SIGKILL of this node",
                 path, exc.strerror)
        return None
    return path


def _remove_abandoned(base: Path) -> None:
    """Remove the empty cgroups of dead nodes of any data directory: one whose sweeper was
    killed too is otherwise left until a node starts on its data directory again, which for
    a temporary one (a test's, a chaos run's) is never, and they pile up. Only an empty one
    whose node (the pid in its name) is gone: a live node's holds the node itself."""
    for old in base.glob("prismatic-*-*"):
        try:
            pid = int(old.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
            continue  # its node (or a process of that pid) lives: not ours to judge
        except ValueError:
            continue  # not a name this module makes
        except ProcessLookupError:
            pass
        except OSError:
            continue  # EPERM: a live process of another user
        if _procs(old):
            continue  # its sweeper, or the next start on its data directory, kills those
        for group in _subtree(old):
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                break  # busy after all: left to its own data directory's next start
        else:
            log.info("removed the empty cgroup %s a dead node left", old)


def enter_cgroup(path: Path) -> bool:
    """Move this process into ``path`` (what it forks from then on is in it)."""
    try:
        (path / "cgroup.procs").write_text(f"{os.getpid()}\n")
        return True
    except OSError as exc:
        log.warning("cannot enter the tree's cgroup %s (%s): running without it", path,
                    exc.strerror)
        return False


def _subtree(path: Path) -> list[Path]:
    """``path`` and every cgroup below it, deepest first (the order they can be removed in):
    a process of the tree may have made cgroups of its own (a nested node does)."""
    found: list[Path] = []
    for top, dirs, _ in os.walk(path):
        found.extend(Path(top) / d for d in dirs)
    return sorted(found, key=lambda d: len(d.parts), reverse=True) + [path]


def _procs(path: Path) -> list[int]:
    """Every process in ``path`` or a cgroup below it (``cgroup.procs`` lists only its own)."""
    pids: list[int] = []
    for group in _subtree(path):
        try:
            pids.extend(int(x) for x in (group / "cgroup.procs").read_text().split())
        except OSError:
            pass
    return pids


def kill_cgroup(path: Path, wait: float = EMPTY_WAIT_S) -> int:
    """SIGKILL every process in ``path`` and the cgroups below it and wait (up to ``wait``
    s) until they are empty; how many there were. ``cgroup.kill`` takes them all at once,
    forks in flight included; without it (kernels before 5.14) each is killed, again until
    none is left."""
    found = _procs(path)
    if not found:
        return 0
    deadline = time.monotonic() + wait
    kill_file = path / "cgroup.kill"
    while (left := _procs(path)) and time.monotonic() < deadline:
        try:
            kill_file.write_text("1\n")
        except OSError:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(0.005)
    if left:
        log.error("processes %s of cgroup %s did not die within %.0fs", left, path, wait)
    return len(found)


def start_sweeper(path: Path) -> int:
    """Fork the sweeper of cgroup ``path`` (see the module doc); its pid. Call before this
    process enters the cgroup."""
    pidfd = os.pidfd_open(os.getpid())
    sweeper = os.fork()
    if sweeper == 0:  # pragma: no cover - runs in the sweeper
        try:
            os.setsid()  # out of the node's session: its group's signals miss us
            _sweep_after(pidfd, path)
        finally:
            os._exit(0)
    os.close(pidfd)
    return sweeper


def _sweep_after(pidfd: int, path: Path) -> None:
    """In the sweeper: wait for the node to exit, then empty and remove its cgroup. Keeps
    stdin/stdout/stderr (its log lines go where the node's go) and the node's pidfd."""
    os.closerange(3, pidfd)
    os.closerange(pidfd + 1, 1 << 20)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from ._process import set_process_name  # noqa: PLC0415 - loaded by the node already

        set_process_name("prism-sweeper")
        select.select([pidfd], [], [])  # readable once the node has exited
        left = kill_cgroup(path)
        if left:
            log.warning("the node is gone: killed %d process(es) of its tree left behind "
                        "(cgroup %s)", left, path)
        _remove(path)
    except BaseException:  # noqa: BLE001 - the sweeper ends here, whatever happened
        log.exception("the sweeper of cgroup %s failed", path)
    os._exit(0)


def _remove(path: Path) -> None:
    """Remove ``path`` and the cgroups below it (a cgroup with a child cannot be removed)."""
    for group in _subtree(path):
        for _ in range(100):
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY: a killed process is still leaving
                time.sleep(0.01)
        else:
            log.error("could not remove cgroup %s (still busy)", group)
            return
