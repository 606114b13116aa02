"""Wire frames of the global registry (:mod:`prismatic.mesh._global`), members of the mesh's
tagged union (:data:`prismatic.transports._mesh_frames.MeshFrame`): same prefix, same wire
version, same decoding at the edge (a malformed one is dropped and counted by the loop).

Each carries its sender's node name (``src``) and advertised address (``addr``: the loop
counts bytes per peer by it). ``owner`` of a registration is always the frame's ``src``: a
node speaks only for the names of its own processes.

=============  =================  ============================================================
tag            direction          meaning
=============  =================  ============================================================
``g_claim``    registrant->leader may ``pid`` take ``name``? (``ref`` names the claim)
``g_verdict``  leader->registrant yes (the name is reserved for it a while) or no (``holder``)
``g_add``      owner -> all       ``reg`` is committed: this node's process holds the name
``g_remove``   owner -> all       ``pid`` no longer holds ``name`` (unregistered, exited, lost
                                  a conflict, or a granted claim that was not used)
``g_sync``     owner -> one       every name this node's processes hold (the whole truth about
                                  ``src``'s names); ``reply``: send me yours
=============  =================  ============================================================
"""

from __future__ import annotations

import msgspec

from .._address import Pid

__all__ = ["GlobalReg", "GlobalClaim", "GlobalVerdict", "GlobalAdd", "GlobalRemove",
           "GlobalSync", "GlobalFrame", "GLOBAL_FRAMES"]


class GlobalReg(msgspec.Struct, frozen=True, array_like=True):
    """One registration: ``stamp`` is the owner's wall clock (ns) when it was claimed; the
    older one wins a conflict."""

    name: str
    pid: Pid
    stamp: int


class GlobalClaim(msgspec.Struct, frozen=True, tag="g_claim"):
    src: str
    addr: str
    ref: int
    name: str
    pid: Pid


class GlobalVerdict(msgspec.Struct, frozen=True, tag="g_verdict"):
    src: str
    addr: str
    ref: int
    name: str
    pid: Pid  # the claimant, as in the claim
    granted: bool
    holder: Pid | None = None


class GlobalAdd(msgspec.Struct, frozen=True, tag="g_add"):
    src: str
    addr: str
    reg: GlobalReg


class GlobalRemove(msgspec.Struct, frozen=True, tag="g_remove"):
    src: str
    addr: str
    name: str
    pid: Pid


class GlobalSync(msgspec.Struct, frozen=True, tag="g_sync"):
    src: str
    addr: str
    regs: tuple[GlobalReg, ...] = ()
    reply: bool = False


GlobalFrame = GlobalClaim | GlobalVerdict | GlobalAdd | GlobalRemove | GlobalSync
GLOBAL_FRAMES = (GlobalClaim, GlobalVerdict, GlobalAdd, GlobalRemove, GlobalSync)
