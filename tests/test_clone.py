"""clone(CLONE_PARENT) as a zygote uses it: the clone is its caller's parent's child and a
working Python process (glibc's cached tid, threads, at-fork hooks)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from prismatic._clone import clone_sibling, sibling_support

pytestmark = pytest.mark.skipif(sibling_support() is not None,
                                reason=f"clone_sibling unsupported: {sibling_support()}")


def _in_clone(w: int) -> None:
    """Runs in the clone: report what a broken clone would get wrong, then exit 7."""
    hits: list[int] = []
    signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
    signal.raise_signal(signal.SIGUSR1)  # glibc's raise() targets the cached thread id
    t = threading.Thread(target=hits.append, args=(2,))
    t.start()
    t.join()
    os.write(w, f"clone {os.getpid()} {os.getppid()} {threading.get_native_id()} {hits}\n"
             .encode())
    os._exit(7)


def test_a_clone_is_a_child_of_the_callers_parent_and_a_sound_process():
    r, w = os.pipe()
    zygote = os.fork()
    if zygote == 0:  # plays the zygote: clones, reports the pid, exits
        try:
            pid = clone_sibling(lambda parent: _in_clone(w))
            os.write(w, f"zygote {pid}\n".encode())
        finally:
            os._exit(0)
    os.close(w)
    assert os.waitpid(zygote, 0)[1] == 0
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.decode().splitlines()}
    cloned = int(lines["zygote"])
    pid, ppid, tid, hits = lines["clone"].split(" ", 3)
    assert int(ppid) == os.getpid()  # our child, not the zygote's
    assert int(pid) == int(tid) == cloned
    assert hits == "[1, 2]"
    got, status = os.waitpid(int(pid), 0)  # we reap it: it is ours
    assert got == int(pid) and os.waitstatus_to_exitcode(status) == 7
