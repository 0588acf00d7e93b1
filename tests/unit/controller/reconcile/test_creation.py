"""The creation step (etha.operator.reconcile.creation): what the attempt lacks is made, all at
once and in order, and its phase and worker counts are reported."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from etha.job.builders import build_network_policy, build_service, spec_hash
from etha.job.spec import parse
from etha.operator.reconcile.creation import CREATE_BATCH
from etha.operator.reconcile.model import pins
from tests.factories import make_etcd_trainingjob, make_pod, make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW, names


def test_new_job_creates_service_master_and_workers() -> None:
    acts = reconcile(parse(make_trainingjob(replicas=3)), {}, [], False, NOW)
    assert names(acts.create) == [
        "mnist",
        "mnist-master-0",
        "mnist-worker-0-0",
        "mnist-worker-0-1",
        "mnist-worker-0-2",
    ]
    assert acts.status["phase"] == "Pending" and acts.status["startTime"] == "2026-01-01T12:00:00Z"
    assert acts.status["masterAddress"] == "mnist-master-0.mnist.research.svc:29500"
    assert len([e for e in acts.events if e.reason == "Created"]) == 5


def test_partially_created_job_creates_only_whats_missing() -> None:
    """An operator restarted mid-creation converges without duplicates."""
    pods = [make_pod("mnist-master-0", "Pending", role="master"), make_pod("mnist-worker-0-1", "Pending")]
    acts = reconcile(
        parse(make_trainingjob(replicas=3)), {"startTime": "2026-01-01T11:59:00Z"}, pods, True, NOW
    )
    assert names(acts.create) == ["mnist-worker-0-0", "mnist-worker-0-2"]
    assert acts.delete_pods == []


def test_all_running_is_running() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master")] + [
        make_pod(f"mnist-worker-0-{r}", "Running") for r in range(2)
    ]
    acts = reconcile(parse(make_trainingjob()), {"phase": "Pending"}, pods, True, NOW)
    assert acts.status["phase"] == "Running" and acts.create == []
    assert acts.status["workers"]["readyText"] == "2/2"
    assert any(c["type"] == "Running" and c["status"] == "True" for c in acts.status["conditions"])


def test_next_attempt_deletes_leftovers_and_creates_new_pods() -> None:
    pods = [make_pod("mnist-worker-0-0", "Running")]  # still terminating from attempt 0
    acts = reconcile(
        parse(make_trainingjob(maxRestarts=2)),
        {"phase": "Restarting", "attempt": 1, "restarts": 1},
        pods,
        True,
        NOW,
    )
    assert acts.delete_pods == ["mnist-worker-0-0"]
    assert names(acts.create) == ["mnist-master-1", "mnist-worker-1-0", "mnist-worker-1-1"]
    env = {e["name"]: e["value"] for e in acts.create[1]["spec"]["containers"][0]["env"]}
    assert env["TORCHELASTIC_RESTART_COUNT"] == "1" and env["MASTER_ADDR"].startswith("mnist-master-1.")


def test_a_worker_in_an_unknown_phase_counts_as_pending() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master"), make_pod("mnist-worker-0-0", "Unknown")]
    acts = reconcile(parse(make_trainingjob()), {}, pods, True, NOW)
    assert acts.status["workers"]["pending"] == 2 and acts.status["phase"] == "Pending"


def test_a_missing_pod_while_pending_is_just_created() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master"), make_pod("mnist-worker-0-0", "Running")]
    acts = reconcile(parse(make_trainingjob(maxRestarts=1)), {"phase": "Pending"}, pods, True, NOW)
    assert names(acts.create) == ["mnist-worker-0-1"] and acts.delete_pods == []


def test_etcd_backend_starts_no_master_and_points_workers_at_etcd_and_rank_0() -> None:
    acts = reconcile(parse(make_etcd_trainingjob(replicas=2)), {}, [], False, NOW)
    assert names(acts.create) == ["mnist", "mnist-worker-0-0", "mnist-worker-0-1"]
    env = {e["name"]: e["value"] for e in acts.create[2]["spec"]["containers"][0]["env"]}
    assert env["ETHA_KVSTORE_BACKEND"] == "etcd" and env["ETHA_ETCD_ENDPOINTS"] == "etcd-0:2379"
    assert env["MASTER_ADDR"] == "mnist-worker-0-0.mnist.research.svc"
    assert env["TORCHELASTIC_USE_AGENT_STORE"] == "False" and "ETHA_KVSTORE_HOST" not in env
    assert acts.status["masterAddress"] == "mnist-worker-0-0.mnist.research.svc:29500"


def test_etcd_backend_is_running_without_a_master() -> None:
    pods = [make_pod(f"mnist-worker-0-{r}", "Running") for r in range(2)]
    acts = reconcile(parse(make_etcd_trainingjob()), {"phase": "Pending"}, pods, True, NOW)
    assert acts.status["phase"] == "Running" and acts.create == []
    again = reconcile(parse(make_etcd_trainingjob()), dict(acts.status), pods, True, NOW)
    assert again.delete_pods == [] and again.status["phase"] == "Running"


@pytest.mark.parametrize(
    ("body", "selected"),
    [(make_trainingjob(), "mnist-master-0"), (make_etcd_trainingjob(), "mnist-worker-0-0")],
    ids=["tcp-master", "etcd-worker-0"],
)
def test_the_network_policy_guards_whoever_hosts_the_store(body: dict[str, Any], selected: str) -> None:
    """Backend etcd: worker 0 hosts torch's unauthenticated store on MASTER_PORT; it is guarded."""
    acts = reconcile(parse(body), {}, [], True, NOW, False)
    (policy,) = [m for m in acts.create if m["kind"] == "NetworkPolicy"]
    labels = {m["metadata"]["name"]: m["metadata"]["labels"] for m in acts.create if m["kind"] == "Pod"}
    chosen = [
        n
        for n, have in labels.items()
        if policy["spec"]["podSelector"]["matchLabels"].items() <= have.items()
    ]
    assert chosen == [selected]


@pytest.mark.parametrize(("exists", "created"), [(None, False), (True, False), (False, True)])
def test_reconcile_creates_the_network_policy_only_when_managed_and_missing(
    exists: bool | None, created: bool
) -> None:
    acts = reconcile(parse(make_trainingjob()), {}, [], True, datetime(2026, 1, 1, tzinfo=UTC), exists)
    assert ("NetworkPolicy" in [m["kind"] for m in acts.create]) is created


def test_a_large_job_is_created_in_batches_each_look_asking_for_the_next_at_once() -> None:
    """Memory does not grow with replicas: a look builds at most CREATE_BATCH pods."""
    job = parse(make_trainingjob(replicas=1000, scheduling={"gang": "coscheduling"}))
    pods: list[dict[str, Any]] = []
    looks = []
    while True:
        acts = reconcile(job, {"startTime": "2026-01-01T11:59:00Z"}, pods, True, NOW, True)
        made = [m for m in acts.create if m["kind"] == "Pod"]
        looks.append((len(made), acts.requeue_after))
        if not made:
            break
        assert acts.create[0]["kind"] == "PodGroup"  # before its pods, on every look
        pods += [
            make_pod(m["metadata"]["name"], "Pending", role=m["metadata"]["labels"]["etha.io/role"])
            for m in made
        ]
    assert CREATE_BATCH == 256
    assert looks == [(256, 0.0), (256, 0.0), (256, 0.0), (233, None), (0, None)]
    assert len({p["metadata"]["name"] for p in pods}) == 1001
    # An object in the way: the next batch waits for the conflict's backoff, not at once.
    blocked = reconcile(
        job, {"startTime": "2026-01-01T11:59:00Z"}, [], True, NOW, True, conflict="Pod x", retry_in=4.0
    )
    assert blocked.requeue_after == 4.0


def _drift(body: dict[str, Any], hashes: dict[str, str | None]) -> list[dict[str, Any]]:
    return reconcile(parse(body), {}, [], True, NOW, True, spec_hashes=hashes).patch


@pytest.mark.parametrize(
    ("was", "patched"),
    [
        ({"rendezvous": {"port": 29500}}, []),
        ({"rendezvous": {"port": 29400}}, ["mnist", "mnist-rendezvous"]),
        (None, ["mnist", "mnist-rendezvous"]),
    ],
    ids=["unchanged", "port-changed", "older-operator-no-annotation"],
)
def test_kept_children_that_drifted_from_the_spec_are_patched(
    was: dict[str, Any] | None, patched: list[str]
) -> None:
    """A port changed while suspended: the Service and NetworkPolicy follow it on resume."""
    old = parse(make_trainingjob(restartStrategy="Recreate", **was)) if was is not None else None
    hashes = {
        "mnist": spec_hash(build_service(old)) if old else None,
        "mnist-rendezvous": spec_hash(build_network_policy(old)) if old else None,
    }
    out = _drift(make_trainingjob(restartStrategy="Recreate", rendezvous={"port": 29500}), hashes)
    assert names(out) == patched
    for manifest in out:
        assert manifest["metadata"]["annotations"]["etha.io/spec-hash"] == spec_hash(manifest)
    if patched:
        (policy,) = [m for m in out if m["kind"] == "NetworkPolicy"]
        assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 29500}]
        assert out[0]["spec"]["ports"][0]["port"] == 29500


def test_children_not_observed_or_of_a_refused_edit_are_not_patched() -> None:
    """Only children that exist and are the job's have a hash observed; a port edit a running
    attempt refused patches nothing: the attempt keeps its port."""
    assert _drift(make_trainingjob(rendezvous={"port": 29400}), {}) == []
    old = parse(make_trainingjob())
    status = {"attempt": 0, "attemptSpec": {"attempt": 0, **pins(old)}}
    hashes = {"mnist": spec_hash(build_service(old))}
    acts = reconcile(
        parse(make_trainingjob(rendezvous={"port": 29400})), status, [], True, NOW, spec_hashes=hashes
    )
    assert acts.patch == [] and acts.status["conditions"][0]["type"] == "SpecChangeRefused"
