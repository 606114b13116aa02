"""A tree for the global-registry tests: scriptable agents that take and give up global
names on command and remember the notices they get."""

from __future__ import annotations

import time
from typing import Any

import prismatic as p
from tests.messaging_apps import Agent


class GlobalAgent(Agent):
    """An :class:`Agent` with ``["g_register", name, at]`` (``at``: a wall-clock time to
    wait for, optional), ``["g_unregister", name]``,
    ``["g_whereis", name]``, ``["g_conflicts"]`` and ``["g_echo", name, x]`` (a call to
    ``Global(name)``)."""

    def init(self, name: str | None = None, trap: bool = False) -> None:
        super().init(name, trap)
        self.conflicts: list[Any] = []

    def handle_call(self, msg: Any, caller: p.Caller) -> Any:
        op, *args = msg
        try:
            if op == "g_register":
                if len(args) > 1:  # at this wall-clock time (concurrent claims)
                    time.sleep(max(0.0, args[1] - time.time()))
                self.register_global(args[0])
                return "ok"
            if op == "g_unregister":
                self.unregister_global(args[0])
                return "ok"
        except p.RegistryError as exc:
            return ["error", exc.reason]
        if op == "g_whereis":
            pid = self.whereis_global(args[0])
            return None if pid is None else [pid.node, pid.ospid]
        if op == "g_conflicts":
            return self.conflicts
        if op == "g_echo":
            return self.call(p.Global(args[0]), ["echo", args[1]])
        return super().handle_call(msg, caller)

    def handle_info(self, msg: Any) -> None:
        if isinstance(msg, p.GlobalNameConflict):
            self.conflicts.append([msg.name, [msg.winner.node, msg.winner.ospid]])
        else:
            super().handle_info(msg)


def tree() -> p.SupervisorSpec:
    return p.SupervisorSpec(
        flags=p.SupFlags(strategy="one_for_one", intensity=50, period=5),
        children=[p.ChildSpec(id=i, start=GlobalAgent, args=(i,)) for i in ("g1", "g2")])
