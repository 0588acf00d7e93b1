"""The Helm chart and deploy/: rendered by real helm, every object validated offline against
Kubernetes' schemas (strict), restricted pod security, least-privilege RBAC, nothing stale."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from etha.job import builders
from etha.job.security import restricted_violations
from etha.job.spec import parse
from tests.factories import make_trainingjob
from tests.helpers import REPO, tool
from tests.pss import pod_spec_of
from tests.rbac import LEADER_ELECTION_GRANTS, deploy_docs, grants, is_leader_election, roles_in, wildcards

kubernetes_validate = pytest.importorskip("kubernetes_validate")

CHART = REPO / "charts" / "etha-operator"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the kubectl shipped in bin/.
K8S_VERSIONS = ["1.27.0", "1.34.0"]
# What the operator may do, exactly: tests/integration/emulator checks every request it sends
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
    ("", "pods", "patch"),
    # restartStrategy InPlace: the job's agent ConfigMap (created; read when one of its name exists).
    ("", "configmaps", "get"),
    ("", "configmaps", "create"),
    ("", "services", "get"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("", "services", "create"),
    ("", "services", "patch"),
    ("", "events", "create"),
    ("networking.k8s.io", "networkpolicies", "get"),
    ("networking.k8s.io", "networkpolicies", "list"),
    ("networking.k8s.io", "networkpolicies", "watch"),
    ("networking.k8s.io", "networkpolicies", "create"),
    ("networking.k8s.io", "networkpolicies", "patch"),
    # Kueue in Workload mode (the default): the job's own Workload, watched, made, deactivated
    # while suspended (patch), replaced when stale (delete); its status as jobframework writes it.
    *(
        ("kueue.x-k8s.io", "workloads", verb)
        for verb in ("get", "list", "watch", "create", "delete", "patch")
    ),
    ("kueue.x-k8s.io", "workloads/status", "patch"),
}
#: Kueue's cluster-scoped objects, read only: an admission's ResourceFlavors, a Workload's priority.
KUEUE_CLUSTER_GRANTS = {
    ("kueue.x-k8s.io", "resourceflavors", "get"),
    ("kueue.x-k8s.io", "workloadpriorityclasses", "get"),
    ("scheduling.k8s.io", "priorityclasses", "get"),
    ("scheduling.k8s.io", "priorityclasses", "list"),
}
WITHOUT_NETWORK_POLICIES = {g for g in OPERATOR_GRANTS if g[0] != "networking.k8s.io"}
WITHOUT_KUEUE = {g for g in OPERATOR_GRANTS if g[0] != "kueue.x-k8s.io"}
#: A ClusterRole's one more right: read the CRD at start (a Role cannot grant a cluster-scoped object).
CRD_GET = ("apiextensions.k8s.io", "customresourcedefinitions", "get")


def cluster_grants(
    role: dict[str, Any], base: set[tuple[str, str, str]], kueue: bool = True
) -> set[tuple[str, str, str]]:
    """What ``role`` must grant: ``base``, and for a ClusterRole the CRD's get (on its one name)
    and (``kueue``: Workload mode) Kueue's cluster-scoped reads."""
    if role["kind"] != "ClusterRole":
        return base
    if is_kueue_reader(role):  # rbac.scope namespaced: the one cluster-scoped role
        return KUEUE_CLUSTER_GRANTS
    crd_rules = [r for r in role["rules"] if "customresourcedefinitions" in r["resources"]]
    assert [r.get("resourceNames") for r in crd_rules] == [["trainingjobs.etha.io"]], crd_rules
    return base | {CRD_GET} | (KUEUE_CLUSTER_GRANTS if kueue else set())


def is_kueue_reader(role: dict[str, Any]) -> bool:
    """The ClusterRole (or binding) of Kueue's cluster-scoped reads with rbac.scope namespaced."""
    return bool(role["metadata"]["name"].endswith("-kueue"))


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
    "kueue-pod-groups": ("kueue.mode=PodGroup",),
    "namespaced-kueue-pod-groups": ("rbac.scope=namespaced", "kueue.mode=PodGroup"),
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
            "Role",  # leader election's Lease, in the operator's namespace
            "RoleBinding",
            "PodDisruptionBudget",  # two replicas by default
            "Deployment",
            "Service",
            "Service",
        ]
    )


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rbac_grants_exactly_what_the_operator_uses(name: str) -> None:
    roles = [r for r in roles_in(render(*VALUE_SETS[name])) if not is_leader_election(r)]
    assert roles
    expected = (
        WITHOUT_NETWORK_POLICIES if "networkPolicy.enabled=false" in VALUE_SETS[name] else OPERATOR_GRANTS
    )
    kueue = "kueue.mode=PodGroup" not in VALUE_SETS[name]
    if not kueue:
        expected = expected & WITHOUT_KUEUE
    assert any(is_kueue_reader(r) for r in roles) == (kueue and "rbac.scope=namespaced" in VALUE_SETS[name])
    for role in roles:
        assert not wildcards(role["rules"]), role["metadata"]
        assert grants(role["rules"]) == cluster_grants(role, expected, kueue)
    for role in roles_in(deploy_docs(REPO)):
        assert grants(role["rules"]) == (
            LEADER_ELECTION_GRANTS if is_leader_election(role) else cluster_grants(role, OPERATOR_GRANTS)
        )


def test_namespaced_rbac_is_one_role_per_watched_namespace_and_no_cluster_rights() -> None:
    docs = render("rbac.scope=namespaced", "watchNamespaces={team-a,team-b}", "kueue.mode=PodGroup")
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    # With Kueue's Workloads (the default), the one cluster right: reading Kueue's flavors and
    # priority classes, which a Role cannot grant.
    docs = render("rbac.scope=namespaced", "watchNamespaces={team-a,team-b}")
    cluster = [d for d in docs if d["kind"].startswith("Cluster")]
    assert sorted(d["kind"] for d in cluster) == ["ClusterRole", "ClusterRoleBinding"]
    assert all(is_kueue_reader(d) for d in cluster)
    (reader,) = [d for d in cluster if d["kind"] == "ClusterRole"]
    assert grants(reader["rules"]) == KUEUE_CLUSTER_GRANTS
    roles = {
        (d["kind"], d["metadata"]["namespace"])
        for d in docs
        if d["kind"] in ("Role", "RoleBinding") and not is_leader_election(d)
    }
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
    ("sets", "expected"),
    [((), None), (("podSecurity.serviceAccounts={trainer,reader}",), "trainer,reader")],
    ids=["default-any", "allowlist"],
)
def test_service_account_allowlist_reaches_the_operator(sets: tuple[str, ...], expected: str | None) -> None:
    (deployment,) = [d for d in render(*sets) if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env.get("ETHA_SERVICE_ACCOUNTS") == expected


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (("rbac.scope=everywhere",), "/rbac/scope"),
        (("replicaCount=11",), "/replicaCount"),
        (("replicaCount=2", "leaderElection.enabled=false"), "replicaCount (2) needs leaderElection.enabled"),
        (("leaderElection.enable=true",), "/leaderElection"),
        (("createConcurrency=0",), "/createConcurrency"),
        (("watchNamespaces={Not_A_Name}",), "/watchNamespaces/0"),
        (("imageTypo=x",), "imageTypo"),
        (("etcd.endpoints={etcd:2379 x}",), "/etcd/endpoints/0"),
        (("podSecurity.serviceAccounts={Not_A_Name}",), "/podSecurity/serviceAccounts/0"),
        (("etcd.endpoints={http://u:pw@etcd:2379}",), "/etcd/endpoints/0"),
        (("etcd.credentials.secretName=Not_A_Name",), "/etcd/credentials/secretName"),
        (("etcd.credentials.typo=x",), "typo"),
        (("metrics.port=8080",), "/metrics/port"),
        (("metrics.serviceMonitor.interval=soon",), "/metrics/serviceMonitor/interval"),
        (("metrics.masterPodMonitor.scrapeFrom[0].typo=x",), "/metrics/masterPodMonitor/scrapeFrom/0"),
        (("kueue.mode=Pods",), "/kueue/mode"),
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


# --- Metrics: the Service, the ServiceMonitor, the masters' PodMonitor, the Grafana dashboard ------

MONITORING_CRDS = REPO / "tests" / "data" / "prometheus-operator"
DASHBOARD = CHART / "dashboards" / "etha-trainingjobs.json"
ALL_METRICS = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.masterPodMonitor.enabled=true",
    "metrics.dashboard.enabled=true",
)


def validate_monitoring(doc: dict[str, Any]) -> None:
    """Validate a monitoring.coreos.com object against the Prometheus operator's own CRD schema
    (v0.93.0, vendored in tests/data): kubernetes_validate knows only built-in kinds."""
    from openapi_schema_validator import OAS30Validator

    crd = yaml.safe_load((MONITORING_CRDS / f"monitoring.coreos.com_{doc['kind'].lower()}s.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == doc["apiVersion"].split("/")[1]]
    schema = version["schema"]["openAPIV3Schema"]
    OAS30Validator(schema).validate({k: v for k, v in doc.items() if k != "metadata"})
    assert doc["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_operator_serves_metrics_behind_a_service_by_default() -> None:
    docs = render()
    (deployment,) = by_kind(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=8081" in container["args"]
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    (service,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    # Nothing for Prometheus or Grafana unless asked.
    assert not {"ServiceMonitor", "PodMonitor", "ConfigMap", "NetworkPolicy"} & {d["kind"] for d in docs}
    moved = render("metrics.port=9100")
    (deployment,) = by_kind(moved, "Deployment")
    assert "--metrics-port=9100" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_service_monitor_only_when_enabled_and_it_selects_the_metrics_service() -> None:
    docs = render("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=kps")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    validate_monitoring(monitor)
    assert monitor["metadata"]["labels"]["release"] == "kps"
    chosen = [
        s
        for s in by_kind(docs, "Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in chosen] == ["etha-etha-operator-metrics"]  # not the health Service
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["etha-system"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"]) == ("metrics", "/metrics", True)
    assert endpoint["port"] in {p["name"] for p in chosen[0]["spec"]["ports"]}
    # No RBAC for Prometheus unless its ServiceAccount is named; the operator's own is unchanged.
    assert [r["metadata"]["name"] for r in roles_in(docs) if not is_leader_election(r)] == [
        "etha-etha-operator"
    ]
    assert not by_kind(render(), "ServiceMonitor")


def test_service_monitor_rbac_for_a_namespaced_prometheus() -> None:
    docs = render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.prometheusServiceAccount.name=prometheus",
        "metrics.serviceMonitor.prometheusServiceAccount.namespace=monitoring",
    )
    (role,) = [r for r in roles_in(docs) if r["metadata"]["name"].endswith("-prometheus")]
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "etha-system"
    assert grants(role["rules"]) == {
        (group, resource, verb)
        for group, resource in [
            ("", "services"),
            ("", "endpoints"),
            ("", "pods"),
            ("discovery.k8s.io", "endpointslices"),
        ]
        for verb in ("get", "list", "watch")
    }
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"].endswith("-prometheus")]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
    ]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(role, version, strict=True)
        kubernetes_validate.validate(binding, version, strict=True)
    # Without the Prometheus ServiceMonitor, no RBAC for it either.
    assert not [
        r
        for r in roles_in(render("metrics.serviceMonitor.prometheusServiceAccount.name=prometheus"))
        if "prometheus" in r["metadata"]["name"]
    ]


def test_master_pod_monitor_and_its_network_policies_select_the_masters_the_operator_builds() -> None:
    peer = "metrics.masterPodMonitor.scrapeFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring"
    docs = render("metrics.masterPodMonitor.enabled=true", "watchNamespaces={team-a,team-b}", peer)
    master = builders.build_master_pod(parse(make_trainingjob()), 0)
    worker = builders.build_worker_pod(parse(make_trainingjob()), 0, 0)
    (monitor,) = by_kind(docs, "PodMonitor")
    validate_monitoring(monitor)
    assert selects(monitor["spec"]["selector"]["matchLabels"], master["metadata"]["labels"])
    assert not selects(monitor["spec"]["selector"]["matchLabels"], worker["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in master["spec"]["containers"][0]["ports"]}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    # Each watched namespace admits the scrapers to the masters' status port, and only that port.
    policies = by_kind(docs, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    for policy in policies:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(policy, version, strict=True)
        assert selects(policy["spec"]["podSelector"]["matchLabels"], master["metadata"]["labels"])
        assert not selects(policy["spec"]["podSelector"]["matchLabels"], worker["metadata"]["labels"])
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": endpoint["port"]}]
        assert rule["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
    # Every namespace: the PodMonitor looks in all; no namespace to put a policy in.
    everywhere = render("metrics.masterPodMonitor.enabled=true", peer)
    assert by_kind(everywhere, "PodMonitor")[0]["spec"]["namespaceSelector"] == {"any": True}
    assert not by_kind(everywhere, "NetworkPolicy")
    for sets in (("networkPolicy.enabled=false", peer), ()):  # no job policies, or no scrapers named
        docs = render("metrics.masterPodMonitor.enabled=true", "watchNamespaces={team-a}", *sets)
        assert by_kind(docs, "PodMonitor") and not by_kind(docs, "NetworkPolicy")


def operator_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(docs, "Deployment")
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


SCRAPER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


@pytest.mark.parametrize(
    ("sets", "scrapers"),
    [
        ((), [SCRAPER]),
        (("watchNamespaces={team-a}",), None),
        (("rbac.scope=namespaced",), None),
        (("networkPolicy.enabled=false",), None),
        (("metrics.masterPodMonitor.enabled=false",), None),
    ],
    ids=["cluster-scope", "listed-namespaces", "namespaced", "no-policies", "no-pod-monitor"],
)
def test_a_cluster_scope_install_admits_the_scrapers_through_each_jobs_policy(
    sets: tuple[str, ...], scrapers: list[dict[str, Any]] | None
) -> None:
    """Watching every namespace the chart renders no scrape policy: the operator adds the
    scrapers to each job's own NetworkPolicy, at the master's status port."""
    peer = "metrics.masterPodMonitor.scrapeFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring"
    docs = render("metrics.masterPodMonitor.enabled=true", peer, *sets)
    env = operator_env(docs)
    if scrapers is None:
        assert "ETHA_STATUS_SCRAPERS" not in env
        return
    from etha.operator.config import OperatorConfig

    config = OperatorConfig.from_env(env)
    assert list(config.status_scrapers) == scrapers and not by_kind(docs, "NetworkPolicy")
    master = builders.build_master_pod(parse(make_trainingjob()), 0)
    status = {p["name"]: p["containerPort"] for p in master["spec"]["containers"][0]["ports"]}["status"]
    policy = builders.build_network_policy(parse(make_trainingjob()), None, config.status_scrapers)
    assert policy["spec"]["ingress"][1] == {"from": scrapers, "ports": [{"protocol": "TCP", "port": status}]}


def test_dashboard_configmap_only_when_enabled() -> None:
    docs = render("metrics.dashboard.enabled=true", "metrics.dashboard.annotations.grafana_folder=Training")
    (configmap,) = by_kind(docs, "ConfigMap")
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(configmap, version, strict=True)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Training"}
    assert json.loads(configmap["data"]["etha-trainingjobs.json"]) == json.loads(DASHBOARD.read_text())
    elsewhere = render("metrics.dashboard.enabled=true", "metrics.dashboard.namespace=grafana")
    assert by_kind(elsewhere, "ConfigMap")[0]["metadata"]["namespace"] == "grafana"


def test_helm_lint_strict_with_every_metrics_option() -> None:
    args = ["lint", "--strict", str(CHART)]
    for item in (*ALL_METRICS, "metrics.serviceMonitor.prometheusServiceAccount.name=p",
                 "metrics.serviceMonitor.prometheusServiceAccount.namespace=monitoring"):  # fmt: skip
        args += ["--set", item]
    out = helm(*args)
    assert out.returncode == 0, out.stdout + out.stderr


PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
}
_GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
_STRING = r'"(?:[^"\\]|\\.)*"'


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) a PromQL expression uses: what is left once strings, label
    matchers, ranges and function calls are set aside."""
    labels = {x.strip() for m in re.finditer(_GROUPING, expr) for x in m.group(1).split(",") if x.strip()}
    rest = re.sub(_GROUPING, " ", expr)
    for block in re.findall(r"\{([^}]*)\}", rest):
        labels |= set(re.findall(rf"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*{_STRING}", block))
    rest = re.sub(r"\{[^}]*\}|\[[^\]]*\]|" + _STRING, " ", rest)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][\w:]*", rest):
        if not rest[m.end() :].lstrip().startswith("(") and m.group(0) not in PROMQL_KEYWORDS:
            names.add(m.group(0))
    return names, labels


def exported_series() -> tuple[set[str], set[str]]:
    """Every sample name and label the operator's registry exports, once each metric has a child."""
    from etha.operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    start = {"attempt": 0, "complete": True, "startTime": "2026-01-01T00:00:00Z"}
    full = {
        "phase": "Failed",
        "attempt": 2,
        "restarts": 1,
        "conditions": [{"type": "Running", "status": "True"}],
        "rendezvous": start,
    }
    metrics.observe_transition({}, full, job_created=t0, now=t0, namespace="ns", name="j")
    recovering = {
        "phase": "Restarting",
        "lastRestart": {"strategy": "InPlace", "time": "2026-01-01T00:00:00Z"},
    }
    metrics.observe_transition(
        recovering, {"phase": "Running"}, job_created=t0, now=t0, namespace="ns", name="k"
    )
    metrics.pods_created("worker")
    metrics.api_request("get", 200)
    with metrics.reconcile_timer():
        pass
    names, labels = set(), set()
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs and all(p.get("targets") for p in dashboard["panels"]), "every panel has a query"
    return exprs


def master_progress_series() -> tuple[set[str], set[str]]:
    """The masters' etha_master_progress_* samples (scraped by the masters' PodMonitor, which adds
    the target's namespace and pod)."""
    from etha.master.progress_watch import ProgressWatch
    from etha.progress.wire import Record

    watch = ProgressWatch(lambda: (0, "", 0))
    watch.book.ingest([Record(0, 5, 1.0, 10, {"loss": 1.0}, ((4, 0.5), (5, 1.0)))], now=1.0)
    names, labels = set(), {"namespace", "pod"}
    for family in watch.metrics():
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels


def test_every_dashboard_query_names_only_metrics_the_operator_exports() -> None:
    names, labels = exported_series()
    progress_names, progress_labels = master_progress_series()  # the masters' (docs/progress.md)
    names, labels = names | progress_names, labels | progress_labels
    assert {"etha_jobs_created_total", "etha_job_startup_seconds_bucket", "etha_jobs"} <= names
    for expr in dashboard_queries():
        used, used_labels = promql_names(expr)
        assert used and used <= names, (expr, used - names)
        assert used_labels <= labels, (expr, used_labels - labels)
    dashboard = json.loads(DASHBOARD.read_text())
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"]).groups()
            assert metric in names and label in labels
    used_everywhere = set().union(*(promql_names(e)[0] for e in dashboard_queries()))
    for needed in ("etha_jobs", "etha_job_startup_seconds_bucket", "etha_rendezvous_seconds_bucket",
                   "etha_job_restarts_total", "etha_api_requests_total",
                   "etha_recovery_seconds_bucket"):  # fmt: skip
        assert needed in used_everywhere, needed


@pytest.mark.parametrize(
    ("expr", "names", "labels"),
    [
        ('sum by (phase) (etha_jobs{namespace=~"$namespace"})', {"etha_jobs"}, {"phase", "namespace"}),
        (
            "histogram_quantile(0.95, sum by (le) (rate(etha_job_startup_seconds_bucket[$__rate_interval])))",
            {"etha_job_startup_seconds_bucket"},
            {"le"},
        ),
        ("sum(etha_jobs_typo) / on (namespace) etha_jobs", {"etha_jobs_typo", "etha_jobs"}, {"namespace"}),
        ('rate(x_total{code!="200"}[5m]) and bool y', {"x_total", "y"}, {"code"}),
    ],
)
def test_the_promql_reader_finds_names(expr: str, names: set[str], labels: set[str]) -> None:
    """The check above must be able to fail: a typo in a metric name is found."""
    assert promql_names(expr) == (names, labels)


@pytest.mark.parametrize("mode", ["Workload", "PodGroup"])
def test_the_kueue_mode_reaches_the_operator(mode: str) -> None:
    (deployment,) = [d for d in render(f"kueue.mode={mode}") if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ETHA_KUEUE_MODE"] == mode


def test_a_gang_gets_podgroup_rights_and_may_list_the_schedulers_events() -> None:
    """Only with a gang configured: PodGroups of its API group, and events list (what the
    scheduler said of a waiting gang's pods)."""
    plain = set().union(*(grants(r["rules"]) for r in roles_in(render())))
    assert ("", "events", "list") not in plain and not {g for g in plain if g[1] == "podgroups"}
    ganged = set().union(*(grants(r["rules"]) for r in roles_in(render("scheduling.gang=coscheduling"))))
    assert ganged - plain == {
        ("", "events", "list"),
        *(("scheduling.x-k8s.io", "podgroups", verb) for verb in ("get", "create", "delete")),
    }
