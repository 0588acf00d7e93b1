"""The chart's monitoring objects, accepted by a real API server: the Prometheus operator's CRDs
(v0.93.0, vendored in tests/data) installed, then the chart with every metrics option by real
``helm install``: the ServiceMonitor, the masters' PodMonitor and NetworkPolicies, the dashboard
ConfigMap and the RBAC for a namespaced Prometheus."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from tests.harness.cluster import ControlPlane
from tests.harness.operator import ChartOperator
from tests.helpers import REPO, wait_until

CRDS = sorted((REPO / "tests" / "data" / "prometheus-operator").glob("*.yaml"))
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.fixture
def monitoring_crds(control_plane: ControlPlane) -> Iterator[None]:
    names = []
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        names.append(crd["metadata"]["name"])
        if not control_plane.admin.exists(f"{CRD_PATH}/{crd['metadata']['name']}"):
            control_plane.admin.create(CRD_PATH, crd)
    for name in names:
        wait_until(
            lambda name=name: any(
                c.get("type") == "Established" and c.get("status") == "True"
                for c in (control_plane.admin.get(f"{CRD_PATH}/{name}").get("status") or {}).get("conditions")
                or []
            ),
            60, f"CRD {name} established", interval=0.2,
        )  # fmt: skip
    yield
    for name in names:
        control_plane.admin.delete(f"{CRD_PATH}/{name}")


def test_every_metrics_object_is_accepted(control_plane: ControlPlane, monitoring_crds: None) -> None:
    control_plane.create_namespace("metrics-jobs")
    values = {
        "watchNamespaces": ["metrics-jobs"],
        "metrics": {
            "serviceMonitor": {
                "enabled": True,
                "labels": {"release": "kube-prometheus-stack"},
                "prometheusServiceAccount": {"name": "prometheus", "namespace": "monitoring"},
            },
            "masterPodMonitor": {
                "enabled": True,
                "scrapeFrom": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                ],
            },
            "dashboard": {"enabled": True},
        },
    }
    op = ChartOperator(control_plane, namespace="etha-metrics", values=values)
    try:
        op.install()
        admin = control_plane.admin
        monitors = admin.get("/apis/monitoring.coreos.com/v1/namespaces/etha-metrics/servicemonitors")[
            "items"
        ]
        assert [m["spec"]["endpoints"][0]["port"] for m in monitors] == ["metrics"]
        pods = admin.get("/apis/monitoring.coreos.com/v1/namespaces/etha-metrics/podmonitors")["items"]
        assert [p["spec"]["podMetricsEndpoints"][0]["port"] for p in pods] == ["status"]
        policies = admin.get("/apis/networking.k8s.io/v1/namespaces/metrics-jobs/networkpolicies")["items"]
        assert [p["spec"]["ingress"][0]["ports"][0]["port"] for p in policies] == ["status"]
        (dashboard,) = admin.get(
            "/api/v1/namespaces/etha-metrics/configmaps", labelSelector="grafana_dashboard=1"
        )["items"]
        assert "etha_jobs" in dashboard["data"]["etha-trainingjobs.json"]
        assert admin.exists(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/etha-metrics/roles/etha-operator-prometheus"
        )
        service = admin.get("/api/v1/namespaces/etha-metrics/services/etha-operator-metrics")
        assert service["spec"]["ports"][0]["port"] == 8081
    finally:
        op.uninstall()
        control_plane.delete_namespace("metrics-jobs")
