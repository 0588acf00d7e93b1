from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from etha.job.spec import parse
from tests.factories import make_pod, make_trainingjob, reconcile

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def names(manifests: list[dict]) -> list[str]:
    return [m["metadata"]["name"] for m in manifests]


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


def test_all_workers_succeeded_is_succeeded_and_master_removed() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master")] + [
        make_pod(f"mnist-worker-0-{r}", "Succeeded") for r in range(2)
    ]
    acts = reconcile(parse(make_trainingjob()), {"phase": "Running"}, pods, True, NOW)
    assert acts.status["phase"] == "Succeeded" and acts.delete_pods == ["mnist-master-0"]
    assert acts.status["completionTime"] == "2026-01-01T12:00:00Z"


@pytest.mark.parametrize(
    ("restarts", "max_restarts", "phase"),
    [(0, 1, "Restarting"), (1, 1, "Failed"), (0, 0, "Failed")],
    ids=["restart-left", "limit-reached", "no-restarts"],
)
def test_failed_worker_restarts_or_fails(restarts: int, max_restarts: int, phase: str) -> None:
    pods = [
        make_pod("mnist-master-0", "Running", role="master"),
        make_pod("mnist-worker-0-0", "Running"),
        make_pod("mnist-worker-0-1", "Failed", exit_code=3),
    ]
    status = {"phase": "Running", "restarts": restarts, "attempt": 0}
    acts = reconcile(parse(make_trainingjob(maxRestarts=max_restarts)), status, pods, True, NOW)
    assert acts.status["phase"] == phase
    if phase == "Restarting":
        assert acts.status["attempt"] == 1 and acts.status["restarts"] == 1
        assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1"]
    else:
        failed = next(c for c in acts.status["conditions"] if c["type"] == "Failed")
        assert "pod mnist-worker-0-1 failed: container trainer exit code 3 (Error)" in failed["message"]
        assert failed["reason"] == "RestartLimitExceeded"


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


def test_failed_master_counts_as_failure() -> None:
    pods = [make_pod("mnist-master-0", "Failed", role="master", exit_code=1)]
    acts = reconcile(parse(make_trainingjob()), {"phase": "Running"}, pods, True, NOW)
    assert acts.status["phase"] == "Failed"
    assert "mnist-master-0" in acts.status["conditions"][-1]["message"]


def test_suspend_deletes_pods_and_resume_recreates() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master"), make_pod("mnist-worker-0-0", "Running")]
    acts = reconcile(parse(make_trainingjob(suspend=True)), {"phase": "Running"}, pods, True, NOW)
    assert acts.status["phase"] == "Suspended" and sorted(acts.delete_pods) == [
        "mnist-master-0",
        "mnist-worker-0-0",
    ]
    acts = reconcile(
        parse(make_trainingjob()), {"phase": "Suspended", "startTime": "2026-01-01T11:00:00Z"}, [], True, NOW
    )
    assert names(acts.create) == ["mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1"]
    assert any(c["type"] == "Suspended" and c["status"] == "False" for c in acts.status["conditions"])


def test_deadline_exceeded_fails_and_deletes_pods() -> None:
    start = (NOW - timedelta(seconds=61)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods = [make_pod("mnist-master-0", "Running", role="master"), make_pod("mnist-worker-0-0", "Running")]
    acts = reconcile(
        parse(make_trainingjob(activeDeadlineSeconds=60)),
        {"phase": "Running", "startTime": start},
        pods,
        True,
        NOW,
    )
    assert acts.status["phase"] == "Failed"
    assert acts.status["conditions"][-1]["reason"] == "DeadlineExceeded"
    assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-0"]


def test_deadline_not_yet_reached_keeps_running() -> None:
    acts = reconcile(
        parse(make_trainingjob(activeDeadlineSeconds=60)),
        {"startTime": "2026-01-01T11:59:30Z"},
        [],
        True,
        NOW,
    )
    assert acts.status["phase"] == "Pending" and "Failed" not in [
        c["type"] for c in acts.status.get("conditions", [])
    ]


@pytest.mark.parametrize(
    ("finished_ago", "delete"), [(30, False), (120, True)], ids=["ttl-pending", "ttl-passed"]
)
def test_ttl_after_finished(finished_ago: int, delete: bool) -> None:
    done = (NOW - timedelta(seconds=finished_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    acts = reconcile(
        parse(make_trainingjob(ttlSecondsAfterFinished=60)),
        {"phase": "Succeeded", "completionTime": done},
        [],
        True,
        NOW,
    )
    assert acts.delete_job is delete
    assert acts.create == []


def test_reconcile_is_idempotent() -> None:
    job = parse(make_trainingjob(replicas=2))
    first = reconcile(job, {}, [], False, NOW)
    again = reconcile(job, {}, [], False, NOW)
    assert first.create == again.create and first.status == again.status


@pytest.mark.parametrize("phases", [("Pending", "Pending"), ("Running", "Running"), ("Running", "Pending")])
def test_a_second_reconcile_of_an_unchanged_job_changes_no_status(phases: tuple[str, str]) -> None:
    """Level-triggered and quiet: once its status is written, the same world yields the same
    status (the handler then writes nothing, and a real API server bumps no resourceVersion)."""
    master, worker = phases
    pods = [make_pod("mnist-master-0", master, role="master")] + [
        make_pod(f"mnist-worker-0-{r}", worker) for r in range(2)
    ]
    job = parse(make_trainingjob())
    first = reconcile(job, {}, pods, True, NOW)
    second = reconcile(job, dict(first.status), pods, True, NOW + timedelta(seconds=5))
    assert {k: v for k, v in second.status.items() if first.status.get(k) != v} == {}
    assert second.events == [] and second.create == [] and second.delete_pods == []


def test_set_condition_keeps_order_and_transition_time() -> None:
    from etha.operator.reconcile.conditions import condition, set_condition

    a = condition("A", True, "r", "m", NOW)
    b = condition("B", False, "r", "m", NOW)
    later = NOW + timedelta(minutes=1)
    same = set_condition([a, b], condition("A", True, "r2", "m2", later))
    assert [c["type"] for c in same] == ["A", "B"] and same[0]["lastTransitionTime"] == a[
        "lastTransitionTime"
    ]
    flipped = set_condition([a, b], condition("A", False, "r", "m", later))
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T12:01:00Z"
    assert [c["type"] for c in set_condition([a], b)] == ["A", "B"]


def test_a_finished_job_reports_its_final_worker_counts_and_is_no_longer_running() -> None:
    """Found by the e2e suite: status.workers froze at the last running counts."""
    pods = [make_pod("mnist-master-0", "Running", role="master")] + [
        make_pod(f"mnist-worker-0-{r}", "Succeeded") for r in range(2)
    ]
    running = reconcile(
        parse(make_trainingjob()),
        {},
        [*pods[:1], *(make_pod(f"mnist-worker-0-{r}", "Running") for r in range(2))],
        True,
        NOW,
    )
    done = reconcile(parse(make_trainingjob()), dict(running.status), pods, True, NOW)
    assert done.status["workers"]["succeeded"] == 2 and done.status["workers"]["running"] == 0
    by_type = {c["type"]: c for c in done.status["conditions"]}
    assert by_type["Succeeded"]["status"] == "True" and by_type["Running"]["status"] == "False"


def test_a_worker_in_an_unknown_phase_counts_as_pending() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master"), make_pod("mnist-worker-0-0", "Unknown")]
    acts = reconcile(parse(make_trainingjob()), {}, pods, True, NOW)
    assert acts.status["workers"]["pending"] == 2 and acts.status["phase"] == "Pending"


def test_a_pod_that_vanishes_while_running_restarts_the_attempt() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master"), make_pod("mnist-worker-0-0", "Running")]
    acts = reconcile(parse(make_trainingjob(maxRestarts=1)), {"phase": "Running"}, pods, True, NOW)
    assert acts.status["phase"] == "Restarting" and acts.status["attempt"] == 1
    assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-0"]
    assert "pod mnist-worker-0-1 disappeared" in acts.events[0].message


def test_a_missing_pod_while_pending_is_just_created() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master"), make_pod("mnist-worker-0-0", "Running")]
    acts = reconcile(parse(make_trainingjob(maxRestarts=1)), {"phase": "Pending"}, pods, True, NOW)
    assert names(acts.create) == ["mnist-worker-0-1"] and acts.delete_pods == []


def etcd_job(**spec: object) -> dict:
    return make_trainingjob(rendezvous={"backend": "etcd", "etcd": {"endpoints": ["etcd-0:2379"]}}, **spec)


def test_etcd_backend_starts_no_master_and_points_workers_at_etcd_and_rank_0() -> None:
    acts = reconcile(parse(etcd_job(replicas=2)), {}, [], False, NOW)
    assert names(acts.create) == ["mnist", "mnist-worker-0-0", "mnist-worker-0-1"]
    env = {e["name"]: e["value"] for e in acts.create[2]["spec"]["containers"][0]["env"]}
    assert env["ETHA_KVSTORE_BACKEND"] == "etcd" and env["ETHA_ETCD_ENDPOINTS"] == "etcd-0:2379"
    assert env["MASTER_ADDR"] == "mnist-worker-0-0.mnist.research.svc"
    assert env["TORCHELASTIC_USE_AGENT_STORE"] == "False" and "ETHA_KVSTORE_HOST" not in env
    assert acts.status["masterAddress"] == "mnist-worker-0-0.mnist.research.svc:29500"


def test_etcd_backend_is_running_without_a_master() -> None:
    pods = [make_pod(f"mnist-worker-0-{r}", "Running") for r in range(2)]
    acts = reconcile(parse(etcd_job()), {"phase": "Pending"}, pods, True, NOW)
    assert acts.status["phase"] == "Running" and acts.create == []
    again = reconcile(parse(etcd_job()), dict(acts.status), pods, True, NOW)
    assert again.delete_pods == [] and again.status["phase"] == "Running"


@pytest.mark.parametrize(
    ("rendezvous", "needle"),
    [
        ({"backend": "etcd"}, "spec.rendezvous.etcd.endpoints (None) must list at least one"),
        ({"backend": "etcd", "etcd": {"endpoints": []}}, "spec.rendezvous.etcd.endpoints ([]) must list"),
        ({"backend": "zookeeper"}, "spec.rendezvous.backend ('zookeeper') must be tcp or etcd"),
        ({"backend": "etcd", "etcd": "etcd:2379"}, "spec.rendezvous.etcd ('etcd:2379') must be an object"),
        ({"backend": "etcd", "etcd": {"endpoints": "etcd:2379"}}, "endpoints ('etcd:2379') must be a list"),
        (
            {"backend": "etcd", "etcd": {"endpoints": ["a:1", 5]}},
            "endpoints[1]: etcd endpoint (5) must be a host:port",
        ),
        (
            {"backend": "etcd", "etcd": {"endpoints": ["a:99999"]}},
            "spec.rendezvous.etcd.endpoints[0]: etcd endpoint",
        ),
    ],
)
def test_bad_backend_settings_name_the_field(rendezvous: dict, needle: str) -> None:
    from etha.job.spec import InvalidSpec

    with pytest.raises(InvalidSpec, match=re.escape(needle)):
        parse(make_trainingjob(rendezvous=rendezvous))


def test_etcd_backend_without_endpoints_uses_the_operators_default_etcd() -> None:
    job = parse(
        make_trainingjob(rendezvous={"backend": "etcd"}),
        default_etcd_endpoints=["etcd-0:2379", "etcd-1:2379"],
    )
    assert job.etcd_endpoints == ["etcd-0:2379", "etcd-1:2379"]
    own = parse(etcd_job(), default_etcd_endpoints=["etcd-0:2379", "etcd-1:2379"])
    assert own.etcd_endpoints == ["etcd-0:2379"]  # the job's own win
    assert parse(make_trainingjob(), default_etcd_endpoints=["etcd-0:2379"]).etcd_endpoints is None


def test_etcd_backend_needs_no_network_policy() -> None:
    acts = reconcile(parse(etcd_job()), {}, [], True, NOW, False)
    assert "NetworkPolicy" not in [m["kind"] for m in acts.create]


def test_an_unschedulable_pod_puts_the_schedulers_reason_on_the_job_once() -> None:
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    unplaced = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    pods = [
        make_pod("mnist-master-0", "Running", role="master"),
        make_pod("mnist-worker-0-0", "Pending", conditions=[unplaced]),
        make_pod("mnist-worker-0-1", "Running"),
    ]
    job = parse(make_trainingjob(replicas=2))
    acts = reconcile(job, {"startTime": "2026-01-01T11:59:00Z"}, pods, True, NOW, True)
    (cond,) = [x for x in acts.status["conditions"] if x["type"] == "PodsScheduled"]
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert cond["message"] == f"Pod mnist-worker-0-0 cannot be scheduled: {message}"
    assert [(e.type, e.reason) for e in acts.events] == [("Warning", "Unschedulable")]
    # Seen again unchanged: no second event.
    again = reconcile(job, {"startTime": "2026-01-01T11:59:00Z", **acts.status}, pods, True, NOW, True)
    assert not [e for e in again.events if e.reason == "Unschedulable"]
    # Scheduled at last: the condition turns True.
    pods[1] = make_pod("mnist-worker-0-0", "Running")
    placed = reconcile(job, {"startTime": "2026-01-01T11:59:00Z", **acts.status}, pods, True, NOW, True)
    (cond,) = [x for x in placed.status["conditions"] if x["type"] == "PodsScheduled"]
    assert cond["status"] == "True"


def test_a_ttl_deletion_says_why_in_an_event() -> None:
    job = parse(make_trainingjob(ttlSecondsAfterFinished=30))
    status = {"phase": "Succeeded", "completionTime": "2026-01-01T12:00:00Z"}
    acts = reconcile(job, status, [], True, datetime(2026, 1, 1, 12, 0, 31, tzinfo=UTC))
    assert acts.delete_job
    assert [(e.reason, e.message) for e in acts.events] == [
        (
            "TTLExpired",
            "spec.ttlSecondsAfterFinished (30 s) passed since the job succeeded: deleting it and its pods.",
        )
    ]
