"""spec.suspend (etha.operator.reconcile.suspended): no pods while it is true; resuming starts
the attempt afresh."""

from __future__ import annotations

from etha.job.spec import parse
from tests.factories import make_pod, make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW, names


def test_suspend_deletes_pods_and_resume_recreates() -> None:
    pods = [make_pod("mnist-master-0", "Running", role="master"), make_pod("mnist-worker-0-0", "Running")]
    acts = reconcile(parse(make_trainingjob(suspend=True)), {"phase": "Running"}, pods, True, NOW)
    assert acts.status["phase"] == "Suspended" and sorted(acts.delete_pods) == [
        "mnist-master-0",
        "mnist-worker-0-0",
    ]
    acts = reconcile(
        parse(make_trainingjob()), {"phase": "Suspended", "startTime": "2026-01-01T11:00:00Z"}, [], True, NOW
    )
    assert names(acts.create) == ["mnist-master-0", "mnist-worker-0-0", "mnist-worker-0-1"]
    assert any(c["type"] == "Suspended" and c["status"] == "False" for c in acts.status["conditions"])
