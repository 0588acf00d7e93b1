from __future__ import annotations

import pytest

from etha.job.names import last_attempt, status_attempt


@pytest.mark.parametrize(
    ("written", "max_restarts", "attempt"),
    [
        (3, 0, 3),
        (0, 0, 0),
        (None, 0, 0),
        (10**12, 0, 999),
        (10**12, 5000, 5000),
        (-4, 0, 0),
        ("7", 0, 0),
        (True, 0, 0),
        (2.5, 0, 0),
    ],
    ids=["plain", "first", "absent", "huge", "huge-past-max-restarts", "negative", "text", "bool", "float"],
)
def test_a_status_attempt_written_by_anyone_stays_within_the_names(
    written: object, max_restarts: int, attempt: int
) -> None:
    assert status_attempt(written, max_restarts) == attempt
    assert 0 <= attempt <= last_attempt(max_restarts)
