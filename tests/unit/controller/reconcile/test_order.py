"""The decision as a whole (etha.operator.reconcile.reconcile): level-triggered, the same world
gives the same actions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from etha.job.spec import parse
from tests.factories import make_pod, make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW


def test_reconcile_is_idempotent() -> None:
    job = parse(make_trainingjob(replicas=2))
    first = reconcile(job, {}, [], False, NOW)
    again = reconcile(job, {}, [], False, NOW)
    assert first.create == again.create and first.status == again.status


@pytest.mark.parametrize("phases", [("Pending", "Pending"), ("Running", "Running"), ("Running", "Pending")])
def test_a_second_reconcile_of_an_unchanged_job_changes_no_status(phases: tuple[str, str]) -> None:
    """Level-triggered and quiet: once its status is written, the same world yields the same
    status (the handler then writes nothing, and a real API server bumps no resourceVersion)."""
    master, worker = phases
    pods = [make_pod("mnist-master-0", master, role="master")] + [
        make_pod(f"mnist-worker-0-{r}", worker) for r in range(2)
    ]
    job = parse(make_trainingjob())
    first = reconcile(job, {}, pods, True, NOW)
    second = reconcile(job, dict(first.status), pods, True, NOW + timedelta(seconds=5))
    assert {k: v for k, v in second.status.items() if first.status.get(k) != v} == {}
    assert second.events == [] and second.create == [] and second.delete_pods == []
