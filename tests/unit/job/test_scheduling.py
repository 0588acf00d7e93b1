"""spec.scheduling (etha.job.scheduling): parsing, and the PodGroups and pod markers built from it.
The decisions that use it: tests/unit/controller/reconcile/test_placement.py."""

from __future__ import annotations

from typing import Any

import pytest

from etha.job.builders import build_master_pod, build_pod_group_of, build_worker_pod
from etha.job.scheduling import GROUP_KINDS, group_name
from etha.job.spec import InvalidSpec, parse
from tests.factories import gang_job, make_trainingjob


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
    job = gang_job(replicas=2, labels={"kueue.x-k8s.io/queue-name": "team-a"}, kueue_mode="PodGroup")
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


def test_group_kinds_name_their_crds() -> None:
    assert GROUP_KINDS["coscheduling"].crd == "podgroups.scheduling.x-k8s.io"
    assert GROUP_KINDS["volcano"].crd == "podgroups.scheduling.volcano.sh"
