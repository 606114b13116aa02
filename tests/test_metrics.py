"""The node's Prometheus endpoint, scraped over HTTP from a real node."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

import prismatic as p
from tests.conftest import REPO, SESSION_TAG, run_fresh, tagged_pids, wait_until


@pytest.fixture
def metrics_node(tmp_path):
    tag = f"{SESSION_TAG}-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    env = dict(os.environ, PRISMATIC_TEST_TAG=tag, PYTHONPATH=str(REPO))
    with open(tmp_path / "node.out", "w") as out:
        # auto: the node binds port 0 and says which port it got: no port picked here that
        # someone else could take before the node binds it
        proc = subprocess.Popen(
            [sys.executable, "-m", "prismatic.node", "--app", "tests.apps:one_for_one",
             "--data-dir", str(data), "--name", f"metrics-{tag[-8:]}", "--metrics-port",
             "auto", "--metrics-bind", "127.0.0.2", "--quiet"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def metrics_url() -> str | None:
        assert proc.poll() is None, (tmp_path / "node.out").read_text()
        try:
            with p.connect(data, timeout=1) as conn:
                return conn.status().metrics_url
        except p.PrismaticError:
            return None

    base = str(wait_until(metrics_url, 20, "the node's metrics endpoint")).removesuffix(
        "/metrics")
    assert base.startswith("http://127.0.0.2:")  # loopback too, but not the default address

    def ready() -> bool:
        try:
            return urllib.request.urlopen(base + "/ready", timeout=1).status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_until(ready, 20, "the node's /ready")
    yield proc, data, base
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    wait_until(lambda: not tagged_pids(tag), 10, "the node's processes to exit")


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_health_and_restarts_over_http(metrics_node):
    proc, data, base = metrics_node
    assert urllib.request.urlopen(base + "/health", timeout=5).status == 200
    with p.connect(data) as conn:
        assert conn.status().metrics_url == base + "/metrics"
        rows = {r.path: r.pid for r in conn.tree()}
        with p.open_event_stream(data) as ev:
            os.kill(rows["w2"], signal.SIGKILL)
            ev.wait_for(lambda e: e.key == "w2" and e.kind == "child_started", 10)
        new_w2 = conn.pid_of("w2")
    # the log appends in batches behind the event publisher: wait for the batch, don't race it
    wait_until(lambda: scrape(base).get(("prismatic_eventlog_appends_total", ()), 0) >= 5, 10,
               "the exit and the restart to reach the event log")  # 3 starts, exit, restart
    m = scrape(base)
    assert m[("prismatic_processes_up", (("type", "supervisor"),))] == 1
    assert m[("prismatic_processes_up", (("type", "worker"),))] == 3
    assert m[("prismatic_restarts_total", (("child", "w2"), ("supervisor", "root")))] == 1
    assert m[("prismatic_child_exits_total", (("reason", "killed"),))] == 1
    assert m[("prismatic_eventlog_errors_total", ())] == 0
    assert m[("prismatic_node_ready", ())] == 1
    assert 0 <= m[("prismatic_eventlog_lag_seconds", ())] < 5
    assert m[("prismatic_control_requests_total", (("call", "tree"),))] >= 1
    for path in ("root", "w1", "w2", "w3"):
        assert m[("prismatic_process_memory_uss_bytes",
                  (("path", path), ("type", "supervisor" if path == "root" else "worker")))] > 0
        assert ("prismatic_process_cpu_seconds_total",
                (("path", path), ("type", "supervisor" if path == "root" else "worker"))) in m
    assert new_w2 != rows["w2"]
    # the same metrics over the control endpoint
    with p.connect(data) as conn:
        assert "prismatic_restarts_total" in conn.metrics()


def test_only_its_three_paths_no_created_series_and_the_bind_address(metrics_node):
    """Issue 12.9: any path answered the metrics, ``*_created`` series doubled them, the
    address was fixed, and ``prismatic metrics`` printed bytes as ``1.97837e+06``."""
    from click.testing import CliRunner

    from prismatic.cli import cli

    proc, data, base = metrics_node
    for path in ("/", "/nosuch", "/metrics/extra", "/healthz"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + path, timeout=5)
        assert info.value.code == 404, path
    assert "_created" not in urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    with p.connect(data) as conn:
        assert "_created" not in conn.metrics()
        assert conn.status().metrics_url == base + "/metrics"
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):  # --metrics-bind 127.0.0.2: not the default
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    out = CliRunner().invoke(cli, ["--node", str(data), "metrics", "--filter",
                                   "prismatic_process_memory_uss_bytes"]).stdout
    values = [line.split()[-1] for line in out.splitlines()[1:] if line.strip()]
    assert values and all(v.isdigit() and int(v) > 100_000 for v in values), out


def test_ready_is_503_before_the_tree_started(tmp_path):
    from prismatic._metrics import NodeMetrics, serve_metrics

    metrics = NodeMetrics("unit", lambda: [], lambda: {}, lambda: {})
    server = serve_metrics(metrics, 0)  # the kernel picks the port; server.url says it
    try:
        base = server.url.removesuffix("/metrics")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/ready", timeout=5)
        assert info.value.code == 503
        assert urllib.request.urlopen(base + "/health", timeout=5).status == 200
        metrics.ready = True
        assert urllib.request.urlopen(base + "/ready", timeout=5).status == 200
    finally:
        server.close()


def test_metrics_that_cannot_be_produced_are_an_error_reply_not_a_silence(node_factory):
    """Out of file descriptors, the node cannot read /proc or reach the workers for a scrape:
    the caller gets an error at once (the node logs and counts it), not a timeout."""
    n = node_factory("tests.apps:flat")
    n.conn.metrics()  # the connection and the scrape thread exist before the limit
    soft, hard = resource.prlimit(n.proc.pid, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{n.proc.pid}/fd"))
    resource.prlimit(n.proc.pid, resource.RLIMIT_NOFILE, (in_use, hard))
    try:
        with pytest.raises(p.ControlError, match="could not produce its metrics"):
            n.conn.metrics()
    finally:
        resource.prlimit(n.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert "prismatic_control_errors_total 1.0" in n.conn.metrics()
    assert "control: metrics failed" in n.log.with_name("node.out").read_text()


def test_a_scrape_that_fails_is_a_500_logged_and_counted(caplog):
    calls = []

    def broken() -> dict[str, float]:  # fails the first scrape only
        calls.append(1)
        if len(calls) == 1:
            raise OSError("cannot read /proc")
        return {}

    from prismatic._metrics import NodeMetrics, serve_metrics

    metrics = NodeMetrics("unit", lambda: [], broken, lambda: {})
    server = serve_metrics(metrics, 0)
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url, timeout=5)
        assert info.value.code == 500 and "cannot read /proc" in info.value.read().decode()
    finally:
        server.close()
    assert metrics.registry.get_sample_value("prismatic_node_task_errors_total",
                                             {"task": "metrics http"}) == 1
    assert any("a scrape failed" in r.getMessage() for r in caplog.records)


def test_the_event_counters_read_as_prometheus_counters():
    """The node's event counters are plain numbers until a scrape (_metrics.LabelledCounter)
    and read exactly as ``prometheus_client`` Counters counting the same would (no
    ``_created`` series); a collector registered before or after the first read is served."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    from prismatic._metrics import NodeMetrics

    class One:
        def __init__(self, name: str) -> None:
            self.name = name

        def describe(self) -> list:
            return []

        def collect(self):
            g = GaugeMetricFamily(self.name, "a test gauge")
            g.add_metric([], 1)
            yield g

    m = NodeMetrics("unit", lambda: [], lambda: {}, lambda: {})
    m.register(One("prismatic_before"))
    counts = ((("root", "a"), 1), (("root", "a"), 2), (("sup", "b"), 1))
    for labels, amount in counts:
        m.restarts.labels(*labels).inc(amount)
    text = m.exposition().decode()  # the first read: the registry is made now
    same = CollectorRegistry()
    restarts = Counter("prismatic_restarts", m.restarts.doc, ["supervisor", "child"],
                       registry=same)
    for labels, amount in counts:
        restarts.labels(*labels).inc(amount)
    assert generate_latest(same).decode() in text
    assert "_created" not in text and "prismatic_before 1.0" in text
    m.register(One("prismatic_after"))
    assert "prismatic_after 1.0" in m.exposition().decode()
    with pytest.raises(ValueError, match="expected label values"):
        m.restarts.labels("root")
    with pytest.raises(ValueError, match="only goes up"):
        m.exits.labels("crashed").inc(-1)


def test_a_scrape_for_some_names_has_the_event_counters_among_them():
    """``/metrics?name[]=...`` (prometheus_client's filter: a scraper asking for some series
    only) serves the event counters asked for: the registry finds them by the names their
    collector describes, as it found the Counters they were."""
    from prismatic._metrics import NodeMetrics, serve_metrics

    metrics = NodeMetrics("unit", lambda: [], lambda: {}, lambda: {})
    metrics.restarts.labels("root", "a").inc(3)
    metrics.exits.labels("crashed").inc()
    server = serve_metrics(metrics, 0)
    try:
        text = urllib.request.urlopen(server.url + "?name[]=prismatic_restarts_total",
                                      timeout=5).read().decode()
    finally:
        server.close()
    assert 'prismatic_restarts_total{child="a",supervisor="root"} 3.0' in text, text
    assert "prismatic_child_exits" not in text, text


def test_a_nodes_start_does_without_prometheus():
    """``prometheus_client`` (and the HTTP server's modules it brings) is imported at the
    first scrape, not on the way to a node's start (_metrics' module doc: ~16 ms of CPU per
    node start). In a fresh interpreter: the node's loop and mesh imported, a node's metrics
    made and counted in."""
    code = ("import sys, prismatic.node, prismatic._node_loop, prismatic.mesh._loop\n"
            "from prismatic._metrics import NodeMetrics\n"
            "m = NodeMetrics('unit', lambda: [], lambda: {}, lambda: {})\n"
            "m.restarts.labels('root', 'a').inc()\n"
            "print(' '.join(x for x in ('prometheus_client', 'wsgiref', 'http.server') "
            "if x in sys.modules))")
    imported = run_fresh(code)
    assert imported == [], f"imported on the way to a start: {imported}"
