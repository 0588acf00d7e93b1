"""``etha status`` as text, from a factory-built TrainingJob status and its events."""

from __future__ import annotations

from typing import Any

import pytest

from etha.clikube.format import MAX_EVENTS, format_status, not_fine
from tests.factories import make_status, make_trainingjob


def job_with(status: dict[str, Any] | None) -> dict[str, Any]:
    job = make_trainingjob(replicas=4)
    if status is not None:
        job["status"] = status
    return job


def event(n: int, reason: str = "Created", kind: str = "Normal", **more: Any) -> dict[str, Any]:
    meta = {"name": f"e{n}", "resourceVersion": str(100 + n)}
    stamp = f"2026-12-07T10:00:{n:02d}Z"
    return {
        "metadata": meta,
        "type": kind,
        "reason": reason,
        "message": f"event {n}.",
        "lastTimestamp": stamp,
        **more,
    }


FAILURE = {
    "pod": "mnist-worker-0-2", "role": "worker", "rank": 2, "attempt": 0, "exitCode": 137,
    "reason": "worker rank 2 was OOMKilled.", "action": "Count", "rule": "default",
    "time": "2026-12-07T10:00:00Z",
}  # fmt: skip
PROGRESS = {"step": 120, "totalSteps": 1000, "percent": 12, "etaSeconds": 200, "metrics": {"loss": 0.5}}


@pytest.mark.parametrize(
    ("status", "expected", "absent"),
    [
        (
            make_status(joined=[0, 1, 3]),
            ["Phase:       Running", "Rendezvous:  3/4 ranks joined (0, 1, 3); missing: 2",
             "3 of 4 ranks joined.", "Workers:     4 running, 0 pending, 0 succeeded, 0 failed (of 4)"],
            ["Progress:", "Last failure:", "Conditions:"],
        ),
        (
            make_status(),
            ["Rendezvous:  4/4 ranks joined (0, 1, 2, 3); complete"],
            ["missing", "ranks joined."],
        ),
        (None, ["Phase:       Unknown (the operator has not written a status yet)"], ["Rendezvous:", "Workers:"]),
        (
            make_status(phase="Restarting", attempt=1, lastFailure=FAILURE),
            ["Attempt:     1    Restarts: 1",
             "Last failure: worker rank 2, pod mnist-worker-0-2 (attempt 0), exit code 137",
             "worker rank 2 was OOMKilled.", "action: Count (default), at 2026-12-07T10:00:00Z"],
            [],
        ),
        (
            make_status(progress=PROGRESS),
            ["Progress:    step 120/1000 (12%), about 3m20s left; loss=0.5"],
            [],
        ),
        (make_status(progress={"stragglers": "1"}), [], ["Progress:"]),
        (
            make_status(phase="Failed", reason="RendezvousTimeout"),
            ["Phase:       Failed (RendezvousTimeout)"],
            [],
        ),
    ],
    ids=["ranks-missing", "complete", "no-status-yet", "last-failure", "progress", "progress-without-step", "reason"],
)  # fmt: skip
def test_status_text(status: dict[str, Any] | None, expected: list[str], absent: list[str]) -> None:
    text = format_status(job_with(status))
    assert text.startswith("Name:        mnist\nNamespace:   research\n"), text
    for line in expected:
        assert line in text, text
    for word in absent:
        assert word not in text, text


@pytest.mark.parametrize(
    ("condition", "shown"),
    [
        ({"type": "Created", "status": "True"}, False),
        ({"type": "Running", "status": "False"}, False),
        ({"type": "PodsScheduled", "status": "True"}, False),
        ({"type": "PodsScheduled", "status": "False", "reason": "Unschedulable"}, True),
        ({"type": "Succeeded", "status": "True"}, False),
        ({"type": "Failed", "status": "True"}, True),
        ({"type": "Failed", "status": "False"}, False),
        ({"type": "Stalled", "status": "True"}, True),
        ({"type": "SpecChangeRefused", "status": "True"}, True),
    ],
    ids=["created", "not-running-yet", "scheduled", "unschedulable", "succeeded", "failed",
         "not-failed", "stalled", "spec-refused"],
)  # fmt: skip
def test_only_conditions_worth_a_look_are_shown(condition: dict[str, str], shown: bool) -> None:
    assert not_fine(condition) is shown


def test_conditions_show_type_status_reason_and_message() -> None:
    stalled = {"type": "Stalled", "status": "True", "reason": "NoProgress", "message": "Ranks 2-3 stopped."}
    created = {"type": "Created", "status": "True", "reason": "Created", "message": "All pods exist."}
    text = format_status(job_with(make_status(conditions=[created, stalled])))
    assert "Conditions:\n  Stalled=True (NoProgress): Ranks 2-3 stopped.\n" in text, text
    assert "All pods exist." not in text


def test_events_are_the_newest_ten_newest_last() -> None:
    events = [event(n) for n in range(12, 0, -1)]  # any order in
    events.append(event(20, "RanksMissing", "Warning", count=3, eventTime="2026-12-07T10:00:20.000001Z"))
    lines = format_status(job_with(make_status()), events).split("Events:\n", 1)[1].splitlines()
    assert len(lines) == MAX_EVENTS
    assert lines[0] == "  2026-12-07T10:00:04Z  Normal   Created: event 4."
    assert lines[-1] == "  2026-12-07T10:00:20.000001Z  Warning  RanksMissing (x3): event 20."


def test_no_events_says_so() -> None:
    assert format_status(job_with(make_status())).endswith("Events:      none\n")
