"""The status is untrusted input (anyone with patch rights on trainingjobs/status writes it): a
look at a job whose status says absurd numbers stays bounded and names only the job's own pods."""

from __future__ import annotations

import time
from typing import Any

import pytest

from etha.job.names import last_attempt
from etha.job.spec import parse
from tests.factories import make_pod, make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW


@pytest.mark.parametrize(
    "status",
    [
        {"phase": "Running", "attempt": 10**18},
        {"phase": "Running", "attempt": -3, "restarts": -1, "restartsCountedTowardsMax": 10**30},
        {"phase": "Restarting", "attempt": 2, "consecutiveRestarts": 10**40, "restarts": 10**40},
        {"phase": "Running", "attempt": 0, "attemptSpec": {"attempt": 0, "replicas": 10**9, "hashes": {"replicas": "x"}}},
        {"phase": "Running", "attempt": 0, "rendezvous": {"attempt": 0, "joinedRanks": "0-99999999999999"}},
    ],
    ids=["huge-attempt", "negative-and-huge-counts", "huge-backoff-count", "huge-pinned-replicas", "huge-ranks"],
)  # fmt: skip
def test_absurd_status_numbers_keep_a_look_small(status: dict[str, Any]) -> None:
    job = parse(make_trainingjob(replicas=2, maxRestarts=3))
    pods = [
        make_pod("mnist-master-0", "Running", role="master"),
        make_pod("mnist-worker-0-0", "Failed", exit_code=1),
    ]
    started = time.monotonic()
    actions = reconcile(job, status, pods, True, NOW)
    assert time.monotonic() - started < 1.0
    made = [m["metadata"]["name"] for m in actions.create]
    assert all(len(n) <= 63 for n in made), made
    assert len(made) <= 2 + 1 + 1  # the job's workers, its master, a PodGroup at most
    attempt = actions.status.get("attempt")
    assert attempt is None or 0 <= attempt <= last_attempt(job.max_restarts) + 1


def test_a_start_time_written_in_the_future_does_not_put_the_deadline_off() -> None:
    job = parse(make_trainingjob(activeDeadlineSeconds=60))
    actions = reconcile(job, {"phase": "Running", "startTime": "2999-01-01T00:00:00Z"}, [], True, NOW)
    assert actions.requeue_after is not None and actions.requeue_after <= 60
