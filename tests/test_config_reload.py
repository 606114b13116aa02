"""``prismatic reload`` on a real node started with a real config file, edited between
reloads: what changed is applied, the rest keeps its processes, a bad file touches nothing."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from prismatic.cli import cli
from tests.conftest import alive, start_node, wait_until


def _child(cid: str, argv: list[str]) -> str:
    return f'[[tree.children]]\nid = "{cid}"\nshutdown = 2\n' \
           f'[tree.children.program]\nargv = {json.dumps(argv)}\n'


def _config(root_intensity: int, children: str, sub_intensity: int, sub: str) -> str:
    return (f'[tree]\nflags = {{ strategy = "one_for_one", intensity = {root_intensity} }}\n'
            f'{children}'
            f'[[tree.children]]\nid = "sub"\n'
            f'flags = {{ strategy = "one_for_one", intensity = {sub_intensity} }}\n'
            + sub.replace("[[tree.children]]", "[[tree.children.children]]")
                 .replace("[tree.children.program]", "[tree.children.children.program]"))


def _pids(node, sup: str = "") -> dict[str, int | None]:
    return {c.id: c.pid for c in node.conn.which_children(sup)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
    except OSError:
        return ""


def _reload(node, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--node", str(node.data_dir), "reload"])
    assert result.exit_code == code, (result.exit_code, result.output)
    return result.output


def test_reload_applies_the_edit_and_touches_nothing_else(tmp_path):
    toml = tmp_path / "node.toml"
    toml.write_text(_config(5, _child("keep", ["sleep", "300"])
                            + _child("change", ["sleep", "301"])
                            + _child("gone", ["sleep", "302"]),
                            5, _child("inner-keep", ["sleep", "303"])
                            + _child("inner-change", ["sleep", "304"])))
    node = start_node(tmp_path, "", args=("--config", str(toml)))
    try:
        before, inner = _pids(node), _pids(node, "sub")
        toml.write_text(_config(9, _child("added", ["sleep", "306"])
                                + _child("keep", ["sleep", "300"])
                                + _child("change", ["sleep", "305"]),
                                7, _child("inner-keep", ["sleep", "303"])
                                + _child("inner-change", ["sleep", "307"])
                                + _child("inner-new", ["sleep", "308"])))
        out = _reload(node)
        assert out.strip() == (
            f"reloaded {toml}: started added, sub/inner-new; stopped gone; restarted change, "
            "sub/inner-change; new flags root, sub")
        after, inner_after = _pids(node), _pids(node, "sub")
        # unchanged children (and the supervisor whose children changed) kept their process
        assert after["keep"] == before["keep"] and after["sub"] == before["sub"]
        assert inner_after["inner-keep"] == inner["inner-keep"]
        assert not alive(before["gone"]) and "gone" not in after
        assert not alive(before["change"]) and not alive(inner["inner-change"])
        wait_until(lambda: _cmdline(_pids(node)["change"]) == "sleep 305"
                   and _cmdline(_pids(node, "sub")["inner-change"]) == "sleep 307"
                   and _cmdline(_pids(node)["added"]) == "sleep 306"
                   and _cmdline(_pids(node, "sub")["inner-new"]) == "sleep 308", 5,
                   "the new programs")
        # the config's order: which_children lists the last started first
        assert list(after) == ["sub", "change", "keep", "added"]
        # a second reload of the same file changes nothing
        assert _reload(node).strip() == f"reloaded {toml}: nothing changed"
        assert _pids(node) == after
        inner_after = _pids(node, "sub")

        # an invalid file is refused whole, naming the key; nothing is touched
        toml.write_text(toml.read_text().replace('id = "keep"\nshutdown = 2',
                                                 'id = "keep"\nshutdown = 2\nrestart = "often"')
                        .replace("sleep\", \"303", "sleep\", \"309"))
        out = _reload(node, code=2)
        assert out.count("\n") == 1 and out.startswith(f"prismatic: error: reload refused: "
                                                       f"{toml}: tree.children[1].restart: ")
        assert _pids(node) == after and _pids(node, "sub") == inner_after
        assert _cmdline(_pids(node, "sub")["inner-keep"]) == "sleep 303"

        # what each reload did is in the event log (group-committed: soon)
        def logged() -> list[dict]:
            out = CliRunner().invoke(cli, ["--node", str(node.data_dir), "events", "query",
                                           "--pattern", "node.#", "--json"])
            assert out.exit_code == 0, out.output
            return [json.loads(line) for line in out.output.splitlines()]

        events = wait_until(lambda: len(logged()) == 3 and logged(), 5, "three node events")
        assert [e["topic"] for e in events] == ["node.reload", "node.reload",
                                                "node.reload_refused"]
        assert events[0]["payload"]["stopped"] == ["gone"]
    finally:
        node.stop()
        wait_until(lambda: not node.pids(), 10, "the node's processes to exit")


def test_a_node_without_a_config_tree_refuses_to_reload(node_factory):
    node = node_factory("tests.program_apps:basic")
    out = _reload(node, code=2)
    assert "does not come from a config file" in out
