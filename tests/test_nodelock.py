"""Who holds a data directory's node.lock (prismatic/_nodelock.py), read from /proc/locks."""

from __future__ import annotations

import fcntl
import os

from prismatic._nodelock import _probe, lock_holder


def test_holder_is_the_pid_that_holds_the_flock(tmp_path):
    assert lock_holder(tmp_path) is None  # no lock file: no node
    lock = tmp_path / "node.lock"
    with open(lock, "w") as f:
        assert lock_holder(tmp_path) is None  # a leftover file nobody holds
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert lock_holder(tmp_path) == os.getpid()
        assert _probe(lock) is not None  # the fallback agrees
        other = tmp_path / "other"
        other.mkdir()
        (other / "node.lock").write_text("")
        assert lock_holder(other) is None  # another file's lock is not this one's
    assert lock_holder(tmp_path) is None and _probe(lock) is None
