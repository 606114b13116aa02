"""The node's cookie: the shared secret every control request must carry (Erlang's cookie).

Protocol: on first start the node creates ``<data dir>/cookie`` (64 hex characters, i.e. 32
random bytes, mode 0600, created with ``O_EXCL`` so two starts never race to different
cookies) and keeps an existing one across restarts. A client on the same host reads the file
(which only the node's user can) and sends the cookie in every control request (see
:mod:`._control`); the node compares it in constant time. Whoever can read the data directory
can operate the node, exactly as with ``~/.erlang.cookie``.

A cookie file that others may read is refused, as Erlang refuses one: a leaked cookie is
full control of the tree.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ._errors import ControlError, NodeError

__all__ = ["COOKIE_FILE", "CookieRefused", "ensure_cookie", "read_cookie", "cookie_matches"]

COOKIE_FILE = "cookie"
_COOKIE_BYTES = 32


class CookieRefused(ControlError):
    """The node refused a control request: missing or wrong cookie (CLI exit code 4)."""


def ensure_cookie(data_dir: Path) -> str:
    """The node's cookie, created (0600) on first start; NodeError if the file is unsafe."""
    path = Path(data_dir) / COOKIE_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return _read(path, NodeError)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(_COOKIE_BYTES).hex() + "\n")  # what secrets.token_hex does
    return _read(path, NodeError)


def read_cookie(data_dir: Path) -> str:
    """The cookie of the node in ``data_dir``, for a client; CookieRefused if unreadable."""
    return _read(Path(data_dir) / COOKIE_FILE, CookieRefused)


def cookie_matches(expected: str, given: str) -> bool:
    """Constant-time comparison, so the answer time does not leak a matching prefix."""
    import hmac  # noqa: PLC0415 - here, not at import: it loads OpenSSL, and this module is
    # in the image every process of the tree is forked from (see prismatic._node)

    return hmac.compare_digest(expected.encode(), given.encode())


def _read(path: Path, error: type[Exception]) -> str:
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise error(f"cookie file {path} is accessible by others "
                        f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
        cookie = path.read_text().strip()
    except OSError as exc:
        raise error(f"cannot read cookie file {path}: {exc.strerror or exc}") from None
    if not cookie:
        raise error(f"cookie file {path} is empty")
    return cookie
