"""``prismatic reload``: the node re-reads its config file and applies its ``[tree]`` to the
running tree, touching only what changed.

The node (the process that loaded the config at start, with the same import path) loads
the file again with :func:`~._config.load_config`, which validates all of it and imports
every ``start``: an invalid file is refused whole, with the one line naming the file, key
path and problem, and nothing is touched. So is a root whose strategy changes to or from
``simple_one_for_one`` (the root cannot be restarted), a node started without a config
tree (``--app``), and a second reload while one runs.

Then, top down: the root supervisor gets a ``Reload`` op with its new flags and children
(``supervisors/_reload.py`` says what one supervisor does with it: unchanged children
untouched, removed ones terminated, changed ones restarted, new ones started, flags
replaced in place as OTP's ``code_change`` does). Each child supervisor that kept running
but whose own flags or children changed (``nested`` in the reply) gets its own ``Reload``
in turn, so a change deep in the tree touches nothing above it.

``[node]`` and ``[eventlog]`` are read at start only: a change there is reported as not
applied. Code is not reloaded either: a changed module needs a restart of the node (a
reload starts what the config names, from the modules the tree already imported).

What a reload did is one event, ``node.reload`` (a refused one: ``node.reload_refused``),
in the event log and on pub/sub, beside the children's own lifecycle events.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ._childspec import ChildSpec, Strategy, SupervisorSpec, spec_to_wire
from ._config import ConfigError, NodeConfig, load_config
from .supervisors._events import Err, Ok, Reload

__all__ = ["ConfigReload", "REFUSED"]

log = logging.getLogger(__name__)

REFUSED = "reload_refused"  # the Err reason of a reload that touched nothing

Ask = Callable[[tuple[str, ...], Any], Awaitable[Ok | Err]]


class ConfigReload:
    """One node's reloads: ``ask`` sends a supervisor op down the tree and awaits its reply;
    ``record`` logs and publishes an event (topic, body)."""

    def __init__(self, config: NodeConfig | None, ask: Ask,
                 record: Callable[[str, dict[str, Any]], None]) -> None:
        self.config = config
        self.path = Path(config.path).resolve() if config is not None else None
        self.ask = ask
        self.record = record
        self.busy = False

    async def run(self) -> Ok | Err:
        if self.busy:
            return Err("busy", "a reload is in progress")
        self.busy = True
        try:
            loaded = self.load()
            if isinstance(loaded, Err):
                self.record("node.reload_refused", {"file": str(self.path),
                                                    "reason": loaded.detail})
                log.error("reload refused: %s", loaded.detail)
                return loaded
            done = await self.apply(loaded)
            self.record("node.reload", done)
            log.info("reload of %s: %s", self.path, describe_reload(done))
            return Ok(done)
        finally:
            self.busy = False

    def load(self) -> NodeConfig | Err:
        if self.config is None or self.path is None:
            return Err(REFUSED, "this node's tree does not come from a config file (started "
                                "with --app, or a --config without [tree]): nothing to reload")
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            return Err(REFUSED, str(exc))
        if new.tree is None:
            return Err(REFUSED, f"{self.path}: tree: missing (a reload would stop every "
                                "child; stop the node instead)")
        old_tree = self.config.tree
        assert old_tree is not None
        if _simple(new.tree) != _simple(old_tree):
            return Err(REFUSED, f"{self.path}: tree.flags.strategy: the root cannot change "
                                "to or from simple_one_for_one while it runs (restart the node)")
        return new

    async def apply(self, new: NodeConfig) -> dict[str, Any]:
        assert self.config is not None and new.tree is not None
        done: dict[str, Any] = {"file": str(self.path), "started": [], "stopped": [],
                                "restarted": [], "updated": [], "flags": [], "failed": [],
                                "unapplied": [name for name in ("node", "eventlog")
                                              if getattr(new, name) != getattr(self.config,
                                                                               name)]}
        await self._reload((), new.tree, done)
        # A later reload compares [node] with the file the node was started with.
        self.config = NodeConfig(path=self.config.path, node=self.config.node,
                                 tree=new.tree, eventlog=self.config.eventlog)
        return done

    async def _reload(self, path: tuple[str, ...], spec: SupervisorSpec,
                      done: dict[str, Any]) -> None:
        where = "/".join(path) or "root"
        answer = await self.ask(path, Reload(spec.flags, tuple(spec_to_wire(c)
                                                              for c in spec.children)))
        if isinstance(answer, Err):
            done["failed"].append(f"{where}: {answer.reason} {answer.detail}".strip())
            return
        got = answer.value

        def paths(key: str) -> list[str]:
            return ["/".join((*path, k)) or "root" for k in got.get(key, ())]

        done["started"] += paths("added")
        done["stopped"] += paths("removed")
        done["restarted"] += paths("restarted")
        done["updated"] += paths("updated")
        done["failed"] += paths("failed")
        if got.get("flags"):
            done["flags"].append(where)
        by_id: dict[str, ChildSpec] = {c.id: c for c in spec.children}
        for key in got.get("nested", ()):
            child = by_id.get(key)
            if child is not None and isinstance(child.start, SupervisorSpec):
                await self._reload((*path, key), child.start, done)


def _simple(spec: SupervisorSpec) -> bool:
    return spec.flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE


def describe_reload(done: dict[str, Any]) -> str:
    """One line: what a reload did (the CLI prints it, the node logs it)."""
    parts = [f"{what} {', '.join(done[key])}" for what, key in (
        ("started", "started"), ("stopped", "stopped"), ("restarted", "restarted"),
        ("new spec (not running)", "updated"), ("new flags", "flags"), ("FAILED", "failed"))
        if done.get(key)]
    if done.get("unapplied"):
        parts.append("not applied (read at start only): "
                     + ", ".join(f"[{s}]" for s in done["unapplied"]))
    return "; ".join(parts) or "nothing changed"
