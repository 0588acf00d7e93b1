"""The Helm chart and deploy/: rendered by real helm, every object validated offline against
Kubernetes' schemas (strict), restricted pod security, least-privilege RBAC, nothing stale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from etha.job import builders
from etha.job.security import restricted_violations
from etha.job.spec import parse
from tests.helpers import REPO, tool
from tests.pss import pod_spec_of
from tests.rbac import deploy_docs, grants, roles_in, wildcards
from tests.unit.controller.factories import make_trainingjob

kubernetes_validate = pytest.importorskip("kubernetes_validate")

CHART = REPO / "charts" / "etha-operator"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the kubectl shipped in bin/.
K8S_VERSIONS = ["1.27.0", "1.34.0"]
# What the operator may do, exactly: tests/integration/controller checks every request it sends
# against the rendered roles, and this pins that the roles grant no more.
OPERATOR_GRANTS = {
    ("etha.io", "trainingjobs", "get"),
    ("etha.io", "trainingjobs", "list"),
    ("etha.io", "trainingjobs", "watch"),
    ("etha.io", "trainingjobs", "patch"),
    ("etha.io", "trainingjobs", "delete"),
    ("etha.io", "trainingjobs/status", "patch"),
    # Children: watched once per kind (kopf indexes), read one by one only to see whose an object
    # of a child's name is (a create answered 409).
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods", "create"),
    ("", "pods", "delete"),
    ("", "services", "get"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("", "services", "create"),
    ("", "events", "create"),
    ("networking.k8s.io", "networkpolicies", "get"),
    ("networking.k8s.io", "networkpolicies", "list"),
    ("networking.k8s.io", "networkpolicies", "watch"),
    ("networking.k8s.io", "networkpolicies", "create"),
}
WITHOUT_NETWORK_POLICIES = {g for g in OPERATOR_GRANTS if g[0] != "networking.k8s.io"}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=60)


def render(*sets: str, namespace: str = "etha-system") -> list[dict[str, Any]]:
    args = ["template", "etha", str(CHART), "--namespace", namespace]
    for item in sets:
        args += ["--set", item]
    out = helm(*args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


VALUE_SETS = {
    "default": (),
    "namespaced-release": ("rbac.scope=namespaced",),
    "namespaced-list": ("rbac.scope=namespaced", "watchNamespaces={team-a,team-b}"),
    "cluster-some-namespaces": ("watchNamespaces={team-a}",),
    "custom": ("image.tag=dev", "verbose=true", "serviceAccount.name=robot", "priorityClassName=high"),
    "no-network-policies": ("networkPolicy.enabled=false",),
}


def test_helm_lint_strict() -> None:
    out = helm("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_rendered_object_is_valid_kubernetes(name: str) -> None:
    docs = render(*VALUE_SETS[name])
    assert {d["kind"] for d in docs} >= {"Deployment", "ServiceAccount", "Service"}
    for version in K8S_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_deploy_manifests_and_crd_are_valid_kubernetes() -> None:
    docs = deploy_docs(REPO) + [
        yaml.safe_load((REPO / "deploy" / name).read_text()) for name in ("namespace.yaml",)
    ]
    docs += [yaml.safe_load(p.read_text()) for p in sorted((REPO / "deploy" / "crds").glob("*.yaml"))]
    for version in K8S_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_generated_files_are_fresh() -> None:
    """charts/etha-operator/crds is deploy/crds, and deploy/operator.yaml is the chart's rendering."""
    out = subprocess.run(
        [sys.executable, str(REPO / "hack" / "render_manifests.py"), "--check", "--helm", tool("helm")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    for src in (REPO / "deploy" / "crds").glob("*.yaml"):
        assert (CHART / "crds" / src.name).read_bytes() == src.read_bytes()


def test_kustomization_lists_everything_in_deploy() -> None:
    out = subprocess.run([tool("kubectl"), "kustomize", str(REPO / "deploy")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout) if d)
    assert kinds == sorted(
        [
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
        ]
    )


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rbac_grants_exactly_what_the_operator_uses(name: str) -> None:
    roles = roles_in(render(*VALUE_SETS[name]))
    assert roles
    expected = (
        WITHOUT_NETWORK_POLICIES if "networkPolicy.enabled=false" in VALUE_SETS[name] else OPERATOR_GRANTS
    )
    for role in roles:
        assert not wildcards(role["rules"]), role["metadata"]
        assert grants(role["rules"]) == expected
    for role in roles_in(deploy_docs(REPO)):
        assert grants(role["rules"]) == OPERATOR_GRANTS


def test_namespaced_rbac_is_one_role_per_watched_namespace_and_no_cluster_rights() -> None:
    docs = render("rbac.scope=namespaced", "watchNamespaces={team-a,team-b}")
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    roles = {(d["kind"], d["metadata"]["namespace"]) for d in docs if d["kind"] in ("Role", "RoleBinding")}
    assert roles == {(k, ns) for k in ("Role", "RoleBinding") for ns in ("team-a", "team-b")}
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    release_only = render("rbac.scope=namespaced", namespace="ml")
    assert {d["metadata"]["namespace"] for d in release_only if d["kind"] == "Role"} == {"ml"}


def test_cluster_scope_without_namespaces_watches_all() -> None:
    (deployment,) = [d for d in render() if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--all-namespaces" in container["args"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["ETHA_RUNTIME_IMAGE"] == "ghcr.io/etha-io/etha-runtime:0.1.0"
    assert env["ETHA_NETWORK_POLICY"] == "true"
    # The operator's own identity, for the NetworkPolicy rule that admits it to the status port.
    assert env["ETHA_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for pair in env["ETHA_OPERATOR_POD_LABELS"].split(","):
        key, value = pair.split("=")
        assert labels[key] == value and deployment["spec"]["selector"]["matchLabels"][key] == value
    assert container["image"] == "ghcr.io/etha-io/etha-operator:0.1.0"
    assert "ETHA_DEFAULT_ETCD_ENDPOINTS" not in env  # no default etcd unless given


def test_default_etcd_endpoints_reach_the_operator() -> None:
    (deployment,) = [
        d
        for d in render("etcd.endpoints={etcd-0.etcd:2379,http://etcd-1.etcd:2379}")
        if d["kind"] == "Deployment"
    ]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ETHA_DEFAULT_ETCD_ENDPOINTS"] == "etcd-0.etcd:2379,http://etcd-1.etcd:2379"


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (("rbac.scope=everywhere",), "/rbac/scope"),
        (("replicaCount=2",), "/replicaCount"),
        (("createConcurrency=0",), "/createConcurrency"),
        (("watchNamespaces={Not_A_Name}",), "/watchNamespaces/0"),
        (("imageTypo=x",), "imageTypo"),
        (("etcd.endpoints={etcd:2379 x}",), "/etcd/endpoints/0"),
    ],
)
def test_bad_values_are_refused_naming_the_key(sets: tuple[str, ...], needle: str) -> None:
    args = ["template", "etha", str(CHART)]
    for item in sets:
        args += ["--set", item]
    out = helm(*args)
    assert out.returncode != 0 and needle in out.stderr, out.stderr


def pods_everywhere() -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec this project makes: the chart's (tests included), deploy/'s, the master's."""
    out = helm("template", "etha", str(CHART))
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d] + deploy_docs(REPO)
    specs = [(f"{d['kind']}/{d['metadata']['name']}", spec) for d in docs if (spec := pod_spec_of(d))]
    job = parse(make_trainingjob())
    specs.append(("master pod", builders.build_master_pod(job, 0)["spec"]))
    specs.append(("worker pod", builders.build_worker_pod(job, 0, 0)["spec"]))
    for example in sorted((REPO / "examples").glob("*.yaml")):
        worker = builders.build_worker_pod(parse(yaml.safe_load(example.read_text())), 0, 0)
        specs.append((f"{example.name} worker", worker["spec"]))
    return specs


def test_every_pod_meets_the_restricted_pod_security_standard() -> None:
    specs = pods_everywhere()
    assert len(specs) >= 4
    for where, spec in specs:
        assert restricted_violations(spec) == [], where


def test_the_restricted_checker_catches_violations() -> None:
    """The checker above must be able to fail."""
    bad = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True}, "ports": [{"hostPort": 80}]}],
    }
    found = restricted_violations(bad)
    for needle in (
        "hostNetwork",
        "hostPath",
        "privileged",
        "allowPrivilegeEscalation",
        "must include ALL",
        "runAsNonRoot",
        "seccomp",
        "hostPort",
    ):
        assert any(needle in v for v in found), needle


def test_values_schema_is_a_valid_json_schema() -> None:
    from jsonschema import Draft7Validator

    schema = json.loads((CHART / "values.schema.json").read_text())
    Draft7Validator.check_schema(schema)
    Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_chart_is_documented() -> None:
    values = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    for key in schema["properties"]:
        assert f"{key}:" in values, f"{key} is in the schema but not in values.yaml"
    assert (CHART / "templates" / "NOTES.txt").exists()
    assert Path(CHART / "templates" / "tests" / "test-health.yaml").exists()
