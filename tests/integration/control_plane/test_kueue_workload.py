"""Kueue admits the TrainingJob itself, on the real control plane: Kueue v0.17.0's CRDs (from the Go
module cache, ``config/components/crd/bases``) and the chart's operator in Workload mode, its RBAC
enforced; the test plays Kueue's manager, writing the Workload's status as Kueue does (server-side
apply as ``kueue-admission``, every admission-managed condition at once): admission, eviction,
re-admission. The real manager's scenarios come with its harness (``make kueue``)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from etha.job import kueue
from tests.harness.cluster import CRD_PATHS, ControlPlane
from tests.harness.jobs import Jobs, condition
from tests.harness.kube import Kube, KubeError
from tests.harness.operator import operating
from tests.helpers import REPO, wait_until

NS = "kueue-jobs"
OTHER_NS = "kueue-jobs-b"
VERSION = "v0.17.0"
KUEUE = "/apis/kueue.x-k8s.io/v1beta2"
#: The conditions Kueue's scheduler and workload controller own (pkg/workload: admissionManagedConditions).
ADMISSION_MANAGED = ("QuotaReserved", "BlockedOnPreemptionGates", "Evicted", "Admitted", "Preempted",
                     "Requeued", "DeactivationTarget", "Finished")  # fmt: skip
#: Sleeps on its first attempt, exits 0 at once on the next ones.
LONG_THEN_DONE = "import os, time; time.sleep(600 if os.environ['ETHA_ATTEMPT'] == '0' else 1)"
SHORT = "import time; time.sleep(2)"


def kueue_crds() -> Path:
    """Kueue's CRD bases in the Go module cache; skips (fails in CI) when they are not there."""
    where = os.environ.get("KUEUE_CRDS")
    if where is None:
        try:
            cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True)
            where = f"{cache.stdout.strip()}/sigs.k8s.io/kueue@{VERSION}/config/components/crd/bases"
        except (OSError, subprocess.CalledProcessError):
            where = str(
                Path.home()
                / "go"
                / "pkg"
                / "mod"
                / f"sigs.k8s.io/kueue@{VERSION}/config/components/crd/bases"
            )
    folder = Path(where)
    if not (folder / "kueue.x-k8s.io_workloads.yaml").is_file():
        why = (
            f"Kueue's CRDs are not in {folder}: run `GOFLAGS=-mod=mod go mod download "
            f"sigs.k8s.io/kueue@{VERSION}` (or set KUEUE_CRDS)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"the Kueue tests are required in CI: {why}")
        pytest.skip(why)
    return folder


@contextlib.contextmanager
def kueue_installed(plane: ControlPlane) -> Iterator[None]:
    """Kueue's 11 CRDs applied and Established (before the operator starts: kopf finds the
    resources it serves at start); those it created deleted afterwards (one already there, from
    another fixture or run, is left as it was)."""
    names, made = [], []
    for path in sorted(kueue_crds().glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        names.append(crd["metadata"]["name"])
        if not plane.admin.exists(f"{CRD_PATHS}/{crd['metadata']['name']}"):
            plane.admin.create(CRD_PATHS, crd)
            made.append(crd["metadata"]["name"])
    plane.wait_established(*names)
    try:
        yield
    finally:
        for name in made:
            with contextlib.suppress(Exception):
                plane.admin.delete(f"{CRD_PATHS}/{name}")


class Kueue:
    """Kueue's part, played by the test: the Workload's status as Kueue's scheduler writes it."""

    def __init__(self, admin: Kube, namespace: str) -> None:
        self.admin = admin
        self.namespace = namespace

    def path(self, name: str) -> str:
        return f"{KUEUE}/namespaces/{self.namespace}/workloads/{name}"

    def get(self, name: str) -> dict[str, Any]:
        return self.admin.get(self.path(name))

    def conditions(self, name: str) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in (self.get(name).get("status") or {}).get("conditions") or []}

    def apply(
        self, name: str, *conditions: tuple[str, bool, str, str], admission: Any = ...
    ) -> dict[str, Any]:
        """Server-side apply of the Workload's status as manager ``kueue-admission`` with force, as
        Kueue's PatchAdmissionStatus does: every admission-managed condition it has, changed by
        ``conditions`` (type, status, reason, message), and ``admission`` (... keeps it, None drops it)."""
        wl = self.get(name)
        status = wl.get("status") or {}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        have = {c["type"]: c for c in status.get("conditions") or [] if c["type"] in ADMISSION_MANAGED}
        for kind, true, reason, message in conditions:
            old = have.get(kind)
            value = "True" if true else "False"
            when = old["lastTransitionTime"] if old is not None and old["status"] == value else now
            have[kind] = {"type": kind, "status": value, "reason": reason, "message": message,
                          "lastTransitionTime": when, "observedGeneration": wl["metadata"]["generation"]}  # fmt: skip
        applied: dict[str, Any] = {"conditions": list(have.values())}
        keep = status.get("admission") if admission is ... else admission
        if keep is not None:
            applied["admission"] = keep
        body = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
                "metadata": {"name": name, "namespace": self.namespace}, "status": applied}  # fmt: skip
        return self.admin.request(
            "PATCH", self.path(name) + "/status", body,
            query={"fieldManager": "kueue-admission", "force": "true"},
            content_type="application/apply-patch+yaml",
        )  # fmt: skip

    def admit(self, name: str, workers: str = "node-1", master: str = "default") -> None:
        """Admit it through ClusterQueue ``gpus``: the master on flavor ``master``, the workers'
        GPUs on flavor ``workers``."""
        wl = self.get(name)
        counts = {p["name"]: p["count"] for p in wl["spec"]["podSets"]}
        admission = {"clusterQueue": "gpus", "podSetAssignments": [
            {"name": "master", "flavors": {"cpu": master}, "count": counts["master"]},
            {"name": "workers", "flavors": {"cpu": master, "nvidia.com/gpu": workers}, "count": counts["workers"]},
        ]}  # fmt: skip
        self.apply(
            name,
            ("QuotaReserved", True, "QuotaReserved", "Quota reserved in ClusterQueue gpus"),
            ("Evicted", False, "QuotaReserved", "Previously: evicted"),
            ("Admitted", True, "Admitted", "The workload is admitted"),
            admission=admission,
        )


@pytest.fixture(scope="module")
def jobs(control_plane: ControlPlane) -> Iterator[Jobs]:
    admin = control_plane.admin
    with kueue_installed(control_plane):
        flavors = {
            "default": {},
            "node-1": {"nodeLabels": {"kubernetes.io/hostname": "node-1"},
                       "tolerations": [{"key": "etha.io/kueue-test", "operator": "Exists", "effect": "NoSchedule"}]},
        }  # fmt: skip
        for name, spec in flavors.items():
            with contextlib.suppress(KubeError):
                admin.create(f"{KUEUE}/resourceflavors", {"apiVersion": "kueue.x-k8s.io/v1beta2",
                                                          "kind": "ResourceFlavor", "metadata": {"name": name},
                                                          "spec": spec})  # fmt: skip
        control_plane.create_namespace(OTHER_NS, {"pod-security.kubernetes.io/enforce": "restricted"})
        try:
            with operating(
                control_plane, NS, {"rbac": {"scope": "namespaced"}, "watchNamespaces": [NS, OTHER_NS]}
            ) as op:
                yield Jobs(op, NS)
        finally:
            control_plane.delete_namespace(OTHER_NS)


def queued_job(
    jobs: Jobs, name: str, code: str = SHORT, queue: str = "team-a", **spec: Any
) -> dict[str, Any]:
    doc = jobs.job(name, code=code, **spec)
    doc["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": queue}
    doc["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    return doc


def workload_of(jobs: Jobs, name: str) -> str:
    status = jobs.wait_for(name, "its Workload", lambda s: bool(s.get("workload")))
    return str(status["workload"])


def dump(jobs: Jobs, name: str, wl: str | None = None) -> str:
    """What the job, its pods and its Workload look like, and the operator's log, for a failure."""
    out = [f"status: {json.dumps(jobs.status(name))}"]
    out += [f"pod {p['metadata']['name']}: {p['status'].get('phase')} on {p['spec'].get('nodeName')}"
            for p in jobs.pods(name)]  # fmt: skip
    if wl:
        with contextlib.suppress(KubeError):
            out.append(
                f"workload: {json.dumps(Kueue(jobs.op.plane.admin, jobs.namespace).get(wl).get('status'))}"
            )
    return "\n".join(out) + "\n" + jobs.op.log(40)


def test_a_queued_job_has_one_workload_of_its_own_and_no_pod(jobs: Jobs) -> None:
    created = jobs.create(queued_job(jobs, "waits", replicas=3, scheduling={"gang": "none"}))
    name = workload_of(jobs, "waits")
    status = jobs.wait_phase("waits", "Queued")
    queued = condition(status, "Queued")
    assert queued is not None and queued["status"] == "True" and queued["reason"] == "WaitingForAdmission", (
        status
    )
    assert "LocalQueue team-a" in queued["message"] and name in queued["message"], queued
    wl = Kueue(jobs.op.plane.admin, NS).get(name)
    assert name == kueue.workload_name("waits", created["metadata"]["uid"])
    (owner,) = wl["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "TrainingJob", "waits", created["metadata"]["uid"], True)  # fmt: skip
    assert wl["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == created["metadata"]["uid"]
    assert wl["spec"]["queueName"] == "team-a" and wl["spec"]["active"] is True
    sets = {p["name"]: p for p in wl["spec"]["podSets"]}
    assert (sets["master"]["count"], sets["workers"]["count"]) == (1, 3)
    # The API server kept the pods' templates as built (requests included): what Kueue admits on.
    assert sets["workers"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": 1
    }
    assert jobs.pods("waits") == []
    # Two jobs of one name never share a Workload: another namespace, then the same one recreated.
    other = Jobs(jobs.op, OTHER_NS)
    twin = other.create(queued_job(other, "waits"))
    assert workload_of(other, "waits") == kueue.workload_name("waits", twin["metadata"]["uid"]) != name
    jobs.delete("waits")
    wait_until(lambda: not jobs.op.plane.admin.exists(Kueue(jobs.op.plane.admin, NS).path(name)), 60,
               "the deleted job's Workload collected")  # fmt: skip
    again = jobs.create(queued_job(jobs, "waits"))
    wait_until(lambda: jobs.status("waits").get("workload") == kueue.workload_name("waits", again["metadata"]["uid"]),
               60, "the recreated job's own Workload")  # fmt: skip
    assert (
        Kueue(jobs.op.plane.admin, OTHER_NS).get(workload_of(other, "waits"))["metadata"]["ownerReferences"][
            0
        ]["uid"]
        == twin["metadata"]["uid"]
    )
    other.delete("waits")
    jobs.delete("waits")


def test_admission_runs_the_job_where_the_flavor_says_and_finishes_the_workload(jobs: Jobs) -> None:
    play = Kueue(jobs.op.plane.admin, NS)
    jobs.create(queued_job(jobs, "admitted", replicas=2))
    name = workload_of(jobs, "admitted")
    jobs.wait_phase("admitted", "Queued")
    play.admit(name)
    try:
        done = jobs.wait_phase("admitted", "Succeeded", 120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump(jobs, 'admitted', name)}") from None
    queued = condition(done, "Queued")
    assert queued is not None and (queued["status"], queued["reason"]) == ("False", "Admitted"), done
    assert "ClusterQueue gpus" in queued["message"]
    for pod in jobs.pods("admitted"):
        labels = pod["metadata"]["labels"]
        want = {"master": "default", "worker": "node-1"}[labels["etha.io/role"]]
        if want == "node-1":  # the flavor's node label and toleration, and the pod went there
            assert pod["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "node-1"}, pod["spec"]
            assert pod["spec"]["nodeName"] == "node-1"
            assert {"key": "etha.io/kueue-test", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
                "tolerations"
            ]
            assert labels["kueue.x-k8s.io/podset"] == "workers"
        assert "kueue.x-k8s.io/queue-name" not in labels  # Kueue's pod webhook would gate it
        assert labels["kueue.x-k8s.io/local-queue-name"] == "team-a"
    wait_until(lambda: play.conditions(name).get("Finished", {}).get("status") == "True", 30,
               "the Workload Finished")  # fmt: skip
    conds = play.conditions(name)
    assert conds["Finished"]["reason"] == "Succeeded", conds
    assert conds["PodsReady"]["status"] == "True" and conds["PodsReady"]["reason"] == "Started", conds
    assert (
        conds["Admitted"]["status"] == "True" and conds["QuotaReserved"]["status"] == "True"
    )  # Kueue's, kept
    reasons = [e["reason"] for e in jobs.events("admitted")]
    assert reasons.index("Created") < reasons.index("Admitted") < reasons.index("Running"), reasons
    jobs.delete("admitted")


def test_preemption_queues_the_job_without_a_restart_and_readmission_runs_a_new_attempt(jobs: Jobs) -> None:
    play = Kueue(jobs.op.plane.admin, NS)
    jobs.create(queued_job(jobs, "preempted", code=LONG_THEN_DONE, replicas=2, maxRestarts=0))
    name = workload_of(jobs, "preempted")
    play.admit(name)
    jobs.wait_phase("preempted", "Running", 90)
    first = {p["metadata"]["name"] for p in jobs.pods("preempted")}
    # Kueue's scheduler preempts it: Evicted and Preempted True (its admission stays until the job
    # controller has stopped the job and releases it).
    message = "Preempted to accommodate a workload (UID: x) due to prioritization in the ClusterQueue"
    play.apply(name, ("Evicted", True, "Preempted", message), ("Preempted", True, "InClusterQueue", message))
    try:
        queued = jobs.wait_phase("preempted", "Queued", 60)
        wait_until(lambda: not jobs.pods("preempted"), 60, "the evicted attempt's pods gone")
        wait_until(lambda: "admission" not in (play.get(name).get("status") or {}), 30, "the quota released")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump(jobs, 'preempted', name)}") from None
    assert queued["evictions"] == 1 and queued.get("restarts", 0) == 0, queued
    assert queued.get("restartsCountedTowardsMax", 0) == 0 and queued["attempt"] == 1, queued
    assert queued["lastEviction"]["reason"] == "Preempted" and queued["lastEviction"]["attempt"] == 0, queued
    assert (condition(queued, "Queued") or {}).get("reason") == "Preempted", queued
    conds = play.conditions(name)
    assert (conds["QuotaReserved"]["status"], conds["QuotaReserved"]["reason"]) == ("False", "Pending"), conds
    assert (conds["Requeued"]["status"], conds["Requeued"]["reason"]) == ("True", "Preempted"), conds
    assert (conds["Admitted"]["status"], conds["Admitted"]["reason"]) == ("False", "NoReservation"), conds
    assert (conds["PodsReady"]["status"], conds["PodsReady"]["reason"]) == ("False", "WaitForStart"), conds
    # Kueue's own conditions survive the operator's write (the list is written whole, only over
    # the version it read: resourceVersion).
    assert conds["Preempted"]["status"] == "True" and conds["Evicted"]["status"] == "True", conds
    evicted = [e for e in jobs.events("preempted") if e["reason"] == "Evicted"]
    assert evicted and "Not a restart" in evicted[0]["message"], evicted
    # Kueue admits it again: a new attempt, new pods, and it succeeds; no restart was counted
    # (spec.maxRestarts 0 would have failed the job on a restart).
    play.admit(name)
    try:
        done = jobs.wait_phase("preempted", "Succeeded", 120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump(jobs, 'preempted', name)}") from None
    assert done["attempt"] == 1 and done.get("restarts", 0) == 0 and done["evictions"] == 1, done
    assert not first & {p["metadata"]["name"] for p in jobs.pods("preempted")}
    assert {p["metadata"]["name"] for p in jobs.pods("preempted")} >= {
        "preempted-worker-1-0",
        "preempted-worker-1-1",
    }
    wait_until(lambda: play.conditions(name).get("Finished", {}).get("status") == "True", 30, "Finished")
    assert play.conditions(name)["PodsReady"]["status"] == "True"  # the new attempt's pods ran
    jobs.delete("preempted")


def test_a_missing_local_queue_is_said_and_the_job_waits(jobs: Jobs) -> None:
    play = Kueue(jobs.op.plane.admin, NS)
    jobs.create(queued_job(jobs, "no-queue", queue="nope"))
    name = workload_of(jobs, "no-queue")
    play.apply(name, ("QuotaReserved", False, "Inadmissible", "LocalQueue nope doesn't exist"))
    status = jobs.wait_for(
        "no-queue",
        "Kueue's word on the queue",
        lambda s: (condition(s, "Queued") or {}).get("reason") == "Inadmissible",
    )
    queued = condition(status, "Queued")
    assert queued is not None and "LocalQueue nope doesn't exist" in queued["message"], status
    assert status["phase"] == "Queued" and status["reason"] == "Inadmissible" and jobs.pods("no-queue") == []
    assert jobs.op.proc is not None and jobs.op.proc.poll() is None, jobs.op.log()  # nothing crashed
    jobs.delete("no-queue")


def test_a_flavor_label_against_the_templates_node_selector_fails_the_job(jobs: Jobs) -> None:
    play = Kueue(jobs.op.plane.admin, NS)
    doc = queued_job(jobs, "conflict")
    doc["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "node-0"}
    jobs.create(doc)
    name = workload_of(jobs, "conflict")
    play.admit(name)  # (the real Kueue would not pick that flavor; its nodeLabels changed, say)
    failed = jobs.wait_phase("conflict", "Failed")
    assert failed["reason"] == "AdmissionConflict", failed
    message = (condition(failed, "Failed") or {}).get("message", "")
    assert (
        "sets nodeSelector kubernetes.io/hostname=node-1, but the pod template has kubernetes.io/hostname=node-0"
        in (message)
    ), message
    assert not [p for p in jobs.pods("conflict") if p["metadata"]["labels"]["etha.io/role"] == "worker"]
    wait_until(lambda: play.conditions(name).get("Finished", {}).get("reason") == "FailedToStart", 30,
               "the Workload Finished (FailedToStart)")  # fmt: skip
    jobs.delete("conflict")


def test_suspend_deactivates_the_workload_and_resume_queues_the_job_again(jobs: Jobs) -> None:
    play = Kueue(jobs.op.plane.admin, NS)
    jobs.create(queued_job(jobs, "paused", code=LONG_THEN_DONE))
    name = workload_of(jobs, "paused")
    play.admit(name)
    jobs.wait_phase("paused", "Running", 90)
    jobs.op.plane.admin.merge_patch(f"{jobs.path}/paused", {"spec": {"suspend": True}})
    jobs.wait_phase("paused", "Suspended")
    wait_until(lambda: play.get(name)["spec"].get("active") is False, 30, "the Workload deactivated")
    assert play.get(name)["metadata"]["annotations"]["etha.io/suspended"] == "true"
    # Kueue evicts an inactive Workload; the operator releases its quota once the pods are gone.
    play.apply(name, ("Evicted", True, "Deactivated", "The workload is deactivated"))
    wait_until(lambda: not jobs.pods("paused"), 60, "the suspended job's pods gone")
    wait_until(lambda: "admission" not in (play.get(name).get("status") or {}), 30, "the quota released")
    assert jobs.status("paused").get("evictions") is None  # the user's suspend is no eviction
    jobs.op.plane.admin.merge_patch(f"{jobs.path}/paused", {"spec": {"suspend": False}})
    jobs.wait_phase("paused", "Queued")
    wait_until(lambda: play.get(name)["spec"].get("active") is True, 30, "the Workload active again")
    assert "etha.io/suspended" not in (play.get(name)["metadata"].get("annotations") or {})
    assert jobs.pods("paused") == []  # Kueue's admission is needed to run
    jobs.delete("paused")


def test_a_workload_refused_by_admission_fails_the_job_with_the_reason(jobs: Jobs) -> None:
    admin = jobs.op.plane.admin
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": "etha-test-closed-queue"},
              "spec": {"failurePolicy": "Fail",
                       "matchConstraints": {"resourceRules": [{"apiGroups": ["kueue.x-k8s.io"], "apiVersions": ["*"],
                                                               "operations": ["CREATE"], "resources": ["workloads"]}]},
                       "validations": [{"expression": "object.spec.queueName != 'closed'", "reason": "Forbidden",
                                        "message": "LocalQueue closed takes no TrainingJobs"}]}}  # fmt: skip
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": "etha-test-closed-queue"},
               "spec": {"policyName": "etha-test-closed-queue", "validationActions": ["Deny"]}}  # fmt: skip
    base = "/apis/admissionregistration.k8s.io/v1"
    admin.create(f"{base}/validatingadmissionpolicies", policy)
    admin.create(f"{base}/validatingadmissionpolicybindings", binding)
    try:
        probe = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "metadata": {"name": "probe"},
                 "spec": {"queueName": "closed", "podSets": [{"name": "main", "count": 1, "template": {
                     "spec": {"containers": [{"name": "c", "image": "x"}]}}}]}}  # fmt: skip

        def denies() -> bool:
            try:
                admin.create(f"{KUEUE}/namespaces/{NS}/workloads", probe, dryRun="All")
            except KubeError as exc:
                return exc.status == 403
            return False

        wait_until(denies, 30, "the admission policy in force", interval=0.2)
        jobs.create(queued_job(jobs, "refused", queue="closed"))
        failed = jobs.wait_phase("refused", "Failed")
        assert failed["reason"] == "WorkloadRejected", failed
        message = (condition(failed, "Failed") or {}).get("message", "")
        assert "LocalQueue closed takes no TrainingJobs" in message, message
        assert jobs.pods("refused") == []
        jobs.delete("refused")
    finally:
        admin.delete(f"{base}/validatingadmissionpolicybindings/etha-test-closed-queue")
        admin.delete(f"{base}/validatingadmissionpolicies/etha-test-closed-queue")


def test_a_status_write_over_a_stale_version_is_refused_by_the_api_server(jobs: Jobs) -> None:
    """The precondition the operator relies on (a merge patch of the status carrying
    metadata.resourceVersion): Kueue's write in between makes the API server refuse it."""
    import asyncio

    from kubernetes import config as kube_config

    from etha.operator.k8s import Api

    play = Kueue(jobs.op.plane.admin, NS)
    jobs.create(queued_job(jobs, "stale"))
    name = workload_of(jobs, "stale")
    wl = play.get(name)
    read = wl["metadata"]["resourceVersion"]
    play.apply(name, ("QuotaReserved", False, "Pending", "Kueue wrote in between"))
    client = kube_config.new_client_from_config(str(jobs.op.kubeconfig))
    api = Api(client)
    body = {"metadata": {"uid": wl["metadata"]["uid"], "resourceVersion": read}, "status": {"conditions": []}}
    assert asyncio.run(api.patch_workload(NS, name, body, status=True)) is None
    assert play.conditions(name)["QuotaReserved"]["message"] == "Kueue wrote in between"
    fresh = play.get(name)["metadata"]["resourceVersion"]
    body["metadata"]["resourceVersion"] = fresh
    body["status"] = {"conditions": list(play.conditions(name).values())}
    assert asyncio.run(api.patch_workload(NS, name, body, status=True)) is not None
    jobs.delete("stale")


def test_the_kueue_example_is_accepted_as_written(jobs: Jobs) -> None:
    """examples/kueue/ applies to the API server with strict field validation (Kueue's objects
    against Kueue's CRDs), and its TrainingJob gets its Workload in LocalQueue team-a."""
    admin = jobs.op.plane.admin
    paths = {
        "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "ResourceFlavor": f"{KUEUE}/resourceflavors",
        "ClusterQueue": f"{KUEUE}/clusterqueues",
        "LocalQueue": f"{KUEUE}/namespaces/{NS}/localqueues",
    }
    docs = list(yaml.safe_load_all((REPO / "examples" / "kueue" / "setup.yaml").read_text()))
    assert sorted(d["kind"] for d in docs) == sorted(paths)
    for doc in docs:
        doc["metadata"].pop("namespace", None)
        admin.create(paths[doc["kind"]], doc, fieldValidation="Strict", dryRun="All")
    job = yaml.safe_load((REPO / "examples" / "kueue.yaml").read_text())
    job["metadata"]["namespace"] = NS
    jobs.op.plane.admin.create(jobs.path, job, fieldValidation="Strict")
    name = job["metadata"]["name"]
    wl = Kueue(admin, NS).get(workload_of(jobs, name))
    assert wl["spec"]["queueName"] == job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    jobs.delete(name)
