"""Which metric names the deployment's queries may use, and which names a PromQL expression uses.

The dashboards, alerts, autoscaling rules and KEDA trigger are only as good as the names they query: a typo
shows an empty panel or an autoscaler that never scales. These helpers let the tests compare every name
against the metrics contract (ARCHITECTURE.md) and against what `service.metrics` really registers.
"""

from __future__ import annotations

import re

# the minimum metric set of /work/shared/design/ARCHITECTURE.md: base name -> Prometheus type
CONTRACT_METRICS: dict[str, str] = {
    "vqserve_requests": "counter",
    "vqserve_request_duration_seconds": "histogram",
    "vqserve_queue_duration_seconds": "histogram",
    "vqserve_compute_duration_seconds": "histogram",
    "vqserve_codec_duration_seconds": "histogram",
    "vqserve_batch_size": "histogram",
    "vqserve_queue_depth": "gauge",
    "vqserve_inflight_requests": "gauge",
    "vqserve_request_failures": "counter",
    "vqserve_model_info": "gauge",
}

# GPU metrics of NVIDIA's dcgm-exporter (default counter set), which the compose gpu profile runs
DCGM_METRICS = frozenset({"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_UTIL"})

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
_NAME_RE = re.compile(r"\b(vqserve_[a-z0-9_]+|DCGM_[A-Z0-9_]+)\b")


def series_names(metrics: dict[str, str]) -> set[str]:
    """The sample names a scrape shows for these metric families (`counter` x -> `x_total`, ...)."""
    names = set()
    for base, kind in metrics.items():
        names.update(base + suffix for suffix in _SUFFIXES[kind])
    return names


def used_names(expr: str) -> set[str]:
    """Every vqserve_ or DCGM_ series name an expression refers to."""
    return set(_NAME_RE.findall(expr))


def deployment_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every query the deployment ships: dashboard, alerts, adapter rule, KEDA trigger."""
    from tests.deploy.conftest import DEPLOY, K8S, load_json, load_yaml

    queries = []
    dashboard = load_json(DEPLOY / "grafana/dashboards/vqserve.json")
    for panel in dashboard["panels"]:
        queries += [(f"panel {panel['title']!r}", target["expr"]) for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append((f"variable {variable['name']}", variable["definition"]))
    for group in load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"]:
        queries += [(f"alert {rule['alert']}", rule["expr"]) for rule in group["rules"]]
    for rule in load_yaml(K8S / "prometheus-adapter/values.yaml")["rules"]["custom"]:
        queries.append(("adapter seriesQuery", rule["seriesQuery"]))
    keda = load_yaml(K8S / "extras/keda-scaledobject.yaml")
    queries += [("KEDA trigger", trigger["metadata"]["query"]) for trigger in keda["spec"]["triggers"]]
    return queries


def all_used_names() -> set[str]:
    """Every series name the shipped queries use, plus the HPA's Pods metric."""
    from tests.deploy.conftest import K8S, load_yaml

    names = set().union(*(used_names(expr) for _, expr in deployment_queries()))
    hpa = load_yaml(K8S / "base/hpa.yaml")
    names.update(metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods")
    return names
