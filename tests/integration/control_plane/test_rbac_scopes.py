"""The chart's RBAC in both scopes, enforced by a real API server: the operator runs as the chart's
ServiceAccount and takes a job to Succeeded without one refused request."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.harness.cluster import ControlPlane
from tests.harness.operator import ChartOperator
from tests.helpers import REPO, wait_until


def allreduce(namespace: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / "allreduce.yaml").read_text())
    doc["metadata"] = {"name": "scoped", "namespace": namespace}
    doc["spec"]["replicas"] = 2
    return doc


@pytest.mark.parametrize(
    ("scope", "values"),
    [
        ("cluster", {"rbac": {"scope": "cluster"}}),
        (
            "cluster-watching-one",
            {"rbac": {"scope": "cluster"}, "watchNamespaces": ["rbac-cluster-watching-one"]},
        ),
        ("namespaced", {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["rbac-namespaced"]}),
    ],
    ids=["cluster", "cluster-watching-one", "namespaced"],
)
def test_the_chart_grants_what_the_operator_asks(
    control_plane: ControlPlane, scope: str, values: dict[str, Any]
) -> None:
    namespace = f"rbac-{scope}"
    control_plane.create_namespace(namespace, {"pod-security.kubernetes.io/enforce": "restricted"})
    op = ChartOperator(control_plane, namespace=f"etha-{scope}", values=values).install().start()
    path = f"/apis/etha.io/v1alpha1/namespaces/{namespace}/trainingjobs/scoped"
    try:
        op.kubectl("apply", "-f", "-", stdin=json.dumps(allreduce(namespace)))
        wait_until(
            lambda: (control_plane.admin.get(path).get("status") or {}).get("phase") == "Succeeded",
            90, f"the job to succeed under rbac.scope={scope}", interval=0.2,
        )  # fmt: skip
        assert not op.forbidden(), "\n".join(op.forbidden()[:10])
        if scope == "namespaced":
            bindings = control_plane.admin.get("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")[
                "items"
            ]
            cluster = [
                b
                for b in bindings
                if (b["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == "etha-operator"
                and b["subjects"][0].get("namespace") == op.namespace
            ]
            # The one cluster right: reading Kueue's ResourceFlavors and priority classes (kueue.mode
            # Workload, the default), which a Role cannot grant.
            assert [b["roleRef"]["name"] for b in cluster] == ["etha-operator-kueue"], cluster
            reader = control_plane.admin.get(
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/etha-operator-kueue"
            )
            assert {v for r in reader["rules"] for v in r["verbs"]} <= {"get", "list"}, reader["rules"]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log\n{op.log(80)}") from None
    finally:
        op.uninstall()
        control_plane.delete_namespace(namespace)
