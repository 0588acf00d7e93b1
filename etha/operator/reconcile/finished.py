"""A finished job: stop a master that is left, and honour ``spec.ttlSecondsAfterFinished`` (the
only timer a finished job keeps). Pure."""

from __future__ import annotations

from etha.job import constants as c
from etha.job.pods import parse_time
from etha.operator.reconcile.conditions import Event
from etha.operator.reconcile.model import Actions, Observed, is_master, still_running, ttl_left


def finished(observed: Observed) -> Actions | None:
    """The actions of a job that Succeeded or Failed; None for any other."""
    if observed.status.get("phase") not in c.FINISHED_PHASES:
        return None
    actions = Actions()
    actions.delete_pods.extend(
        p["metadata"]["name"] for p in observed.pods if is_master(p) and still_running(p)
    )
    left = ttl_left(observed.job, parse_time(observed.status.get("completionTime")), observed.now)
    actions.delete_job = left == 0.0
    actions.requeue_after = None if actions.delete_job else left
    if actions.delete_job:
        actions.events.append(
            Event(
                "Normal",
                c.REASON_TTL_EXPIRED,
                f"spec.ttlSecondsAfterFinished ({observed.job.ttl_seconds_after_finished} s) passed since "
                f"the job {str(observed.status.get('phase')).lower()}: deleting it and its pods.",
            )
        )
    return actions
