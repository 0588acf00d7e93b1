"""Kueue admits the job (etha.operator.reconcile.queued): the decision in every state of the job's
Workload (none, created, admitted, evicted, re-admitted, finished, a missing queue, a flavor
conflict, suspended), and the writes to the Workload that go with it."""

from __future__ import annotations

from typing import Any

import pytest

from etha.job import constants as c
from etha.job import kueue
from etha.job.builders import build_workload_of
from etha.job.spec import JobSpec, parse
from etha.operator.reconcile import Actions, Observed, Refused, reconcile
from tests.factories import make_trainingjob
from tests.unit.controller.reconcile.helpers import NOW, RUNNING, names, running_pods

QUEUE = {"kueue.x-k8s.io/queue-name": "team-a"}
WL = kueue.workload_name("mnist", "uid-1")
HIGH = kueue.Priority(1000, {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "high"})
FLAVORS = {"default": {"nodeLabels": {"pool": "cpu"}}, "a100": {"nodeLabels": {"gpu": "a100"}}}


def job(mode: str = "Workload", labels: dict[str, str] | None = QUEUE, **spec: Any) -> JobSpec:
    body = make_trainingjob(**spec)
    body["metadata"]["labels"] = dict(labels or {})
    return parse(body, kueue_mode=mode)


def cond(kind: str, status: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T11:00:00Z"}  # fmt: skip


def workload(
    spec: JobSpec | None = None, *conditions: dict[str, Any], admitted: bool = False, **meta: Any
) -> dict:
    """The job's Workload as the index holds it (slim), with ``conditions`` Kueue wrote."""
    wl = build_workload_of(spec or job())
    wl["metadata"].update(uid="wl-uid", resourceVersion="7", generation=1, **meta)
    wl["status"] = {"conditions": list(conditions)}
    if admitted:
        wl["status"]["admission"] = {"clusterQueue": "gpus", "podSetAssignments": [
            {"name": "master", "flavors": {"cpu": "default"}, "count": 1},
            {"name": "workers", "flavors": {"nvidia.com/gpu": "a100"}, "count": 2}]}  # fmt: skip
        wl["status"]["conditions"] = [cond("QuotaReserved", True, "QuotaReserved"), cond("Admitted", True, "Admitted"),
                                      *conditions]  # fmt: skip
    return kueue.slim(wl)


def decide(
    spec: JobSpec, status: dict[str, Any], pods: list[dict[str, Any]] | None = None, **more: Any
) -> Actions:
    more.setdefault("priority", HIGH)
    return reconcile(Observed(spec, status, pods or [], True, NOW, **more))


def queued_condition(actions: Actions) -> dict[str, Any]:
    return next(x for x in actions.status["conditions"] if x["type"] == c.COND_QUEUED)


def evicted(
    reason: str = "Preempted", message: str = "Preempted to accommodate a higher priority Workload"
) -> dict:
    return cond("Evicted", True, reason, message)


# --- before admission ------------------------------------------------------------------------


def test_no_workload_makes_one_and_no_pod() -> None:
    acts = decide(job(), {})
    assert [(m["kind"], m["metadata"]["name"]) for m in acts.create] == [("Workload", WL)]
    assert acts.create[0]["spec"]["priority"] == 1000
    assert acts.status["phase"] == "Queued" and acts.status["workload"] == WL
    queued = queued_condition(acts)
    assert queued["status"] == "True" and queued["reason"] == "WaitingForAdmission"
    assert "LocalQueue team-a" in queued["message"] and WL in queued["message"]
    assert [e.reason for e in acts.events] == ["Created"]


def test_a_workload_waits_for_the_old_pods_to_go_first() -> None:
    # A job labelled while it ran (or upgraded from PodGroup mode): its pods go, then the Workload.
    acts = decide(job(), {"phase": "Running", "attempt": 0}, running_pods())
    assert not acts.create and sorted(acts.delete_pods) == [
        "mnist-master-0",
        "mnist-worker-0-0",
        "mnist-worker-0-1",
    ]
    assert acts.status["phase"] == "Queued" and acts.status["lastEviction"]["reason"] == "WorkloadDeleted"


@pytest.mark.parametrize(
    ("conditions", "reason", "needle"),
    [
        ((), "WaitingForAdmission", f"Workload {WL} waits for Kueue to admit it through LocalQueue team-a."),
        ((cond("QuotaReserved", False, "Pending", "couldn't assign flavors to pod set workers: insufficient "
                                                  "unused quota for nvidia.com/gpu in flavor a100, 4 more needed"),),
         "Pending", "4 more needed (Workload " + WL + ", LocalQueue team-a)."),
        ((cond("QuotaReserved", False, "Inadmissible", "LocalQueue team-a doesn't exist"),),
         "Inadmissible", "LocalQueue team-a doesn't exist"),
        ((cond("QuotaReserved", True, "QuotaReserved"), cond("Admitted", False, "UnsatisfiedChecks",
                                                              "The workload has not all checks ready")),
         "UnsatisfiedChecks", "not all checks ready"),
    ],
    ids=["nothing-said-yet", "no-quota", "missing-local-queue", "admission-checks"],
)  # fmt: skip
def test_created_not_admitted_waits_with_kueues_words(
    conditions: tuple[dict, ...], reason: str, needle: str
) -> None:
    acts = decide(job(), {"phase": "Queued"}, workload=workload(job(), *conditions))
    assert not acts.create and not acts.delete_pods and not acts.workload
    queued = queued_condition(acts)
    assert (queued["status"], queued["reason"]) == ("True", reason) and needle in queued["message"]
    assert acts.status["reason"] == reason and acts.status["phase"] == "Queued"


def test_waiting_is_level_triggered() -> None:
    status = {"phase": "Queued", "reason": "Pending"}
    wl = workload(job(), cond("QuotaReserved", False, "Pending", "no quota"))
    first = decide(job(), status, workload=wl)
    state = {**status, **first.status}
    again = decide(job(), state, workload=wl)
    assert {**state, **again.status} == state  # nothing to write
    assert not again.events and not again.workload and not again.create


# --- admitted --------------------------------------------------------------------------------


def test_admitted_starts_the_attempt_where_the_flavors_say() -> None:
    acts = decide(job(), {"phase": "Queued"}, workload=workload(admitted=True), flavors=FLAVORS)
    pods = {m["metadata"]["name"]: m for m in acts.create if m["kind"] == "Pod"}
    assert sorted(pods) == ["mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1"]
    assert pods["mnist-master-0"]["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert pods["mnist-worker-0-1"]["spec"]["nodeSelector"] == {"gpu": "a100"}
    assert pods["mnist-worker-0-1"]["metadata"]["labels"]["kueue.x-k8s.io/podset"] == "workers"
    assert not any("kueue.x-k8s.io/queue-name" in p["metadata"]["labels"] for p in pods.values())
    assert acts.status["phase"] == "Pending" and acts.status["reason"] is None
    queued = queued_condition(acts)
    assert (queued["status"], queued["reason"]) == ("False", "Admitted")
    assert "ClusterQueue gpus" in queued["message"]
    assert "Admitted" in [e.reason for e in acts.events]
    assert not acts.workload  # PodsReady waits for the job to run


def test_a_gangs_pod_group_is_made_only_after_admission() -> None:
    gang = job(scheduling={"gang": "coscheduling"})
    waiting = decide(gang, {"phase": "Queued"}, workload=workload(gang))
    assert not [m for m in waiting.create if m["kind"] == "PodGroup"]
    acts = decide(gang, {"phase": "Queued"}, workload=workload(gang, admitted=True), flavors=FLAVORS)
    kinds = [m["kind"] for m in acts.create]
    assert "PodGroup" in kinds and kinds.index("PodGroup") < kinds.index("Pod")


def test_running_under_the_admission_reports_pods_ready() -> None:
    wl = workload(admitted=True)
    acts = decide(job(), {**RUNNING, "conditions": [*RUNNING["conditions"], cond("Queued", False, "Admitted")]},
                  running_pods(), workload=wl)  # fmt: skip
    (write,) = acts.workload
    assert (write.name, write.uid, write.resource_version) == (WL, "wl-uid", "7")
    assert [(x["status"], x["reason"]) for x in write.status["conditions"] if x["type"] == "PodsReady"] == [
        ("True", "Started")
    ]


def test_a_flavor_conflicting_with_the_template_fails_the_job_and_finishes_the_workload() -> None:
    spec = job()
    spec.template["spec"]["nodeSelector"] = {"gpu": "h100"}
    wl = workload(spec, admitted=True)
    acts = decide(spec, {"phase": "Queued"}, workload=wl, flavors=FLAVORS)
    assert acts.status["phase"] == "Failed" and acts.status["reason"] == "AdmissionConflict"
    assert not [m for m in acts.create if m["kind"] == "Pod"]
    failed = next(x for x in acts.status["conditions"] if x["type"] == "Failed")
    assert "sets nodeSelector gpu=a100, but the pod template has gpu=h100" in failed["message"]
    (write,) = acts.workload  # Kueue frees the quota: jobframework's FailedToStart
    assert [(x["reason"]) for x in write.status["conditions"] if x["type"] == "Finished"] == ["FailedToStart"]


def test_an_admission_naming_a_flavor_that_does_not_exist_makes_no_pod_and_looks_again() -> None:
    acts = decide(
        job(), {"phase": "Queued"}, workload=workload(admitted=True), flavors={"default": {}, "a100": None}
    )
    assert not [m for m in acts.create if m["kind"] == "Pod"] and acts.requeue_after == 10.0
    assert queued_condition(acts)["reason"] == "ResourceFlavorMissing"


# --- eviction, preemption, re-admission --------------------------------------------------------


def test_an_eviction_stops_the_attempt_without_counting_a_restart() -> None:
    spec = job(maxRestarts=1)
    status = {**RUNNING, "restarts": 1, "restartsCountedTowardsMax": 1, "attemptSpec": {"attempt": 0}}
    acts = decide(spec, status, running_pods(), workload=workload(spec, evicted(), admitted=True))
    assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1"]
    assert acts.status["phase"] == "Queued" and acts.status["attempt"] == 1 and acts.status["evictions"] == 1
    assert "restarts" not in acts.status and "restartsCountedTowardsMax" not in acts.status
    assert acts.status["lastEviction"] == {"reason": "Preempted", "attempt": 0, "time": "2026-01-01T12:00:00Z",
                                           "message": "Preempted to accommodate a higher priority Workload"}  # fmt: skip
    assert acts.status["attemptSpec"] is None
    by = {x["type"]: x for x in acts.status["conditions"]}
    assert (by["Queued"]["status"], by["Queued"]["reason"]) == ("True", "Preempted")
    assert (by["Running"]["status"], by["Running"]["reason"]) == ("False", "Evicted")
    (event,) = [e for e in acts.events if e.reason == "Evicted"]
    assert event.type == "Warning" and "Not a restart" in event.message
    assert not acts.workload  # the quota is released once the pods are gone


def test_the_quota_is_released_once_the_pods_are_gone_as_jobframework_does() -> None:
    ready = cond("PodsReady", True, "Started")
    wl = workload(
        job(), evicted(), cond("Preempted", True, "InClusterQueue", "by wl-x"), ready, admitted=True
    )
    status = {"phase": "Queued", "attempt": 1, "evictions": 1}
    acts = decide(job(), status, workload=wl)
    (write,) = acts.workload
    assert write.resource_version == "7" and write.uid == "wl-uid" and write.status["admission"] is None
    by = {x["type"]: x for x in write.status["conditions"]}
    assert (by["QuotaReserved"]["status"], by["QuotaReserved"]["reason"]) == ("False", "Pending")
    assert (by["Requeued"]["status"], by["Admitted"]["status"]) == ("True", "False")
    assert by["Preempted"]["message"] == "by wl-x"  # Kueue's own conditions are kept
    # The next admission waits for its own pods (in the same write).
    assert (by["PodsReady"]["status"], by["PodsReady"]["reason"]) == ("False", "WaitForStart")
    assert "evictions" not in acts.status  # counted once
    released = replace_status(wl, write.status)
    again = decide(job(), {**status, **acts.status}, workload=released)
    assert not again.workload and not again.create  # released: nothing more until Kueue admits it again


def replace_status(wl: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    out = {**wl, "status": {**wl["status"], **status}}
    out["status"] = {k: v for k, v in out["status"].items() if v is not None}
    return out


def test_an_eviction_seen_again_after_a_crash_is_not_counted_twice() -> None:
    wl = workload(job(), evicted(), admitted=True)
    first = decide(job(), {**RUNNING}, running_pods(), workload=wl)
    # The status was written, the operator died before deleting the pods: the next look deletes
    # them, and counts nothing.
    again = decide(job(), {**RUNNING, **first.status}, running_pods(), workload=wl)
    assert sorted(again.delete_pods) == sorted(first.delete_pods) and "evictions" not in again.status
    assert not [e for e in again.events if e.reason == "Evicted"]


def test_re_admitted_starts_a_new_attempt() -> None:
    status = {"phase": "Queued", "attempt": 1, "evictions": 1, "restarts": 0,
              "conditions": [cond("Queued", True, "Preempted")]}  # fmt: skip
    acts = decide(job(), status, workload=workload(admitted=True), flavors=FLAVORS)
    assert names([m for m in acts.create if m["kind"] == "Pod"]) == ["mnist-master-1", "mnist-worker-1-0",
                                                                     "mnist-worker-1-1"]  # fmt: skip
    assert acts.status["attempt"] == 1 and acts.status["restarts"] == 0
    assert queued_condition(acts)["status"] == "False"


def test_an_eviction_while_restarting_is_not_a_restart_either() -> None:
    status = {"phase": "Restarting", "attempt": 2, "restarts": 2, "nextAttemptTime": "2026-01-01T12:00:30Z",
              "conditions": [cond("Restarting", True, "Restarting")]}  # fmt: skip
    acts = decide(
        job(), status, workload=workload(job(), evicted("ClusterQueueStopped", "stopped"), admitted=True)
    )
    assert (
        acts.status["phase"] == "Queued"
        and acts.status["attempt"] == 3
        and acts.status["nextAttemptTime"] is None
    )
    by = {x["type"]: x for x in acts.status["conditions"]}
    assert by["Restarting"]["status"] == "False" and by["Queued"]["reason"] == "ClusterQueueStopped"


def test_a_workload_deleted_while_the_job_runs_stops_it() -> None:
    acts = decide(job(), {**RUNNING}, running_pods(), workload=None)
    assert acts.status["lastEviction"]["reason"] == "WorkloadDeleted" and not acts.create


# --- finished ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("phase", "reason"), [("Succeeded", "Succeeded"), ("Failed", "Failed")])
def test_a_finished_job_finishes_its_workload(phase: str, reason: str) -> None:
    kind = "Succeeded" if phase == "Succeeded" else "Failed"
    status = {"phase": phase, "completionTime": "2026-01-01T11:59:00Z",
              "conditions": [cond(kind, True, "X", f"the job {phase.lower()}")]}  # fmt: skip
    acts = decide(job(), status, workload=workload(admitted=True))
    (write,) = acts.workload
    finished = next(x for x in write.status["conditions"] if x["type"] == "Finished")
    assert (finished["status"], finished["reason"], finished["message"]) == (
        "True",
        reason,
        f"the job {phase.lower()}",
    )
    done = decide(job(), status, workload=workload(job(), cond("Finished", True, reason), admitted=True))
    assert not done.workload


def test_the_last_worker_succeeding_finishes_the_workload_in_the_same_look() -> None:
    pods = running_pods()
    pods[1]["status"]["phase"] = pods[2]["status"]["phase"] = "Succeeded"
    acts = decide(job(), {**RUNNING}, pods, workload=workload(admitted=True))
    assert acts.status["phase"] == "Succeeded"
    assert [
        x["reason"] for w in acts.workload for x in w.status["conditions"] if x["type"] == "Finished"
    ] == ["Succeeded"]


def test_kueue_finishing_the_workload_first_fails_the_job() -> None:
    wl = workload(job(), cond("Finished", True, "OutOfSync", "out of sync"), admitted=True)
    acts = decide(job(), {**RUNNING}, running_pods(), workload=wl)
    assert acts.status["phase"] == "Failed" and acts.status["reason"] == "WorkloadFinished"


def test_a_refused_job_finishes_its_workload() -> None:
    wl = workload(admitted=True)
    acts = reconcile(Refused({}, "spec.replicas (0) must be at least 1.", NOW, workload=wl))
    assert acts.status["phase"] == "Failed"
    (write,) = acts.workload
    assert [x["message"] for x in write.status["conditions"] if x["type"] == "Finished"] == [
        "spec.replicas (0) must be at least 1."
    ]


# --- suspend, spec changes, other Workloads ----------------------------------------------------


def test_suspend_wins_the_workload_is_deactivated_and_reactivated_on_resume() -> None:
    suspended = job(suspend=True)
    acts = decide(suspended, {**RUNNING}, running_pods(), workload=workload(admitted=True))
    assert acts.status["phase"] == "Suspended" and len(acts.delete_pods) == 3
    (write,) = acts.workload
    assert write.patch == {
        "metadata": {"annotations": {"etha.io/suspended": "true"}},
        "spec": {"active": False},
    }
    assert queued_condition(acts)["reason"] == "Suspended"
    # Kueue evicts the inactive Workload; once the pods are gone the quota goes back.
    inactive = workload(suspended, evicted("Deactivated", "The workload is deactivated"), admitted=True)
    inactive["spec"]["active"] = False
    gone = decide(suspended, {"phase": "Suspended"}, [], workload=inactive)
    assert [w.what for w in gone.workload] == ["quota released"]
    # Resumed: active again (only a Workload the operator deactivated), and queued.
    inactive["status"] = {"conditions": [cond("QuotaReserved", False, "Pending")]}
    resumed = decide(job(), {"phase": "Suspended"}, [], workload=inactive)
    assert resumed.status["phase"] == "Queued" and not resumed.create
    assert [w.patch for w in resumed.workload] == [
        {"metadata": {"annotations": {"etha.io/suspended": None}}, "spec": {"active": True}}
    ]
    assert "Resumed" in [e.reason for e in resumed.events]


def test_a_workload_deactivated_by_someone_else_stays_so() -> None:
    wl = workload(job())
    wl["spec"]["active"] = False
    acts = decide(job(), {"phase": "Queued"}, workload=wl)
    assert not acts.workload and queued_condition(acts)["reason"] == "WorkloadInactive"


def test_a_suspended_job_gets_an_inactive_workload() -> None:
    acts = decide(job(suspend=True), {})
    assert acts.create[0]["spec"]["active"] is False


def test_a_waiting_workload_made_from_an_older_spec_is_replaced_but_not_a_reserved_one() -> None:
    old = workload(job(replicas=2))
    acts = decide(job(replicas=4), {"phase": "Queued"}, workload=old)
    assert [(w.name, w.delete) for w in acts.workload] == [(WL, True)]
    reserved = workload(job(replicas=2), admitted=True)
    assert not [
        w
        for w in decide(job(replicas=4), {**RUNNING}, running_pods(), workload=reserved).workload
        if w.delete
    ]


def test_a_bad_priority_class_fails_the_job() -> None:
    acts = decide(job(), {}, priority="spec.scheduling.priorityClassName ('nope') names no PriorityClass")
    assert acts.status["phase"] == "Failed" and acts.status["reason"] == "InvalidSpec" and not acts.create


def test_other_workloads_the_job_owns_are_deleted() -> None:
    acts = decide(job(labels={}), {**RUNNING}, running_pods(), stray_workloads=[("old-name", "u-9")])
    assert [(w.name, w.uid, w.delete) for w in acts.workload] == [("old-name", "u-9", True)]


@pytest.mark.parametrize(
    "mode,labels", [("Workload", {}), ("PodGroup", QUEUE)], ids=["no-label", "pod-group-mode"]
)
def test_without_kueues_workload_the_job_runs_as_before(mode: str, labels: dict[str, str]) -> None:
    spec = job(mode=mode, labels=labels)
    acts = decide(spec, {})
    assert names(acts.create)[:2] == ["mnist-master-0", "mnist-worker-0-0"] and not acts.workload
    assert all(m["kind"] != "Workload" for m in acts.create) and acts.status["phase"] == "Pending"
    if mode == "PodGroup":  # today's plain-pod groups
        assert acts.create[1]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
