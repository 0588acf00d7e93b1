"""spec.activeDeadlineSeconds (etha.operator.reconcile.deadline)."""

from __future__ import annotations

from datetime import timedelta

from etha.job.spec import parse
from tests.factories import make_pod, make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW


def test_deadline_exceeded_fails_and_deletes_pods() -> None:
    start = (NOW - timedelta(seconds=61)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods = [make_pod("mnist-master-0", "Running", role="master"), make_pod("mnist-worker-0-0", "Running")]
    acts = reconcile(
        parse(make_trainingjob(activeDeadlineSeconds=60)),
        {"phase": "Running", "startTime": start},
        pods,
        True,
        NOW,
    )
    assert acts.status["phase"] == "Failed"
    assert acts.status["conditions"][-1]["reason"] == "DeadlineExceeded"
    assert sorted(acts.delete_pods) == ["mnist-master-0", "mnist-worker-0-0"]


def test_deadline_not_yet_reached_keeps_running() -> None:
    acts = reconcile(
        parse(make_trainingjob(activeDeadlineSeconds=60)),
        {"startTime": "2026-01-01T11:59:30Z"},
        [],
        True,
        NOW,
    )
    assert acts.status["phase"] == "Pending" and "Failed" not in [
        c["type"] for c in acts.status.get("conditions", [])
    ]
