"""Write prometheusrule.yaml from deploy/prometheus/alerts.yml: one source for the alerts of compose and Kubernetes.

    python deploy/k8s/components/kube-prometheus-stack/generate.py

tests/deploy/test_monitoring.py fails when the two differ (run this after editing alerts.yml).
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parents[2] / "prometheus" / "alerts.yml"
OUTPUT = HERE / "prometheusrule.yaml"
HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by generate.py beside this file: edit alerts.yml, then run it.
# The compose Prometheus loads alerts.yml; kube-prometheus-stack loads this PrometheusRule (the `release` label is
# the one its default ruleSelector matches).
"""


def prometheus_rule(groups: list[dict[str, object]]) -> dict[str, object]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "vqserve",
            "labels": {
                "app.kubernetes.io/name": "vqserve",
                "app.kubernetes.io/part-of": "vqserve",
                "release": "kube-prometheus-stack",
            },
        },
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as alerts.yml writes them."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _string)


def render() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return HEADER + yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=120)


if __name__ == "__main__":
    OUTPUT.write_text(render())
