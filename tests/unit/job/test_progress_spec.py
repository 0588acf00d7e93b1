"""spec.progress: refused naming the field, by parse() and by `etha validate` (the CRD's schema)."""

from __future__ import annotations

from typing import Any

import pytest

from etha.job.manifest import Document, ManifestError, validate
from etha.job.progress import ON_STALL_NONE, ON_STALL_RESTART, ProgressSpec, parse_progress
from etha.job.spec import InvalidSpec, parse
from tests.factories import make_trainingjob


@pytest.mark.parametrize(
    ("progress", "message"),
    [
        ({"stallTimeoutSeconds": 0}, r"spec\.progress\.stallTimeoutSeconds \(0\) must be .*at least 1"),
        ({"stallTimeoutSeconds": -5}, r"spec\.progress\.stallTimeoutSeconds \(-5\) must be .*at least 1"),
        ({"onStall": "Maybe"}, r"spec\.progress\.onStall \('Maybe'\) must be one of.*Restart, FailJob, None"),
        (
            {"onStall": "Restart"},
            r"spec\.progress\.onStall \(Restart\) needs spec\.progress\.stallTimeoutSeconds",
        ),
    ],
    ids=["zero", "negative", "maybe", "restart-without-timeout"],
)
def test_bad_progress_is_refused_naming_the_field(progress: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse(make_trainingjob(progress=progress))
    with pytest.raises(ManifestError, match=message):
        validate(Document("j", make_trainingjob(progress=progress)))


def test_progress_defaults_and_values() -> None:
    assert parse(make_trainingjob()).progress == ProgressSpec(None, ON_STALL_NONE)
    spec = parse_progress({"stallTimeoutSeconds": 30, "onStall": "Restart"})
    assert spec == ProgressSpec(30, ON_STALL_RESTART)
    assert (
        validate(
            Document("j", make_trainingjob(progress={"stallTimeoutSeconds": 30}))
        ).progress.stall_timeout_seconds
        == 30
    )
