"""Kueue's Workload protocol as etha speaks it (etha.job.kueue and the Workload builder): names,
the Workload's shape, the status writes Kueue's jobframework makes, what an admission puts on pods."""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from etha.job import kueue
from etha.job.builders import build_master_pod, build_worker_pod, build_workload_of
from etha.job.spec import parse
from tests.factories import make_trainingjob

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
QUEUE = {"kueue.x-k8s.io/queue-name": "team-a"}


def queued_job(
    uid: str = "uid-1", namespace: str = "research", labels: dict[str, str] | None = None, **spec: Any
):
    body = make_trainingjob(namespace=namespace, **spec)
    body["metadata"]["uid"] = uid
    body["metadata"]["labels"] = {**QUEUE, **(labels or {})}
    return parse(body)


def cond(
    kind: str, status: bool, reason: str, message: str = "", when: str = "2026-01-01T11:00:00Z"
) -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message,
            "lastTransitionTime": when, "observedGeneration": 1}  # fmt: skip


def test_the_name_is_kueues_for_a_built_in_job() -> None:
    # jobframework.GetWorkloadNameForOwnerWithGVK: "<kind>-<name>-" + sha1(kind, group, name, uid)[:5].
    digest = hashlib.sha1(b"TrainingJob\netha.io\nmnist\nuid-1").hexdigest()[:5]
    assert kueue.workload_name("mnist", "uid-1") == f"trainingjob-mnist-{digest}"
    # A job recreated under the same name before the old Workload is collected gets another.
    assert kueue.workload_name("mnist", "uid-2") != kueue.workload_name("mnist", "uid-1")
    assert len(kueue.workload_name("a" * 300, "u")) == 253


def test_same_named_jobs_in_two_namespaces_never_share_a_workload() -> None:
    a = build_workload_of(queued_job(uid="uid-a", namespace="team-a"))
    b = build_workload_of(queued_job(uid="uid-b", namespace="team-b"))
    assert (a["metadata"]["namespace"], b["metadata"]["namespace"]) == ("team-a", "team-b")
    assert a["metadata"]["name"] != b["metadata"]["name"]
    assert a["metadata"]["ownerReferences"][0]["uid"] == "uid-a"


def test_the_workload_carries_the_pods_the_operator_would_make() -> None:
    gpu = {"limits": {"nvidia.com/gpu": 2}, "requests": {"cpu": "4", "nvidia.com/gpu": 2}}
    job = queued_job(replicas=3, scheduling={"priorityClassName": "research-high"})
    job.template["spec"]["containers"][0]["resources"] = gpu
    wl = build_workload_of(job, kueue.Priority(1000, {"group": "scheduling.k8s.io", "kind": "PriorityClass",
                                                      "name": "research-high"}))  # fmt: skip
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["kind"] == "Workload"
    meta = wl["metadata"]
    assert (
        meta["labels"]["kueue.x-k8s.io/job-uid"] == "uid-1" and meta["labels"]["etha.io/job-name"] == "mnist"
    )
    (owner,) = meta["ownerReferences"]
    assert owner == {"apiVersion": "etha.io/v1alpha1", "kind": "TrainingJob", "name": "mnist", "uid": "uid-1",
                     "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    assert "finalizers" not in meta  # it goes with the job by garbage collection
    spec = wl["spec"]
    assert spec["queueName"] == "team-a"
    assert spec["priority"] == 1000 and spec["priorityClassRef"]["name"] == "research-high"
    master, workers = spec["podSets"]
    assert (master["name"], master["count"], workers["name"], workers["count"]) == ("master", 1, "workers", 3)
    assert workers["template"]["spec"]["containers"][0]["resources"] == gpu
    assert master["template"]["spec"]["priorityClassName"] == "research-high"
    assert set(workers["template"]["metadata"]) <= {"labels", "annotations"}  # what a pod set may hold
    assert not any(k.startswith("kueue.x-k8s.io/") for k in workers["template"]["metadata"]["labels"])
    assert "active" not in spec


def test_backend_etcd_has_no_master_pod_set() -> None:
    job = queued_job(rendezvous={"backend": "etcd", "etcd": {"endpoints": ["etcd-0:2379"]}})
    assert [p["name"] for p in build_workload_of(job)["spec"]["podSets"]] == ["workers"]


def test_a_suspended_job_gets_an_inactive_workload_marked_as_the_operators() -> None:
    wl = build_workload_of(queued_job(suspend=True))
    assert wl["spec"]["active"] is False and wl["metadata"]["annotations"]["etha.io/suspended"] == "true"


def test_the_hash_follows_what_kueue_admits_on() -> None:
    base = build_workload_of(queued_job())["metadata"]["annotations"]["etha.io/spec-hash"]
    wider = build_workload_of(queued_job(replicas=4))["metadata"]["annotations"]["etha.io/spec-hash"]
    other_queue = build_workload_of(queued_job(labels={"kueue.x-k8s.io/queue-name": "team-b"}))
    env = queued_job(env=[{"name": "X", "value": "1"}])  # not what Kueue admits on
    assert base != wider and base != other_queue["metadata"]["annotations"]["etha.io/spec-hash"]
    assert build_workload_of(env)["metadata"]["annotations"]["etha.io/spec-hash"] == base


@pytest.mark.parametrize(
    ("labels", "scheduling", "template_class", "source"),
    [
        ({"kueue.x-k8s.io/priority-class": "urgent"}, {"priorityClassName": "high"}, None,
         ("WorkloadPriorityClass", "urgent")),
        ({}, {"priorityClassName": "high"}, "low", ("PriorityClass", "high")),
        ({}, {}, "low", ("PriorityClass", "low")),
        ({}, {}, None, None),
    ],
    ids=["workload-priority-class-label", "scheduling-wins", "template", "cluster-default"],
)  # fmt: skip
def test_priority_comes_from_where_kueue_looks(
    labels: dict[str, str], scheduling: dict[str, Any], template_class: str | None, source: Any
) -> None:
    job = queued_job(labels=labels, scheduling=scheduling)
    if template_class:
        job.template["spec"]["priorityClassName"] = template_class
    assert kueue.priority_source(job) == source


def test_topology_annotations_become_the_workers_topology_request() -> None:
    job = queued_job()
    job.template.setdefault("metadata", {})["annotations"] = {kueue.ANNOTATION_REQUIRED_TOPOLOGY: "rack"}
    workers = build_workload_of(job)["spec"]["podSets"][1]
    assert workers["topologyRequest"] == {"required": "rack", "podIndexLabel": "etha.io/rank"}


# --- the status writes ---------------------------------------------------------------------


def admitted_workload(**status: Any) -> dict[str, Any]:
    wl = build_workload_of(queued_job())
    wl["metadata"].update(uid="wl-uid", resourceVersion="41", generation=1)
    wl["status"] = {
        "admission": {"clusterQueue": "gpus", "podSetAssignments": [
            {"name": "master", "flavors": {"cpu": "default"}, "count": 1},
            {"name": "workers", "flavors": {"cpu": "default", "nvidia.com/gpu": "a100"}, "count": 2}]},
        "conditions": [cond("QuotaReserved", True, "QuotaReserved"), cond("Admitted", True, "Admitted"),
                       cond("Preempted", True, "InClusterQueue", "by a higher priority")],
        **status,
    }  # fmt: skip
    return wl


def test_releasing_an_evicted_workload_is_what_jobframework_patches() -> None:
    wl = admitted_workload(accumulatedPastExecutionTimeSeconds=5)
    wl["status"]["conditions"].append(
        cond("Evicted", True, "Preempted", "Preempted to accommodate a workload")
    )
    before = copy.deepcopy(wl)
    out = kueue.release_status(wl, NOW)
    assert wl == before  # pure
    assert out["admission"] is None
    by = {x["type"]: x for x in out["conditions"]}
    assert by["QuotaReserved"]["status"] == "False" and by["QuotaReserved"]["reason"] == "Pending"
    assert by["QuotaReserved"]["message"] == "Preempted to accommodate a workload"
    assert by["Requeued"]["status"] == "True" and by["Requeued"]["reason"] == "Preempted"
    assert (by["Admitted"]["status"], by["Admitted"]["reason"]) == ("False", "NoReservation")
    assert by["Admitted"]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    # Kueue's other conditions are kept, as they were: the list is written whole.
    assert by["Preempted"] == before["status"]["conditions"][2] and by["Evicted"]["status"] == "True"
    assert out["accumulatedPastExecutionTimeSeconds"] == 5 + 3600
    for c in out["conditions"]:
        assert set(c) >= {"type", "status", "reason", "message", "lastTransitionTime"}


def test_an_eviction_kueue_does_not_requeue_at_once_says_requeued_false() -> None:
    wl = admitted_workload()
    wl["status"]["conditions"].append(cond("Evicted", True, "PodsReadyTimeout", "not ready in time"))
    by = {x["type"]: x for x in kueue.release_status(wl, NOW)["conditions"]}
    assert (by["Requeued"]["status"], by["Requeued"]["reason"]) == ("False", "PodsReadyTimeout")


def test_finished_and_pods_ready() -> None:
    wl = admitted_workload()
    by = {
        x["type"]: x
        for x in kueue.finished_status(wl, "Succeeded", "All 2 workers succeeded.", NOW)["conditions"]
    }
    assert by["Finished"] == {"type": "Finished", "status": "True", "reason": "Succeeded",
                              "message": "All 2 workers succeeded.", "lastTransitionTime": "2026-01-01T12:00:00Z",
                              "observedGeneration": 1}  # fmt: skip
    ready = kueue.pods_ready_status(wl, True, NOW)
    assert ready is not None
    assert [(x["status"], x["reason"]) for x in ready["conditions"] if x["type"] == "PodsReady"] == [
        ("True", "Started")
    ]
    wl["status"]["conditions"] = ready["conditions"]
    assert kueue.pods_ready_status(wl, True, NOW) is None  # already said
    lost = kueue.pods_ready_status(wl, False, NOW)
    assert lost is not None
    wl["status"]["conditions"] = lost["conditions"]
    assert [x["reason"] for x in wl["status"]["conditions"] if x["type"] == "PodsReady"] == [
        "WaitForRecovery"
    ]
    # No longer admitted (evicted, released): a new admission waits for its own pods.
    released = copy.deepcopy(wl)
    released["status"].pop("admission")
    released["status"]["conditions"] = ready["conditions"]  # PodsReady True, from the last admission
    reset = kueue.pods_ready_status(released, False, NOW)
    assert reset is not None
    assert [(x["status"], x["reason"]) for x in reset["conditions"] if x["type"] == "PodsReady"] == [
        ("False", "WaitForStart")
    ]
    back = kueue.pods_ready_status(wl, True, NOW)
    assert back is not None and [x["reason"] for x in back["conditions"] if x["type"] == "PodsReady"] == [
        "Recovered"
    ]


# --- what an admission puts on the pods ----------------------------------------------------

FLAVORS = {
    "default": {"nodeLabels": {"pool": "cpu"}},
    "a100": {"nodeLabels": {"gpu": "a100", "pool": "gpu"}, "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}  # fmt: skip


def test_each_pod_set_gets_its_flavors_labels_and_tolerations() -> None:
    infos = kueue.pod_set_infos(admitted_workload(), FLAVORS, {})
    assert isinstance(infos, dict)
    assert infos["master"].node_selector == {"pool": "cpu"} and infos["master"].tolerations == ()
    assert infos["workers"].node_selector == {"pool": "gpu", "gpu": "a100"}
    assert infos["workers"].tolerations[0]["key"] == "nvidia.com/gpu"
    assert infos["workers"].labels == {"kueue.x-k8s.io/podset": "workers", "kueue.x-k8s.io/local-queue-name": "team-a",
                                       "kueue.x-k8s.io/cluster-queue-name": "gpus"}  # fmt: skip
    job = queued_job()
    from dataclasses import replace

    admitted = replace(job, scheduling=replace(job.scheduling, kueue_admission=infos))
    pod = build_worker_pod(admitted, 0, 1)
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu", "gpu": "a100"}
    assert pod["spec"]["tolerations"] == list(infos["workers"].tolerations)
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/podset"] == "workers"
    assert "kueue.x-k8s.io/queue-name" not in pod["metadata"]["labels"]  # Kueue's pod webhook would gate it
    assert build_master_pod(admitted, 0)["spec"]["nodeSelector"] == {"pool": "cpu"}


def test_a_flavor_label_against_the_templates_node_selector_is_a_conflict_not_an_overwrite() -> None:
    infos = kueue.pod_set_infos(admitted_workload(), FLAVORS, {})
    assert isinstance(infos, dict)
    pod = build_worker_pod(queued_job(), 0, 0)
    pod["spec"]["nodeSelector"] = {"gpu": "h100"}
    with pytest.raises(kueue.AdmissionConflict, match=r"pod set workers: ResourceFlavor default, ResourceFlavor "
                       r"a100 sets nodeSelector gpu=a100, but the pod template has gpu=h100"):  # fmt: skip
        kueue.merge_into_pod(pod, infos["workers"])
    assert pod["spec"]["nodeSelector"] == {"gpu": "h100"}


def test_a_missing_flavor_is_said_and_a_topology_assignment_gates_the_pods() -> None:
    wl = admitted_workload()
    assert kueue.pod_set_infos(wl, {"default": {}}, {}) == (
        "ResourceFlavor a100, assigned to pod set workers of Workload trainingjob-mnist-1c1e7, does not exist"
    )
    wl["status"]["admission"]["podSetAssignments"][1]["topologyAssignment"] = {
        "levels": ["rack"],
        "slices": [],
    }
    infos = kueue.pod_set_infos(wl, FLAVORS, {"workers": None})
    assert isinstance(infos, dict)
    assert infos["workers"].scheduling_gates == ("kueue.x-k8s.io/topology",)
    assert infos["workers"].annotations == {"kueue.x-k8s.io/workload": "trainingjob-mnist-1c1e7",
                                            "kueue.x-k8s.io/podset-unconstrained-topology": "true"}  # fmt: skip


def test_an_admission_checks_update_that_contradicts_a_flavor_is_a_conflict() -> None:
    wl = admitted_workload()
    wl["status"]["admissionChecks"] = [{"name": "prov", "state": "Ready", "podSetUpdates": [
        {"name": "workers", "nodeSelector": {"gpu": "h100"}}]}]  # fmt: skip
    with pytest.raises(kueue.AdmissionConflict, match="admission check prov sets nodeSelector gpu=h100"):
        kueue.pod_set_infos(wl, FLAVORS, {})


def test_slim_keeps_what_the_decision_reads() -> None:
    wl = admitted_workload()
    wl["metadata"]["annotations"]["other"] = "x"
    kept = kueue.slim(wl)
    assert kept["metadata"]["resourceVersion"] == "41" and kept["status"] == wl["status"]
    assert kept["metadata"]["annotations"] == {
        "etha.io/spec-hash": wl["metadata"]["annotations"]["etha.io/spec-hash"]
    }
    assert "podSets" not in kept["spec"] and kept["spec"]["queueName"] == "team-a"
