"""The chart's high availability: replicas, leader election's Lease RBAC, the rollout strategy,
the PodDisruptionBudget and the anti-affinity, for each value set that changes them."""

from __future__ import annotations

import pytest

from tests.rbac import LEADER_ELECTION_GRANTS, grants, is_leader_election, roles_in
from tests.unit.deploy.test_chart import render

#: High availability, opted into (the kind tier has not run it yet: the defaults stay one replica).
HA = ("replicaCount=2", "leaderElection.enabled=true")


@pytest.mark.parametrize(
    ("sets", "replicas", "strategy", "pdb", "anti_affinity", "elect"),
    [
        ((), 1, "Recreate", False, False, False),
        (HA, 2, "RollingUpdate", True, True, True),
        ((*HA, "rbac.scope=namespaced"), 2, "RollingUpdate", True, True, True),
        (("leaderElection.enabled=true",), 1, "RollingUpdate", False, False, True),
        ((*HA, "affinity.nodeAffinity.x=y"), 2, "RollingUpdate", True, False, True),
    ],
    ids=["default-single", "ha", "namespaced-ha", "one-replica-elected", "own-affinity-wins"],
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
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert ("--leader-elect" in args) is elect
    election = [r for r in roles_in(docs) if is_leader_election(r)]
    assert [(r["kind"], r["metadata"]["namespace"]) for r in election] == (
        [("Role", "etha-system")] if elect else []
    )
    for role in election:
        assert grants(role["rules"]) == LEADER_ELECTION_GRANTS
        assert "--leader-election-id=etha-etha-operator" in args
