"""What the operator reads and writes of Kueue (Observer.kueue, Writer.write_workload), with the
API faked: only the reads the decision needs, no request at all for a job without the queue
label, and writes that carry their preconditions."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from etha.job import kueue
from etha.job.builders import build_workload_of
from etha.job.spec import parse
from etha.operator.config import OperatorConfig
from etha.operator.jobs import JobWorker
from etha.operator.observe import Cache, Observer
from etha.operator.reconcile.model import WorkloadWrite
from etha.operator.writer import Writer
from tests.factories import make_pod, make_trainingjob

QUEUE = {"kueue.x-k8s.io/queue-name": "team-a"}


class FakeApi:
    """Answers cluster-scoped reads from ``objects`` and records every call."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self.objects = objects or {}
        self.calls: list[tuple[Any, ...]] = []
        self.answer: dict[str, Any] | None = {"metadata": {"name": "w", "resourceVersion": "9"}}

    async def get_cluster(self, kind: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind, name))
        return self.objects.get((kind, name))

    async def list_cluster(self, kind: str) -> list[dict[str, Any]]:
        self.calls.append(("list", kind))
        return [v for (k, _), v in self.objects.items() if k == kind]

    async def patch_workload(
        self, namespace: str, name: str, body: dict[str, Any], status: bool = False
    ) -> Any:
        self.calls.append(("patch", name, status, body))
        return self.answer

    async def delete(
        self, kind: str, namespace: str, name: str, uid: str, api_version: str | None = None
    ) -> bool:
        self.calls.append(("delete", kind, name, uid))
        return True

    def may_write(self) -> bool:
        return True


def body(labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    doc = make_trainingjob(**spec)
    doc["metadata"]["labels"] = dict(labels or {})
    return doc


def look(
    api: FakeApi, doc: dict[str, Any], workloads: list[dict[str, Any]] = (), pods: list[Any] = ()
) -> Any:  # type: ignore[assignment]
    cache = Cache(
        pods={"uid-1": list(pods)} if pods else {}, workloads={"uid-1": list(workloads)} if workloads else {}
    )
    observer = Observer(OperatorConfig(network_policy=False), api, cache)  # type: ignore[arg-type]
    return asyncio.run(observer.look(JobWorker(body=doc)))


def test_a_job_without_the_queue_label_costs_no_request() -> None:
    api = FakeApi()
    observed = look(api, body())
    assert api.calls == [] and observed.workload is None and observed.priority is None


def test_a_new_workloads_priority_is_read_from_its_class() -> None:
    api = FakeApi({("PriorityClass", "high"): {"metadata": {"name": "high"}, "value": 1000}})
    observed = look(api, body(QUEUE, scheduling={"priorityClassName": "high"}))
    assert api.calls == [("get", "PriorityClass", "high")]
    assert observed.priority == kueue.Priority(
        1000, {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "high"}
    )
    missing = look(FakeApi(), body(QUEUE, scheduling={"priorityClassName": "nope"}))
    assert missing.priority == (
        "spec.scheduling.priorityClassName ('nope') names no PriorityClass: Kueue orders and preempts "
        "Workloads by it; create the PriorityClass or name an existing one."
    )


def test_without_a_class_the_clusters_default_priority_class_counts() -> None:
    api = FakeApi({("PriorityClass", "x"): {"metadata": {"name": "x"}, "value": 5, "globalDefault": True},
                   ("PriorityClass", "y"): {"metadata": {"name": "y"}, "value": 9}})  # fmt: skip
    assert look(api, body(QUEUE)).priority.value == 5
    assert look(FakeApi(), body(QUEUE)).priority == kueue.Priority()


def admitted() -> dict[str, Any]:
    wl = build_workload_of(parse(body(QUEUE)))
    wl["metadata"].update(uid="wl", resourceVersion="3")
    wl["status"] = {
        "admission": {
            "clusterQueue": "cq",
            "podSetAssignments": [{"name": "workers", "flavors": {"cpu": "f"}}],
        },
        "conditions": [{"type": "Admitted", "status": "True"}],
    }
    return kueue.slim(wl)


def test_flavors_are_read_only_while_pods_are_to_be_made() -> None:
    api = FakeApi({("ResourceFlavor", "f"): {"spec": {"nodeLabels": {"pool": "a"}}}})
    observed = look(api, body(QUEUE), [admitted()])
    assert api.calls == [("get", "ResourceFlavor", "f")] and observed.flavors == {
        "f": {"nodeLabels": {"pool": "a"}}
    }
    api = FakeApi()
    pods = [make_pod(n, "Running", role=r) for n, r in
            (("mnist-master-0", "master"), ("mnist-worker-0-0", "worker"), ("mnist-worker-0-1", "worker"))]  # fmt: skip
    for pod in pods:
        pod["metadata"]["ownerReferences"] = [{"uid": "uid-1", "controller": True}]
    observed = look(api, body(QUEUE), [admitted()], pods)
    assert api.calls == [] and observed.workload["metadata"]["name"] == kueue.workload_name("mnist", "uid-1")


def test_workloads_under_another_name_or_of_an_unlabelled_job_are_strays() -> None:
    other = {"kind": "Workload", "metadata": {"name": "old", "uid": "u-old"}}
    assert look(FakeApi(), body(QUEUE), [admitted(), other]).stray_workloads == [("old", "u-old")]
    observed = look(FakeApi(), body(), [admitted()])
    assert observed.workload is None and observed.stray_workloads == [
        (kueue.workload_name("mnist", "uid-1"), "wl")
    ]


def writer(api: FakeApi) -> tuple[Writer, JobWorker]:
    worker = JobWorker(body={"metadata": {"name": "mnist", "namespace": "research", "uid": "uid-1"}})
    return Writer(SimpleNamespace(), api, None, lambda uid: [], {}), worker  # type: ignore[arg-type]


def test_a_status_write_carries_its_uid_and_resource_version() -> None:
    api = FakeApi()
    w, worker = writer(api)
    asyncio.run(
        w.write_workload(worker, WorkloadWrite("w", "wl", status={"admission": None}, resource_version="7"))
    )
    (call,) = api.calls
    assert call == (
        "patch",
        "w",
        True,
        {"metadata": {"uid": "wl", "resourceVersion": "7"}, "status": {"admission": None}},
    )
    assert (
        worker.expected["w"][1]["metadata"]["resourceVersion"] == "9"
    )  # the answer, until the watch shows it


@pytest.mark.parametrize("stale", [True, False], ids=["changed-meanwhile", "written"])
def test_a_write_whose_precondition_failed_is_dropped(stale: bool) -> None:
    api = FakeApi()
    api.answer = None if stale else api.answer
    w, worker = writer(api)
    patch = {"spec": {"active": False}}
    asyncio.run(w.write_workload(worker, WorkloadWrite("w", "wl", patch=patch)))
    assert api.calls == [("patch", "w", False, {"spec": {"active": False}, "metadata": {"uid": "wl"}})]
    assert ("w" in worker.expected) is not stale


def test_a_deleted_workload_is_forgotten_at_once() -> None:
    api = FakeApi()
    w, worker = writer(api)
    worker.expected["w"] = (1e12, {"kind": "Workload", "metadata": {"name": "w"}})
    asyncio.run(w.write_workload(worker, WorkloadWrite("w", "wl", delete=True)))
    assert api.calls == [("delete", "Workload", "w", "wl")] and "w" not in worker.expected


@pytest.mark.parametrize(
    ("status", "message", "error", "needle"),
    [
        (403, 'admission webhook "vworkload.kb.io" denied the request: spec.podSets[1]...: Invalid value: "pods"',
         "WorkloadRejected", 'denied the request: spec.podSets[1]'),
        (403, 'workloads.kueue.x-k8s.io is forbidden: User "x" cannot create resource "workloads"',
         "ApiRefused", "cannot create resource"),
        (404, "the server could not find the requested resource", "KueueMissing",
         "no CustomResourceDefinition workloads.kueue.x-k8s.io"),
        (404, 'namespaces "research" not found', "ApiUnavailable", "answered 404"),
    ],
    ids=["webhook-denied", "rbac", "no-kueue-crd", "namespace-gone"],
)  # fmt: skip
def test_a_refused_workload_is_told_apart(status: int, message: str, error: str, needle: str) -> None:
    import json

    from kubernetes.client.exceptions import ApiException

    from etha.operator import k8s

    def refuse(*_: Any) -> None:
        exc = ApiException(status=status, reason="x")
        exc.body = json.dumps({"message": message})
        raise exc

    api = k8s.Api(None)  # type: ignore[arg-type]
    api._request = refuse  # type: ignore[method-assign]
    manifest = build_workload_of(parse(body(QUEUE)))
    with pytest.raises(k8s.ApiError) as raised:
        asyncio.run(api.create(manifest))
    assert type(raised.value).__name__ == error and needle in str(raised.value), str(raised.value)
    if error in ("WorkloadRejected", "KueueMissing"):  # the job ends Failed with this reason
        assert isinstance(raised.value, k8s.ChildRejected) and raised.value.reason in (
            "WorkloadRejected",
            "KueueCRDMissing",
        )
