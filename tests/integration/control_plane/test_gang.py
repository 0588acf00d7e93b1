"""Gang scheduling on the real control plane, with scheduler-plugins' Coscheduling scheduler and
PodGroup controller (v0.34.7, built here) beside the default scheduler, and the chart's operator
configured for it. Workers ask for ``nvidia.com/gpu: 1`` as users write it, on a fake Node with 4."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from etha.job.builders import build_pod_group_of
from etha.job.spec import parse
from tests.harness.cluster import ControlPlane
from tests.harness.gang import NODE, SCHEDULER_NAME, gang_scheduling, gang_worker
from tests.harness.jobs import Jobs, condition
from tests.harness.kube import KubeError
from tests.harness.operator import operating
from tests.helpers import REPO, wait_until

NS = "gangs"
VALUES = {
    "scheduling": {
        "gang": "coscheduling",
        "gangs": ["volcano"],
        "schedulerNames": {"coscheduling": SCHEDULER_NAME},
    }
}
GROUPS = f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{NS}/podgroups"


@pytest.fixture(scope="module")
def jobs(control_plane: ControlPlane) -> Iterator[Jobs]:
    with gang_scheduling(control_plane), operating(control_plane, NS, VALUES) as operator:
        yield Jobs(operator, NS)


def bound(jobs: Jobs, name: str) -> tuple[int, int]:
    """(pods of the job bound to a node, pods of the job), terminal pods aside."""
    pods = [p for p in jobs.pods(name) if p["status"].get("phase") not in ("Succeeded", "Failed")]
    return sum(1 for p in pods if p["spec"].get("nodeName")), len(pods)


def held_gpus(jobs: Jobs, name: str) -> int:
    """GPUs the job's live pods hold on the gang Node."""
    return sum(
        1
        for p in jobs.pods(name)
        if p["spec"].get("nodeName") == NODE.name and p["status"].get("phase") not in ("Succeeded", "Failed")
    )


def explain(jobs: Jobs, *names: str) -> str:
    """The jobs' pods (node, phase, PodScheduled), PodGroups and the gang scheduler's log tail."""
    lines = []
    for name in names:
        for p in jobs.pods(name):
            sched = next((c for c in p["status"].get("conditions") or [] if c["type"] == "PodScheduled"), {})
            lines.append(
                f"{p['metadata']['name']}: node={p['spec'].get('nodeName')} phase={p['status'].get('phase')} "
                f"scheduler={p['spec'].get('schedulerName')} scheduled={sched.get('status')} {sched.get('message')}"
            )
    for g in jobs.op.plane.admin.get(GROUPS)["items"]:
        lines.append(f"PodGroup {g['metadata']['name']}: {g.get('spec')} {g.get('status')}")
    for p in jobs.op.plane.processes:
        if p.name.startswith("scheduler-plugins"):
            lines.append(f"--- {p.name}\n{p.tail(15)}")
    return "\n".join(lines)


def two_jobs(jobs: Jobs, prefix: str, code: str, **spec: Any) -> tuple[str, str]:
    names = (f"{prefix}-a", f"{prefix}-b")
    for name in names:  # both at once: neither is placed before the other is created
        jobs.create(gang_worker(jobs.job(name, replicas=3, code=code, **spec)))
    return names


def test_two_gangs_never_hold_gpus_half_scheduled_and_run_one_after_the_other(jobs: Jobs) -> None:
    """3 workers x 1 GPU (+ master) twice, 4 GPUs: one runs whole, the other waits whole and runs
    when the first is done."""
    a, b = two_jobs(jobs, "gang", "import time; time.sleep(8)")

    def one_whole() -> bool:
        return sorted((held_gpus(jobs, a), held_gpus(jobs, b))) == [0, 3]

    try:
        wait_until(one_whole, 60, "one gang placed whole")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(jobs, a, b)}\n{jobs.op.log(30)}") from None
    first, second = (a, b) if held_gpus(jobs, a) == 3 else (b, a)
    assert bound(jobs, first) == (4, 4)  # its master too: it is a member of the gang
    # The other waits whole: none of its pods is bound, none holds a GPU, and it says why.
    waiting = jobs.wait_for(
        second,
        "the reason it waits",
        lambda s: (condition(s, "PodsScheduled") or {}).get("status") == "False",
    )
    assert waiting["phase"] == "Pending" and waiting["reason"] == "Unschedulable", waiting
    message = condition(waiting, "PodsScheduled")["message"]  # type: ignore[index]
    assert f"(gang: PodGroup {second}-0 is" in message, message
    assert bound(jobs, second) == (0, 4), jobs.pods(second)
    # While the first runs, the second is placed only whole: when it has pods bound, the GPUs the
    # first still holds leave room for all 3 of its workers (the first's finished workers free
    # theirs, so the second may start before the first has Succeeded).
    while jobs.status(first).get("phase") != "Succeeded":
        if bound(jobs, second)[0] > 0:
            assert held_gpus(jobs, first) + 3 <= NODE.gpus, explain(jobs, first, second)
        time.sleep(0.3)
    jobs.wait_phase(second, "Succeeded", 120)
    reasons = [e["reason"] for e in jobs.events(second)]
    assert "Unschedulable" in reasons and reasons.index("Unschedulable") < reasons.index("Running"), reasons
    groups = {g["metadata"]["name"]: g for g in jobs.op.plane.admin.get(GROUPS)["items"]}
    for name in (a, b):
        group = groups[f"{name}-0"]
        assert group["spec"]["minMember"] == 4, group
        (ref,) = group["metadata"]["ownerReferences"]
        assert ref["kind"] == "TrainingJob" and ref["name"] == name and ref["controller"] is True
        jobs.delete(name)
    wait_until(
        lambda: (
            not {f"{a}-0", f"{b}-0"}
            & {g["metadata"]["name"] for g in jobs.op.plane.admin.get(GROUPS)["items"]}
        ),
        90,
        "the deleted jobs' PodGroups collected",
    )


def test_without_a_gang_the_same_two_jobs_end_half_scheduled(jobs: Jobs) -> None:
    """Why the feature exists: placed pod by pod, 6 GPUs' worth of workers on 4 GPUs leaves a
    job holding GPUs it cannot use while it waits for the rest."""
    a, b = two_jobs(jobs, "plain", "import time; time.sleep(600)", scheduling={"gang": "none"})
    wait_until(lambda: held_gpus(jobs, a) + held_gpus(jobs, b) == 4, 60, "every GPU taken")
    time.sleep(2)
    held = (held_gpus(jobs, a), held_gpus(jobs, b))
    # 4 GPUs, two jobs of 3: one of them holds GPUs it cannot use, waiting for the rest.
    partial = a if 0 < held[0] < 3 else b
    assert jobs.status(partial)["phase"] == "Pending" and held_gpus(jobs, partial) > 0, held
    for name in (a, b):
        jobs.delete(name)
    wait_until(lambda: held_gpus(jobs, a) + held_gpus(jobs, b) == 0, 90, "the GPUs given back")


def test_a_gang_that_can_never_fit_fails_after_its_timeout_naming_the_reason(jobs: Jobs) -> None:
    doc = jobs.job(
        "too-big",
        replicas=5,
        code="import time; time.sleep(600)",
        scheduling={"scheduleTimeoutSeconds": 15, "onTimeout": "FailJob"},
    )
    jobs.create(gang_worker(doc))
    waiting = jobs.wait_for(
        "too-big",
        "the reason it waits",
        lambda s: (condition(s, "PodsScheduled") or {}).get("status") == "False",
    )
    assert waiting["phase"] == "Pending"
    started = time.monotonic()
    done = jobs.wait_phase("too-big", "Failed", 60)
    failed = condition(done, "Failed")
    assert failed is not None and failed["reason"] == "ScheduleTimeout", failed
    assert "scheduleTimeoutSeconds (15 s)" in failed["message"], failed
    assert "Insufficient nvidia.com/gpu" in failed["message"], f"{failed}\n{explain(jobs, 'too-big')}"
    assert done["reason"] == "ScheduleTimeout"
    print(f"failed {time.monotonic() - started:.1f}s after it was first seen waiting")
    wait_until(lambda: not jobs.pods("too-big"), 60, "its pods deleted")
    jobs.delete("too-big")


def test_a_gang_whose_podgroup_crd_is_missing_fails_naming_the_crd(jobs: Jobs) -> None:
    doc = jobs.job("no-volcano", replicas=2, scheduling={"gang": "volcano", "queue": "research"})
    jobs.create(doc)
    done = jobs.wait_phase("no-volcano", "Failed")
    failed = condition(done, "Failed")
    assert failed is not None and failed["reason"] == "PodGroupCRDMissing", failed
    assert "podgroups.scheduling.volcano.sh" in failed["message"], failed
    assert not jobs.pods("no-volcano")  # nothing made, nothing left behind
    jobs.delete("no-volcano")


def test_a_volcano_gang_podgroup_is_what_volcanos_crd_accepts(jobs: Jobs) -> None:
    """Volcano's PodGroup CRD (generated from volcano.sh/apis v1.13.0, tests/data/volcano) on the
    real API server: the operator's PodGroup is accepted under strict field validation, and the
    pods name it and the PriorityClass. No Volcano scheduler runs here: the pods stay Pending."""
    admin = jobs.op.plane.admin
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    crd = next(
        d
        for d in yaml.safe_load_all(
            (REPO / "tests/data/volcano/scheduling.volcano.sh_podgroups.yaml").read_text()
        )
        if d
    )
    admin.create(crds, crd)
    admin.create("/apis/scheduling.k8s.io/v1/priorityclasses",
                 {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "etha-test-high"}, "value": 1000})  # fmt: skip
    groups = f"/apis/scheduling.volcano.sh/v1beta1/namespaces/{NS}/podgroups"
    try:
        wait_until(lambda: _served(admin, groups), 30, "Volcano's PodGroups served")
        doc = jobs.job("volcano", replicas=2, code="import time; time.sleep(600)",
                       scheduling={"gang": "volcano", "queue": "research", "priorityClassName": "etha-test-high"})  # fmt: skip
        doc["spec"]["template"]["spec"]["schedulerName"] = "volcano"
        job = parse(jobs.create(doc))
        wait_until(lambda: len(jobs.pods("volcano")) == 3, 60, "the pods")
        group = admin.get(f"{groups}/volcano-0")
        assert group["spec"] == {
            "minMember": 3,
            "queue": "research",
            "priorityClassName": "etha-test-high",
        }, group
        for pod in jobs.pods("volcano"):
            assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "volcano-0"
            assert (
                pod["spec"]["schedulerName"] == "volcano"
                and pod["spec"]["priorityClassName"] == "etha-test-high"
            )
            assert pod["spec"]["priority"] == 1000  # the Priority admission plugin resolved it
        built = build_pod_group_of(job, 7)
        assert built is not None
        admin.request("POST", groups, built, query={"fieldValidation": "Strict"})  # unknown fields refused
        jobs.delete("volcano")
    finally:
        admin.delete(f"{crds}/{crd['metadata']['name']}")
        admin.delete("/apis/scheduling.k8s.io/v1/priorityclasses/etha-test-high")


def _served(admin: Any, path: str) -> bool:
    try:
        admin.get(path)
    except KubeError:
        return False
    return True


@pytest.mark.parametrize(
    ("scheduling", "needle"),
    [
        ({"gang": "slurm"}, 'spec.scheduling.gang: Unsupported value: "slurm"'),
        ({"scheduleTimeoutSeconds": -1}, "spec.scheduling.scheduleTimeoutSeconds: Invalid value: -1"),
        ({"gang": "volcano", "queue": "Team_A"}, 'spec.scheduling.queue: Invalid value: "Team_A"'),
        (
            {"onTimeout": "FailJob"},
            "spec.scheduling.onTimeout FailJob needs spec.scheduling.scheduleTimeoutSeconds",
        ),
        ({"queue": "team-a", "gang": "none"}, "spec.scheduling.queue is Volcano's queue"),
    ],
)
def test_bad_scheduling_is_refused_by_the_api_server_naming_the_field(
    jobs: Jobs, scheduling: dict[str, Any], needle: str
) -> None:
    with pytest.raises(KubeError) as err:
        jobs.create(jobs.job("bad-scheduling", scheduling=scheduling))
    assert needle in str(err.value), str(err.value)
