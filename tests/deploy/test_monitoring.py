"""Prometheus config, alerts, Grafana provisioning and dashboard, and the autoscaling queries, parsed and checked.

The point is the names: every metric a query uses must be in the metrics contract and registered by
`service.metrics`, or a panel stays empty and the autoscaler never scales.
"""

from __future__ import annotations

import re

from tests.deploy.conftest import DEPLOY, K8S, load_json, load_yaml
from tests.deploy.promql import (
    CONTRACT_METRICS,
    DCGM_METRICS,
    all_used_names,
    deployment_queries,
    series_names,
    used_names,
)
from tests.support.constants import ROOT

DASHBOARD = DEPLOY / "grafana/dashboards/vqserve.json"


def _balanced(expr: str) -> bool:
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for char in expr:
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return not any(depth.values())


def test_every_query_parses_roughly_and_names_known_metrics() -> None:
    known = series_names(CONTRACT_METRICS) | DCGM_METRICS
    queries = deployment_queries()
    assert len(queries) >= 15
    for where, expr in queries:
        assert _balanced(expr), f"{where}: unbalanced brackets in {expr!r}"
        names = used_names(expr)
        # Prometheus' own `up` is the one other series allowed (target health)
        assert names or re.search(r"\bup\{job=\"vqserve\"\}", expr), f"{where}: queries no known metric: {expr!r}"
        assert names <= known, f"{where}: unknown metric(s) {names - known} in {expr!r}"
        # a histogram is queried by its _bucket/_sum/_count series, never by its bare name
        for name in names:
            assert CONTRACT_METRICS.get(name) != "histogram", f"{where}: bare histogram name {name}"


def test_used_names_are_registered_by_the_service() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from service import metrics

    registered = {
        family.name: family.type
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    }
    missing = {name for name in all_used_names() if name not in DCGM_METRICS} - series_names(registered)
    assert not missing, f"queried but not registered by service/metrics.py: {missing}"
    assert registered.get("vqserve_queue_depth") == "gauge", "the HPA scales on this gauge"


def test_every_registered_metric_has_a_row_in_the_readme() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from service import metrics

    exposed = {
        family.name + ("_total" if family.type == "counter" else "")
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    }
    rows = set(re.findall(r"^\| `(vqserve_[a-z_]+)` \|", (ROOT / "README.md").read_text(), flags=re.MULTILINE))
    assert exposed - rows == set(), "metrics without a row in README.md's metrics table"


def test_prometheus_config_scrapes_vqserve_and_loads_the_alerts() -> None:
    config = load_yaml(DEPLOY / "prometheus/prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    vqserve = jobs["vqserve"]
    assert vqserve.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in vqserve["static_configs"] for t in sc["targets"]]
    assert targets == ["vqserve:8000"]
    assert "/etc/prometheus/alerts.yml" in config["rule_files"]
    for job in config["scrape_configs"]:
        assert re.fullmatch(r"\d+[smh]", job.get("scrape_interval", config["global"]["scrape_interval"]))


def test_alert_rules_are_complete() -> None:
    groups = load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    assert {"VqserveDown", "VqserveHighErrorRate", "VqserveOverloaded", "VqserveHighLatency"} <= set(names)


def test_the_kubernetes_prometheus_rule_has_the_compose_alerts() -> None:
    """One source: the PrometheusRule of the kube-prometheus-stack component is generated from alerts.yml."""
    import importlib.util

    component = K8S / "components/kube-prometheus-stack"
    rule = load_yaml(component / "prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # the chart's default ruleSelector
    spec = importlib.util.spec_from_file_location("generate_rule", component / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.render() == (component / "prometheusrule.yaml").read_text(), "run generate.py after alerts.yml"


def test_grafana_provisioning_points_the_dashboard_at_the_datasource() -> None:
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert [ds["type"] for ds in datasources] == ["prometheus"]
    uid = datasources[0]["uid"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/vqserve.yml")["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"

    dashboard = load_json(DASHBOARD)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(target["datasource"]["uid"] == uid for target in panel["targets"]), panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    panels = {panel["title"]: panel for panel in load_json(DASHBOARD)["panels"]}

    def exprs(title: str) -> str:
        return " ".join(target["expr"] for target in panels[title]["targets"])

    assert "by (status)" in exprs("Request rate by status")
    assert "vqserve_requests_total" in exprs("Request rate by status")
    latency = exprs("Latency percentiles")
    assert {"0.5", "0.9", "0.99"} <= set(re.findall(r"histogram_quantile\(([\d.]+)", latency))
    assert "vqserve_request_duration_seconds_bucket" in latency
    assert "vqserve_queue_depth" in exprs("Queue depth")
    assert panels["Batch size distribution"]["type"] == "heatmap"
    assert "vqserve_batch_size_bucket" in exprs("Batch size distribution")
    both = exprs("Compute vs queue time (p50 / p99)")
    assert "vqserve_compute_duration_seconds_bucket" in both
    assert "vqserve_queue_duration_seconds_bucket" in both
    assert "DCGM_FI_DEV_FB_USED" in exprs("GPU memory")


def test_adapter_rule_serves_the_hpa_metric_per_pod() -> None:
    rule = load_yaml(K8S / "prometheus-adapter/values.yaml")["rules"]["custom"][0]
    assert used_names(rule["seriesQuery"]) == {"vqserve_queue_depth"}
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    hpa = load_yaml(K8S / "base/hpa.yaml")
    hpa_metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert rule["name"]["as"] == hpa_metric == "vqserve_queue_depth"
    assert "<<.Series>>" in rule["metricsQuery"]
    assert "<<.GroupBy>>" in rule["metricsQuery"]


def test_compose_mounts_the_files_checked_here() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    mounts = compose["services"]["prometheus"]["volumes"] + compose["services"]["grafana"]["volumes"]
    for mount in mounts:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"compose mounts missing {source}"
