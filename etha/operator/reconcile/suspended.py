"""``spec.suspend``: no pods while it is true; resuming starts the current attempt afresh. Pure."""

from __future__ import annotations

from etha.job import constants as c
from etha.job.names import status_attempt
from etha.job.scheduling import group_name
from etha.operator.reconcile.conditions import Event, condition, set_condition
from etha.operator.reconcile.joins import reset_view
from etha.operator.reconcile.model import Actions, Observed
from etha.operator.reconcile.placement import forget_waiting


def suspended(observed: Observed) -> Actions | None:
    """The actions of a suspended job; None for a job that is not."""
    job, status = observed.job, observed.status
    if not job.suspend:
        return None
    actions = Actions()
    actions.delete_pods.extend(p["metadata"]["name"] for p in observed.pods)
    if job.scheduling.kind is not None:  # resuming makes the group anew, from the spec as it is then
        actions.delete_groups.append(
            group_name(job.name, status_attempt(status.get("attempt"), job.max_restarts))
        )
    if status.get("reason") == c.REASON_UNSCHEDULABLE:
        actions.status["reason"] = None
    if any(x.get("type") == c.COND_SCHEDULED for x in status.get("conditions") or []):
        actions.status["conditions"] = forget_waiting(list(status.get("conditions") or []))
    if job.etcd_endpoints is None and status.get("rendezvous"):
        actions.status["rendezvous"] = reset_view(
            job, status_attempt(status.get("attempt"), job.max_restarts), "Suspended."
        )
    if status.get("attemptSpec"):
        actions.status["attemptSpec"] = None  # resuming pins the spec anew
    if status.get("phase") != c.PHASE_SUSPENDED:
        actions.status.update(
            phase=c.PHASE_SUSPENDED,
            conditions=set_condition(
                forget_waiting(list(status.get("conditions") or [])),
                condition(c.COND_SUSPENDED, True, "Suspended", "spec.suspend is true.", observed.now),
            ),
        )
        actions.events.append(Event("Normal", "Suspended", "Job suspended; its pods are deleted."))
    return actions
