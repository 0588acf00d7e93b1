"""The ChildConflict condition: an object of a child's name that is not the job's stands in its
way (the Writer met it creating the child; it is never used). Pure."""

from __future__ import annotations

from datetime import datetime

from etha.job import constants as c
from etha.operator.reconcile.conditions import Event, condition, set_condition
from etha.operator.reconcile.model import Actions, Observed


def conflict(observed: Observed, decided: Actions) -> Actions:
    """The condition (and a Warning event) on top of the conditions ``decided`` writes, when
    what the last creation met differs from what the status says."""
    conditions = decided.status.get("conditions", observed.status.get("conditions") or [])
    changed = conflict_condition(list(conditions), observed.conflict, observed.now)
    if changed is None:
        return Actions()
    events = (
        [Event("Warning", c.REASON_CHILD_CONFLICT, observed.conflict)]
        if observed.conflict is not None
        else []
    )
    return Actions(status={"conditions": changed}, events=events)


def conflict_condition(
    conditions: list[dict[str, str]], conflict: str | None, now: datetime
) -> list[dict[str, str]] | None:
    """The ChildConflict condition: True naming the object that is in the way, False once it is
    gone; None when nothing changes."""
    had = next((x for x in conditions if x.get("type") == c.COND_CHILD_CONFLICT), None)
    if conflict is not None:
        if had is not None and had.get("status") == "True" and had.get("message") == conflict:
            return None
        return set_condition(
            conditions, condition(c.COND_CHILD_CONFLICT, True, c.REASON_CHILD_CONFLICT, conflict, now)
        )
    if had is None or had.get("status") != "True":
        return None
    return set_condition(
        conditions, condition(c.COND_CHILD_CONFLICT, False, "Resolved", "No object is in the way.", now)
    )
