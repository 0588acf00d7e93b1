"""``spec.activeDeadlineSeconds``: the job fails once it has run that long. Pure."""

from __future__ import annotations

from datetime import timedelta

from etha.job import constants as c
from etha.job.pods import parse_time
from etha.operator.reconcile.model import Actions, Attempt, Observed, fail


def deadline_left(observed: Observed) -> float | None:
    """Seconds until the deadline passes (0: it has); None without one."""
    limit = observed.job.active_deadline_seconds
    if limit is None:
        return None
    start = parse_time(observed.status.get("startTime")) or observed.now
    # (a start written in the future by anyone counts from now: the deadline cannot be put off)
    return max(0.0, (min(start, observed.now) + timedelta(seconds=limit) - observed.now).total_seconds())


def deadline(observed: Observed, attempt: Attempt) -> Actions | None:
    """Fail the job once its deadline passed; None before (the look then comes when it will:
    :func:`deadline_left`)."""
    if deadline_left(observed) != 0.0:
        return None
    return fail(
        observed,
        attempt,
        c.REASON_DEADLINE_EXCEEDED,
        f"The job ran longer than spec.activeDeadlineSeconds ({observed.job.active_deadline_seconds}s).",
        keep_workers=False,
    )
