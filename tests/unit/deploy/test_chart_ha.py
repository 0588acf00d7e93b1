"""The chart's high availability: replicas, leader election's Lease RBAC, the rollout strategy,
the PodDisruptionBudget and the anti-affinity, for each value set that changes them."""

from __future__ import annotations

import pytest

from tests.rbac import LEADER_ELECTION_GRANTS, grants, is_leader_election, roles_in
from tests.unit.deploy.test_chart import render

#: High availability, as the defaults have it (spelled out, so a change of defaults is seen here).
HA = ("replicaCount=2", "leaderElection.enabled=true")
#: One replica without election: the opt-out.
SINGLE = ("replicaCount=1", "leaderElection.enabled=false")


@pytest.mark.parametrize(
    ("sets", "replicas", "strategy", "pdb", "anti_affinity", "elect"),
    [
        ((), 2, "RollingUpdate", True, True, True),
        (SINGLE, 1, "Recreate", False, False, False),
        (HA, 2, "RollingUpdate", True, True, True),
        ((*HA, "rbac.scope=namespaced"), 2, "RollingUpdate", True, True, True),
        (("replicaCount=1", "leaderElection.enabled=true"), 1, "RollingUpdate", False, False, True),
        ((*HA, "affinity.nodeAffinity.x=y"), 2, "RollingUpdate", True, False, True),
    ],
    ids=["default-ha", "single", "ha", "namespaced-ha", "one-replica-elected", "own-affinity-wins"],
)
def test_high_availability(
    sets: tuple[str, ...], replicas: int, strategy: str, pdb: bool, anti_affinity: bool, elect: bool
) -> None:
    docs = render(*sets)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == replicas and spec["strategy"]["type"] == strategy
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert [b["spec"]["minAvailable"] for b in budgets] == ([1] if pdb else [])
    for budget in budgets:
        assert budget["spec"]["selector"] == spec["selector"]
    affinity = spec["template"]["spec"].get("affinity") or {}
    assert ("podAntiAffinity" in affinity) is anti_affinity
    if anti_affinity:
        (term,) = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    container = spec["template"]["spec"]["containers"][0]
    args = container["args"]
    assert ("--leader-elect" in args) is elect
    # Ready only once /healthz answers: the health Service and maxUnavailable: 0 count a replica
    # that is up, not one whose container merely started.
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    election = [r for r in roles_in(docs) if is_leader_election(r)]
    assert [(r["kind"], r["metadata"]["namespace"]) for r in election] == (
        [("Role", "etha-system")] if elect else []
    )
    for role in election:
        assert grants(role["rules"]) == LEADER_ELECTION_GRANTS
        assert "--leader-election-id=etha-etha-operator" in args
