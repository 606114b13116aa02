"""The cluster secret and the CurveZMQ keys every node derives from it.

Model (as simple as Erlang's cookie, without its weaknesses): one secret file per cluster,
32 random bytes as 64 hex characters, created by ``prismatic cluster init-secret`` with mode
0600 and copied to every host by the operator. A secret file that the group or others may
read is refused with a one-line error, as the node's cookie is.

From the secret each node derives, with HMAC-SHA256 under a fixed label, one Curve25519
keypair: the cluster's. Every node's listening socket is a CURVE server with that keypair
and every outgoing link a CURVE client with it, pointed at that same public key; the node's
ZAP handler admits a client only if it proves the cluster's key. So:

* a peer without the secret (or with another one) cannot even complete the handshake: it
  does not know the server key the handshake is encrypted to, nor can it prove the client
  key. It never joins, never learns a member's name, can make no request;
* everything on the wire is encrypted and authenticated (CurveZMQ: Curve25519, XSalsa20,
  Poly1305, with per-connection ephemeral keys, so a later leak does not decrypt old
  traffic), and the secret itself never crosses the wire.

What it does not do (stated in docs/cluster.md): every holder of the secret is a full,
equal member (anyone who can read the file on any host can join or impersonate a node), and
a node is not authenticated *as a name*: a member can claim any name the cluster does not
already have alive. Rotating the secret means restarting every node with the new file.

Keys and the secret never appear in logs, ``--json`` output or the event log; the objects
holding them say ``<redacted>`` when printed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .._errors import NodeError

__all__ = ["SECRET_FILE", "ClusterKeys", "default_secret_path", "init_secret", "read_secret",
           "derive_keys"]

SECRET_FILE = "cluster.secret"
_SECRET_BYTES = 32
_LABEL = b"prismatic mesh curve25519 keypair v1"


def default_secret_path() -> Path:
    """``$PRISMATIC_HOME/cluster.secret`` (``~/.prismatic/cluster.secret``)."""
    return Path(os.environ.get("PRISMATIC_HOME", "~/.prismatic")).expanduser() / SECRET_FILE


class ClusterKeys:
    """The cluster's Z85-encoded Curve25519 keypair (``public``, ``secret``)."""

    __slots__ = ("public", "secret")

    def __init__(self, public: bytes, secret: bytes) -> None:
        self.public = public
        self.secret = secret

    def __repr__(self) -> str:
        return "ClusterKeys(<redacted>)"

    __str__ = __repr__


def init_secret(path: Path, force: bool = False) -> Path:
    """Create a new secret file (0600, ``O_EXCL``); NodeError if one exists (unless
    ``force``, which replaces it: every node must then get the new file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if force:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise NodeError(f"cluster secret {path} exists already (give --force to replace it; "
                        f"every node then needs the new file)") from None
    except OSError as exc:
        raise NodeError(f"cannot create cluster secret {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(_SECRET_BYTES).hex() + "\n")
    return path


def read_secret(path: Path) -> bytes:
    """The secret's bytes; NodeError if missing, unsafe (group/world-accessible) or bad."""
    path = Path(path)
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise NodeError(f"cluster secret {path} is accessible by others "
                            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
        text = path.read_text().strip()
    except FileNotFoundError:
        raise NodeError(f"no cluster secret at {path}: create one with "
                        f"`prismatic cluster init-secret` and copy it to every node") from None
    except OSError as exc:
        raise NodeError(f"cannot read cluster secret {path}: {exc.strerror or exc}") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise NodeError(f"cluster secret {path} is not a secret this command wrote "
                        f"(64 hex characters)")
    return secret


def derive_keys(secret: bytes) -> ClusterKeys:
    """The cluster's CURVE keypair, the same on every node holding ``secret``."""
    import hashlib  # noqa: PLC0415 - OpenSSL stays out of the tree's image (prismatic._node)
    import hmac  # noqa: PLC0415

    import zmq  # noqa: PLC0415
    from zmq.utils import z85  # noqa: PLC0415

    raw = hmac.new(secret, _LABEL, hashlib.sha256).digest()
    private = z85.encode(raw)
    return ClusterKeys(zmq.curve_public(private), private)
