"""A job the operator will not run (:class:`Refused`): its spec is invalid, or the API server
rejected a child made from it. It ends Failed once, with a condition naming why; a rejected
child's siblings that were made are deleted, so nothing is left behind. Pure."""

from __future__ import annotations

from etha.job import constants as c
from etha.job.pods import timestamp
from etha.operator.reconcile.conditions import Event, condition, set_condition
from etha.operator.reconcile.model import Actions, Refused


def rejected(look: Refused) -> Actions:
    """Fail the job naming why (once: a Failed job is not failed again)."""
    actions = Actions(delete_pods=list(look.pods), remove_finalizer=look.finalizer)
    if look.status.get("phase") == c.PHASE_FAILED:
        return actions
    actions.status = {
        "phase": c.PHASE_FAILED,
        "completionTime": timestamp(look.now),
        "conditions": set_condition(
            list(look.status.get("conditions") or []),
            condition(c.COND_FAILED, True, look.reason, look.message, look.now),
        ),
        "reason": look.reason,
    }
    actions.events.append(Event("Warning", look.reason, look.message))
    return actions
