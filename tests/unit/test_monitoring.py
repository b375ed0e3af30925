"""deploy/monitoring: every series the alerts and the dashboard query is one the agent or the controller really
exports (names taken from the metric objects in the code), the rules pass promtool's checks and unit tests, and
no `_created` series is exported."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from agent.avc.counting import AvcCounts
from agent.metrics import VOLUME_CONFLICT, AvcMetrics, NodeMetrics, VolumeConflictCollector

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES_TEST = ROOT / "tests" / "fixtures" / "monitoring" / "alerts_test.yaml"
# Prometheus's own series for each scrape target.
SCRAPE_SERIES = {"up"}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"), "unknown": ("",)}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def exported_registry() -> CollectorRegistry:
    """One registry with every metric object: the node agent's, the AVC watcher's, the controller's gauge."""
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry)
    avc = AvcCounts(AvcMetrics(registry))
    registry.register(VolumeConflictCollector(lambda: []))
    metrics.observe_csi("NodePublishVolume", "OK", 0.01)
    metrics.relabelled(None, 0.5, fs_group=True)
    avc.count_netlink_drops(1)
    avc.count_parse_errors(1)
    return registry


def exported_series() -> set[str]:
    names = set()
    for family in exported_registry().collect():
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def series_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside strings, label matchers and grouping
    clauses that are not functions, keywords or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = match.group(0), text[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def rule_groups():
    (document,) = [d for d in yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text()) if d]
    assert document["kind"] == "PrometheusRule" and document["apiVersion"] == "monitoring.coreos.com/v1"
    return document["spec"]["groups"]


def dashboard_queries():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(METRIC, LABEL): only METRIC is a series.
            metric = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["definition"]).group(1)
            queries.append((f"variable {variable['name']}", metric))
    return queries


def test_the_expression_reader_finds_the_metric_names():
    expr = ('sum by (namespace) (rate(selinux_avc_denials_total{permissive!="1", tclass=~"file|dir"}[5m])) '
            '/ on (instance) group_left up{job="x"} > bool 0 and absent(foo_bar)')
    assert series_in(expr) == {"selinux_avc_denials_total", "up", "foo_bar"}


def test_no_created_series_are_exported():
    assert "_created" not in generate_latest(exported_registry()).decode()


def test_every_alert_names_exported_series():
    exported = exported_series() | SCRAPE_SERIES
    alerts = [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 7
    for rule in alerts:
        unknown = series_in(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} queries series nothing exports: {sorted(unknown)}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_alerts_cover_what_operators_watch():
    exprs = " ".join(rule["expr"] for group in rule_groups() for rule in group["rules"])
    for series in ('selinux_mount_agent_context_mount_verifications_total{result="failed"}',
                   'selinux_mount_agent_decisions_total{decision="recursive"}',
                   "selinux_mount_agent_relabel_duration_seconds_bucket", "selinux_avc_denials_total",
                   "selinux_audit_netlink_enobufs_total", VOLUME_CONFLICT, "up{"):
        assert series in exprs, series


def test_every_dashboard_query_names_exported_series():
    exported = exported_series() | SCRAPE_SERIES
    queries = dashboard_queries()
    assert len(queries) >= 8
    for title, expr in queries:
        names = series_in(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        assert names <= exported, f"panel {title!r} queries series nothing exports: {sorted(names - exported)}"


def test_the_dashboard_covers_every_agent_metric_family():
    queried = set().union(*(series_in(expr) for _, expr in dashboard_queries()))
    families = {family.name for family in exported_registry().collect()}
    for family in families:
        if family.startswith("volume_manager_selinux_"):
            continue  # kubelet's names, shown by kubelet's own dashboards
        assert any(name.startswith(family) for name in queried), f"no panel shows {family}"


def _promtool():
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return shutil.which("promtool")


def _rules_file(tmp_path) -> Path:
    path = tmp_path / "selinux-mount-agent.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def test_promtool_checks_the_rules(tmp_path):
    promtool = _promtool()
    result = subprocess.run([promtool, "check", "rules", str(_rules_file(tmp_path))], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fire_each_alert(tmp_path):
    promtool = _promtool()
    _rules_file(tmp_path)
    spec = yaml.safe_load(RULES_TEST.read_text())
    spec["rule_files"] = ["selinux-mount-agent.rules.yaml"]
    tested = {case["alertname"] for test in spec["tests"] for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    alerts = {rule["alert"] for group in rule_groups() for rule in group["rules"] if "alert" in rule}
    assert tested == alerts, f"alerts without a firing test: {sorted(alerts - tested)}"
    exported = exported_series() | SCRAPE_SERIES
    for test in spec["tests"]:
        for series in test["input_series"]:
            assert series_in(series["series"]) <= exported, series["series"]
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_node_metrics_count_what_the_shim_reports():
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry)
    metrics.decided("recursive")
    metrics.verified("dropped")
    metrics.verified("applied")
    metrics.context_mount(True, "kubernetes.io/csi/local.selinux-mount-agent.io", "RWOP")
    metrics.observe_csi("NodeStageVolume", "OK", 0.002)
    metrics.observe_csi("SomethingElse", "OK", 0.002)
    text = generate_latest(registry).decode()
    assert 'selinux_mount_agent_decisions_total{decision="recursive"} 1.0' in text
    assert 'selinux_mount_agent_context_mount_verifications_total{result="failed"} 1.0' in text
    assert 'selinux_mount_agent_context_mount_verifications_total{result="ok"} 1.0' in text
    assert ('volume_manager_selinux_volumes_admitted_total{access_mode="RWOP",'
            'volume_plugin="kubernetes.io/csi/local.selinux-mount-agent.io"} 1.0') in text
    assert 'method="other"' in text  # unknown methods do not add label values
