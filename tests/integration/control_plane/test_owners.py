"""The operator trusts owners, not names, on a real API server: a job re-created under the same
name never counts the pods of the one before, a foreign object with a child's name is reported and
never used, an immutable field is refused while the job runs, a container restarted in place
fails its attempt, and deleting a job never waits for the operator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.jobs import Jobs, condition
from tests.harness.kube import KubeError
from tests.harness.operator import ChartOperator, operating
from tests.helpers import wait_until

NS = "owners"
TJ = f"/apis/etha.io/v1alpha1/namespaces/{NS}/trainingjobs"
PODS = f"/api/v1/namespaces/{NS}/pods"


@pytest.fixture(scope="module")
def op(control_plane: ControlPlane) -> Iterator[ChartOperator]:
    with operating(control_plane, NS) as operator:
        yield operator


@pytest.fixture(scope="module")
def jobs(op: ChartOperator) -> Jobs:
    return Jobs(op, NS)


def events_of(op: ChartOperator, name: str) -> str:
    return str(
        op.kubectl("get", "events", "-n", NS, "--field-selector", f"involvedObject.name={name}").stdout
    )


def test_a_job_recreated_over_orphaned_pods_never_counts_them(op: ChartOperator, jobs: Jobs) -> None:
    """The first job succeeds and is deleted with its pods orphaned; a new job of the same name
    must not be Succeeded on them: it names the pod in its way, waits, and runs its own."""
    op.plane.admin.create(TJ, jobs.job("again"))
    first = jobs.wait_for("again", "Succeeded", lambda s: s.get("phase") == "Succeeded")
    assert first["workers"]["succeeded"] == 2
    wait_until(lambda: len(jobs.pods("again")) == 2, 60, "the finished job's master gone")
    op.plane.admin.delete(f"{TJ}/again", propagationPolicy="Orphan")
    wait_until(lambda: not op.plane.admin.exists(f"{TJ}/again"), 30, "the first job gone")
    orphans = {p["metadata"]["name"]: p["metadata"]["uid"] for p in jobs.pods("again")}
    assert set(orphans) == {"again-worker-0-0", "again-worker-0-1"}, orphans

    op.plane.admin.create(TJ, jobs.job("again"))

    def conflict(s: dict[str, Any]) -> str:
        cond = condition(s, "ChildConflict") or {}
        return str(cond.get("message")) if cond.get("status") == "True" else ""

    # The orphaned Service and NetworkPolicy are in its way first (nothing is made before them).
    first_conflict = conflict(jobs.wait_for("again", "ChildConflict", conflict))
    assert "owners/again" in first_conflict and "owned by no controller" in first_conflict, first_conflict
    assert first_conflict.startswith(("Service", "NetworkPolicy")), first_conflict
    assert jobs.pods("again") and {p["metadata"]["name"] for p in jobs.pods("again")} == set(orphans)
    op.plane.admin.delete(f"/api/v1/namespaces/{NS}/services/again")
    op.plane.admin.delete(f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/again-rendezvous")
    waiting = jobs.wait_for(
        "again", "a Pod in its way", lambda s: "Pod owners/again-worker-0-" in conflict(s)
    )
    message = conflict(waiting)
    assert "owned by no controller" in message and "never uses it" in message, message
    assert waiting.get("phase") != "Succeeded"
    assert "ChildConflict" in events_of(op, "again")
    # The orphans are neither adopted nor deleted by it.
    time.sleep(2)
    now = {p["metadata"]["name"]: p["metadata"]["uid"] for p in jobs.pods("again")}
    assert all(now.get(n) == uid for n, uid in orphans.items()), now

    for pod in orphans:
        op.plane.admin.delete(f"{PODS}/{pod}")
    done = jobs.wait_for("again", "Succeeded on its own pods", lambda s: s.get("phase") == "Succeeded", 120)
    assert (condition(done, "ChildConflict") or {}).get("status") == "False"
    uids = {p["metadata"]["uid"] for p in jobs.pods("again")}
    assert uids and not uids & set(orphans.values())
    op.plane.admin.delete(f"{TJ}/again")


def test_a_job_recreated_while_the_old_pods_terminate_waits_for_them(op: ChartOperator, jobs: Jobs) -> None:
    """Deleted (background) and re-created at once: the old pods still terminate (their
    kubelet's grace period), owned by the old uid; the new job waits for them, then runs."""
    op.plane.admin.create(TJ, jobs.job("quick", code="import time; time.sleep(600)"))
    old = jobs.wait_for("quick", "Running", lambda s: s.get("phase") == "Running")
    assert old["workers"]["running"] == 2
    old_uids = {p["metadata"]["uid"] for p in jobs.pods("quick")}
    op.plane.admin.delete(f"{TJ}/quick")
    wait_until(lambda: not op.plane.admin.exists(f"{TJ}/quick"), 30, "the first job gone")
    new = op.plane.admin.create(TJ, jobs.job("quick", code="import sys; sys.exit(0)"))
    done = jobs.wait_for("quick", "Succeeded", lambda s: s.get("phase") == "Succeeded", 120)
    assert done["restarts"] == 0 and done["workers"]["succeeded"] == 2
    # Its workers are its own (an old pod may still be terminating beside them, never counted).
    mine = [
        p
        for p in jobs.pods("quick")
        if any(r["uid"] == new["metadata"]["uid"] for r in p["metadata"].get("ownerReferences") or [])
    ]
    assert {p["metadata"]["name"] for p in mine} >= {"quick-worker-0-0", "quick-worker-0-1"}
    assert not {p["metadata"]["uid"] for p in mine} & old_uids
    op.plane.admin.delete(f"{TJ}/quick")


def test_a_foreign_service_with_the_jobs_name_is_reported_and_never_used(
    op: ChartOperator, jobs: Jobs
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "clash", "namespace": NS, "labels": {"team": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }
    mine = op.plane.admin.create(f"/api/v1/namespaces/{NS}/services", service)
    op.plane.admin.create(TJ, jobs.job("clash"))
    waiting = jobs.wait_for(
        "clash", "ChildConflict", lambda s: (condition(s, "ChildConflict") or {}).get("status") == "True"
    )
    message = condition(waiting, "ChildConflict")["message"]  # type: ignore[index]
    assert "Service owners/clash exists and is not this TrainingJob's" in message, message
    assert "ChildConflict" in events_of(op, "clash")
    assert jobs.pods("clash") == []  # no pod made on a Service that is not the job's
    untouched = op.plane.admin.get(f"/api/v1/namespaces/{NS}/services/clash")
    assert untouched["metadata"]["uid"] == mine["metadata"]["uid"]
    assert untouched["spec"]["selector"] == {"app": "web"} and not untouched["metadata"].get(
        "ownerReferences"
    )

    op.plane.admin.delete(f"/api/v1/namespaces/{NS}/services/clash")
    jobs.wait_for("clash", "Succeeded once the Service is gone", lambda s: s.get("phase") == "Succeeded", 120)
    op.plane.admin.delete(f"{TJ}/clash")


def test_replicas_of_a_running_job_are_immutable_unless_suspended(op: ChartOperator, jobs: Jobs) -> None:
    op.plane.admin.create(TJ, jobs.job("fixed", code="import time; time.sleep(600)"))
    jobs.wait_for("fixed", "Running", lambda s: s.get("phase") == "Running")
    with pytest.raises(KubeError) as refused:
        op.plane.admin.merge_patch(f"{TJ}/fixed", {"spec": {"replicas": 3}})
    assert refused.value.status == 422
    assert "spec.replicas is immutable while the job is not suspended" in str(refused.value)
    with pytest.raises(KubeError, match=r"spec\.template is immutable"):
        op.plane.admin.merge_patch(
            f"{TJ}/fixed", {"spec": {"template": {"metadata": {"labels": {"x": "y"}}}}}
        )
    with pytest.raises(KubeError, match=r"spec\.rendezvous is immutable"):
        op.plane.admin.merge_patch(f"{TJ}/fixed", {"spec": {"rendezvous": {"port": 29600}}})
    # What users expect to change still does.
    op.plane.admin.merge_patch(f"{TJ}/fixed", {"spec": {"activeDeadlineSeconds": 3600, "maxRestarts": 2}})

    # Suspended, it takes the edit; resumed, every pod of the new start agrees on the size.
    op.plane.admin.merge_patch(f"{TJ}/fixed", {"spec": {"suspend": True}})
    jobs.wait_for("fixed", "Suspended", lambda s: s.get("phase") == "Suspended")
    wait_until(lambda: not jobs.pods("fixed"), 60, "the suspended job's pods gone")
    op.plane.admin.merge_patch(f"{TJ}/fixed", {"spec": {"replicas": 3}})
    op.plane.admin.merge_patch(f"{TJ}/fixed", {"spec": {"suspend": False}})
    resumed = jobs.wait_for("fixed", "Running with 3", lambda s: s.get("phase") == "Running")
    assert resumed["workers"]["total"] == 3
    sizes = {
        env["value"]
        for pod in jobs.pods("fixed")
        if pod["metadata"]["labels"]["etha.io/role"] == "worker"
        for env in pod["spec"]["containers"][0]["env"]
        if env["name"] == "WORLD_SIZE"
    }
    assert sizes == {"3"}
    op.plane.admin.delete(f"{TJ}/fixed")


def test_the_service_and_policy_follow_a_port_changed_while_suspended(op: ChartOperator, jobs: Jobs) -> None:
    """Kept across attempts, the Service and the NetworkPolicy are patched to the new port on
    resume (RBAC included): the new master's port is the one the policy admits the workers to."""
    op.plane.admin.create(TJ, jobs.job("moved", code="import time; time.sleep(600)"))
    jobs.wait_for("moved", "Running", lambda s: s.get("phase") == "Running")
    policy = f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/moved-rendezvous"
    service = f"/api/v1/namespaces/{NS}/services/moved"

    def ports() -> tuple[int, int]:
        rule = op.plane.admin.get(policy)["spec"]["ingress"][0]
        return rule["ports"][0]["port"], op.plane.admin.get(service)["spec"]["ports"][0]["port"]

    assert ports() == (29500, 29500)
    op.plane.admin.merge_patch(f"{TJ}/moved", {"spec": {"suspend": True}})
    jobs.wait_for("moved", "Suspended", lambda s: s.get("phase") == "Suspended")
    op.plane.admin.merge_patch(f"{TJ}/moved", {"spec": {"rendezvous": {"port": 29600}}})
    op.plane.admin.merge_patch(f"{TJ}/moved", {"spec": {"suspend": False}})
    jobs.wait_for("moved", "Running on 29600", lambda s: s.get("masterAddress", "").endswith(":29600"))
    wait_until(lambda: ports() == (29600, 29600), 60, "the policy and the Service on port 29600")
    wait_until(  # events go through kopf's posting queue, after the look
        lambda: "Updated NetworkPolicy moved-rendezvous" in events_of(op, "moved"), 30, "the Updated event"
    )
    op.plane.admin.delete(f"{TJ}/moved")


def test_a_container_restarted_in_place_fails_its_attempt(op: ChartOperator, jobs: Jobs) -> None:
    """restartPolicy OnFailure: the kubelet restarts a crashing container, its pod stays
    Running; the restart counts as the attempt's failure, so maxRestarts applies."""
    doc = jobs.job("crashloop", code="import sys; sys.exit(3)", maxRestarts=1)
    doc["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    op.plane.admin.create(TJ, doc)
    done = jobs.wait_for("crashloop", "Failed", lambda s: s.get("phase") == "Failed", 120)
    assert done["restarts"] == 1
    message = condition(done, "Failed")["message"]  # type: ignore[index]
    assert "restarted container worker after exit code 3" in message and "restartPolicy OnFailure" in message
    assert "spec.maxRestarts=1" in message
    op.plane.admin.delete(f"{TJ}/crashloop")


def test_deleting_a_job_while_the_operator_is_stopped_completes(op: ChartOperator, jobs: Jobs) -> None:
    op.plane.admin.create(TJ, jobs.job("orphanless", code="import time; time.sleep(600)"))
    jobs.wait_for("orphanless", "Running", lambda s: s.get("phase") == "Running")
    assert not op.plane.admin.get(f"{TJ}/orphanless")["metadata"].get("finalizers")
    op.stop()
    try:
        start = time.monotonic()
        op.plane.admin.delete(f"{TJ}/orphanless")
        wait_until(
            lambda: not op.plane.admin.exists(f"{TJ}/orphanless"), 10, "the job gone without its operator"
        )
        assert time.monotonic() - start < 10
        wait_until(lambda: not jobs.pods("orphanless"), 90, "its pods garbage-collected")
        # A job an older operator left a finalizer on loses it once this one sees it.
        doc = jobs.job("legacy", code="import sys; sys.exit(0)")
        doc["metadata"]["finalizers"] = ["kopf.zalando.org/KopfFinalizerMarker"]
        op.plane.admin.create(TJ, doc)
    finally:
        op.start()
    wait_until(
        lambda: not op.plane.admin.get(f"{TJ}/legacy")["metadata"].get("finalizers"),
        30,
        "the old finalizer gone",
    )
    op.plane.admin.delete(f"{TJ}/legacy")
    wait_until(lambda: not op.plane.admin.exists(f"{TJ}/legacy"), 10, "the legacy job deleted")


def test_a_pod_whose_job_label_is_removed_is_not_counted_gone(op: ChartOperator, jobs: Jobs) -> None:
    """The operator's watch asks the API server for pods with the job label only: a pod whose
    label someone removed arrives as DELETED. It is confirmed by name and owner before it counts
    as gone, so the attempt goes on (no restart), and the label is put back."""
    op.plane.admin.create(TJ, jobs.job("relabel", code="import time; time.sleep(600)"))
    jobs.wait_for("relabel", "Running", lambda s: s.get("phase") == "Running")
    pod = f"{jobs.pods_path}/relabel-worker-0-1"
    uid = op.plane.admin.get(pod)["metadata"]["uid"]
    op.plane.admin.merge_patch(pod, {"metadata": {"labels": {"etha.io/job-name": None}}})
    wait_until(
        lambda: (
            (op.plane.admin.get(pod)["metadata"].get("labels") or {}).get("etha.io/job-name") == "relabel"
        ),
        60,
        "the job label put back",
    )
    status = jobs.status("relabel")
    assert status.get("phase") == "Running" and not status.get("restarts"), status
    assert op.plane.admin.get(pod)["metadata"]["uid"] == uid  # the same pod, never recreated
    assert "relabel-worker-1-1" not in {p["metadata"]["name"] for p in jobs.pods("relabel")}
    op.plane.admin.delete(f"{TJ}/relabel")
