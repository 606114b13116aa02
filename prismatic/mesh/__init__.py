"""The node mesh: nodes on several hosts form one authenticated cluster.

* :mod:`._membership`: the failure detector and membership protocol (SWIM with Lifeguard),
  a pure ``decide(state, event) -> (state, actions)``; its vocabulary in :mod:`._events`,
  the member table's rules and rumours in :mod:`._member_table`, probes and timers in
  :mod:`._probing`;
* :mod:`._secret`: the cluster secret file and the CurveZMQ keys derived from it;
  :mod:`._auth`: who is admitted to a node's mesh endpoint;
* :mod:`._settings`: ``--listen``, ``--join``, ``--cluster-secret``, checked before the fork;
* :mod:`._loop`: the node's mesh loop (asyncio + pyzmq), which only carries out actions;
  its links to peers (sending, the fast failure signal) in :mod:`._peer_links`, its
  Prometheus series in :mod:`._mesh_metrics`;
* :mod:`._global`: the global registry (OTP's ``global``), a pure ``decide``;
  :mod:`._global_names`: the node's side of it, between the hub and the mesh loop;
* :mod:`._remote`: distribution: messages, monitors, links, control calls and pub/sub
  between processes of different nodes, over the mesh links; a process's connection to
  the relay in :mod:`._relay`, the relay path's connections to mailboxes in
  :mod:`._remote_mailbox`, the bound on what a node holds for one mailbox in
  :mod:`._backlog`; the node's end of direct links in :mod:`._direct`;
* wire frames: :mod:`prismatic.transports._mesh_frames` (the global registry's in
  :mod:`prismatic.transports._global_frames`). Operator's guide: docs/cluster.md.
"""

from ._settings import MeshSettings, check_settings

__all__ = ["MeshSettings", "check_settings"]
