from __future__ import annotations

from datetime import UTC, datetime

import pytest

from etha.job.pods import parse_time

TEN = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-07T10:00:00Z", TEN),
        ("2026-12-07T10:00:00.5Z", TEN.replace(microsecond=500000)),
        ("2026-12-07T10:00:00.123456789Z", TEN.replace(microsecond=123456)),
        ("2026-12-07T12:00:00+02:00", TEN),
        ("2026-12-07T05:00:00.25-05:00", TEN.replace(microsecond=250000)),
        ("2026-12-07t10:00:00z", TEN),
        ("2026-12-07T10:00:00", TEN),
        ("2026-12-07 10:00:00Z", TEN),
        (" 2026-12-07T10:00:00Z ", TEN),
        ("yesterday", None),
        ("2026-13-07T10:00:00Z", None),
        ("0001-01-01T00:00:00+01:00", None),
        ("", None),
        (None, None),
        (1765101600, None),
    ],
    ids=[
        "kubernetes",
        "fraction",
        "nanoseconds",
        "offset",
        "fraction-and-offset",
        "lowercase",
        "no-zone-is-utc",
        "space",
        "padded",
        "not-a-time",
        "no-such-month",
        "before-year-1-in-utc",
        "empty",
        "absent",
        "a-number",
    ],
)
def test_times_anyone_may_write_in_a_status_are_read_leniently(
    text: object, expected: datetime | None
) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed is None or parsed.tzinfo == UTC
