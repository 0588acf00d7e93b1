"""Kueue's manager (v0.17.0, built here) on the real control plane: its CRDs, its scheduler and
its webhooks, before etha's operator talks to it. Workloads are written by hand: a ClusterQueue
of 8 ``nvidia.com/gpu`` (the two fake Nodes' 4 each) admits what fits, holds what does not with
its own message, and admits it once the quota is freed."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.jobs import condition
from tests.harness.kube import KubeError
from tests.harness.kueue import API_VERSION, GROUP, Kueue, admitted, cluster_queue, workload

NS = "kueue-admission"
QUEUE = "gpus"
FLAVOR = "gpu"
QUOTA: dict[str, str | int] = {"nvidia.com/gpu": 8, "cpu": 32, "memory": "128Gi"}


@pytest.fixture(scope="module")
def queues(control_plane: ControlPlane, kueue: Kueue) -> Iterator[Kueue]:
    control_plane.create_namespace(NS)
    kueue.queues(NS, QUOTA, name=QUEUE, flavor=FLAVOR)
    try:
        yield kueue
    finally:
        control_plane.delete_namespace(NS)


def gpus(name: str, count: int, per_pod: int, queue: str = QUEUE) -> dict[str, object]:
    return workload(NS, name, queue, count, {"nvidia.com/gpu": per_pod, "cpu": 1, "memory": "1Gi"})


def quota_reserved(wl: dict[str, object]) -> dict[str, str] | None:
    return condition(wl.get("status") or {}, "QuotaReserved")  # type: ignore[arg-type]


def test_workload_that_fits_is_admitted_with_the_flavor(queues: Kueue) -> None:
    queues.create(gpus("fits", count=2, per_pod=3))
    wl = queues.wait_for("Workload", "fits", NS, "Admitted", admitted)
    admission = wl["status"]["admission"]
    assert admission["clusterQueue"] == QUEUE
    [assignment] = admission["podSetAssignments"]
    assert assignment["name"] == "main" and assignment["count"] == 2
    assert assignment["flavors"] == {"nvidia.com/gpu": FLAVOR, "cpu": FLAVOR, "memory": FLAVOR}
    assert assignment["resourceUsage"]["nvidia.com/gpu"] == "6"
    reserved = quota_reserved(wl)
    assert (
        reserved
        and reserved["status"] == "True"
        and reserved["message"] == f"Quota reserved in ClusterQueue {QUEUE}"
    )
    queues.delete("Workload", "fits", NS)


def test_workload_over_quota_waits_until_the_quota_is_freed(queues: Kueue) -> None:
    queues.create(gpus("first", count=2, per_pod=3))  # 6 of 8
    queues.wait_for("Workload", "first", NS, "Admitted", admitted)
    queues.create(gpus("second", count=2, per_pod=2))  # 4 more: 2 too many
    wl = queues.wait_for(
        "Workload",
        "second",
        NS,
        "QuotaReserved False",
        lambda w: (quota_reserved(w) or {}).get("status") == "False",
    )
    reserved = quota_reserved(wl)
    assert reserved is not None and reserved["reason"] == "Pending"
    assert re.search(
        r"couldn't assign flavors to pod set main: insufficient unused quota for nvidia\.com/gpu in flavor gpu, "
        r"2 more needed",
        reserved["message"],
    ), reserved["message"]
    assert "admission" not in wl["status"] and not admitted(wl)

    queues.delete("Workload", "first", NS)
    wl = queues.wait_for("Workload", "second", NS, "Admitted once first is gone", admitted)
    assert wl["status"]["admission"]["podSetAssignments"][0]["resourceUsage"]["nvidia.com/gpu"] == "4"
    queues.delete("Workload", "second", NS)


def test_workload_naming_a_missing_local_queue_is_inadmissible(queues: Kueue) -> None:
    queues.create(gpus("lost", count=1, per_pod=1, queue="nowhere"))
    wl = queues.wait_for(
        "Workload",
        "lost",
        NS,
        "QuotaReserved",
        lambda w: (quota_reserved(w) or {}).get("reason") == "Inadmissible",
    )
    reserved = quota_reserved(wl) or {}
    assert (reserved["status"], reserved["message"]) == ("False", "LocalQueue nowhere doesn't exist")
    assert not admitted(wl)
    queues.delete("Workload", "lost", NS)


def test_webhooks_are_registered_and_called(queues: Kueue) -> None:
    assert queues.unserved == []
    assert {"mworkload.kb.io", "vworkload.kb.io", "vclusterqueue.kb.io", "mjob.kb.io"} <= set(queues.webhooks)
    # Only Kueue's webhook refuses this (the CRD's schema accepts it).
    bad = workload(NS, "bad", QUEUE, requests={"pods": 1})
    with pytest.raises(KubeError, match=r'admission webhook "vworkload.kb.io" denied the request: .*'
                       r"the key is reserved for internal kueue use"):  # fmt: skip
        queues.create(bad)
    # Pods go through Kueue's pod webhook (a no-op: the pod integration is off); with
    # failurePolicy Fail, a webhook the API server could not call would refuse them.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "through-kueue", "namespace": NS},
        "spec": {"containers": [{"name": "worker", "image": "local"}]},
    }
    assert queues.plane.admin.create(f"/api/v1/namespaces/{NS}/pods", pod, dryRun="All")["kind"] == "Pod"


def test_conversion_webhook_serves_v1beta1(queues: Kueue) -> None:
    doc = cluster_queue("converted", FLAVOR, {"cpu": 1})
    doc["spec"]["cohortName"] = "research"  # v1beta1 calls it spec.cohort
    queues.create(doc)
    try:
        old = queues.plane.admin.get(f"/apis/{GROUP}/v1beta1/clusterqueues/converted")
        assert old["apiVersion"] == f"{GROUP}/v1beta1"
        assert old["spec"]["cohort"] == "research" and "cohortName" not in old["spec"]
        new = queues.get("ClusterQueue", "converted")
        assert new["apiVersion"] == API_VERSION and new["spec"]["cohortName"] == "research"
    finally:
        queues.delete("ClusterQueue", "converted")


def test_metrics_are_served(queues: Kueue) -> None:
    text = queues.metrics()
    assert re.search(
        rf'^kueue_cluster_queue_status\{{.*cluster_queue="{QUEUE}".*status="active".*\}} 1', text, re.M
    ), text[:2000]
