"""How the hub tells whether a process of its node lives, and hears of deaths nobody reports.

Asking: a process whose exit is not known yet is alive if its mailbox accepts a connection:
the mailbox socket closes when the process dies, before its supervisor can report it, so
the probe is never wrong about a dead process. The process listening there is asked who it
is (``SO_PEERCRED``), so an exact Pid (:mod:`._address`) that names an earlier holder of a
reused ospid, or an earlier incarnation of the node, is dead; a mailbox address held by
another uid is taken as dead (counted: ``untrusted_mailbox``).

Watching: monitors and links must fire even for a death no supervisor reports: a process
killed with its supervisor (PDEATHSIG) before that supervisor reported it started (it was
still in ``init``) is in no tree. So the hub also watches every process it monitors or links
with a pidfd; when one dies and its exit has not been reported ``UNREPORTED_GRACE_S`` later,
the hub takes it as killed by SIGKILL (the only way a process dies unreported), logs it and
counts it (``unreported_exits``).

:class:`HubLiveness` is a base of :class:`~._hub.Hub`: it works on the hub's state (declared
in its body) and keeps none of its own.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

from ._address import Pid, holder_matches, process_start
from ._exit import ExitReason, Killed
from ._nodeinfo import mailbox_address, peer_creds

__all__ = ["HubLiveness", "UNREPORTED_GRACE_S"]

log = logging.getLogger("prismatic._hub")  # the hub's log: its lines name the hub, not its parts

UNREPORTED_GRACE_S = 0.5  # a reported exit (with its real reason) normally comes within ms


class HubLiveness:
    """The hub's checks on its processes: a base of :class:`~._hub.Hub`."""

    if TYPE_CHECKING:  # the hub's, set by Hub.__init__
        node: str
        creation: int
        live: dict[int, Pid]
        exits: collections.OrderedDict[Pid, ExitReason]
        watched: dict[Pid, int]
        counters: collections.Counter[str]
        remote: Any

        def refuse(self, counter: str, msg: str, *args: object) -> None: ...

        def process_exited(self, ospid: int, reason: ExitReason) -> None: ...

    # ---- asking a process's mailbox ----------------------------------------------------------

    def identify(self, pid: Pid) -> Pid | None:
        """The exact Pid of the live process ``pid`` names, or None if there is none."""
        if pid.node == self.node:
            live = self.live.get(pid.ospid)
            if live is not None and pid.names(live):
                return live
        holder = self.probe(pid)
        if holder is None:
            return None
        if holder == 0:  # alive, but it could not be asked who it is
            return pid
        # Not kept in ``live``: only the tree's reports are (a process outside the tree
        # would never be reported gone); a Pid stored from here is retired by ``dying``.
        local = pid.node == self.node
        return Pid(pid.node, pid.ospid, (pid.creation or self.creation) if local else pid.creation,
                   pid.start or process_start(holder))

    def probe_alive(self, pid: Pid) -> bool:
        return self.probe(pid) is not None

    def probe(self, pid: Pid) -> int | None:
        """The OS pid listening at ``pid``'s mailbox if that is the process ``pid`` names
        (0: alive, but not known which), or None: dead. Only a refused connection or another
        holder means dead (a full accept queue is a live process); when the probe itself
        fails (out of file descriptors, say) the process is taken as alive, with a log line
        and a count: a wrong "dead" would fire a false DOWN or give its name away."""
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            return 0 if self.cannot_probe(pid, exc) else None
        try:
            s.setblocking(False)  # never wait on the node's loop for a busy process
            s.connect(mailbox_address(pid.node, pid.ospid))
            if not self.trusted_mailbox(s, pid):
                return None
            holder = peer_creds(s)[0]
            return holder if self.holds(pid, holder) else None
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except BlockingIOError:
            # Alive, its accept queue full: the kernel records the listener's credentials
            # only on a connection, so check the process that has the ospid (an address is
            # held by its own process unless squatted, which an exact Pid never was).
            return 0 if self.holds(pid, pid.ospid) else None
        except OSError as exc:
            return 0 if self.cannot_probe(pid, exc) else None
        finally:
            s.close()

    def holds(self, pid: Pid, holder: int) -> bool:
        """Whether ``holder``, listening at ``pid``'s mailbox, is the process ``pid`` names."""
        return holder_matches(pid, holder, self.creation if pid.node == self.node else 0)

    def trusted_mailbox(self, sock: socket.socket, pid: Pid) -> bool:
        """Whether a mailbox the hub connected to runs under the node's uid: another user
        may bind a dead process's abstract address, and must not make it look alive or
        receive its notices."""
        holder, uid = peer_creds(sock)
        if uid == os.getuid():
            return True
        self.refuse("untrusted_mailbox", "the mailbox address of %s is held by uid %d, pid "
                    "%d (another user): taken as dead", pid, uid, holder)
        return False

    def cannot_probe(self, pid: Pid, exc: OSError) -> bool:
        self.counters["probe_failed"] += 1
        log.error("hub: cannot tell whether %s lives (%s); taken as alive", pid, exc)
        return True

    # ---- deaths no supervisor reports ------------------------------------------------------

    def watch(self, pid: Pid) -> None:
        """Watch a live process of this node (once), so its death is never missed; one of
        another node is watched by its own node, which tells us of its exit."""
        if pid.node != self.node and self.remote is not None:
            self.remote.watch(pid)
            return
        if pid.node != self.node or pid in self.exits or pid in self.watched:
            return
        try:
            fd = os.pidfd_open(pid.ospid)
            if pid.start and process_start(pid.ospid) != pid.start:
                os.close(fd)  # the pidfd holds another process: pid is gone already
                return
        except OverflowError:
            return  # no process can have this pid
        except OSError as exc:
            if exc.errno not in (errno.ESRCH, errno.EINVAL):  # not "gone" or "no such pid"
                self.counters["watch_failed"] += 1
                log.error("hub: cannot watch %s (an unreported death of it would fire no "
                          "monitor or link): %s", pid, exc)
            return
        self.watched[pid] = fd
        asyncio.get_running_loop().add_reader(fd, self.watched_died, pid)

    def unwatch(self, pid: Pid) -> None:
        fd = self.watched.pop(pid, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def watched_died(self, pid: Pid) -> None:
        self.unwatch(pid)
        asyncio.get_running_loop().call_later(UNREPORTED_GRACE_S, self.unreported, pid)

    def unreported(self, pid: Pid) -> None:
        if pid in self.exits:
            return  # reported, with its real reason
        self.counters["unreported_exits"] += 1
        log.warning("hub: the exit of %s was never reported (its supervisor died with it?); "
                    "taken as killed by SIGKILL", pid)
        self.process_exited(pid.ospid, Killed(signal.SIGKILL))
