"""spec.scheduling: parsing, the PodGroups and pod markers built from it, and the decisions that
use it (a fresh group per attempt, why a job waits, FailJob after scheduleTimeoutSeconds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etha.job import constants as c
from etha.job.builders import build_master_pod, build_pod_group_of, build_worker_pod
from etha.job.pods import timestamp
from etha.job.scheduling import GROUP_KINDS, group_name
from etha.job.spec import InvalidSpec, JobSpec, parse
from etha.operator.config import ConfigError, OperatorConfig
from tests.factories import make_pod, make_trainingjob, reconcile
from tests.unit.controller.reconcile import helpers

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def gang_job(replicas: int = 3, labels: dict[str, str] | None = None, **scheduling: Any) -> JobSpec:
    body = make_trainingjob(name="g", replicas=replicas, scheduling=scheduling)
    if labels:
        body["metadata"]["labels"] = labels
    return parse(body)


def test_no_scheduling_is_no_gang_and_the_pods_are_as_before() -> None:
    job = parse(make_trainingjob(name="g"))
    assert job.scheduling.gang == "none" and build_pod_group_of(job, 0) is None
    pod = build_worker_pod(job, 0, 0)
    assert "schedulerName" not in pod["spec"] and "priorityClassName" not in pod["spec"]
    assert not any(k.startswith(("scheduling.", "kueue.")) for k in pod["metadata"]["labels"])


def test_coscheduling_group_counts_every_pod_and_every_pod_names_it() -> None:
    job = gang_job(replicas=3, gang="coscheduling", scheduleTimeoutSeconds=30)
    group = build_pod_group_of(job, 2)
    assert group is not None
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1" and group["kind"] == "PodGroup"
    assert group["metadata"]["name"] == "g-2" == group_name("g", 2)
    assert group["spec"] == {"minMember": 4, "scheduleTimeoutSeconds": 30}  # 3 workers + master
    (ref,) = group["metadata"]["ownerReferences"]
    assert ref["uid"] == "uid-1" and ref["controller"] is True
    for pod in [build_master_pod(job, 2), *(build_worker_pod(job, 2, r) for r in range(3))]:
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "g-2"


def test_volcano_group_has_queue_and_priority_and_pods_carry_the_annotation() -> None:
    job = gang_job(replicas=2, gang="volcano", queue="research", priorityClassName="high.priority")
    group = build_pod_group_of(job, 0)
    assert group is not None and group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["spec"] == {"minMember": 3, "queue": "research", "priorityClassName": "high.priority"}
    pod = build_worker_pod(job, 0, 1)
    assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "g-0"
    assert pod["spec"]["priorityClassName"] == "high.priority"
    assert build_master_pod(job, 0)["spec"]["priorityClassName"] == "high.priority"


def test_etcd_backend_gang_has_no_master_member() -> None:
    body = make_trainingjob(
        name="g",
        replicas=2,
        scheduling={"gang": "coscheduling"},
        rendezvous={"backend": "etcd", "etcd": {"endpoints": ["etcd:2379"]}},
    )
    group = build_pod_group_of(parse(body), 0)
    assert group is not None and group["spec"]["minMember"] == 2


def test_the_operators_default_gang_and_scheduler_apply_unless_the_job_says_otherwise() -> None:
    body = make_trainingjob(name="g")
    job = parse(body, default_gang="coscheduling", default_scheduler="scheduler-plugins-scheduler")
    assert job.scheduling.gang == "coscheduling"
    assert build_worker_pod(job, 0, 0)["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    assert build_master_pod(job, 0)["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    body["spec"]["scheduling"] = {"gang": "none"}
    body["spec"]["template"]["spec"]["schedulerName"] = "mine"
    job = parse(body, default_gang="coscheduling", default_scheduler="scheduler-plugins-scheduler")
    assert job.scheduling.gang == "none" and build_pod_group_of(job, 0) is None
    # The template's scheduler is the job's: the master goes to the same one.
    assert build_master_pod(job, 0)["spec"]["schedulerName"] == "mine"


def test_a_kueue_queue_label_makes_the_pods_one_kueue_pod_group_per_attempt() -> None:
    job = gang_job(replicas=2, labels={"kueue.x-k8s.io/queue-name": "team-a"})
    for pod in (build_master_pod(job, 1), build_worker_pod(job, 1, 0)):
        labels, notes = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
        assert labels["kueue.x-k8s.io/pod-group-name"] == "g-1"
        assert notes["kueue.x-k8s.io/pod-group-total-count"] == "3"
        assert notes["kueue.x-k8s.io/retriable-in-group"] == "false"  # a new attempt is a new group


@pytest.mark.parametrize(
    ("scheduling", "field", "needle"),
    [
        ({"gang": "slurm"}, "spec.scheduling.gang", "'slurm') must be one of coscheduling, volcano, none"),
        ({"scheduleTimeoutSeconds": -5}, "spec.scheduling.scheduleTimeoutSeconds", "(-5) must be an integer"),
        ({"scheduleTimeoutSeconds": "10"}, "spec.scheduling.scheduleTimeoutSeconds", "('10')"),
        ({"gang": "volcano", "queue": "Team_A"}, "spec.scheduling.queue", "('Team_A') must be a DNS label"),
        ({"queue": "team-a"}, "spec.scheduling.queue", "needs gang: volcano"),
        ({"priorityClassName": "High!"}, "spec.scheduling.priorityClassName", "DNS subdomain"),
        ({"onTimeout": "Retry"}, "spec.scheduling.onTimeout", "('Retry') must be one of Wait, FailJob"),
        (
            {"onTimeout": "FailJob"},
            "spec.scheduling.onTimeout",
            "needs spec.scheduling.scheduleTimeoutSeconds",
        ),
        ({"gnag": "volcano"}, "spec.scheduling.gnag", "is not a field"),
    ],
)
def test_bad_scheduling_names_the_field(scheduling: dict[str, Any], field: str, needle: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse(make_trainingjob(name="g", scheduling=scheduling))
    assert err.value.field == field and needle in str(err.value), str(err.value)


def test_a_bad_kueue_label_names_it() -> None:
    with pytest.raises(InvalidSpec, match=r"metadata.labels\[kueue.x-k8s.io/queue-name\] \('A B'\)"):
        gang_job(labels={"kueue.x-k8s.io/queue-name": "A B"})


def test_operator_config_reads_the_default_gang_and_schedulers() -> None:
    cfg = OperatorConfig.from_env(
        {
            "ETHA_DEFAULT_GANG": "volcano",
            "ETHA_SCHEDULER_NAME": "mine",
            "ETHA_GANG_SCHEDULERS": "volcano=vc, coscheduling=sp",
        }
    )
    assert (cfg.default_gang, cfg.scheduler_name) == ("volcano", "mine")
    assert cfg.gang_schedulers == {"volcano": "vc", "coscheduling": "sp"}
    with pytest.raises(ConfigError, match=r"ETHA_GANG_SCHEDULERS entry 'none=x' must be"):
        OperatorConfig.from_env({"ETHA_GANG_SCHEDULERS": "none=x"})
    # A gang implies its scheduler; a job without one gets the default.
    gangs = {"coscheduling": "sp", "volcano": "vc"}
    for gang, want in (("coscheduling", "sp"), ("volcano", "vc"), ("none", "mine")):
        body = make_trainingjob(name="g", scheduling={"gang": gang})
        job = parse(body, default_scheduler="mine", gang_schedulers=gangs)
        assert build_worker_pod(job, 0, 0)["spec"]["schedulerName"] == want
    assert OperatorConfig.from_env({}).default_gang == "none"
    with pytest.raises(ConfigError, match=r"ETHA_DEFAULT_GANG \('kai'\) must be one of"):
        OperatorConfig.from_env({"ETHA_DEFAULT_GANG": "kai"})


def test_group_kinds_name_their_crds() -> None:
    assert GROUP_KINDS["coscheduling"].crd == "podgroups.scheduling.x-k8s.io"
    assert GROUP_KINDS["volcano"].crd == "podgroups.scheduling.volcano.sh"


# --- decisions --------------------------------------------------------------------------------


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
    job = gang_job(replicas=1, labels={"kueue.x-k8s.io/queue-name": "team-a"})
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
    from etha.operator.reconcile.placement import telling, unschedulable

    siblings = "0/3 nodes are available: pre-filter pod g-master-0 cannot find enough sibling pods, current pods number: 1"
    assert telling(siblings) == 1
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
