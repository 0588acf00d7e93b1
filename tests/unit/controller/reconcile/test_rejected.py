"""A job the operator will not run (etha.operator.reconcile.rejected): it ends Failed once, with a
condition and an event naming why, and the children made from it are deleted."""

from __future__ import annotations

import pytest

from etha.operator.reconcile import Refused, reconcile
from tests.unit.controller.reconcile.helpers import NOW

MESSAGE = "spec.replicas (0) must be at least 1."
REJECTED = "Pod mnist-worker-0-1: the API server rejected it: spec.containers[0].image: Required value"
WAS_RUNNING = {
    "type": "Running",
    "status": "True",
    "reason": "AllWorkersRunning",
    "message": "All 2 workers are running.",
    "lastTransitionTime": "2026-01-01T11:58:00Z",
}


@pytest.mark.parametrize(
    ("look", "reason", "message", "deleted"),
    [
        (Refused({}, MESSAGE, NOW), "InvalidSpec", MESSAGE, []),
        (
            Refused(
                {"phase": "Pending", "conditions": [WAS_RUNNING]},
                REJECTED,
                NOW,
                "InvalidSpec",
                ["mnist-master-0", "mnist-worker-0-0"],
            ),
            "InvalidSpec",
            REJECTED,
            ["mnist-master-0", "mnist-worker-0-0"],
        ),
        (
            Refused({}, "PodGroup mnist-0: the kind is not served.", NOW, "PodGroupCRDMissing"),
            "PodGroupCRDMissing",
            "PodGroup mnist-0: the kind is not served.",
            [],
        ),
    ],
    ids=["invalid-spec", "rejected-child", "missing-crd"],
)
def test_a_refused_job_fails_naming_why_and_leaves_nothing_behind(
    look: Refused, reason: str, message: str, deleted: list[str]
) -> None:
    acts = reconcile(look)
    assert acts.status["phase"] == "Failed" and acts.status["reason"] == reason
    assert acts.status["completionTime"] == "2026-01-01T12:00:00Z"
    (failed,) = [x for x in acts.status["conditions"] if x["type"] == "Failed"]
    assert (failed["status"], failed["reason"], failed["message"]) == ("True", reason, message)
    # The conditions it had are kept.
    assert [x["type"] for x in acts.status["conditions"]] == [
        x["type"] for x in [*look.status.get("conditions", []), failed]
    ]
    assert [(e.type, e.reason, e.message) for e in acts.events] == [("Warning", reason, message)]
    assert acts.delete_pods == deleted
    assert acts.create == [] and not acts.delete_job


def test_a_job_already_failed_is_not_failed_again_but_its_pods_still_go() -> None:
    failed = {"phase": "Failed", "reason": "InvalidSpec", "conditions": [WAS_RUNNING]}
    acts = reconcile(Refused(failed, MESSAGE, NOW, pods=["mnist-master-0"], finalizer=True))
    assert acts.status == {} and acts.events == []
    assert acts.delete_pods == ["mnist-master-0"] and acts.remove_finalizer
