"""A finished job (etha.operator.reconcile.finished): spec.ttlSecondsAfterFinished deletes it, and
says why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from etha.job.spec import parse
from tests.factories import make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW


@pytest.mark.parametrize(
    ("finished_ago", "delete"), [(30, False), (120, True)], ids=["ttl-pending", "ttl-passed"]
)
def test_ttl_after_finished(finished_ago: int, delete: bool) -> None:
    done = (NOW - timedelta(seconds=finished_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    acts = reconcile(
        parse(make_trainingjob(ttlSecondsAfterFinished=60)),
        {"phase": "Succeeded", "completionTime": done},
        [],
        True,
        NOW,
    )
    assert acts.delete_job is delete
    assert acts.create == []


def test_a_ttl_deletion_says_why_in_an_event() -> None:
    job = parse(make_trainingjob(ttlSecondsAfterFinished=30))
    status = {"phase": "Succeeded", "completionTime": "2026-01-01T12:00:00Z"}
    acts = reconcile(job, status, [], True, datetime(2026, 1, 1, 12, 0, 31, tzinfo=UTC))
    assert acts.delete_job
    assert [(e.reason, e.message) for e in acts.events] == [
        (
            "TTLExpired",
            "spec.ttlSecondsAfterFinished (30 s) passed since the job succeeded: deleting it and its pods.",
        )
    ]
