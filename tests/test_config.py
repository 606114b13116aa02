"""TOML node configs: the demo tree round-trips, errors name file, key path and problem."""

from __future__ import annotations

import pytest

from prismatic._config import ConfigError, LogFormat, load_config
from prismatic._demo import demo_tree
from tests.conftest import REPO

TICKER = 'start = "prismatic._demo:Ticker"'


def test_demo_toml_is_the_demo_tree():
    config = load_config(REPO / "examples" / "demo.toml")
    assert config.tree == demo_tree()
    assert config.node.name == "demo" and config.node.metrics_port == 0


def test_node_section_and_relative_data_dir(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text('[node]\nname = "x"\ndata_dir = "d"\nmetrics_port = 9\nlog_format = "json"\n'
                 'metrics_bind = "0.0.0.0"\n')
    config = load_config(f)
    assert config.node.data_dir == str(tmp_path / "d")
    assert config.node.metrics_bind == "0.0.0.0"
    assert load_config(REPO / "examples" / "demo.toml").node.metrics_bind == "127.0.0.1"
    assert config.node.log_format is LogFormat.JSON and config.tree is None


@pytest.mark.parametrize(("body", "key", "problem"), [
    (f'[[tree.children]]\nid = "a"\n{TICKER}\n[[tree.children]]\nid = "b"\n{TICKER}\n'
     f'[[tree.children]]\nid = "c"\n{TICKER}\nrestart = "sometimes"\n',
     "tree.children[2].restart", "must be one of permanent | transient | temporary"),
    ('[[tree.children]]\nid = "a"\nstart = "no_such_module:X"\n',
     "tree.children[0].start", "cannot be imported"),
    (f'[[tree.children]]\nid = "a"\n{TICKER}\n[[tree.children]]\nid = "a"\n{TICKER}\n',
     "tree.children[1].id", "duplicate child id"),
    (f'[[tree.children]]\nid = "a"\n{TICKER}\nsignificant = true\n',
     "tree.children[0].significant", "permanent child cannot be significant"),
    ('[[tree.children]]\nid = "s"\n[[tree.children.children]]\nid = "w"\n'
     f'{TICKER}\nshutdown = -1\n',
     "tree.children[0].children[0].shutdown", "finite and >= 0"),
    ('[tree]\nflags = { strategy = "fastest" }\n', "tree.flags.strategy", "one_for_one"),
    ('[[tree.children]]\nid = "a"\nstart = "x:y"\nrestrat = "temporary"\n',
     "tree.children[0]", "unknown key `restrat`"),
    ('[[tree.children]]\nid = "a"\n', "tree.children[0].start", "missing"),
    ('[node]\nmetrics_port = "high"\n', "node.metrics_port", "Expected `int`"),
])
def test_errors_name_the_key_path(tmp_path, body, key, problem):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith(f"{f}: {key}: ")


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "x.toml").write_text("tree = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "x.toml")


def test_eventlog_retention_and_log_level(tmp_path):
    from prismatic.cli._node import DEFAULT_EVENTLOG_MAX_BYTES, _Settings

    f = tmp_path / "n.toml"
    f.write_text('[node]\nlog_level = "warning"\n[eventlog]\nmax_bytes = 1000\n'
                 'max_age_s = 3600\n')
    config = load_config(f)
    assert (config.eventlog.max_bytes, config.eventlog.max_age_s) == (1000, 3600)
    s = _Settings(None, str(f), "x", str(tmp_path / "d"), None, None, None)
    assert (s.eventlog_max_bytes, s.eventlog_max_age_s, s.log_level) == (1000, 3600, "WARNING")
    # the command line wins; without either, 1 GiB and no age limit
    s = _Settings(None, str(f), "x", None, None, None, None, (), "debug", 5, 7.5)
    assert (s.eventlog_max_bytes, s.eventlog_max_age_s, s.log_level) == (5, 7.5, "DEBUG")
    s = _Settings(None, None, "x", str(tmp_path / "d"), None, None, None)
    assert (s.eventlog_max_bytes, s.eventlog_max_age_s) == (DEFAULT_EVENTLOG_MAX_BYTES, None)
    assert DEFAULT_EVENTLOG_MAX_BYTES == 1 << 30


@pytest.mark.parametrize(("body", "key"), [
    ("[eventlog]\nmax_bytes = 0\n", "eventlog.max_bytes"),
    ("[eventlog]\nmax_age_s = -1\n", "eventlog.max_age_s"),
    ("[eventlog]\nmax_files = 3\n", ""),
    ('[node]\nlog_level = "loud"\n', "node.log_level"),
    ("[node]\nsubscriber_hwm = -1\n", "node.subscriber_hwm"),
])
def test_bad_eventlog_and_log_level_keys(tmp_path, body, key):
    f = tmp_path / "n.toml"
    f.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert err.value.key == key or (not key and "max_files" in str(err.value))


def test_subscriber_hwm_from_the_file_or_the_command_line(tmp_path):
    from prismatic.cli._node import _Settings

    f = tmp_path / "n.toml"
    f.write_text("[node]\nsubscriber_hwm = 50\n")
    assert load_config(f).node.subscriber_hwm == 50
    assert _Settings(None, str(f), "x", str(tmp_path / "d"), None, None, None).subscriber_hwm == 50
    s = _Settings(None, str(f), "x", str(tmp_path / "d"), None, None, None, subscriber_hwm=0)
    assert s.subscriber_hwm == 0  # the command line wins; 0 (unbounded) is a value
    assert _Settings(None, None, "x", str(tmp_path / "d"), None, None, None).subscriber_hwm \
        is None  # the node's default
