"""Kueue's real manager (v0.17.0, ``make kueue``) admits TrainingJobs: the chart's operator in
Workload mode makes each job's Workload, Kueue's scheduler decides, its webhooks check what the
operator writes. A ClusterQueue of 8 ``nvidia.com/gpu`` (the two fake Nodes' 4 each); two jobs of
6 GPUs (3 workers x 2): the first is admitted and runs, the second stays ``Queued`` with no pod
until the first finishes and frees the quota, then runs and succeeds. Under a ClusterQueue that
preempts by priority, a higher-priority job evicts a running lower one, which goes back to
``Queued`` without a counted restart, and is admitted again once the quota is free."""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.jobs import Jobs, condition
from tests.harness.kueue import API_VERSION, Kueue, cluster_queue, local_queue
from tests.harness.operator import operating

NS = "kueue-admits"
QUEUE = "gpus-admits"
#: Registers its rank with the master (etha.kvstore.from_env), then trains for ``seconds``.
TRAIN = "import time; from etha.kvstore import from_env; from_env(); time.sleep({seconds})"
#: The same, for 600 s on its first attempt and 1 s on the next ones.
LONG_THEN_SHORT = (
    "import os, time; from etha.kvstore import from_env; from_env(); "
    "time.sleep(600 if os.environ['ETHA_ATTEMPT'] == '0' else 1)"
)


@pytest.fixture(scope="module")
def jobs(control_plane: ControlPlane, kueue: Kueue) -> Iterator[Jobs]:
    # The operator starts after Kueue's CRDs exist (kopf finds the resources it watches at start).
    with operating(control_plane, NS) as op:
        kueue.queues(NS, {"nvidia.com/gpu": 8, "cpu": 32, "memory": "128Gi"}, name=QUEUE, flavor="gpu-admits")
        yield Jobs(op, NS)


def six_gpus(
    jobs: Jobs, name: str, seconds: float = 1, queue: str = QUEUE, code: str | None = None, **labels: str
) -> dict[str, Any]:
    doc = jobs.job(name, replicas=3, code=code or TRAIN.format(seconds=seconds), maxRestarts=0)
    doc["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": queue, **labels}
    doc["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"nvidia.com/gpu": 2},
    }
    return doc


def test_second_job_waits_queued_until_the_first_frees_the_quota(jobs: Jobs, kueue: Kueue) -> None:
    jobs.create(six_gpus(jobs, "first", seconds=20))
    admitted = jobs.wait_for("first", "admitted and running", lambda s: s.get("phase") == "Running", 120)
    jobs.wait_for("first", "every rank joined", lambda s: (s.get("rendezvous") or {}).get("joined") == 3, 120)
    joined_at = time.time()
    workload = kueue.get("Workload", str(jobs.status("first")["workload"]), NS)
    when = {c["type"]: c for c in workload["status"]["conditions"]}["Admitted"]["lastTransitionTime"]
    joined = joined_at - calendar.timegm(time.strptime(when, "%Y-%m-%dT%H:%M:%SZ"))
    queued = condition(admitted, "Queued")
    assert queued is not None and queued["status"] == "False", admitted

    jobs.create(six_gpus(jobs, "second", seconds=1))
    waiting = jobs.wait_for(
        "second",
        "Queued with Kueue's reason",
        lambda s: s.get("phase") == "Queued" and "insufficient unused quota" in str(condition(s, "Queued")),
        60,
    )
    assert QUEUE in str(condition(waiting, "Queued")), waiting
    assert jobs.pods("second") == [], "a queued job has pods"
    pods = jobs.pods("first")
    assert not any("kueue.x-k8s.io/queue-name" in (p["metadata"].get("labels") or {}) for p in pods), pods
    gpu_nodes = {p["spec"].get("nodeName") for p in pods if "worker" in p["metadata"]["name"]}
    assert gpu_nodes and all(gpu_nodes), pods

    jobs.wait_for("first", "Succeeded", lambda s: s.get("phase") == "Succeeded", 180)
    wl = kueue.get("Workload", str(jobs.status("first")["workload"]), NS)
    finished = {c["type"]: c for c in (wl.get("status") or {}).get("conditions") or []}.get("Finished")
    assert finished is not None and finished["status"] == "True", wl.get("status")

    done = jobs.wait_for("second", "admitted, then Succeeded", lambda s: s.get("phase") == "Succeeded", 240)
    assert done.get("restarts", 0) == 0 and done.get("attempt", 0) == 0, done
    # The Admitted condition's time has whole seconds: the figure is within a second.
    print(f"Kueue admission to every rank joined (first job, 3 workers): {joined:.1f} s")


def test_higher_priority_preempts_a_running_job_which_requeues_uncounted(jobs: Jobs, kueue: Kueue) -> None:
    for name, value in (("etha-low", 10), ("etha-high", 1000)):
        kueue.create({"apiVersion": API_VERSION, "kind": "WorkloadPriorityClass",
                      "metadata": {"name": name}, "value": value})  # fmt: skip
    queue = cluster_queue("preempting", "gpu-admits", {"nvidia.com/gpu": 8, "cpu": 32, "memory": "128Gi"})
    queue["spec"]["preemption"] = {"withinClusterQueue": "LowerPriority"}
    kueue.create(queue)
    kueue.create(local_queue(NS, "preempting", "preempting"))
    for kind, name, ns in (("ClusterQueue", "preempting", ""), ("LocalQueue", "preempting", NS)):
        kueue.wait_for(
            kind,
            name,
            ns,
            "Active",
            lambda o: (condition(o.get("status") or {}, "Active") or {}).get("status") == "True",
        )

    low = "kueue.x-k8s.io/priority-class"
    jobs.create(six_gpus(jobs, "low", queue="preempting", code=LONG_THEN_SHORT, **{low: "etha-low"}))
    jobs.wait_for("low", "every rank joined", lambda s: (s.get("rendezvous") or {}).get("joined") == 3, 120)
    jobs.create(six_gpus(jobs, "high", queue="preempting", **{low: "etha-high"}))
    evicted = jobs.wait_for("low", "evicted, Queued again", lambda s: s.get("phase") == "Queued", 120)
    assert evicted.get("evictions") == 1 and evicted.get("restarts", 0) == 0, evicted
    jobs.wait_for("high", "Succeeded", lambda s: s.get("phase") == "Succeeded", 180)
    # maxRestarts is 0: had the eviction counted as a failure, the job would have Failed.
    done = jobs.wait_for("low", "admitted again, Succeeded", lambda s: s.get("phase") == "Succeeded", 240)
    assert (done.get("attempt"), done.get("restarts", 0), done.get("evictions")) == (1, 0, 1), done
