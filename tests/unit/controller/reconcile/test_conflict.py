"""The ChildConflict condition (etha.operator.reconcile.conflict): True naming the object in the
job's way, False once it is gone, and nothing written while nothing changes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from etha.job.spec import parse
from etha.operator.reconcile.conditions import condition
from etha.operator.reconcile.conflict import conflict_condition
from tests.factories import make_trainingjob, reconcile
from tests.unit.controller.reconcile.helpers import NOW

IN_THE_WAY = "Service mnist exists and is not the job's (owned by nothing)."
OTHER = "Pod mnist-master-0 exists and is not the job's (owned by Job other)."
EARLIER = NOW - timedelta(minutes=5)
RUNNING = condition("Running", True, "AllWorkersRunning", "All 2 workers are running.", EARLIER)
CONFLICT = condition("ChildConflict", True, "ChildConflict", IN_THE_WAY, EARLIER)
RESOLVED = condition("ChildConflict", False, "Resolved", "No object is in the way.", EARLIER)


@pytest.mark.parametrize(
    ("conditions", "conflict", "expected"),
    [
        ([], IN_THE_WAY, [condition("ChildConflict", True, "ChildConflict", IN_THE_WAY, NOW)]),
        (
            [RUNNING],
            IN_THE_WAY,
            [RUNNING, condition("ChildConflict", True, "ChildConflict", IN_THE_WAY, NOW)],
        ),
        ([RUNNING, CONFLICT], IN_THE_WAY, None),
        # Another object in the way: the message says which; still True since EARLIER.
        ([CONFLICT], OTHER, [{**CONFLICT, "message": OTHER}]),
        ([RESOLVED], IN_THE_WAY, [condition("ChildConflict", True, "ChildConflict", IN_THE_WAY, NOW)]),
        (
            [CONFLICT, RUNNING],
            None,
            [condition("ChildConflict", False, "Resolved", "No object is in the way.", NOW), RUNNING],
        ),
        ([RESOLVED], None, None),
        ([RUNNING], None, None),
        ([], None, None),
    ],
    ids=[
        "new",
        "new-beside-others",
        "same-again",
        "another-object",
        "back-after-resolved",
        "gone",
        "still-resolved",
        "never-had-one",
        "nothing",
    ],
)
def test_conflict_condition(
    conditions: list[dict[str, str]], conflict: str | None, expected: list[dict[str, str]] | None
) -> None:
    assert conflict_condition(conditions, conflict, NOW) == expected


def test_a_conflict_warns_once_and_its_end_is_written_without_an_event() -> None:
    job = parse(make_trainingjob())
    met = reconcile(job, {}, [], False, NOW, conflict=IN_THE_WAY)
    (cond,) = [x for x in met.status["conditions"] if x["type"] == "ChildConflict"]
    assert (cond["status"], cond["message"]) == ("True", IN_THE_WAY)
    assert [(e.type, e.reason, e.message) for e in met.events if e.reason == "ChildConflict"] == [
        ("Warning", "ChildConflict", IN_THE_WAY)
    ]
    again = reconcile(job, dict(met.status), [], False, NOW, conflict=IN_THE_WAY)
    assert not [e for e in again.events if e.reason == "ChildConflict"]
    gone = reconcile(job, dict(met.status), [], False, NOW)
    (cond,) = [x for x in gone.status["conditions"] if x["type"] == "ChildConflict"]
    assert (cond["status"], cond["reason"]) == ("False", "Resolved")
    assert not [e for e in gone.events if e.reason == "ChildConflict"]
