"""A finished job: stop a master that is left, and honour ``spec.ttlSecondsAfterFinished`` (the
only timer a finished job keeps). Pure."""

from __future__ import annotations

from etha.job import constants as c
from etha.job.pods import parse_time
from etha.operator.reconcile.conditions import Event
from etha.operator.reconcile.model import Actions, Observed, is_master, still_running, ttl_left


def finished(obs: Observed) -> Actions | None:
    """The actions of a job that Succeeded or Failed; None for any other."""
    if obs.status.get("phase") not in c.FINISHED_PHASES:
        return None
    acts = Actions()
    acts.delete_pods.extend(p["metadata"]["name"] for p in obs.pods if is_master(p) and still_running(p))
    left = ttl_left(obs.job, parse_time(obs.status.get("completionTime")), obs.now)
    acts.delete_job = left == 0.0
    acts.requeue_after = None if acts.delete_job else left
    if acts.delete_job:
        acts.events.append(
            Event(
                "Normal",
                c.REASON_TTL_EXPIRED,
                f"spec.ttlSecondsAfterFinished ({obs.job.ttl_seconds_after_finished} s) passed since "
                f"the job {str(obs.status.get('phase')).lower()}: deleting it and its pods.",
            )
        )
    return acts
