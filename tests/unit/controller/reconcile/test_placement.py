"""The placement policy (etha.operator.reconcile.placement) and the gang it places: a fresh
PodGroup per attempt, why a job waits for the scheduler, FailJob after scheduleTimeoutSeconds.
spec.scheduling itself: tests/unit/job/test_scheduling.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etha.job import constants as c
from etha.job.pods import timestamp
from etha.job.spec import parse
from tests.factories import gang_job, make_pod, make_trainingjob, reconcile
from tests.unit.controller.reconcile import helpers

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def kinds(acts: Any) -> list[tuple[str, str]]:
    return [(m["kind"], m["metadata"]["name"]) for m in acts.create]


def test_a_new_attempt_creates_its_podgroup_before_its_pods() -> None:
    job = gang_job(replicas=2, gang="coscheduling")
    acts = reconcile(job, {}, [], False, NOW, None)
    made = kinds(acts)
    assert made.index(("PodGroup", "g-0")) < made.index(("Pod", "g-master-0"))
    assert ("Pod", "g-worker-0-1") in made


def test_no_podgroup_is_made_once_every_pod_exists() -> None:
    job = gang_job(replicas=1, gang="coscheduling")
    pods = [
        make_pod("g-master-0", "Pending", role="master", job="g"),
        make_pod("g-worker-0-0", "Pending", job="g"),
    ]
    acts = reconcile(job, {"attempt": 0}, pods, True, NOW, None)
    assert not [m for m in acts.create if m["kind"] == "PodGroup"]


def test_a_restarted_attempt_gets_a_fresh_podgroup() -> None:
    job = gang_job(replicas=1, gang="coscheduling")
    acts = reconcile(job, {"attempt": 3, "restarts": 3}, [], True, NOW, None)
    assert ("PodGroup", "g-3") in kinds(acts)


def unschedulable_pod(name: str, role: str, message: str, created: datetime) -> dict[str, Any]:
    cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    return make_pod(name, "Pending", role=role, job="g", created=timestamp(created), conditions=[cond])


def waiting_pods(created: datetime) -> list[dict[str, Any]]:
    return [
        unschedulable_pod("g-master-0", "master", "rejected in Permit with the gang", created),
        unschedulable_pod(
            "g-worker-0-0", "worker", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.", created
        ),
    ]


def test_a_waiting_gang_says_the_schedulers_reason_and_its_podgroup() -> None:
    job = gang_job(replicas=1, gang="coscheduling")
    pods = waiting_pods(NOW - timedelta(seconds=5))
    acts = reconcile(job, {"attempt": 0}, pods, True, NOW, None, pod_group="PodGroup g-0 is Pending")
    (cond,) = [x for x in acts.status["conditions"] if x["type"] == c.COND_SCHEDULED]
    # The pod that says why in terms of nodes, not the one rejected with its gang.
    assert cond["status"] == "False" and cond["message"] == (
        "Pod g-worker-0-0 cannot be scheduled: 0/3 nodes are available: 3 Insufficient "
        "nvidia.com/gpu. (gang: PodGroup g-0 is Pending)"
    )
    assert acts.status["phase"] == "Pending" and acts.status["reason"] == "Unschedulable"
    assert [e.reason for e in acts.events] == ["Unschedulable"]


def test_on_timeout_fail_job_fails_after_the_timeout_and_not_before() -> None:
    """The clock starts when the scheduler first said it could not place a pod (the condition's
    transition), not at the pods' creation (Kueue may have held them back until then)."""
    job = gang_job(replicas=1, gang="coscheduling", scheduleTimeoutSeconds=60, onTimeout="FailJob")
    pods = waiting_pods(NOW - timedelta(seconds=300))
    first = reconcile(job, {"attempt": 0}, pods, True, NOW - timedelta(seconds=40), None)
    assert first.status["phase"] == "Pending"
    assert first.requeue_after == pytest.approx(60.0)
    status = {"attempt": 0, "conditions": first.status["conditions"]}
    before = reconcile(job, status, pods, True, NOW + timedelta(seconds=19), None)
    assert before.status["phase"] == "Pending" and before.requeue_after == pytest.approx(1.0)
    later = reconcile(job, status, pods, True, NOW + timedelta(seconds=20), None)
    assert later.status["phase"] == "Failed" and later.status["reason"] == "ScheduleTimeout"
    (failed,) = [x for x in later.status["conditions"] if x["type"] == "Failed"]
    assert "scheduleTimeoutSeconds (60 s)" in failed["message"]
    assert "3 Insufficient nvidia.com/gpu" in failed["message"]
    assert sorted(later.delete_pods) == ["g-master-0", "g-worker-0-0"]


def test_a_gang_placed_after_its_timeout_but_before_the_look_is_not_failed() -> None:
    """The condition says False from the last look; the pods, now, are placed: they decide."""
    job = gang_job(replicas=1, gang="coscheduling", scheduleTimeoutSeconds=60, onTimeout="FailJob")
    pods = waiting_pods(NOW - timedelta(seconds=600))
    first = reconcile(job, {"attempt": 0}, pods, True, NOW - timedelta(seconds=500), None)
    placed = [make_pod(p["metadata"]["name"], "Running", role=p["metadata"]["labels"]["etha.io/role"], job="g")
              for p in pods]  # fmt: skip
    later = reconcile(job, {"attempt": 0, "conditions": first.status["conditions"]}, placed, True, NOW, None)
    assert later.status["phase"] == "Running", later.status


def test_a_restart_or_a_suspension_forgets_why_the_last_attempt_waited() -> None:
    job = gang_job(replicas=1, gang="coscheduling", scheduleTimeoutSeconds=60, onTimeout="FailJob")
    pods = waiting_pods(NOW - timedelta(seconds=600))
    first = reconcile(job, {"attempt": 0}, pods, True, NOW - timedelta(seconds=500), None)
    waited = {"attempt": 0, "conditions": first.status["conditions"], "reason": "Unschedulable"}
    body = make_trainingjob(name="g", replicas=1, scheduling={"gang": "coscheduling"}, suspend=True)
    held = reconcile(parse(body), waited, pods, True, NOW, None)
    assert held.status["reason"] is None and held.delete_groups == ["g-0"]
    assert not [x for x in held.status["conditions"] if x["type"] == c.COND_SCHEDULED]
    # Resumed (the same attempt, no pods yet): nothing has waited, nothing fails.
    resumed = reconcile(job, {**waited, "phase": "Suspended"}, [], True, NOW, None)
    assert resumed.status.get("phase") != "Failed" and ("PodGroup", "g-0") in kinds(resumed)


def test_a_kueue_gated_pod_is_not_unschedulable() -> None:
    job = gang_job(replicas=1, labels={"kueue.x-k8s.io/queue-name": "team-a"}, kueue_mode="PodGroup")
    gated = {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated", "message": "gated"}
    pods = [make_pod(n, "Pending", role=r, job="g", conditions=[gated]) for n, r in
            (("g-master-0", "master"), ("g-worker-0-0", "worker"))]  # fmt: skip
    acts = reconcile(job, {"attempt": 0}, pods, True, NOW, None)
    assert not [x for x in acts.status.get("conditions") or [] if x["type"] == c.COND_SCHEDULED]
    assert not acts.status.get("reason")


def test_a_new_attempts_podgroup_replaces_the_last_ones() -> None:
    job = gang_job(replicas=1, gang="coscheduling")
    acts = reconcile(job, {"attempt": 2, "restarts": 2}, [], True, NOW, None)
    assert ("PodGroup", "g-2") in kinds(acts) and acts.delete_groups == ["g-1"]


def test_the_podgroup_phase_changing_updates_the_message_without_a_new_event() -> None:
    job = gang_job(replicas=1, gang="coscheduling")
    pods = waiting_pods(NOW - timedelta(seconds=5))
    first = reconcile(job, {"attempt": 0}, pods, True, NOW, None, pod_group="PodGroup g-0 is Pending")
    status = {"attempt": 0, "conditions": first.status["conditions"]}
    later = reconcile(job, status, pods, True, NOW, None, pod_group="PodGroup g-0 is Scheduling")
    (cond,) = [x for x in later.status["conditions"] if x["type"] == c.COND_SCHEDULED]
    assert cond["message"].endswith("(gang: PodGroup g-0 is Scheduling)") and not later.events
    # A rejected-with-the-gang message after the telling one keeps the telling one (suffix and all).
    rejected = [unschedulable_pod(p["metadata"]["name"], p["metadata"]["labels"]["etha.io/role"],
                                  "0/1 nodes are available: 1 optimistic rejection in PostFilter.", NOW)
                for p in pods]  # fmt: skip
    status = {"attempt": 0, "conditions": later.status["conditions"]}
    again = reconcile(job, status, rejected, True, NOW, None, pod_group="PodGroup g-0 is Scheduling")
    assert "conditions" not in again.status and not again.events


def test_on_timeout_wait_keeps_waiting() -> None:
    job = gang_job(replicas=1, gang="coscheduling", scheduleTimeoutSeconds=60)
    pods = waiting_pods(NOW - timedelta(hours=2))
    first = reconcile(job, {"attempt": 0}, pods, True, NOW - timedelta(hours=1), None)
    status = {"attempt": 0, "conditions": first.status["conditions"]}
    later = reconcile(job, status, pods, True, NOW, None)
    assert later.status["phase"] == "Pending" and not later.delete_pods


def test_placed_pods_clear_the_reason() -> None:
    job = gang_job(replicas=1, gang="coscheduling")
    pods = waiting_pods(NOW - timedelta(seconds=5))
    first = reconcile(job, {"attempt": 0}, pods, True, NOW, None)
    placed = [make_pod(p["metadata"]["name"], "Running", role=p["metadata"]["labels"]["etha.io/role"], job="g")
              for p in pods]  # fmt: skip
    status = {"attempt": 0, "conditions": first.status["conditions"], "reason": "Unschedulable"}
    later = reconcile(job, status, placed, True, NOW, None)
    assert later.status["reason"] is None
    (cond,) = [x for x in later.status["conditions"] if x["type"] == c.COND_SCHEDULED]
    assert cond["status"] == "True"


def test_a_gang_keeps_its_telling_reason_while_its_pods_take_turns_saying_they_were_rejected() -> None:
    """Coscheduling: one member names the missing GPUs, then every member says it was rejected
    with the rest. The job keeps the reason, and posts one event, not one per turn."""
    job = gang_job(replicas=2, gang="coscheduling")
    created = NOW - timedelta(seconds=5)
    insufficient = (
        "0/3 nodes are available: 1 Insufficient nvidia.com/gpu. PodGroup gets rejected due to Pod {}"
    )
    rejected = "0/1 nodes are available: 1 optimistic rejection in PostFilter."
    first = [
        unschedulable_pod("g-master-0", "master", rejected, created),
        unschedulable_pod("g-worker-0-0", "worker", rejected, created),
        unschedulable_pod("g-worker-0-1", "worker", insufficient.format("g-worker-0-1"), created),
    ]
    acts = reconcile(job, {"attempt": 0}, first, True, NOW, None)
    (cond,) = [x for x in acts.status["conditions"] if x["type"] == c.COND_SCHEDULED]
    assert "Insufficient nvidia.com/gpu" in cond["message"] and len(acts.events) == 1
    status = {"attempt": 0, "conditions": acts.status["conditions"], "reason": "Unschedulable"}
    # Next turn: every member only says it was rejected with the rest.
    turn = [unschedulable_pod(p["metadata"]["name"], p["metadata"]["labels"]["etha.io/role"], rejected, created)
            for p in first]  # fmt: skip
    later = reconcile(job, status, turn, True, NOW + timedelta(seconds=1), None)
    assert "conditions" not in later.status and not later.events
    # Another member names the same lack of GPUs: the same reason, no new event.
    other = [
        *turn[:2],
        unschedulable_pod("g-worker-0-1", "worker", insufficient.format("g-worker-0-0"), created),
    ]
    other[1] = unschedulable_pod("g-worker-0-0", "worker", insufficient.format("g-worker-0-0"), created)
    again = reconcile(job, status, other, True, NOW + timedelta(seconds=2), None)
    assert "conditions" not in again.status and not again.events


def test_a_gang_not_all_made_yet_is_not_a_reason_and_the_schedulers_events_say_why() -> None:
    """Coscheduling's "cannot find enough sibling pods" (the gang's pods still being created)
    speaks of the gang, not of the nodes; when every member's condition says only that it was
    rejected with the rest, the FailedScheduling events (newest first) say what the nodes lack."""
    from etha.operator.reconcile.placement import how_telling, unschedulable

    siblings = "0/3 nodes are available: pre-filter pod g-master-0 cannot find enough sibling pods, current pods number: 1"
    assert how_telling(siblings) == 1
    job = gang_job(replicas=1, gang="coscheduling")
    created = NOW - timedelta(seconds=5)
    rejected = "0/1 nodes are available: 1 optimistic rejection in PostFilter."
    pods = [unschedulable_pod("g-master-0", "master", siblings, created),
            unschedulable_pod("g-worker-0-0", "worker", rejected, created)]  # fmt: skip
    told = [("g-worker-0-0", "0/3 nodes are available: 1 Insufficient nvidia.com/gpu.")]
    assert unschedulable(pods, told) == told[0]
    assert unschedulable(pods) == ("g-master-0", siblings)  # without the events: the first
    acts = reconcile(job, {"attempt": 0}, pods, True, NOW, None, scheduler_said=told)
    (cond,) = [x for x in acts.status["conditions"] if x["type"] == c.COND_SCHEDULED]
    assert "1 Insufficient nvidia.com/gpu" in cond["message"], cond


def test_an_unschedulable_pod_puts_the_schedulers_reason_on_the_job_once() -> None:
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    unplaced = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    pods = [
        make_pod("mnist-master-0", "Running", role="master"),
        make_pod("mnist-worker-0-0", "Pending", conditions=[unplaced]),
        make_pod("mnist-worker-0-1", "Running"),
    ]
    job = parse(make_trainingjob(replicas=2))
    acts = reconcile(job, {"startTime": "2026-01-01T11:59:00Z"}, pods, True, helpers.NOW, True)
    (cond,) = [x for x in acts.status["conditions"] if x["type"] == "PodsScheduled"]
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert cond["message"] == f"Pod mnist-worker-0-0 cannot be scheduled: {message}"
    assert [(e.type, e.reason) for e in acts.events] == [("Warning", "Unschedulable")]
    # Seen again unchanged: no second event.
    again = reconcile(
        job, {"startTime": "2026-01-01T11:59:00Z", **acts.status}, pods, True, helpers.NOW, True
    )
    assert not [e for e in again.events if e.reason == "Unschedulable"]
    # Scheduled at last: the condition turns True.
    pods[1] = make_pod("mnist-worker-0-0", "Running")
    placed = reconcile(
        job, {"startTime": "2026-01-01T11:59:00Z", **acts.status}, pods, True, helpers.NOW, True
    )
    (cond,) = [x for x in placed.status["conditions"] if x["type"] == "PodsScheduled"]
    assert cond["status"] == "True"
